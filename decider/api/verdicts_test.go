package api

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// metricValue returns the value of the series of name whose labels include
// want, and whether there is one.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// servedWith returns a server over in with metrics limited to max
// policies, and the registry.
func servedWith(t *testing.T, in engine.Input, max int) (*Server, *state.State, *Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, max)
	st := state.New()
	m.Published(st.Publish(in))
	return New(st, Options{Metrics: m}), st, m, reg
}

func decide(t *testing.T, srv *Server, src, dst string, port uint32) tollgatev1.Verdict {
	t.Helper()
	resp, err := srv.Decide(context.Background(), &tollgatev1.DecideRequest{SrcIp: src, DstIp: dst, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: port})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVerdict()
}

func TestVerdictMetricPerPolicy(t *testing.T) {
	srv, _, _, reg := servedWith(t, cluster(true), 0)
	deny := map[string]string{"direction": "ingress", "tier": "NetworkPolicy", "policy": "y/deny", "action": "Deny"}
	if _, ok := metricValue(t, reg, "tollgate_decider_verdicts_total", deny); ok {
		t.Fatal("a verdict series before any verdict")
	}
	if v := decide(t, srv, "10.0.0.1", "10.0.0.2", 80); v != tollgatev1.Verdict_VERDICT_DENY {
		t.Fatalf("verdict %v", v)
	}
	if n, ok := metricValue(t, reg, "tollgate_decider_verdicts_total", deny); !ok || n != 1 {
		t.Errorf("ingress deny by y/deny = %v (present %v), want 1", n, ok)
	}
	egress := map[string]string{"direction": "egress", "tier": "default", "policy": "", "action": "Allow"}
	if n, ok := metricValue(t, reg, "tollgate_decider_verdicts_total", egress); !ok || n != 1 {
		t.Errorf("egress default allow = %v (present %v), want 1", n, ok)
	}
}

func TestVerdictMetricStream(t *testing.T) {
	srv, _, _, reg := servedWith(t, cluster(true), 0)
	q := &tollgatev1.Query{SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}
	stream := &oneShotStream{req: &tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{q, q, q}}}
	if err := srv.DecideStream(stream); err != nil {
		t.Fatal(err)
	}
	deny := map[string]string{"direction": "ingress", "tier": "NetworkPolicy", "policy": "y/deny", "action": "Deny"}
	if n, _ := metricValue(t, reg, "tollgate_decider_verdicts_total", deny); n != 3 {
		t.Errorf("ingress deny by y/deny = %v, want 3", n)
	}
}

// anps returns n AdminNetworkPolicies, anp-0 ... anp-(n-1), each passing or
// denying ingress to y/b from y/a on its own port (80, 81, ...).
func anps(n int, action v1alpha1.AdminNetworkPolicyRuleAction) []*v1alpha1.AdminNetworkPolicy {
	var out []*v1alpha1.AdminNetworkPolicy
	for i := range n {
		ports := []v1alpha1.AdminNetworkPolicyPort{{PortNumber: &v1alpha1.Port{Protocol: corev1.ProtocolTCP, Port: int32(80 + i)}}}
		out = append(out, &v1alpha1.AdminNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("anp-%d", i)},
			Spec: v1alpha1.AdminNetworkPolicySpec{
				Priority: int32(i),
				Subject:  v1alpha1.AdminNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
				Ingress: []v1alpha1.AdminNetworkPolicyIngressRule{{
					Action: action, Ports: &ports,
					From: []v1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
				}},
			},
		})
	}
	return out
}

