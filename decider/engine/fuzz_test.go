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

func (g gen) anp(i int) *v1alpha1.AdminNetworkPolicy {
	p := &v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("anp-%d", i)}}
	p.Spec.Priority = int32(g.r.IntN(5))
	if g.r.IntN(2) == 0 {
		p.Spec.Subject.Namespaces = g.selector()
	}
	if p.Spec.Subject.Namespaces == nil {
		p.Spec.Subject.Pods = &v1alpha1.NamespacedPod{}
	}
	actions := []v1alpha1.AdminNetworkPolicyRuleAction{v1alpha1.AdminNetworkPolicyRuleActionAllow, v1alpha1.AdminNetworkPolicyRuleActionDeny, v1alpha1.AdminNetworkPolicyRuleActionPass}
	for range g.r.IntN(3) {
		r := v1alpha1.AdminNetworkPolicyIngressRule{Action: actions[g.r.IntN(3)], Ports: g.anpPorts()}
		for range 1 + g.r.IntN(2) {
			r.From = append(r.From, v1alpha1.AdminNetworkPolicyIngressPeer{Namespaces: g.selector()})
		}
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	for range g.r.IntN(3) {
		r := v1alpha1.AdminNetworkPolicyEgressRule{Action: actions[g.r.IntN(3)], Ports: g.anpPorts()}
		peer := v1alpha1.AdminNetworkPolicyEgressPeer{}
		switch g.r.IntN(3) {
		case 0:
			peer.Networks = []v1alpha1.CIDR{v1alpha1.CIDR(g.cidr())}
		case 1:
			peer.Nodes = g.selector()
		default:
			peer.Namespaces = g.selector()
		}
		r.To = append(r.To, peer)
		p.Spec.Egress = append(p.Spec.Egress, r)
	}
	return p
}

func (g gen) cnp(i int) *v1alpha2.ClusterNetworkPolicy {
	p := &v1alpha2.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cnp-%d", i)}}
	p.Spec.Tier = []v1alpha2.Tier{v1alpha2.AdminTier, v1alpha2.BaselineTier}[g.r.IntN(2)]
	p.Spec.Priority = int32(g.r.IntN(5))
	p.Spec.Subject.Namespaces = g.selector()
	if p.Spec.Subject.Namespaces == nil {
		p.Spec.Subject.Namespaces = &metav1.LabelSelector{}
	}
	actions := []v1alpha2.ClusterNetworkPolicyRuleAction{v1alpha2.ClusterNetworkPolicyRuleActionAccept, v1alpha2.ClusterNetworkPolicyRuleActionDeny, v1alpha2.ClusterNetworkPolicyRuleActionPass}
	for range g.r.IntN(3) {
		r := v1alpha2.ClusterNetworkPolicyIngressRule{Action: actions[g.r.IntN(3)]}
		r.From = []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: g.selector()}}
		if g.r.IntN(2) == 0 {
			r.Protocols = []v1alpha2.ClusterNetworkPolicyProtocol{{TCP: &v1alpha2.ClusterNetworkPolicyProtocolTCP{DestinationPort: &v1alpha2.Port{Number: 80}}}}
		}
		p.Spec.Ingress = append(p.Spec.Ingress, r)
	}
	return p
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
		b := g.anp(0)
		in.BaselineAdminNetworkPolicies = []*v1alpha1.BaselineAdminNetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Name: "default"},
			Spec:       v1alpha1.BaselineAdminNetworkPolicySpec{Subject: b.Spec.Subject},
		}}
		for _, r := range b.Spec.Ingress {
			if r.Action != v1alpha1.AdminNetworkPolicyRuleActionPass {
				in.BaselineAdminNetworkPolicies[0].Spec.Ingress = append(in.BaselineAdminNetworkPolicies[0].Spec.Ingress,
					v1alpha1.BaselineAdminNetworkPolicyIngressRule{Action: v1alpha1.BaselineAdminNetworkPolicyRuleAction(r.Action), From: r.From, Ports: r.Ports})
			}
		}
	}
	return in
}

// allTuples lists connections between every pair of test pods and a few
// outside addresses, over every protocol, on ports 80 and 81.
func allTuples() []Tuple {
	var ips = []string{"192.168.0.1", "8.8.8.8"}
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
				for _, port := range []uint16{80, 81} {
					out = append(out, Tuple{Src: a.Src, Dst: b.Src, Proto: proto, DstPort: port})
				}
			}
		}
	}
	return out
}

// FuzzEngine compiles randomly generated policies and checks invariants:
// no panic, verdicts independent of input order, explanations consistent
// with verdicts, and adding an allow-everything rule to an existing
// NetworkPolicy never turns an allowed connection into a denied one.
func FuzzEngine(f *testing.F) {
	addSeeds(f)
	tuples := allTuples()
	f.Fuzz(func(t *testing.T, seed uint64) {
		in := genInput(seed)
		snap := Compile(in)

		shuffled := in
		shuffled.Pods = slices.Clone(in.Pods)
		shuffled.NetworkPolicies = slices.Clone(in.NetworkPolicies)
		shuffled.AdminNetworkPolicies = slices.Clone(in.AdminNetworkPolicies)
		slices.Reverse(shuffled.Pods)
		slices.Reverse(shuffled.NetworkPolicies)
		slices.Reverse(shuffled.AdminNetworkPolicies)
		snap2 := Compile(shuffled)

		var widened *Snapshot
		if len(in.NetworkPolicies) > 0 {
			w := in
			w.NetworkPolicies = slices.Clone(in.NetworkPolicies)
			np := w.NetworkPolicies[0].DeepCopy()
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{})
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{})
			w.NetworkPolicies[0] = np
			widened = Compile(w)
		}

		for _, tup := range tuples {
			d := snap.Decide(tup)
			if d2 := snap2.Decide(tup); d2 != d {
				t.Fatalf("%+v: verdict depends on input order:\n%+v\n%+v", tup, d, d2)
			}
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

// addSeeds adds the seed corpus of the seed-driven fuzz targets.
func addSeeds(f *testing.F) {
	for _, s := range []uint64{0, 1, 2, 3, 42, 1 << 40, 12345678901} {
		f.Add(s)
	}
}

func parseAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
