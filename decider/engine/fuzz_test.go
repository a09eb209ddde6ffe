package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// gen draws policy pieces from a seeded generator. Values come from small
// sets so that selectors, ports and CIDRs overlap with the test cluster.
type gen struct{ r *rand.Rand }

func (g gen) pick(s ...string) string { return s[g.r.IntN(len(s))] }

// rare is true now and then: for the odd shapes the API rejects but the
// engine must still handle, often enough to be fuzzed, rarely enough that
// their fail-closed rules do not hide the rest.
func (g gen) rare() bool { return g.r.IntN(32) == 0 }

func (g gen) selector() *metav1.LabelSelector {
	switch g.r.IntN(5) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"pod": g.pick("a", "b", "c")}}
	case 2:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"ns": g.pick("x", "y", "z")}}
	case 3:
		op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[g.r.IntN(4)]
		req := metav1.LabelSelectorRequirement{Key: g.pick("pod", "ns", "other"), Operator: op}
		if op == metav1.LabelSelectorOpIn || op == metav1.LabelSelectorOpNotIn {
			req.Values = []string{g.pick("a", "b", "x", "y")}
		}
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{req}}
	}
	return nil
}

func (g gen) cidr() string {
	return g.pick("10.0.0.0/16", "10.0.1.0/24", "10.0.2.2/32", "0.0.0.0/0", "fd00::/64", "::/0", "192.168.0.0/24")
}

func (g gen) protocol() corev1.Protocol {
	return []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[g.r.IntN(3)]
}

func (g gen) npPeer() networkingv1.NetworkPolicyPeer {
	if g.r.IntN(4) == 0 {
		b := &networkingv1.IPBlock{CIDR: g.cidr()}
		if g.r.IntN(2) == 0 {
			b.Except = []string{g.pick("10.0.1.0/24", "10.0.2.2/32", "fd00::1:0/112")}
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: b}
	}
	return networkingv1.NetworkPolicyPeer{PodSelector: g.selector(), NamespaceSelector: g.selector()}
}

func (g gen) npPorts() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range g.r.IntN(3) {
		proto := g.protocol()
		p := networkingv1.NetworkPolicyPort{Protocol: &proto}
		switch g.r.IntN(4) {
		case 0:
			v := intstr.FromInt32(int32(79 + g.r.IntN(4)))
			p.Port = &v
		case 1:
			v := intstr.FromInt32(80)
			end := int32(81 + g.r.IntN(2))
			p.Port, p.EndPort = &v, &end
		case 2:
			v := intstr.FromString(g.pick("serve-80-tcp", "serve-81-udp", "serve-80-sctp", "nope"))
			p.Port = &v
		}
		out = append(out, p)
	}
	return out
}

func (g gen) networkPolicy(i int) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: g.pick("x", "y", "z"), Name: fmt.Sprintf("np-%d", i)}}
	if s := g.selector(); s != nil {
		np.Spec.PodSelector = *s
	}
	for range g.r.IntN(3) {
		r := networkingv1.NetworkPolicyIngressRule{Ports: g.npPorts()}
		for range g.r.IntN(3) {
			r.From = append(r.From, g.npPeer())
		}
		np.Spec.Ingress = append(np.Spec.Ingress, r)
	}
	for range g.r.IntN(3) {
		r := networkingv1.NetworkPolicyEgressRule{Ports: g.npPorts()}
		for range g.r.IntN(3) {
			r.To = append(r.To, g.npPeer())
		}
		np.Spec.Egress = append(np.Spec.Egress, r)
	}
	switch g.r.IntN(3) {
	case 0:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 1:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	return np
}

