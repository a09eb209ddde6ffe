package engine

import (
	"net/netip"
	"runtime/debug"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// TestCompileMalformedObjects: objects the apiserver never serves (no
// namespace on a namespaced kind, no name, nil entries) are skipped with a
// warning instead of panicking, by Compile, a reusing Compiler, Decide and
// ChangedIPs, and the rest of the cluster keeps its verdicts.
func TestCompileMalformedObjects(t *testing.T) {
	// Pod y/b admits only x/a; every case keeps that.
	base := withPolicies(t, testCluster(), `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "y", name: only-a}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]}]
`)
	stray := netip.MustParseAddr("10.9.9.9")
	denyAll := networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}
	for _, tc := range []struct {
		name    string
		add     func(in *Input)
		warning string
	}{
		{"pod without a namespace", func(in *Input) {
			in.Pods = append(in.Pods, testPod("", "stray", stray))
		}, "Pod stray: no namespace; ignored"},
		{"NetworkPolicy without a namespace", func(in *Input) {
			in.NetworkPolicies = append(in.NetworkPolicies, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: "deny-all"}, Spec: denyAll})
		}, "NetworkPolicy deny-all: no namespace; ignored"},
		{"pod and NetworkPolicy without a namespace", func(in *Input) {
			in.Pods = append(in.Pods, testPod("", "stray", stray))
			in.NetworkPolicies = append(in.NetworkPolicies, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: "deny-all"}, Spec: denyAll})
		}, "NetworkPolicy deny-all: no namespace; ignored"},
		{"Namespace without a name", func(in *Input) {
			in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"ns": "x"}}})
		}, "a Namespace without a name; ignored"},
		{"nil pod", func(in *Input) { in.Pods = append(in.Pods, nil) }, "a nil Pod; ignored"},
		{"nil namespace", func(in *Input) { in.Namespaces = slices.Insert(in.Namespaces, 0, nil) }, "a nil Namespace; ignored"},
		{"nil node", func(in *Input) { in.Nodes = append(in.Nodes, nil) }, "a nil Node; ignored"},
		{"nil NetworkPolicy", func(in *Input) { in.NetworkPolicies = append(in.NetworkPolicies, nil) }, "a nil NetworkPolicy; ignored"},
		{"nil AdminNetworkPolicy", func(in *Input) {
			in.AdminNetworkPolicies = append(in.AdminNetworkPolicies, nil)
		}, "a nil AdminNetworkPolicy; ignored"},
		{"nil BaselineAdminNetworkPolicy", func(in *Input) {
			in.BaselineAdminNetworkPolicies = append(in.BaselineAdminNetworkPolicies, nil)
		}, "a nil BaselineAdminNetworkPolicy; ignored"},
		{"nil ClusterNetworkPolicy", func(in *Input) {
			in.ClusterNetworkPolicies = append(in.ClusterNetworkPolicies, nil)
		}, "a nil ClusterNetworkPolicy; ignored"},
		{"cluster-scoped policies with neither subject set and nil selectors", func(in *Input) {
			in.AdminNetworkPolicies = append(in.AdminNetworkPolicies, &v1alpha1.AdminNetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: "no-subject"},
				Spec: v1alpha1.AdminNetworkPolicySpec{
					Ingress: []v1alpha1.AdminNetworkPolicyIngressRule{{Action: v1alpha1.AdminNetworkPolicyRuleActionDeny, From: []v1alpha1.AdminNetworkPolicyIngressPeer{{}}}},
				}})
			in.ClusterNetworkPolicies = append(in.ClusterNetworkPolicies, &v1alpha2.ClusterNetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: "no-subject"},
				Spec: v1alpha2.ClusterNetworkPolicySpec{
					Tier:   v1alpha2.AdminTier,
					Egress: []v1alpha2.ClusterNetworkPolicyEgressRule{{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny, To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{}}}},
				}})
		}, "ClusterNetworkPolicy/no-subject: subject must set exactly one of namespaces or pods; policy ignored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("panic: %v\n%s", r, debug.Stack())
				}
			}()
			in := base
			in.Pods = slices.Clone(base.Pods)
			in.Namespaces = slices.Clone(base.Namespaces)
			in.Nodes = slices.Clone(base.Nodes)
			in.NetworkPolicies = slices.Clone(base.NetworkPolicies)
			tc.add(&in)

			var c Compiler
			c.Compile(base)
			for _, snap := range []*Snapshot{Compile(in), c.Compile(in), c.Compile(in)} {
				if !slices.Contains(snap.Warnings(), tc.warning) {
					t.Errorf("warnings %q lack %q", snap.Warnings(), tc.warning)
				}
				checkProbes(t, snap, []probe{
					{"x/a -> y/b:80/TCP", true}, {"z/c -> y/b:80/TCP", false}, {"y/b -> z/c:80/TCP", true},
					{"10.9.9.9 -> y/b:80/TCP", false}, {"10.9.9.9 -> x/a:80/TCP", true},
				})
				if _, ok := snap.PodAt(stray); ok {
					t.Errorf("the pod without a namespace was compiled")
				}
				for _, tup := range allTuples() {
					snap.Decide(tup)
				}
			}
			prev := Compile(base)
			next := Compile(in)
			for _, ips := range [][]netip.Addr{ChangedIPs(base, prev, in, next), ChangedIPs(in, next, base, prev)} {
				for _, ip := range ips {
					if ip != stray {
						t.Errorf("ChangedIPs names %v, which no usable change touches", ip)
					}
				}
			}
		})
	}
}
