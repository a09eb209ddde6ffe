package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tollgate/tollgate/test/bench"
	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/netsim"
)

// Every variant gets a node of its own, all alike: servers (app a0),
// clients (app a1) and one "other" pod (app a2), all in namespace bench-0.
// The enforcers stay up for a whole phase, so that the variants' timed runs
// can alternate every second or so, close in time and so under the same
// load from the rest of the machine.
const (
	maxClients = 8
	nServers   = 4
	// namespaces of the synthetic cluster; background pods and policies
	// are spread over them.
	namespaces = 10
	// bgNodes carry the background pods.
	bgNodes = 10
	// servePort is where servers listen; denyPort is served too, but no
	// policy admits the clients there.
	servePort = 8080
	denyPort  = 9090
	// New-tuple ports: a redirect in each server pod sends
	// firstNewPort..lastNewPort to servePort. The first few are the
	// verdict probes'.
	firstNewPort = 10000
	lastNewPort  = 65000
	probePorts   = 10
)

// node is one variant's node, its pods and its enforcer.
type node struct {
	variant string
	node    bench.Node
	servers []*netsim.Pod
	clients []*netsim.Pod
	other   *netsim.Pod
	fwd     *bench.Forwarder
	enf     bench.Enforcer
	// next hands out fresh new-tuple ports per client and server.
	next [maxClients][nServers]atomic.Int32
}

// env is the cluster and the nodes.
type env struct {
	cfg     config
	cluster *cluster.Cluster
	topo    *netsim.Topology
	loader  *bench.Loader
	bins    bench.Binaries
	nodes   []*node
	// policies is how many NetworkPolicies exist.
	policies int
}

// setup builds one node per variant with its pods and servers, and the
// cluster objects (without policies).
func setup(ctx context.Context, e *env, work string) error {
	var nss []*corev1.Namespace
	for i := range namespaces {
		nss = append(nss, bench.Namespace(i))
	}
	if err := e.loader.Namespaces(ctx, nss); err != nil {
		return err
	}
	var objs []bench.PodWithIPs
	for k, v := range e.cfg.variants {
		n, podObjs, err := addNode(ctx, e, k, v, work)
		if err != nil {
			return err
		}
		e.nodes = append(e.nodes, n)
		objs = append(objs, podObjs...)
	}
	for i := range bgNodes {
		if _, err := e.cluster.CreateNode(ctx, fmt.Sprintf("bg-node-%d", i), nil, []string{fmt.Sprintf("172.31.0.%d", i+1)}); err != nil {
			return err
		}
	}
	for i := range e.cfg.bgPods {
		objs = append(objs, bench.BackgroundPod(i, namespaces, fmt.Sprintf("bg-node-%d", i%bgNodes)))
	}
	return e.loader.Pods(ctx, objs)
}

// addNode builds variant v's node (number k) and returns its pod objects.
func addNode(ctx context.Context, e *env, k int, v, work string) (*node, []bench.PodWithIPs, error) {
	name := "dp-" + v
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(k), 0}), 24)
	sn, err := e.topo.AddNode(name, cidr, netip.MustParsePrefix(fmt.Sprintf("fd00:77:%x::/64", k)))
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(work, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	n := &node{variant: v, node: bench.Node{NS: sn.NS, Name: name, Kubeconfig: e.cluster.Kubeconfig(), WorkDir: dir}}
	if n.fwd, err = bench.Forward(sn.NS, "127.0.0.1:6443", e.cluster.APIServerAddr()); err != nil {
		return nil, nil, err
	}
	if n.node.NSKubeconfig, err = e.cluster.WriteAdminKubeconfigVia(n.fwd.Addr()); err != nil {
		return n, nil, err
	}
	// Short conntrack timeouts for closed connections, so that thousands
	// of connections a second do not fill the machine-wide conntrack
	// table, which other namespaces share.
	if err := quickConntrack(sn.NS); err != nil {
		return n, nil, err
	}
	type podDef struct {
		name   string
		host   byte
		labels map[string]string
	}
	var defs []podDef
	for i := range nServers {
		defs = append(defs, podDef{fmt.Sprintf("srv-%d", i), byte(10 + i), map[string]string{"app": "a0", "role": "server"}})
	}
	for i := range maxClients {
		defs = append(defs, podDef{fmt.Sprintf("cli-%d", i), byte(20 + i), map[string]string{"app": "a1", "role": "client"}})
	}
	defs = append(defs, podDef{"other", 40, map[string]string{"app": "a2", "role": "other"}})
	var objs []bench.PodWithIPs
	for _, d := range defs {
		ip4 := netip.AddrFrom4([4]byte{10, 77, byte(k), d.host})
		ip6 := netip.MustParseAddr(fmt.Sprintf("fd00:77:%x::%x", k, d.host))
		p, err := e.topo.AddPod(sn, fmt.Sprintf("%s-%s", v, d.name), ip4, ip6)
		if err != nil {
			return n, nil, err
		}
		switch d.labels["role"] {
		case "server":
			n.servers = append(n.servers, p)
			if err := serve(e, p, dir); err != nil {
				return n, nil, err
			}
		case "client":
			n.clients = append(n.clients, p)
		default:
			n.other = p
		}
		objs = append(objs, bench.PodWithIPs{
			Pod: bench.Pod(bench.NamespaceName(0), name+"-"+d.name, name, d.labels),
			IPs: []string{ip4.String(), ip6.String()},
		})
	}
	if _, err := e.cluster.CreateNode(ctx, name, nil, []string{sn.IPv4.String(), sn.IPv6.String()}); err != nil {
		return n, nil, err
	}
	n.enf = e.enforcer(n)
	return n, objs, nil
}

