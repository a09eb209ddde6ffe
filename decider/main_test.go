package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/internal/testenv"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

func TestParseFlags(t *testing.T) {
	host, _ := os.Hostname()
	tests := []struct {
		name     string
		args     []string
		env      string
		wantNode string
		wantErr  string
	}{
		{name: "defaults", env: "n7", wantNode: "n7"},
		{name: "flag beats environment", args: []string{"--node-name", "n1"}, env: "n7", wantNode: "n1"},
		{name: "hostname last", wantNode: host},
		{name: "both sources", args: []string{"--kubeconfig", "k", "--manifests", "m"}, wantErr: "mutually exclusive"},
		{name: "stray argument", args: []string{"--manifests", "m", "extra"}, wantErr: "unexpected arguments"},
		{name: "bad duration", args: []string{"--settle", "soon"}, wantErr: "settle"},
		{name: "bad CPU list", args: []string{"--cpus", "2-1"}, wantErr: "--cpus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tc.env)
			c, err := parseFlags(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.nodeName != tc.wantNode || c.socket != defaultSocket || c.metricsAddr != ":9081" || c.settle != 20*time.Millisecond {
				t.Errorf("config %+v, want node %q and the documented defaults", c, tc.wantNode)
			}
		})
	}
}

const clusterYAML = `
apiVersion: v1
kind: Namespace
metadata:
  name: "y"
---
apiVersion: v1
kind: Pod
metadata: {namespace: "y", name: a}
spec: {nodeName: n1}
status:
  phase: Running
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
---
apiVersion: v1
kind: Pod
metadata: {namespace: "y", name: b}
spec: {nodeName: n1}
status:
  phase: Running
  podIP: 10.0.0.2
  podIPs: [{ip: 10.0.0.2}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "y", name: default-deny-ingress}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

const allowYAML = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "y", name: allow-all}
spec:
  podSelector: {}
  ingress: [{}]
`

// TestBinary builds the decider, runs it on manifest files and talks to it
// the way the queuer, the probes and a human with grpcurl do.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := buildDecider(t)

	out, err := exec.Command(bin, "--version").Output()
	if err != nil || string(out) != "v0.0.0-test\n" {
		t.Errorf("--version: %q %v, want the version set by -ldflags", out, err)
	}

	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(manifests, "cluster.yaml"), clusterYAML)
	sock := filepath.Join(dir, "run", "decider.sock")
	metricsAddr := freeTCPAddr(t)

	if code := runHealthcheck(t, bin, sock); code != 1 {
		t.Errorf("healthcheck with no decider: exit %d, want 1", code)
	}

	logPath := filepath.Join(dir, "decider.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--manifests", manifests, "--socket", sock, "--node-name", "n1",
		"--metrics-bind-address", metricsAddr, "--settle", "5ms", "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("decider log:\n%s", b)
		}
	})

	// The probe's view: healthy once the manifests are loaded.
	deadline := time.Now().Add(15 * time.Second)
	for runHealthcheck(t, bin, sock) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("decider healthcheck did not report SERVING within 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v, want 0660", fi.Mode(), err)
	}

	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := tollgatev1.NewDeciderServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "tollgate.v1.DeciderService"}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of tollgate.v1.DeciderService: %v %v", h, err)
	}

	aToB := &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}
	resp, err := client.Decide(ctx, aToB)
	if err != nil {
		t.Fatal(err)
	}
	if x := resp.GetExplanations(); resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY || len(x) != 2 ||
		x[0].GetDirection() != tollgatev1.Direction_DIRECTION_EGRESS || x[0].GetTier() != tollgatev1.Tier_TIER_DEFAULT ||
		x[1].GetDirection() != tollgatev1.Direction_DIRECTION_INGRESS || x[1].GetPolicy().GetName() != "default-deny-ingress" || x[1].GetRule() != nil {
		t.Errorf("y/a -> y/b under default deny: %v", resp)
	}
	resp, err = client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "10.0.0.2", DstIp: "192.0.2.1", Protocol: tollgatev1.Protocol_PROTOCOL_UDP, DstPort: 53})
	if err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_ALLOW || len(resp.GetExplanations()) != 1 {
		t.Errorf("y/b -> outside: %v %v, want ALLOW with the egress explanation only", resp, err)
	}
	if _, err := client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "10.0.0.999", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "src_ip") {
		t.Errorf("bad src_ip: %v, want InvalidArgument naming src_ip", err)
	}

	// Watch with no node name reports the decider's own node, n1.
	w, err := client.Watch(ctx, &tollgatev1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := watchedIPs(first); got != "10.0.0.1 10.0.0.2 fd00::1" || first.GetGeneration() == 0 {
		t.Errorf("first Watch message: generation %d, IPs %q", first.GetGeneration(), got)
	}

	// A new file is picked up: a new generation is announced and verdicts
	// follow it.
	writeFile(t, filepath.Join(manifests, "allow.yaml"), allowYAML)
	next, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if next.GetGeneration() <= first.GetGeneration() || watchedIPs(next) != "10.0.0.1 10.0.0.2 fd00::1" {
		t.Errorf("Watch after adding allow-all: %v (first was generation %d)", next, first.GetGeneration())
	}
	resp, err = client.Decide(ctx, aToB)
	if err != nil {
		t.Fatal(err)
	}
	if x := resp.GetExplanations(); resp.GetVerdict() != tollgatev1.Verdict_VERDICT_ALLOW || resp.GetGeneration() < next.GetGeneration() ||
		len(x) != 2 || x[1].GetPolicy().GetName() != "allow-all" || x[1].GetRule() == nil {
		t.Errorf("y/a -> y/b with allow-all: %v", resp)
	}

	t.Run("metrics", func(t *testing.T) {
		body := httpGet(t, "http://"+metricsAddr+"/metrics")
		for _, want := range []string{"tollgate_decider_generation ", `tollgate_decider_requests_total{method="Decide"`, "tollgate_decider_snapshot_build_seconds_count"} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		if body := httpGet(t, "http://"+metricsAddr+"/readyz"); strings.TrimSpace(body) != "ok" {
			t.Errorf("/readyz: %q", body)
		}
	})

	t.Run("grpcurl", func(t *testing.T) {
		grpcurl := findGrpcurl(t)
		out, err := exec.Command(grpcurl, "-plaintext", "-unix", sock, "list").CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl list: %v\n%s", err, out)
		}
		for _, svc := range []string{"tollgate.v1.DeciderService", "grpc.health.v1.Health"} {
			if !strings.Contains(string(out), svc) {
				t.Errorf("grpcurl list does not show %s:\n%s", svc, out)
			}
		}
		out, err = exec.Command(grpcurl, "-plaintext", "-unix", "-d",
			`{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","protocol":"PROTOCOL_TCP","dst_port":80}`,
			sock, "tollgate.v1.DeciderService/Decide").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"VERDICT_ALLOW"`) || !strings.Contains(string(out), "allow-all") {
			t.Errorf("grpcurl Decide: %v\n%s", err, out)
		}
		out, err = exec.Command(grpcurl, "-plaintext", "-unix", "-d",
			`{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","protocol":"PROTOCOL_TCP","dst_port":70000}`,
			sock, "tollgate.v1.DeciderService/Decide").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "InvalidArgument") || !strings.Contains(string(out), "dst_port") {
			t.Errorf("grpcurl Decide with port 70000: %v\n%s", err, out)
		}
	})

	// SIGTERM: a clean exit that removes the socket.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("decider did not exit within 15s of SIGTERM")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after shutdown: %v, want it removed", err)
	}
}

