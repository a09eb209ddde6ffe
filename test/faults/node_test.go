package faults

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/netsim"
)

// queuerMetrics is where every test queuer serves its metrics, inside its
// node's network namespace.
const queuerMetrics = "127.0.0.1:9080"

// simNode is one simulated node "node-1" with pods named after their
// position: pod i has the address <prefix>.<i+1>.
type simNode struct {
	t    *testing.T
	topo *netsim.Topology
	node *netsim.Node
	pods map[string]*netsim.Pod
}

// newSimNode builds node-1 with pods in subnet (a /24 IPv4 prefix such as
// "10.97.1"); each pod serves TCP on ports.
func newSimNode(t *testing.T, topoPrefix, subnet string, pods []string, ports ...uint16) *simNode {
	t.Helper()
	n := &simNode{t: t, topo: netsim.NewForTest(t, topoPrefix), pods: map[string]*netsim.Pod{}}
	var err error
	n.node, err = n.topo.AddNode("node-1", netip.MustParsePrefix(subnet+".0/24"), netip.MustParsePrefix("fd00:97::/64"))
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range pods {
		p, err := n.topo.AddPod(n.node, name, netip.MustParseAddr(fmt.Sprintf("%s.%d", subnet, i+1)), netip.MustParseAddr(fmt.Sprintf("fd00:97::%d", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		for _, port := range ports {
			if err := n.topo.ServeTCP(p, port); err != nil {
				t.Fatal(err)
			}
		}
		n.pods[name] = p
	}
	return n
}

// startQueuer runs the queuer in the node's namespace with the decider
// socket and extra flags, and waits until it has installed its table and
// selected ip.
func (n *simNode) startQueuer(name, socket, selectedIP string, failOpen bool, extra ...string) *proc.Proc {
	n.t.Helper()
	args := []string{"netns", "exec", n.node.Netns(), bin("queuer"), "--decider-socket", socket, "--node-name", "node-1",
		"--fail-open=" + strconv.FormatBool(failOpen), "--metrics-bind-address", queuerMetrics}
	p := proc.ForTest(n.t, name, exec.Command("ip", append(args, extra...)...))
	eventually(n.t, "queuer selected "+selectedIP, 20*time.Second, func() bool {
		if p.Exited() {
			n.t.Fatal("the queuer exited")
		}
		return n.selected(selectedIP)
	})
	return p
}

// selected reports whether the queuer's table holds ip in its selected set.
func (n *simNode) selected(ip string) bool {
	out, err := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "selected4")
	return err == nil && strings.Contains(out, ip)
}

// metrics scrapes the node's queuer.
func (n *simNode) metrics() map[string]float64 {
	n.t.Helper()
	m, err := scrape(n.node.Netns(), queuerMetrics)
	if err != nil {
		n.t.Fatal(err)
	}
	return m
}

// passed reports whether a TCP connection from pod from to pod to's port
// got through the filter: the server answered, or the destination reset it
// (no listener). A timeout means the SYNs were dropped.
func (n *simNode) passed(from, to string, port uint16, timeout time.Duration) bool {
	n.t.Helper()
	r, err := netsim.ProbeDetail(n.pods[from], n.pods[to].IPv4, port, netsim.TCP, timeout)
	if err != nil {
		n.t.Fatalf("probe %s -> %s:%d: %v", from, to, port, err)
	}
	return r.Reachable || strings.HasSuffix(r.Reason, "connection refused")
}

// xtQueueRulePackets returns the packet counter of the queuer's iptables
// NFQUEUE rule (queue mode xt): every packet sent towards the queue,
// including those the kernel accepted or dropped because the queue was
// full. ok is false when the rule cannot be read (e.g. queue mode nft).
func (n *simNode) xtQueueRulePackets() (packets float64, ok bool) {
	out, err := netsim.Exec(n.node.Netns(), "iptables", "-w", "-t", "mangle", "-L", "TOLLGATE", "-v", "-x", "-n")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "NFQUEUE" {
			v, err := strconv.ParseFloat(f[0], 64)
			return v, err == nil
		}
	}
	return 0, false
}