func (g gen) anpPorts() *[]v1alpha1.AdminNetworkPolicyPort {
	if g.r.IntN(2) == 0 {
		return nil
	}
	var out []v1alpha1.AdminNetworkPolicyPort
	for range 1 + g.r.IntN(2) {
		switch g.r.IntN(3) {
		case 0:
			out = append(out, v1alpha1.AdminNetworkPolicyPort{PortNumber: &v1alpha1.Port{Protocol: g.protocol(), Port: int32(80 + g.r.IntN(2))}})
		case 1:
			name := g.pick("serve-80-tcp", "serve-81-udp")
			out = append(out, v1alpha1.AdminNetworkPolicyPort{NamedPort: &name})
		case 2:
			out = append(out, v1alpha1.AdminNetworkPolicyPort{PortRange: &v1alpha1.PortRange{Protocol: g.protocol(), Start: 80, End: 81}})
		}
	}
	return &out
}

// namespacedPod draws a pods subject or peer.
func (g gen) namespacedPod() *v1alpha1.NamespacedPod {
	p := &v1alpha1.NamespacedPod{}
	if s := g.selector(); s != nil {
		p.NamespaceSelector = *s
	}
	if s := g.selector(); s != nil {
		p.PodSelector = *s
	}
	return p
}

// nodeSelector draws a selector over the test nodes' labels.
func (g gen) nodeSelector() *metav1.LabelSelector {
	switch g.r.IntN(3) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"zone": g.pick("a", "b")}}
	}
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "zone", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"a"}}}}
}

// subject draws the subject of a cluster-scoped policy: namespaces or pods,
// and now and then neither or both, which the engine must ignore.
func (g gen) subject() (*metav1.LabelSelector, *v1alpha1.NamespacedPod) {
	if g.rare() {
		if g.r.IntN(2) == 0 {
			return nil, nil
		}
		return &metav1.LabelSelector{}, g.namespacedPod()
	}
	if g.r.IntN(2) == 0 {
		if s := g.selector(); s != nil {
			return s, nil
		}
		return &metav1.LabelSelector{}, nil
	}
	return nil, g.namespacedPod()
}

// peer is one peer of a cluster-scoped rule, in the fields the kinds share.
type peer struct {
	namespaces *metav1.LabelSelector
	pods       *v1alpha1.NamespacedPod
	nodes      *metav1.LabelSelector
	networks   []string
	domains    []string
}

// peers draws one or two peers: namespaces or pods, and for egress also
// nodes, networks and (when domains) domain names. Now and then a peer sets
// no field or two, which the engine must fail closed on.
func (g gen) peers(egress, domains bool) []peer {
	var out []peer
	for range 1 + g.r.IntN(2) {
		var p peer
		kinds := 2
		if egress {
			kinds = 4
			if domains {
				kinds = 5
			}
		}
		switch k := g.r.IntN(kinds); {
		case g.rare():
			if g.r.IntN(2) == 0 { // two fields
				p.namespaces, p.pods = &metav1.LabelSelector{}, g.namespacedPod()
			} // else none
		case k == 0:
			p.namespaces = g.selector()
			if p.namespaces == nil {
				p.namespaces = &metav1.LabelSelector{}
			}
		case k == 1:
			p.pods = g.namespacedPod()
		case k == 2:
			p.nodes = g.nodeSelector()
		case k == 3:
			p.networks = []string{g.cidr()}
			if g.rare() {
				p.networks = append(p.networks, "not-a-cidr")
			}
		case k == 4:
			p.domains = []string{"example.com"}
		}
		out = append(out, p)
	}
	return out
}

func cidrList(nets []string) []v1alpha1.CIDR {
	var out []v1alpha1.CIDR
	for _, n := range nets {
		out = append(out, v1alpha1.CIDR(n))
	}
	return out
}

// action draws one of actions, or now and then one no API version knows.
func action[T ~string](g gen, actions ...T) T {
	if g.rare() {
		return "Bogus"
	}
	return actions[g.r.IntN(len(actions))]
}

