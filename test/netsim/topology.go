package netsim

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"testing"

	"github.com/tollgate/tollgate/internal/testenv"
)

// Gateway addresses on the node end of every pod's veth pair.
var (
	gatewayV4 = netip.MustParseAddr("169.254.1.1")
	gatewayV6 = netip.MustParseAddr("fe80::1")
)

// validName restricts node and pod names so they fit namespace names.
var validName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Topology is a set of simulated nodes and pods. Its namespace names carry a
// random suffix so parallel tests never collide. Close removes everything.
type Topology struct {
	name string

	mu         sync.Mutex
	nodes      map[string]*Node
	pods       map[string]*Pod
	namespaces []string
	closers    []io.Closer
	sctp       map[string]*sctpResponder // by namespace
	closed     bool
}

// Node is a simulated node: a network namespace that routes for its pods.
type Node struct {
	// Name is the node's name as given to AddNode.
	Name string
	// NS is the name of its network namespace.
	NS string
	// PodCIDRv4 and PodCIDRv6 are routed to this node by its peers.
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// IPv4 and IPv6 are the node IPs, on the node's loopback device and
	// reachable from its pods and from connected nodes.
	IPv4, IPv6 netip.Addr

	ifaces     int // interfaces created, to name the next one
	dnatTable  bool
	neighbours []*Node
}

// Pod is a simulated pod: a network namespace behind its node.
type Pod struct {
	// Name is the pod's name as given to AddPod.
	Name string
	// Node is the node the pod runs on.
	Node *Node
	// NS is the name of its network namespace.
	NS string
	// IPv4 and IPv6 are the pod's addresses on its eth0.
	IPv4, IPv6 netip.Addr
	// HostVeth is the name of the node end of the pod's veth pair.
	HostVeth string
}

// Host is a Pod or a Node: something with a network namespace that can run
// servers and send probes.
type Host interface {
	// Netns is the name of the host's network namespace.
	Netns() string
	// HostName is the pod's or node's name.
	HostName() string
}

// Local returns a Host for the calling process's own network namespace,
// answering servers with name: a program that runs inside a pod (a real one,
// started by a kubelet) serves and probes with it.
func Local(name string) Host { return localHost(name) }

// localHost is the process's own namespace.
type localHost string

// Netns is empty: the process's own namespace.
func (localHost) Netns() string { return "" }

// HostName is the name servers answer with.
func (h localHost) HostName() string { return string(h) }

// Netns is the name of the pod's network namespace.
func (p *Pod) Netns() string { return p.NS }

// HostName is the pod's name.
func (p *Pod) HostName() string { return p.Name }

// Netns is the name of the node's network namespace.
func (n *Node) Netns() string { return n.NS }

// HostName is the node's name.
func (n *Node) HostName() string { return n.Name }

// New returns an empty topology whose namespaces are named
// "<prefix>-<random>-n-<node>" and "<prefix>-<random>-p-<pod>".
func New(prefix string) (*Topology, error) {
	if !validName.MatchString(prefix) || len(prefix) > 12 {
		return nil, fmt.Errorf("invalid topology prefix %q", prefix)
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("generate topology name: %w", err)
	}
	return &Topology{
		name:  prefix + "-" + hex.EncodeToString(suffix),
		nodes: map[string]*Node{},
		pods:  map[string]*Pod{},
		sctp:  map[string]*sctpResponder{},
	}, nil
}

// NewForTest returns a topology closed by t.Cleanup. It skips t when not
// running as root or when the ip or nft commands are missing (testenv.Skip:
// a failure under CI=true).
func NewForTest(t testing.TB, prefix string) *Topology {
	t.Helper()
	testenv.NeedRoot(t, "for network namespaces")
	testenv.LookPath(t, "ip")
	testenv.LookPath(t, "nft")
	topo, err := New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("close topology: %v", err)
		}
	})
	return topo
}

// Name is the topology's unique name, the prefix of all its namespaces.
func (t *Topology) Name() string { return t.name }

// Namespaces lists the network namespaces the topology has created.
func (t *Topology) Namespaces() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.namespaces)
}

// Node returns the node called name, or nil.
func (t *Topology) Node(name string) *Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nodes[name]
}

// Pod returns the pod called name, or nil.
func (t *Topology) Pod(name string) *Pod {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pods[name]
}

// newNetns creates and records a namespace so Close removes it.
func (t *Topology) newNetns(ns string) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return errors.New("topology is closed")
	}
	t.namespaces = append(t.namespaces, ns)
	t.mu.Unlock()
	return AddNetns(ns)
}

// addCloser records something Close must close.
func (t *Topology) addCloser(c io.Closer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closers = append(t.closers, c)
}

// AddNode creates a node namespace with forwarding on. Node i (counting from
// 1) gets the node IPs 172.30.0.i and fd00:30::i.
func (t *Topology) AddNode(name string, podCIDRv4, podCIDRv6 netip.Prefix) (*Node, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid node name %q", name)
	}
	if !podCIDRv4.Addr().Is4() || !podCIDRv6.Addr().Is6() {
		return nil, fmt.Errorf("node %s: want an IPv4 and an IPv6 pod CIDR, got %s and %s", name, podCIDRv4, podCIDRv6)
	}
	t.mu.Lock()
	if _, ok := t.nodes[name]; ok {
		t.mu.Unlock()
		return nil, fmt.Errorf("node %s already exists", name)
	}
	index := len(t.nodes) + 1
	if index > 254 {
		t.mu.Unlock()
		return nil, errors.New("too many nodes")
	}
	n := &Node{
		Name:      name,
		NS:        t.name + "-n-" + name,
		PodCIDRv4: podCIDRv4.Masked(),
		PodCIDRv6: podCIDRv6.Masked(),
		IPv4:      netip.AddrFrom4([4]byte{172, 30, 0, byte(index)}),
		IPv6:      netip.MustParseAddr(fmt.Sprintf("fd00:30::%x", index)),
	}
	t.nodes[name] = n
	t.mu.Unlock()

	if err := t.newNetns(n.NS); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	err := SetSysctls(n.NS, map[string]string{
		"net/ipv4/ip_forward":              "1",
		"net/ipv6/conf/all/forwarding":     "1",
		"net/ipv6/conf/default/forwarding": "1",
	})
	if err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	err = IPBatch(n.NS,
		"link set lo up",
		fmt.Sprintf("addr add %s/32 dev lo", n.IPv4),
		fmt.Sprintf("addr add %s/128 dev lo nodad", n.IPv6),
	)
	if err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	return n, nil
}