// quickConntrack shortens conntrack's timeouts of closed connections in ns.
func quickConntrack(ns string) error {
	out, err := netsim.Exec(ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_close=1",
		"net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")
	if err != nil {
		return fmt.Errorf("conntrack timeouts in %s: %w: %s", ns, err, out)
	}
	return nil
}

// serve starts a server pod's listeners and the redirect of the new-tuple
// ports to servePort.
func serve(e *env, p *netsim.Pod, dir string) error {
	for _, port := range []uint16{servePort, denyPort} {
		if err := e.topo.ServeTCP(p, port); err != nil {
			return err
		}
	}
	redirect := fmt.Sprintf(`table ip bench-redirect {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport %d-%d redirect to :%d
	}
}
`, firstNewPort, lastNewPort, servePort)
	if err := bench.ApplyNFT(p.NS, dir, "redirect-"+p.Name, redirect); err != nil {
		return err
	}
	return quickConntrack(p.NS)
}

// allowClients is the policy that admits the clients to the servers on
// servePort and the new-tuple ports, and nobody else.
func allowClients() *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	serve, first := intstr.FromInt32(servePort), intstr.FromInt32(firstNewPort)
	end := int32(lastNewPort)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: bench.NamespaceName(0), Name: "allow-clients"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a0"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{
					{Protocol: &tcp, Port: &serve},
					{Protocol: &tcp, Port: &first, EndPort: &end},
				},
			}},
		},
	}
}

// growPolicies creates policies until there are want: first allow-clients,
// then background policies 1.. .
func growPolicies(ctx context.Context, e *env, want int) error {
	var nps []*networkingv1.NetworkPolicy
	for k := e.policies; k < want; k++ {
		if k == 0 {
			nps = append(nps, allowClients())
			continue
		}
		nps = append(nps, bench.BackgroundPolicy(k, namespaces))
	}
	if err := e.loader.Policies(ctx, nps); err != nil {
		return err
	}
	e.policies = want
	return nil
}

// enforcer builds the variant of node n.
func (e *env) enforcer(n *node) bench.Enforcer {
	switch n.variant {
	case "accept-all":
		var selected []netip.Addr
		for _, s := range n.servers {
			selected = append(selected, s.IPv4)
		}
		return &bench.AcceptAll{Node: n.node, Bin: e.bins, Selected: selected, Queues: runtime.NumCPU()}
	case "tollgate":
		return &bench.Tollgate{Node: n.node, Bin: e.bins}
	case "tollgate-exact":
		return &bench.Tollgate{Node: n.node, Bin: e.bins, Label: n.variant, QueuerArgs: []string{"--cache-port-ranges=false"}}
	case exact1CPUVariant:
		// Both processes on the machine's last CPU.
		return &bench.Tollgate{Node: n.node, Bin: e.bins, Label: n.variant, QueuerArgs: []string{"--cache-port-ranges=false"},
			CPUs: strconv.Itoa(runtime.NumCPU() - 1)}
	case "knp-standard":
		return &bench.KNP{Node: n.node, Command: "standard", Bin: e.bins.KNPStandard}
	case "knp-npa-v1alpha2":
		return &bench.KNP{Node: n.node, Command: "npa-v1alpha2", Bin: e.bins.KNPNPA}
	}
	return bench.None{}
}

// resetPorts makes every new-tuple port fresh again (a new enforcer run).
func (n *node) resetPorts() {
	for c := range n.next {
		for s := range n.next[c] {
			n.next[c][s].Store(firstNewPort + probePorts)
		}
	}
}

// nextPort returns a port client c has not used towards server s since the
// enforcer started, or 0 when none is left.
func (n *node) nextPort(c, s int) uint16 {
	p := n.next[c][s].Add(1) - 1
	if p > lastNewPort {
		return 0
	}
	return uint16(p)
}
