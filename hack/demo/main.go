// Command demo shows Tollgate enforcing policy on real packets, with no
// cluster: it builds a node and its pods in network namespaces, runs the
// decider on the embedded example manifests and the queuer in the node,
// prints who can reach whom before and after the example policies, and
// explains one denied connection. It cleans up on exit and on Ctrl-C.
//
// Run it as root through `make demo` (which builds bin/decider and
// bin/queuer first).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/deploy/examples"
	"github.com/tollgate/tollgate/internal/grid"
	"github.com/tollgate/tollgate/internal/proc"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/netsim"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the decider and queuer binaries")
	keep := flag.Bool("keep", false, "leave everything running until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demoPod is a pod of the example cluster.
type demoPod struct {
	key   string // namespace/name
	ip    netip.Addr
	ip6   netip.Addr
	ports []uint16
	host  *netsim.Pod
}

func run(ctx context.Context, bin string, keep bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and nftables)")
	}
	for _, b := range []string{"decider", "queuer"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("%s not built (run make build): %w", b, err)
		}
	}
	work, err := os.MkdirTemp("", "tollgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	manifests := filepath.Join(work, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		return err
	}
	cluster, err := fs.ReadFile(examples.FS, "cluster.yaml")
	if err != nil {
		return fmt.Errorf("embedded examples: %w", err)
	}
	if err := os.WriteFile(filepath.Join(manifests, "cluster.yaml"), cluster, 0o644); err != nil {
		return err
	}
	pods, nodeName, err := examplePods(cluster)
	if err != nil {
		return err
	}

	step("Building a node and %d pods in network namespaces", len(pods))
	topo, err := netsim.New("tgdemo")
	if err != nil {
		return err
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	node, err := topo.AddNode(nodeName, netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64"))
	if err != nil {
		return err
	}
	for _, p := range pods {
		if p.host, err = topo.AddPod(node, strings.ReplaceAll(p.key, "/", "-"), p.ip, p.ip6); err != nil {
			return err
		}
		for _, port := range p.ports {
			if err := topo.ServeTCP(p.host, port); err != nil {
				return err
			}
		}
	}

	socket := filepath.Join(work, "decider.sock")
	step("Starting the decider on the example cluster (no policies yet)")
	decider := exec.CommandContext(ctx, filepath.Join(bin, "decider"), "--manifests", manifests, "--socket", socket,
		"--node-name", nodeName, "--metrics-bind-address", "")
	stopDecider, err := start(decider, filepath.Join(work, "decider.log"))
	if err != nil {
		return err
	}
	defer stopDecider()
	step("Starting the queuer in the node's network namespace")
	queuer := exec.CommandContext(ctx, "ip", "netns", "exec", node.Netns(), filepath.Join(bin, "queuer"),
		"--decider-socket", socket, "--node-name", nodeName, "--queues", "1", "--metrics-bind-address", "127.0.0.1:9080")
	stopQueuer, err := start(queuer, filepath.Join(work, "queuer.log"))
	if err != nil {
		return err
	}
	defer stopQueuer()

	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := tollgatev1.NewDeciderServiceClient(conn)
	gen, err := waitGeneration(ctx, client, 0)
	if err != nil {
		return fmt.Errorf("decider did not come up (see %s): %w", filepath.Join(work, "decider.log"), err)
	}
	if err := waitReady(ctx, node.Netns()); err != nil {
		return fmt.Errorf("queuer did not become ready (see %s): %w", filepath.Join(work, "queuer.log"), err)
	}

	printMatrix(ctx, "Who reaches whom on TCP port 80, no policy:", pods, 80)

	step("Applying the example policies (writing policies.yaml next to cluster.yaml)")
	policies, err := fs.ReadFile(examples.FS, "policies.yaml")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(manifests, "policies.yaml"), policies, 0o644); err != nil {
		return err
	}
	if _, err := waitGeneration(ctx, client, gen); err != nil {
		return err
	}
	denied := printMatrix(ctx, "Who reaches whom on TCP port 80, with the example policies:", pods, 80)

	if len(denied) > 0 {
		src, dst := denied[0][0], denied[0][1]
		step("Why is %s -> %s:80 denied? (the same question works with grpcurl)", src.key, dst.key)
		resp, err := client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: src.ip.String(), DstIp: dst.ip.String(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
		if err != nil {
			return err
		}
		fmt.Printf("  verdict: %s (decider generation %d)\n", strings.TrimPrefix(resp.GetVerdict().String(), "VERDICT_"), resp.GetGeneration())
		for _, e := range resp.GetExplanations() {
			fmt.Printf("  %s\n", e.GetReason())
		}
	}
	if keep {
		step("Running until Ctrl-C; decider socket: %s", socket)
		<-ctx.Done()
	}
	step("Cleaning up")
	return nil
}

// examplePods reads the pods of the example cluster: their IPv4 address,
// the TCP ports they declare, and the node they run on.
func examplePods(cluster []byte) ([]*demoPod, string, error) {
	var pods []*demoPod
	node := ""
	for _, doc := range strings.Split(string(cluster), "\n---") {
		var p corev1.Pod
		if err := yaml.Unmarshal([]byte(doc), &p); err != nil {
			return nil, "", fmt.Errorf("cluster.yaml: %w", err)
		}
		if p.Kind != "Pod" {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !ip.Is4() {
			continue
		}
		dp := &demoPod{key: p.Namespace + "/" + p.Name, ip: ip}
		for _, pip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(pip.IP); err == nil && a.Is6() {
				dp.ip6 = a
			}
		}
		if !dp.ip6.IsValid() {
			return nil, "", fmt.Errorf("cluster.yaml: pod %s has no IPv6 address", dp.key)
		}
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP {
					dp.ports = append(dp.ports, uint16(cp.ContainerPort))
				}
			}
		}
		pods = append(pods, dp)
		node = p.Spec.NodeName
	}
	if len(pods) == 0 {
		return nil, "", errors.New("cluster.yaml has no pods with an IPv4 address")
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].key < pods[j].key })
	return pods, node, nil
}