func (g gen) anp(i int) *v1alpha1.AdminNetworkPolicy {
	p := &v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("anp-%d", i)}}
	p.Spec.Priority = int32(g.r.IntN(5))
	p.Spec.Subject.Namespaces, p.Spec.Subject.Pods = g.subject()
	actions := []v1alpha1.AdminNetworkPolicyRuleAction{v1alpha1.AdminNetworkPolicyRuleActionAllow, v1alpha1.AdminNetworkPolicyRuleActionDeny, v1alpha1.AdminNetworkPolicyRuleActionPass}
	for range g.r.IntN(3) {
		r := v1alpha1.AdminNetworkPolicyIngressRule{Action: action(g, actions...), Ports: g.anpPorts()}
		for _, pe := range g.peers(false, false) {
			r.From = append(r.From, v1alpha1.AdminNetworkPolicyIngressPeer{Namespaces: pe.namespaces, Pods: pe.pods})
		}
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	for range g.r.IntN(3) {
		r := v1alpha1.AdminNetworkPolicyEgressRule{Action: action(g, actions...), Ports: g.anpPorts()}
		for _, pe := range g.peers(true, true) {
			to := v1alpha1.AdminNetworkPolicyEgressPeer{Namespaces: pe.namespaces, Pods: pe.pods, Nodes: pe.nodes, Networks: cidrList(pe.networks)}
			for _, d := range pe.domains {
				to.DomainNames = append(to.DomainNames, v1alpha1.DomainName(d))
			}
			r.To = append(r.To, to)
		}
		p.Spec.Egress = append(p.Spec.Egress, r)
	}
	return p
}

