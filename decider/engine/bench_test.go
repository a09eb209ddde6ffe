package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
)

// synthCluster builds a cluster of pods pods in namespaces of 100 pods and
// policies policies: 99% NetworkPolicies spread evenly over the namespaces
// (each selects one of ten apps and has an ingress rule with namespace and
// pod selectors, an ipBlock rule with an except, and an egress rule with a
// port range), and 1% AdminNetworkPolicies with Allow, Pass and Deny rules.
// The generator is seeded, so every run measures the same cluster.
func synthCluster(pods, policies int) Input {
	rng := rand.New(rand.NewPCG(1, 2))
	var in Input
	nNS := max(1, pods/100)
	for i := range nNS {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   fmt.Sprintf("ns-%d", i),
			Labels: map[string]string{"team": fmt.Sprintf("team-%d", i%20), namespaceNameLabel: fmt.Sprintf("ns-%d", i)},
		}})
	}
	for i := range pods {
		ns := fmt.Sprintf("ns-%d", i%nNS)
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%d", i), Labels: map[string]string{
				"app": fmt.Sprintf("app-%d", i%10), "version": fmt.Sprintf("v%d", i%3), "pod-template-hash": fmt.Sprintf("%x", i),
			}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%50), Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
			}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: synthIP(i).String()},
		}
		in.Pods = append(in.Pods, p)
	}
	tcp := corev1.ProtocolTCP
	nANP := policies / 100
	for i := range policies - nANP {
		ns := fmt.Sprintf("ns-%d", i%nNS)
		port80, portHTTP := intstr.FromInt32(80), intstr.FromString("http")
		end := int32(9100)
		port9000 := intstr.FromInt32(9000)
		in.NetworkPolicies = append(in.NetworkPolicies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", rng.IntN(10))}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", rng.IntN(20))}},
						PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{fmt.Sprintf("app-%d", rng.IntN(10)), fmt.Sprintf("app-%d", rng.IntN(10))}}}},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port80}, {Protocol: &tcp, Port: &portHTTP}},
				}, {
					From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/12", Except: []string{"172.16.1.0/24"}}}},
				}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", rng.IntN(10))}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port9000, EndPort: &end}},
				}},
			},
		})
	}
	for i := range nANP {
		ports := []v1alpha1.AdminNetworkPolicyPort{{PortNumber: &v1alpha1.Port{Protocol: tcp, Port: 22}}}
		in.AdminNetworkPolicies = append(in.AdminNetworkPolicies, &v1alpha1.AdminNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("anp-%d", i)},
			Spec: v1alpha1.AdminNetworkPolicySpec{
				Priority: int32(i % 1000),
				Subject:  v1alpha1.AdminNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", rng.IntN(20))}}},
				Ingress: []v1alpha1.AdminNetworkPolicyIngressRule{
					{Name: "deny-ssh", Action: v1alpha1.AdminNetworkPolicyRuleActionDeny, From: []v1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}, Ports: &ports},
					{Name: "pass-team", Action: v1alpha1.AdminNetworkPolicyRuleActionPass, From: []v1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", rng.IntN(20))}}}}},
				},
				Egress: []v1alpha1.AdminNetworkPolicyEgressRule{
					{Name: "deny-metadata", Action: v1alpha1.AdminNetworkPolicyRuleActionDeny, To: []v1alpha1.AdminNetworkPolicyEgressPeer{{Networks: []v1alpha1.CIDR{"169.254.169.254/32"}}}},
				},
			},
		})
	}
	return in
}

func synthIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// synthTuples draws connections between random pods to ports that policies
// name (80, 8080) and do not (443), plus some from outside the cluster.
func synthTuples(pods int) []Tuple {
	rng := rand.New(rand.NewPCG(3, 4))
	ports := []uint16{80, 8080, 443, 9000}
	out := make([]Tuple, 1024)
	for i := range out {
		src := synthIP(rng.IntN(pods))
		if i%8 == 0 {
			src = netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(4)), 7})
		}
		out[i] = Tuple{Src: src, Dst: synthIP(rng.IntN(pods)), Proto: ProtocolTCP, DstPort: ports[rng.IntN(len(ports))]}
	}
	return out
}

var benchSizes = []struct{ pods, policies int }{
	{1000, 100}, {1000, 1000}, {1000, 10000},
	{10000, 100}, {10000, 1000}, {10000, 10000},
}

// BenchmarkDecide measures one full verdict (both directions) per op and
// reports the heap the snapshot holds (snapshot-MB) and how long Compile
// took (compile-ms).
func BenchmarkDecide(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			in := synthCluster(sz.pods, sz.policies)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			snap := Compile(in)
			compileMS := float64(time.Since(start).Microseconds()) / 1000
			runtime.GC()
			runtime.ReadMemStats(&after)
			tuples := synthTuples(sz.pods)
			allowed := 0
			for _, t := range tuples {
				if snap.Decide(t).Allowed {
					allowed++
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				snap.Decide(tuples[i%len(tuples)])
			}
			b.StopTimer()
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "snapshot-MB")
			b.ReportMetric(compileMS, "compile-ms")
			b.ReportMetric(float64(allowed)/float64(len(tuples))*100, "%allowed")
			runtime.KeepAlive(snap)
			runtime.KeepAlive(in)
		})
	}
}

// BenchmarkChangedIPs measures working out what one pod's relabelling
// changed, next to Compile of the same input: with the unchanged objects
// shared (as informers hand them out) and with every object a fresh copy
// (as a manifest reload produces them).
func BenchmarkChangedIPs(b *testing.B) {
	sz := benchSizes[len(benchSizes)-1]
	prevIn := synthCluster(sz.pods, sz.policies)
	prev := Compile(prevIn)
	relabel := func(in Input) Input {
		in.Pods = slices.Clone(in.Pods)
		p := in.Pods[len(in.Pods)/2].DeepCopy()
		p.Labels = map[string]string{"relabelled": "yes"}
		in.Pods[len(in.Pods)/2] = p
		return in
	}
	shared := relabel(prevIn)
	copied := relabel(prevIn)
	for i, p := range copied.Pods {
		copied.Pods[i] = p.DeepCopy()
	}
	for i, p := range copied.NetworkPolicies {
		copied.NetworkPolicies[i] = p.DeepCopy()
	}
	for i, p := range copied.Namespaces {
		copied.Namespaces[i] = p.DeepCopy()
	}
	for _, tc := range []struct {
		name string
		in   Input
	}{{"shared", shared}, {"copied", copied}} {
		next := Compile(tc.in)
		b.Run(fmt.Sprintf("pods=%d/policies=%d/%s", sz.pods, sz.policies, tc.name), func(b *testing.B) {
			var n int
			for b.Loop() {
				n = len(ChangedIPs(prevIn, prev, tc.in, next))
			}
			b.ReportMetric(float64(n), "changed-IPs")
		})
	}
}
