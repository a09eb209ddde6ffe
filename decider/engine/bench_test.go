package engine

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
)

// synthCluster builds a cluster of pods pods in namespaces of 100 pods and
// policies policies: 99% NetworkPolicies as cmpCluster makes them, and 1%
// AdminNetworkPolicies with Deny and Pass rules. The generator is seeded, so
// every run measures the same cluster.
func synthCluster(pods, policies int) Input {
	nANP := policies / 100
	in := cmpInput(pods, policies-nANP)
	rng := rand.New(rand.NewPCG(5, 6))
	tcp := corev1.ProtocolTCP
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

// synthTuples draws connections between random pods to ports that policies
// name (80, 8080) and do not (443), plus some from outside the cluster.
func synthTuples(pods int) []Tuple { return cmpEngineTuples(pods) }

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

// BenchmarkCompile compares, at 10k pods / 10k policies, compiling from
// scratch with a Compiler's compile after one small change: one
// NetworkPolicy's rules changed, one NetworkPolicy added, one pod's labels
// changed, one pod added, one namespace given a label no policy selects on
// (as bench-scale's relabel, which one policy selects on), and one
// namespace's team changed (a label that 10% of the NetworkPolicies' peers
// and 5% of the AdminNetworkPolicies' subjects select on, in every
// namespace). The objects the change does not touch are the same pointers,
// as informers hand them out. Each op alternates between the changed input
// and the original, so every other op compiles the reverse change (the
// policy or pod deleted, the labels changed back). The .../changed-ips
// cases time what the decider does next with each change: ChangedIPs.
func BenchmarkCompile(b *testing.B) {
	sz := benchSizes[len(benchSizes)-1]
	a := synthCluster(sz.pods, sz.policies)
	policyChanged := a
	policyChanged.NetworkPolicies = slices.Clone(a.NetworkPolicies)
	np := a.NetworkPolicies[len(a.NetworkPolicies)/2].DeepCopy()
	np.Spec.Ingress = np.Spec.Ingress[:1]
	policyChanged.NetworkPolicies[len(a.NetworkPolicies)/2] = np
	policyAdded := a
	np = a.NetworkPolicies[len(a.NetworkPolicies)/3].DeepCopy()
	np.Name += "-added"
	policyAdded.NetworkPolicies = append(slices.Clone(a.NetworkPolicies), np)
	podChanged := a
	podChanged.Pods = slices.Clone(a.Pods)
	p := a.Pods[len(a.Pods)/2].DeepCopy()
	p.Labels = map[string]string{"app": "app-0"}
	podChanged.Pods[len(a.Pods)/2] = p
	podAdded := a
	p = a.Pods[len(a.Pods)/3].DeepCopy()
	p.Name += "-added"
	p.Status.PodIP = "10.250.0.1"
	p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	podAdded.Pods = append(slices.Clone(a.Pods), p)
	relabel := func(key, value string) Input {
		in := a
		in.Namespaces = slices.Clone(a.Namespaces)
		ns := a.Namespaces[len(a.Namespaces)/2].DeepCopy()
		ns.Labels = maps.Clone(ns.Labels)
		ns.Labels[key] = value
		in.Namespaces[len(a.Namespaces)/2] = ns
		return in
	}

	name := fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies)
	b.Run(name+"/fresh", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Compile(a)
		}
	})
	for _, tc := range []struct {
		name string
		next Input
	}{
		{"one-policy-changed", policyChanged}, {"one-policy-added", policyAdded},
		{"one-pod-changed", podChanged}, {"one-pod-added", podAdded},
		{"one-namespace-relabelled", relabel("env", "staging")},
		{"one-namespace-team-changed", relabel("team", "team-new")},
	} {
		b.Run(name+"/"+tc.name, func(b *testing.B) {
			var c Compiler
			inputs := [2]Input{a, tc.next}
			c.Compile(a)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				c.Compile(inputs[(i+1)%2])
			}
		})
		// What the decider does after each compile: work out the
		// addresses the change may affect.
		b.Run(name+"/"+tc.name+"/changed-ips", func(b *testing.B) {
			var c Compiler
			prev, next := c.Compile(a), c.Compile(tc.next)
			b.ReportAllocs()
			for b.Loop() {
				ChangedIPs(a, prev, tc.next, next)
			}
		})
	}
}

// deploymentCluster is synthCluster's namespaces and policies with pods
// pods spread over its namespaces (100 at 10k pods and beyond) the way
// Deployments place them, as bench-scale's cluster does: the pods of one
// app in a namespace carry the same labels (app, role, and their
// ReplicaSet's pod-template-hash), where synthCluster gives every pod a
// pod-template-hash of its own.
func deploymentCluster(pods, policies int) Input {
	in := synthCluster(min(pods, 10000), policies)
	in.Pods = make([]*corev1.Pod, pods)
	nNS := len(in.Namespaces)
	for i := range pods {
		app := fmt.Sprintf("app-%d", (i/nNS)%10)
		ip := cmpIP(i).String()
		in.Pods[i] = &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: in.Namespaces[i%nNS].Name, Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": app, "role": "bg", "pod-template-hash": "rs-" + app}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%100), Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
			}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	return in
}

// BenchmarkSnapshotHeap compiles from scratch, at 10k policies, clusters of
// 10k and 100k pods: synthCluster's (no two pods share their labels) and
// deploymentCluster's (the pods of an app in a namespace do). It reports
// the heap the snapshot holds (snapshot-MB, after a collection).
func BenchmarkSnapshotHeap(b *testing.B) {
	for _, shape := range []struct {
		name  string
		input func(pods, policies int) Input
	}{{"synth", synthCluster}, {"deployments", deploymentCluster}} {
		for _, pods := range []int{10000, 100000} {
			b.Run(fmt.Sprintf("%s/pods=%d/policies=10000", shape.name, pods), func(b *testing.B) {
				in := shape.input(pods, 10000)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				snap := Compile(in)
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportAllocs()
				for b.Loop() {
					Compile(in)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "snapshot-MB")
				runtime.KeepAlive(snap)
			})
		}
	}
}