// banp draws the BaselineAdminNetworkPolicy, now and then under a name
// other than the singleton's, which the engine must ignore.
func (g gen) banp() *v1alpha1.BaselineAdminNetworkPolicy {
	p := &v1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if g.r.IntN(8) == 0 {
		p.Name = "not-default"
	}
	p.Spec.Subject.Namespaces, p.Spec.Subject.Pods = g.subject()
	actions := []v1alpha1.BaselineAdminNetworkPolicyRuleAction{v1alpha1.BaselineAdminNetworkPolicyRuleActionAllow, v1alpha1.BaselineAdminNetworkPolicyRuleActionDeny}
	for range g.r.IntN(3) {
		r := v1alpha1.BaselineAdminNetworkPolicyIngressRule{Action: action(g, actions...), Ports: g.anpPorts()}
		for _, pe := range g.peers(false, false) {
			r.From = append(r.From, v1alpha1.AdminNetworkPolicyIngressPeer{Namespaces: pe.namespaces, Pods: pe.pods})
		}
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	for range g.r.IntN(3) {
		r := v1alpha1.BaselineAdminNetworkPolicyEgressRule{Action: action(g, actions...), Ports: g.anpPorts()}
		for _, pe := range g.peers(true, false) {
			r.To = append(r.To, v1alpha1.BaselineAdminNetworkPolicyEgressPeer{Namespaces: pe.namespaces, Pods: pe.pods, Nodes: pe.nodes, Networks: cidrList(pe.networks)})
		}
		p.Spec.Egress = append(p.Spec.Egress, r)
	}
	return p
}

// cnpProtocols draws a ClusterNetworkPolicy protocols list: none (every
// port), or entries by protocol with a number, a range or no port, or by
// named port; now and then an entry the engine must fail closed on.
func (g gen) cnpProtocols() []v1alpha2.ClusterNetworkPolicyProtocol {
	var out []v1alpha2.ClusterNetworkPolicyProtocol
	for range g.r.IntN(3) {
		var port *v1alpha2.Port
		switch g.r.IntN(4) {
		case 0:
			port = &v1alpha2.Port{Number: int32(79 + g.r.IntN(3))}
		case 1:
			port = &v1alpha2.Port{Range: &v1alpha2.PortRange{Start: 80, End: int32(80 + g.r.IntN(2))}}
		case 2:
			if g.rare() {
				port = &v1alpha2.Port{} // neither number nor range
			}
		}
		var e v1alpha2.ClusterNetworkPolicyProtocol
		if g.rare() { // no field, or two
			if g.r.IntN(2) == 0 {
				e.TCP, e.DestinationNamedPort = &v1alpha2.ClusterNetworkPolicyProtocolTCP{}, "serve-80-tcp"
			}
			out = append(out, e)
			continue
		}
		switch g.r.IntN(4) {
		case 0:
			e.TCP = &v1alpha2.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
		case 1:
			e.UDP = &v1alpha2.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
		case 2:
			e.SCTP = &v1alpha2.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
		case 3:
			e.DestinationNamedPort = g.pick("serve-80-tcp", "serve-81-udp", "serve-80-sctp", "nope")
		}
		out = append(out, e)
	}
	return out
}

func cnpPodsOf(p *v1alpha1.NamespacedPod) *v1alpha2.NamespacedPod {
	if p == nil {
		return nil
	}
	return &v1alpha2.NamespacedPod{NamespaceSelector: p.NamespaceSelector, PodSelector: p.PodSelector}
}

func (g gen) cnp(i int) *v1alpha2.ClusterNetworkPolicy {
	p := &v1alpha2.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cnp-%d", i)}}
	p.Spec.Tier = []v1alpha2.Tier{v1alpha2.AdminTier, v1alpha2.BaselineTier}[g.r.IntN(2)]
	if g.rare() {
		p.Spec.Tier = "Middle"
	}
	p.Spec.Priority = int32(g.r.IntN(5))
	ns, pods := g.subject()
	p.Spec.Subject = v1alpha2.ClusterNetworkPolicySubject{Namespaces: ns, Pods: cnpPodsOf(pods)}
	actions := []v1alpha2.ClusterNetworkPolicyRuleAction{v1alpha2.ClusterNetworkPolicyRuleActionAccept, v1alpha2.ClusterNetworkPolicyRuleActionDeny, v1alpha2.ClusterNetworkPolicyRuleActionPass}
	for range g.r.IntN(3) {
		r := v1alpha2.ClusterNetworkPolicyIngressRule{Action: action(g, actions...), Protocols: g.cnpProtocols()}
		for _, pe := range g.peers(false, false) {
			r.From = append(r.From, v1alpha2.ClusterNetworkPolicyIngressPeer{Namespaces: pe.namespaces, Pods: cnpPodsOf(pe.pods)})
		}
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	for range g.r.IntN(3) {
		r := v1alpha2.ClusterNetworkPolicyEgressRule{Action: action(g, actions...), Protocols: g.cnpProtocols()}
		for _, pe := range g.peers(true, true) {
			to := v1alpha2.ClusterNetworkPolicyEgressPeer{Namespaces: pe.namespaces, Pods: cnpPodsOf(pe.pods), Nodes: pe.nodes}
			for _, n := range pe.networks {
				to.Networks = append(to.Networks, v1alpha2.CIDR(n))
			}
			for _, d := range pe.domains {
				to.DomainNames = append(to.DomainNames, v1alpha2.DomainName(d))
			}
			r.To = append(r.To, to)
		}
		p.Spec.Egress = append(p.Spec.Egress, r)
	}
	return p
}

// node draws a node: n1 or n2 with a zone label and an InternalIP from a
// small set (shared by both now and then), sometimes also an ExternalIP, a
// hostname address, or an address that is not an IP.
func (g gen) node(name string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": g.pick("a", "b")}}}
	add := func(t corev1.NodeAddressType, a string) {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: t, Address: a})
	}
	add(corev1.NodeInternalIP, g.pick(nodeIPs...))
	switch g.r.IntN(6) {
	case 0:
		add(corev1.NodeExternalIP, g.pick(nodeIPs...))
	case 1:
		add(corev1.NodeHostName, name)
	case 2:
		add(corev1.NodeInternalIP, "not-an-ip")
	case 3:
		add(corev1.NodeInternalIP, "fd00:ffff::"+name[1:])
	}
	return n
}

// nodeIPs are the addresses generated nodes take; allTuples probes them.
var nodeIPs = []string{"192.168.0.1", "192.168.0.2", "192.168.0.3"}

// Addresses no test pod has at first: pods may move to them.
const (
	spareIPv4 = "10.0.9.9"
	spareIPv6 = "fd00::9:9"
)