// TestVerdictMetricLimit: past the limit, verdicts go to the tier's
// "(other)" series, and the policies already labelled keep theirs.
func TestVerdictMetricLimit(t *testing.T) {
	in := cluster(false)
	in.AdminNetworkPolicies = anps(3, v1alpha1.AdminNetworkPolicyRuleActionDeny)
	srv, st, m, reg := servedWith(t, in, 2)
	for _, port := range []uint32{82, 80, 81, 82, 80} { // anp-2 first: it gets a series, anp-1 then goes to other
		decide(t, srv, "10.0.0.1", "10.0.0.2", port)
	}
	series := func(policy string) float64 {
		n, _ := metricValue(t, reg, "tollgate_decider_verdicts_total",
			map[string]string{"direction": "ingress", "tier": "AdminNetworkPolicy", "policy": policy, "action": "Deny"})
		return n
	}
	if series("anp-2") != 2 || series("anp-0") != 2 || series("anp-1") != 0 || series(OtherPolicy) != 1 {
		t.Errorf("anp-2 %v, anp-0 %v, anp-1 %v, other %v; want 2, 2, 0, 1", series("anp-2"), series("anp-0"), series("anp-1"), series(OtherPolicy))
	}
	if n, _ := metricValue(t, reg, "tollgate_decider_verdict_policies", nil); n != 2 {
		t.Errorf("labelled policies %v, want 2", n)
	}
	if n, _ := metricValue(t, reg, "tollgate_decider_verdict_policies_limit", nil); n != 2 {
		t.Errorf("limit %v, want 2", n)
	}

	// A new snapshot with the same policies: labelled ones keep counting
	// in their series, the ids having changed or not.
	in.AdminNetworkPolicies = append(anps(3, v1alpha1.AdminNetworkPolicyRuleActionDeny), &v1alpha1.AdminNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "aaa-first"},
		Spec:       v1alpha1.AdminNetworkPolicySpec{Priority: 99, Subject: v1alpha1.AdminNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}}, Ingress: anps(1, "Allow")[0].Spec.Ingress},
	})
	m.Published(st.Publish(in))
	decide(t, srv, "10.0.0.1", "10.0.0.2", 80)
	if series("anp-0") != 3 {
		t.Errorf("anp-0 after a new snapshot %v, want 3", series("anp-0"))
	}
}

// TestVerdictMetricPass counts Pass rules crossed next to the decision.
func TestVerdictMetricPass(t *testing.T) {
	in := cluster(true)
	in.AdminNetworkPolicies = anps(1, v1alpha1.AdminNetworkPolicyRuleActionPass)
	srv, _, _, reg := servedWith(t, in, 0)
	decide(t, srv, "10.0.0.1", "10.0.0.2", 80)
	pass := map[string]string{"direction": "ingress", "tier": "AdminNetworkPolicy", "policy": "anp-0", "action": "Pass"}
	if n, _ := metricValue(t, reg, "tollgate_decider_verdicts_total", pass); n != 1 {
		t.Errorf("pass by anp-0 = %v, want 1", n)
	}
	deny := map[string]string{"direction": "ingress", "tier": "NetworkPolicy", "policy": "y/deny", "action": "Deny"}
	if n, _ := metricValue(t, reg, "tollgate_decider_verdicts_total", deny); n != 1 {
		t.Errorf("deny by y/deny = %v, want 1", n)
	}
}

// TestVerdictMetricUnpublishedSnapshot: a verdict of a snapshot whose
// table is not installed yet counts under the right policy.
func TestVerdictMetricUnpublishedSnapshot(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, 0)
	st := state.New()
	srv := New(st, Options{Metrics: m})
	st.Publish(cluster(true)) // not passed to m.Published
	decide(t, srv, "10.0.0.1", "10.0.0.2", 80)
	deny := map[string]string{"direction": "ingress", "tier": "NetworkPolicy", "policy": "y/deny", "action": "Deny"}
	if n, _ := metricValue(t, reg, "tollgate_decider_verdicts_total", deny); n != 1 {
		t.Errorf("deny by y/deny = %v, want 1", n)
	}
}

func TestPolicyWarningsMetric(t *testing.T) {
	in := cluster(false)
	for _, name := range []string{"a", "b", "c"} {
		in.NetworkPolicies = append(in.NetworkPolicies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: name},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "nonsense"}}},
			}}},
		})
	}
	_, _, _, reg := servedWith(t, in, 2)
	for policy, want := range map[string]float64{"y/a": 1, "y/b": 1, "y/c": 0, OtherPolicy: 1} {
		n, _ := metricValue(t, reg, "tollgate_decider_policy_warnings", map[string]string{"kind": "NetworkPolicy", "policy": policy})
		if n != want {
			t.Errorf("warnings of %s = %v, want %v", policy, n, want)
		}
	}
}

// BenchmarkVerdictCount measures what counting one decision costs the
// stream: the per-policy counters of both directions.
func BenchmarkVerdictCount(b *testing.B) {
	in := cluster(false)
	in.AdminNetworkPolicies = anps(1, v1alpha1.AdminNetworkPolicyRuleActionDeny)
	m := NewMetrics(prometheus.NewRegistry(), 0)
	snap := engine.Compile(in)
	m.verdicts.use(snap)
	tup := engine.Tuple{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: engine.ProtocolTCP, DstPort: 80}
	d, ids := snap.DecideIDs(tup)
	b.ReportAllocs()
	for b.Loop() {
		m.decided(snap, &d, &ids)
	}
}