// printMatrix probes every ordered pair on port and prints a table; it
// returns the denied pairs.
func printMatrix(ctx context.Context, title string, pods []*demoPod, port uint16) [][2]*demoPod {
	ok := make([][]bool, len(pods))
	var wg sync.WaitGroup
	for i := range pods {
		ok[i] = make([]bool, len(pods))
		for j := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok[i][j], _ = netsim.Probe(pods[i].host, pods[j].ip, port, netsim.TCP, 1500*time.Millisecond)
			}()
		}
	}
	wg.Wait()
	fmt.Printf("\n%s\n", title)
	labels := make([]string, len(pods))
	var denied [][2]*demoPod
	for i, p := range pods {
		labels[i] = p.key
		for j := range pods {
			if !ok[i][j] && i != j {
				denied = append(denied, [2]*demoPod{p, pods[j]})
			}
		}
	}
	_ = grid.Write(os.Stdout, labels, func(i, j int) bool { return ok[i][j] })
	fmt.Println()
	return denied
}

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

// start runs cmd with its output in logPath and returns a function that
// stops it. Cancelling cmd's context (Ctrl-C) sends SIGTERM, not SIGKILL,
// so that the queuer removes its table on the way out.
func start(cmd *exec.Cmd, logPath string) (func(), error) {
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = proc.StopTimeout
	p, err := proc.Start(cmd, logPath)
	if err != nil {
		return nil, err
	}
	return p.Stop, nil
}

// waitGeneration waits until the decider answers with a generation newer
// than after.
func waitGeneration(ctx context.Context, c tollgatev1.DeciderServiceClient, after uint64) (uint64, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := c.Decide(cctx, &tollgatev1.DecideRequest{SrcIp: "192.0.2.1", DstIp: "192.0.2.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 1})
		cancel()
		if err == nil && resp.GetGeneration() > after {
			return resp.GetGeneration(), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, errors.New("timed out waiting for a new decider generation")
}

// readyz asks the queuer's /readyz inside the node namespace. The socket is
// opened on a thread in that namespace and keeps it afterwards.
func readyz(netns string) error {
	var conn net.Conn
	if err := netsim.RunInNS(netns, func() (err error) {
		conn, err = net.DialTimeout("tcp", "127.0.0.1:9080", time.Second)
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(conn, "GET /readyz HTTP/1.0\r\nHost: queuer\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s", resp.Status)
	}
	return nil
}

// waitReady polls the queuer's /readyz inside the node namespace.
func waitReady(ctx context.Context, netns string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if readyz(netns) == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("timed out")
}