// odd adds one object the apiserver never serves but a caller might pass:
// a nil entry, a pod or NetworkPolicy without a namespace, a namespace
// without a name, a cluster-scoped policy carrying a namespace. The engine
// must ignore or fail closed on each, and never panic.
func (g gen) odd(in *Input) {
	switch g.r.IntN(8) {
	case 0:
		switch g.r.IntN(7) {
		case 0:
			in.Pods = append(in.Pods, nil)
		case 1:
			in.Namespaces = append(in.Namespaces, nil)
		case 2:
			in.Nodes = append(in.Nodes, nil)
		case 3:
			in.NetworkPolicies = append(in.NetworkPolicies, nil)
		case 4:
			in.AdminNetworkPolicies = append(in.AdminNetworkPolicies, nil)
		case 5:
			in.BaselineAdminNetworkPolicies = append(in.BaselineAdminNetworkPolicies, nil)
		case 6:
			in.ClusterNetworkPolicies = append(in.ClusterNetworkPolicies, nil)
		}
	case 1: // a pod without a namespace, on a spare IP or a live pod's
		ip := parseAddr(g.pick(spareIPv4, "10.0.1.1"))
		in.Pods = append(in.Pods, testPod("", g.pick("a", "stray"), ip))
	case 2:
		np := g.networkPolicy(90)
		np.Namespace = ""
		in.NetworkPolicies = append(in.NetworkPolicies, np)
	case 3:
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"ns": "x"}}})
	case 4:
		p := g.anp(0)
		p.Name, p.Namespace = "anp-odd", g.pick("x", "y")
		in.AdminNetworkPolicies = append(in.AdminNetworkPolicies, p)
	case 5:
		p := g.cnp(0)
		p.Name, p.Namespace = "cnp-odd", "x"
		in.ClusterNetworkPolicies = append(in.ClusterNetworkPolicies, p)
	case 6: // the singleton, carrying a namespace
		p := g.banp()
		p.Namespace = "z"
		in.BaselineAdminNetworkPolicies = []*v1alpha1.BaselineAdminNetworkPolicy{p}
	case 7: // a NetworkPolicy in a namespace no Namespace object declares
		np := g.networkPolicy(91)
		np.Namespace = "w"
		in.NetworkPolicies = append(in.NetworkPolicies, np)
	}
}

func genInput(seed uint64) Input {
	g := gen{rand.New(rand.NewPCG(seed, seed>>32))}
	in := testCluster()
	for i := range g.r.IntN(4) {
		in.NetworkPolicies = append(in.NetworkPolicies, g.networkPolicy(i))
	}
	for i := range g.r.IntN(3) {
		in.AdminNetworkPolicies = append(in.AdminNetworkPolicies, g.anp(i))
	}
	for i := range g.r.IntN(3) {
		in.ClusterNetworkPolicies = append(in.ClusterNetworkPolicies, g.cnp(i))
	}
	if g.r.IntN(2) == 0 {
		in.BaselineAdminNetworkPolicies = []*v1alpha1.BaselineAdminNetworkPolicy{g.banp()}
	}
	if g.r.IntN(2) == 0 {
		in.Nodes = append(in.Nodes, g.node("n2"))
	}
	if g.r.IntN(4) == 0 {
		g.odd(&in)
	}
	return in
}