// nextIface returns a new interface name on n, e.g. "p3" or "l1".
func (t *Topology) nextIface(n *Node, kind string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	n.ifaces++
	return fmt.Sprintf("%s%d", kind, n.ifaces)
}

// AddPod creates a pod namespace on node with the given addresses, which
// should lie in the node's pod CIDRs so other nodes route them here.
func (t *Topology) AddPod(node *Node, name string, ipv4, ipv6 netip.Addr) (*Pod, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid pod name %q", name)
	}
	if !ipv4.Is4() || !ipv6.Is6() {
		return nil, fmt.Errorf("pod %s: want an IPv4 and an IPv6 address, got %s and %s", name, ipv4, ipv6)
	}
	t.mu.Lock()
	if _, ok := t.pods[name]; ok {
		t.mu.Unlock()
		return nil, fmt.Errorf("pod %s already exists", name)
	}
	p := &Pod{Name: name, Node: node, NS: t.name + "-p-" + name, IPv4: ipv4, IPv6: ipv6}
	t.pods[name] = p
	t.mu.Unlock()
	p.HostVeth = t.nextIface(node, "p")

	if err := t.newNetns(p.NS); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	err := IPBatch(node.NS,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.HostVeth, p.NS),
		fmt.Sprintf("addr add %s/32 dev %s scope link", gatewayV4, p.HostVeth),
		fmt.Sprintf("addr add %s/64 dev %s nodad", gatewayV6, p.HostVeth),
		fmt.Sprintf("link set %s up", p.HostVeth),
		fmt.Sprintf("route add %s/32 dev %s src %s", ipv4, p.HostVeth, node.IPv4),
		fmt.Sprintf("route add %s/128 dev %s src %s", ipv6, p.HostVeth, node.IPv6),
	)
	if err != nil {
		return nil, fmt.Errorf("add pod %s: node side: %w", name, err)
	}
	err = IPBatch(p.NS,
		"link set lo up",
		fmt.Sprintf("addr add %s/32 dev eth0", ipv4),
		fmt.Sprintf("addr add %s/128 dev eth0 nodad", ipv6),
		"link set eth0 up",
		fmt.Sprintf("route add %s dev eth0 scope link", gatewayV4),
		fmt.Sprintf("route add default via %s dev eth0", gatewayV4),
		fmt.Sprintf("route add default via %s dev eth0", gatewayV6),
	)
	if err != nil {
		return nil, fmt.Errorf("add pod %s: pod side: %w", name, err)
	}
	return p, nil
}

// ConnectNodes joins two nodes with a veth link and routes each node's IPs
// and pod CIDRs to the other through it (IPv6 via link-local next hops).
func (t *Topology) ConnectNodes(a, b *Node) error {
	if a == b {
		return fmt.Errorf("cannot connect node %s to itself", a.Name)
	}
	t.mu.Lock()
	connected := slices.Contains(a.neighbours, b)
	if !connected {
		a.neighbours = append(a.neighbours, b)
		b.neighbours = append(b.neighbours, a)
	}
	t.mu.Unlock()
	if connected {
		return fmt.Errorf("nodes %s and %s are already connected", a.Name, b.Name)
	}
	ifA, ifB := t.nextIface(a, "l"), t.nextIface(b, "l")
	const llA, llB = "fe80::a", "fe80::b"
	if err := IPBatch(a.NS, fmt.Sprintf("link add %s type veth peer name %s netns %s", ifA, ifB, b.NS)); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	side := func(self, peer *Node, iface, selfLL, peerLL string) error {
		return IPBatch(self.NS,
			fmt.Sprintf("addr add %s/64 dev %s nodad", selfLL, iface),
			fmt.Sprintf("link set %s up", iface),
			fmt.Sprintf("route add %s/32 dev %s", peer.IPv4, iface),
			fmt.Sprintf("route add %s via %s dev %s", peer.PodCIDRv4, peer.IPv4, iface),
			fmt.Sprintf("route add %s/128 via %s dev %s", peer.IPv6, peerLL, iface),
			fmt.Sprintf("route add %s via %s dev %s", peer.PodCIDRv6, peerLL, iface),
		)
	}
	if err := side(a, b, ifA, llA, llB); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	if err := side(b, a, ifB, llB, llA); err != nil {
		return fmt.Errorf("connect nodes %s and %s: %w", a.Name, b.Name, err)
	}
	return nil
}

// Close stops every server and deletes every namespace the topology created,
// killing processes left inside them. It is safe to call more than once.
func (t *Topology) Close() error {
	t.mu.Lock()
	t.closed = true
	closers, namespaces := t.closers, t.namespaces
	t.closers, t.namespaces = nil, nil
	t.mu.Unlock()
	var errs []error
	for _, c := range closers {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		if err := DeleteNetns(namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
