// Package integration runs the decider and the queuer binaries together on
// one simulated node, with the decider reading manifest files: real
// packets, real nftables, no apiserver. The full multi-node suite against a
// real apiserver lives in test/e2e.
package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/netsim"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(proc.RunAsRoot(m, "integration tests", &binDir)) }

const clusterYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {ns: "y"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.99.1.1}, {ip: "fd00:99:1::1"}], podIP: 10.99.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "y", labels: {pod: b}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.99.1.2}, {ip: "fd00:99:1::2"}], podIP: 10.99.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: z, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.99.1.3}, {ip: "fd00:99:1::3"}], podIP: 10.99.1.3}
`

// policyYAML lets y/b accept TCP, UDP and SCTP port 80 from namespace x only.
const policyYAML = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}, {port: 80, protocol: SCTP}]
`

// node is one simulated node running a decider and a queuer.
type node struct {
	t         *testing.T
	topo      *netsim.Topology
	node      *netsim.Node
	pods      map[string]*netsim.Pod
	dir       string
	manifests string
	socket    string
	decider   *proc.Proc
	queuer    *proc.Proc
}

func newNode(t *testing.T) *node {
	t.Helper()
	n := &node{t: t, topo: netsim.NewForTest(t, "tgit"), pods: map[string]*netsim.Pod{}, dir: t.TempDir()}
	var err error
	n.node, err = n.topo.AddNode("node-1", netip.MustParsePrefix("10.99.1.0/24"), netip.MustParsePrefix("fd00:99:1::/64"))
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"a", "b", "c"} {
		p, err := n.topo.AddPod(n.node, name, netip.MustParseAddr(fmt.Sprintf("10.99.1.%d", i+1)), netip.MustParseAddr(fmt.Sprintf("fd00:99:1::%d", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		for _, port := range []uint16{80, 81} {
			for _, serve := range []func(netsim.Host, uint16) error{n.topo.ServeTCP, n.topo.ServeUDP, n.topo.ServeSCTP} {
				if err := serve(p, port); err != nil {
					t.Fatal(err)
				}
			}
		}
		n.pods[name] = p
	}
	n.manifests = filepath.Join(n.dir, "manifests")
	n.socket = filepath.Join(n.dir, "decider.sock")
	if err := os.Mkdir(n.manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	n.write("cluster.yaml", clusterYAML)
	return n
}

func (n *node) write(name, content string) {
	n.t.Helper()
	if err := os.WriteFile(filepath.Join(n.manifests, name), []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// startDecider starts the decider on the manifests, with extra flags.
func (n *node) startDecider(extra ...string) {
	n.t.Helper()
	args := append([]string{"--manifests", n.manifests, "--socket", n.socket, "--node-name", "node-1", "--metrics-bind-address", ""}, extra...)
	n.decider = proc.ForTest(n.t, "decider", exec.Command(filepath.Join(binDir, "decider"), args...))
	n.eventually("decider healthy", 15*time.Second, func() bool {
		return exec.Command(filepath.Join(binDir, "decider"), "healthcheck", "--socket", n.socket).Run() == nil
	})
}

// start writes policy.yaml, starts the decider and the queuer (extra are
// queuer flags) and waits until the queuer has y/b in its selected set.
func (n *node) start(policy string, failOpen bool, extra ...string) {
	n.t.Helper()
	n.write("policy.yaml", policy)
	n.startDecider()
	n.startQueuer(failOpen, extra...)
	n.eventually("y/b selected", 20*time.Second, func() bool { return n.selected("10.99.1.2") })
}

func (n *node) startQueuer(failOpen bool, extra ...string) {
	n.t.Helper()
	args := append([]string{"netns", "exec", n.node.Netns(), filepath.Join(binDir, "queuer"),
		"--decider-socket", n.socket, "--node-name", "node-1", "--queues", "2", "--nfqueue-id", "100",
		"--fail-open=" + strconv.FormatBool(failOpen), "--decide-timeout", "300ms", "--metrics-bind-address", "127.0.0.1:9080"}, extra...)
	n.queuer = proc.ForTest(n.t, "queuer", exec.Command("ip", args...))
	n.eventually("queuer table installed", 15*time.Second, func() bool {
		out, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate")
		return err == nil && strings.Contains(out, "selected4")
	})
}

func (n *node) eventually(what string, limit time.Duration, cond func() bool) {
	n.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			n.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// selected reports whether the queuer has put ip in its selected set.
func (n *node) selected(ip string) bool {
	out, err := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "selected4")
	return err == nil && strings.Contains(out, ip)
}

// queued returns how many packets the node's queues have received so far
// (the id sequence of /proc/net/netfilter/nfnetlink_queue, summed).
func (n *node) queued() int {
	n.t.Helper()
	out, err := netsim.Exec(n.node.Netns(), "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		n.t.Fatal(err)
	}
	total := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 8 {
			v, _ := strconv.Atoi(f[7])
			total += v
		}
	}
	return total
}

// metric sums the samples of a Prometheus metric family served by the
// queuer on 127.0.0.1:9080 inside the node namespace.
func (n *node) metric(name string) float64 {
	n.t.Helper()
	var conn net.Conn
	if err := netsim.RunInNS(n.node.Netns(), func() (err error) {
		conn, err = net.DialTimeout("tcp", "127.0.0.1:9080", time.Second)
		return err
	}); err != nil {
		n.t.Fatalf("metrics: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
		n.t.Fatal(err)
	}
	body, _ := io.ReadAll(conn)
	total := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total
}

type probe struct {
	from, to string
	proto    netsim.Proto
	v6       bool
	want     bool
}

func (n *node) check(probes ...probe) {
	n.t.Helper()
	for _, p := range probes {
		to := n.pods[p.to]
		addr := to.IPv4
		if p.v6 {
			addr = to.IPv6
		}
		got, err := netsim.Probe(n.pods[p.from], addr, 80, p.proto, time.Second)
		if err != nil {
			n.t.Fatalf("probe %v: %v", p, err)
		}
		if got != p.want {
			n.t.Errorf("%s -> %s (%s) %s port 80: reachable=%v, want %v", p.from, p.to, addr, p.proto, got, p.want)
		}
	}
}

func TestQueuerEnforces(t *testing.T) {
	n := newNode(t)
	n.startDecider()
	n.startQueuer(true)
	// No policy: nothing selected, nothing queued, everything passes.
	n.check(probe{"c", "b", netsim.TCP, false, true}, probe{"a", "b", netsim.UDP, false, true})
	if q := n.queued(); q != 0 {
		t.Errorf("%d packets queued with no policy, want 0", q)
	}

	n.write("policy.yaml", policyYAML)
	n.eventually("y/b selected", 20*time.Second, func() bool { return n.selected("10.99.1.2") })
	n.check(
		probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.TCP, false, false},
		probe{"a", "b", netsim.UDP, false, true}, probe{"c", "b", netsim.UDP, false, false},
		probe{"a", "b", netsim.SCTP, false, true}, probe{"c", "b", netsim.SCTP, false, false},
		probe{"a", "b", netsim.TCP, true, true}, probe{"c", "b", netsim.TCP, true, false},
		probe{"a", "c", netsim.TCP, false, true}, // neither end selected
	)

	// A repeated tuple (new source port, same src, dst, proto, dst port) is
	// answered by the kernel's verdict sets: the queues see nothing new.
	n.eventually("kernel verdict cached", 5*time.Second, func() bool {
		out, _ := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "allow4")
		return strings.Contains(out, "10.99.1.1 . 10.99.1.2 . tcp . 80")
	})
	before := n.queued()
	if before == 0 {
		t.Fatal("the first connections of the selected pod were never queued")
	}
	for range 5 {
		n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.TCP, false, false})
	}
	if after := n.queued(); after != before {
		t.Errorf("repeated tuples were queued: queue id sequence %d -> %d", before, after)
	}

	// Removing the policy re-opens y/b.
	if err := os.Remove(filepath.Join(n.manifests, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	n.eventually("y/b unselected", 10*time.Second, func() bool { return !n.selected("10.99.1.2") })
	n.check(probe{"c", "b", netsim.TCP, false, true})
}

func TestFailModesWithDeciderDown(t *testing.T) {
	for _, failOpen := range []bool{true, false} {
		t.Run(fmt.Sprintf("fail-open=%v", failOpen), func(t *testing.T) {
			n := newNode(t)
			n.start(policyYAML, failOpen)
			n.decider.Stop()
			// New tuples of the selected pod get the fail mode; pods no
			// policy selects are untouched either way.
			n.check(
				probe{"c", "b", netsim.TCP, false, failOpen},
				probe{"a", "b", netsim.UDP, false, failOpen},
				probe{"a", "c", netsim.TCP, false, true},
			)
			if got := n.metric("tollgate_fail_mode_verdicts_total"); got < 2 {
				t.Errorf("fail-mode verdicts counted: %v, want at least the 2 probes of selected pods", got)
			}
			// The decider comes back after a while (long enough for the
			// queuer's reconnect backoff to reach its ceiling): verdicts are
			// right again within 1s of it becoming healthy. The probe is the
			// tuple whose verdict the fail mode gets wrong: fail-open lets
			// c -> b through although policy denies it, fail-closed drops
			// a -> b although policy allows it. Fail-mode verdicts are never
			// cached, so each probe asks again.
			time.Sleep(3 * time.Second)
			n.startDecider()
			healthy := time.Now()
			src, want := "a", true
			if failOpen {
				src, want = "c", false
			}
			var recovered time.Duration
			for time.Since(healthy) < 5*time.Second && recovered == 0 {
				ok, err := netsim.Probe(n.pods[src], n.pods["b"].IPv4, 80, netsim.TCP, 100*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				if ok == want {
					recovered = time.Since(healthy)
				}
			}
			if recovered == 0 {
				t.Fatalf("%s -> b still gets the fail-mode verdict 5s after the decider restarted", src)
			}
			t.Logf("correct verdicts %v after the restarted decider became healthy", recovered.Round(time.Millisecond))
			if recovered > time.Second {
				t.Errorf("verdicts were correct again only %v after the decider restarted, want within 1s", recovered)
			}
			n.check(probe{"c", "b", netsim.SCTP, false, false}, probe{"a", "b", netsim.TCP, true, true})
		})
	}
}

// TestFailClosedSurvivesQueuerExit: in fail-closed mode the table stays when
// the queuer exits, so the selected pod stays protected.
func TestFailClosedSurvivesQueuerExit(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, false)
	n.queuer.Stop()
	n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "c", netsim.TCP, false, true})
	if _, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate"); err != nil {
		t.Errorf("fail-closed queuer removed its table on exit: %v", err)
	}
}

// TestFailClosedQueuerKilledAndRestarted: SIGKILL the fail-closed queuer and
// start a new one while a denied connection is attempted over and over: it
// never gets through, and allowed connections work again after the restart.
func TestFailClosedQueuerKilledAndRestarted(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, false)
	n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.TCP, false, false})

	var leaked atomic.Int64
	stopProbing := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for port := uint16(80); ; port = 161 - port { // alternate 80 and 81
			select {
			case <-stopProbing:
				return
			default:
			}
			if ok, _ := netsim.Probe(n.pods["c"], n.pods["b"].IPv4, port, netsim.TCP, 300*time.Millisecond); ok {
				leaked.Add(1)
			}
		}
	})
	n.queuer.Kill()
	time.Sleep(500 * time.Millisecond)
	n.startQueuer(false)
	n.eventually("allowed traffic after the restart", 10*time.Second, func() bool {
		ok, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 80, netsim.TCP, 500*time.Millisecond)
		return ok
	})
	time.Sleep(500 * time.Millisecond)
	close(stopProbing)
	wg.Wait()
	if leaked.Load() > 0 {
		t.Errorf("%d denied connections got through while the queuer was killed and restarted", leaked.Load())
	}
}
