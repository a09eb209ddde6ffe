package faults

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/internal/proc"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/netsim"
)

// binDir holds the decider and queuer binaries built for this run.
var binDir string

func TestMain(m *testing.M) { os.Exit(proc.RunAsRoot(m, "fault tests", &binDir)) }

// bin is the path of a binary built by TestMain.
func bin(name string) string { return filepath.Join(binDir, name) }

// eventually polls cond every 50 ms until it holds or limit passes, and
// returns how long it took.
func eventually(t *testing.T, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// healthcheck runs `decider healthcheck` against sock and returns its exit
// code.
func healthcheck(sock string) int {
	cmd := exec.Command(bin("decider"), "healthcheck", "--socket", sock, "--timeout", "1s")
	err := cmd.Run()
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// deciderClient connects to the decider socket; the connection is closed
// when the test ends.
func deciderClient(t *testing.T, sock string) tollgatev1.DeciderServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tollgatev1.NewDeciderServiceClient(conn)
}

// decide asks for the verdict of a TCP connection to dst port 80.
func decide(c tollgatev1.DeciderServiceClient, src, dst string) (*tollgatev1.DecideResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: src, DstIp: dst, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
}

// scrape fetches a Prometheus text page from addr inside network namespace
// ns (the host's when ns is empty) and sums the samples of each family.
func scrape(ns, addr string) (map[string]float64, error) {
	var conn net.Conn
	dial := func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, time.Second)
		return err
	}
	var err error
	if ns == "" {
		err = dial()
	} else {
		err = netsim.RunInNS(ns, dial)
	}
	if err != nil {
		return nil, fmt.Errorf("metrics at %s: %w", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
		return nil, fmt.Errorf("metrics request: %w", err)
	}
	body, err := io.ReadAll(conn)
	if err != nil {
		return nil, fmt.Errorf("metrics response: %w", err)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "HTTP/") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[0], "{")
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, nil
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				break
			}
			return strconv.Atoi(fields[0])
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