// allTuples lists connections between every pair of test pods, the node
// addresses, the spare pod addresses and an outside address, over every
// protocol, on ports 80 and 81 and a few around them, and each address to itself through a
// service.
func allTuples() []Tuple {
	ips := append([]string{"8.8.8.8", spareIPv4, spareIPv6, "fd00:ffff::1", "fd00:ffff::2"}, nodeIPs...)
	var out []Tuple
	var addrs []Tuple
	for _, ns := range testNamespaces {
		for _, p := range testPods {
			addrs = append(addrs, Tuple{Src: podIP(ns, p, false)}, Tuple{Src: podIP(ns, p, true)})
		}
	}
	for _, ip := range ips {
		addrs = append(addrs, Tuple{Src: parseAddr(ip)})
	}
	for _, a := range addrs {
		for _, b := range addrs {
			if a.Src.Is4() != b.Src.Is4() {
				continue
			}
			for _, proto := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolSCTP, ProtocolICMP} {
				for _, port := range []uint16{80, 81, 1, 82, 4000} {
					out = append(out, Tuple{Src: a.Src, Dst: b.Src, Proto: proto, DstPort: port})
					if a.Src == b.Src {
						out = append(out, Tuple{Src: a.Src, Dst: b.Src, Proto: proto, DstPort: port, ViaService: true})
					}
				}
			}
		}
	}
	return out
}

// FuzzEngine compiles randomly generated policies and checks invariants:
// no panic, verdicts independent of input order, explanations consistent
// with verdicts, every port of a decision's port range decided alike, and
// adding an allow-everything rule to an existing NetworkPolicy never turns
// an allowed connection into a denied one.
func FuzzEngine(f *testing.F) {
	addSeeds(f)
	tuples := allTuples()
	f.Fuzz(func(t *testing.T, seed uint64) {
		in := genInput(seed)
		snap := Compile(in)
		r := rand.New(rand.NewPCG(seed, 7))

		snap2 := Compile(reversed(in))
		if !slices.Equal(snap.Warnings(), snap2.Warnings()) {
			t.Fatalf("warnings depend on input order:\n%q\n%q", snap.Warnings(), snap2.Warnings())
		}

		var widened *Snapshot
		if i := slices.IndexFunc(in.NetworkPolicies, func(np *networkingv1.NetworkPolicy) bool { return np != nil }); i >= 0 {
			w := in
			w.NetworkPolicies = slices.Clone(in.NetworkPolicies)
			np := w.NetworkPolicies[i].DeepCopy()
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{})
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{})
			w.NetworkPolicies[i] = np
			widened = Compile(w)
		}

		for _, tup := range tuples {
			d := snap.Decide(tup)
			if d2 := snap2.Decide(tup); d2 != d {
				t.Fatalf("%+v: verdict depends on input order:\n%+v\n%+v", tup, d, d2)
			}
			checkPortRange(t, snap, tup, d, r)
			want := (!d.Egress.Evaluated || d.Egress.Allowed) && (!d.Ingress.Evaluated || d.Ingress.Allowed)
			if d.Allowed != want {
				t.Fatalf("%+v: Allowed=%v but explanations say %v: %+v", tup, d.Allowed, want, d)
			}
			for _, e := range []Explanation{d.Egress, d.Ingress} {
				if e.Evaluated && e.Allowed != (e.Action == ActionAllow) {
					t.Fatalf("%+v: explanation action %v but allowed=%v", tup, e.Action, e.Allowed)
				}
			}
			if widened != nil && d.Allowed && !widened.Decide(tup).Allowed {
				t.Fatalf("%+v: adding an allow rule denied an allowed connection", tup)
			}
		}
	})
}

// reversed returns in with every list in reverse order.
func reversed(in Input) Input {
	in.Pods = reverse(in.Pods)
	in.Namespaces = reverse(in.Namespaces)
	in.Nodes = reverse(in.Nodes)
	in.NetworkPolicies = reverse(in.NetworkPolicies)
	in.AdminNetworkPolicies = reverse(in.AdminNetworkPolicies)
	in.BaselineAdminNetworkPolicies = reverse(in.BaselineAdminNetworkPolicies)
	in.ClusterNetworkPolicies = reverse(in.ClusterNetworkPolicies)
	return in
}

func reverse[T any](s []T) []T {
	s = slices.Clone(s)
	slices.Reverse(s)
	return s
}

// addSeeds adds the seed corpus of the seed-driven fuzz targets.
func addSeeds(f *testing.F) {
	for _, s := range []uint64{0, 1, 2, 3, 42, 1 << 40, 12345678901} {
		f.Add(s)
	}
}

func parseAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