// TestBinaryRefusesBadSetups checks the startup errors a user meets first.
func TestBinaryRefusesBadSetups(t *testing.T) {
	dir := t.TempDir()
	bin := buildDecider(t)
	notSocket := filepath.Join(dir, "file")
	writeFile(t, notSocket, "")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing manifests", []string{"--manifests", filepath.Join(dir, "nope"), "--metrics-bind-address", ""}, "not a readable directory"},
		{"not in a cluster", []string{"--metrics-bind-address", ""}, "not running in a cluster"},
		{"socket path is a file", []string{"--manifests", dir, "--socket", notSocket, "--metrics-bind-address", ""}, "not a socket"},
		{"bad log level", []string{"--manifests", dir, "--log-level", "loud"}, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=", "KUBERNETES_SERVICE_PORT=")
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Errorf("err %v, output %q, want a failure mentioning %q", err, out, tc.want)
			}
		})
	}
	if _, err := os.Stat(notSocket); err != nil {
		t.Errorf("the regular file at the socket path was touched: %v", err)
	}
}

var built struct {
	once     sync.Once
	dir, bin string
	err      error
}

// TestMain removes the binary that buildDecider compiled.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildDecider compiles this package once per test binary run.
func buildDecider(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			built.err = fmt.Errorf("the go tool is needed to build the binary: %w", err)
			return
		}
		if built.dir, built.err = os.MkdirTemp("", "decider-test-"); built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "decider")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, goBin, "build", "-trimpath",
			"-ldflags", "-X github.com/tollgate/tollgate/internal/version.Version=v0.0.0-test",
			"-o", built.bin, ".").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// runHealthcheck runs `decider healthcheck` and returns its exit code.
func runHealthcheck(t *testing.T, bin, sock string) int {
	t.Helper()
	err := exec.Command(bin, "healthcheck", "--socket", sock, "--timeout", "1s").Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("healthcheck: %v", err)
	return -1
}

func watchedIPs(m *tollgatev1.WatchResponse) string {
	var ips []string
	for _, b := range append(m.GetSelectedIpv4(), m.GetSelectedIpv6()...) {
		a, _ := netip.AddrFromSlice(b)
		ips = append(ips, a.String())
	}
	return strings.Join(ips, " ")
}

func findGrpcurl(t *testing.T) string {
	t.Helper()
	local, _ := filepath.Abs(filepath.Join("..", ".cache", "bin", "grpcurl"))
	if _, err := os.Stat(local); err == nil {
		return local
	}
	if p, err := exec.LookPath("grpcurl"); err == nil {
		return p
	}
	testenv.Skip(t, "grpcurl is not at %s nor on PATH (make tools); the Go client checks above still ran", local)
	return ""
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
