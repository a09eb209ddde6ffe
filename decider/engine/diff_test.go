package engine

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// mutate returns a copy of in with a few random changes of the kinds a
// cluster sees: policies added, removed or rewritten, pod and namespace
// labels changed, pods deleted, finished or given a new IP, node labels
// changed. Objects it does not touch are shared with in, as an informer's
// are.
func mutate(g gen, in Input) Input {
	out := in
	out.Pods = slices.Clone(in.Pods)
	out.Namespaces = slices.Clone(in.Namespaces)
	out.Nodes = slices.Clone(in.Nodes)
	out.NetworkPolicies = slices.Clone(in.NetworkPolicies)
	out.AdminNetworkPolicies = slices.Clone(in.AdminNetworkPolicies)
	out.ClusterNetworkPolicies = slices.Clone(in.ClusterNetworkPolicies)
	for range 1 + g.r.IntN(3) {
		switch g.r.IntN(9) {
		case 0:
			out.NetworkPolicies = append(out.NetworkPolicies, g.networkPolicy(len(out.NetworkPolicies)+10))
		case 1:
			if n := len(out.NetworkPolicies); n > 0 {
				i := g.r.IntN(n)
				p := g.networkPolicy(i)
				p.Name = out.NetworkPolicies[i].Name
				p.Namespace = out.NetworkPolicies[i].Namespace
				out.NetworkPolicies[i] = p
			}
		case 2:
			if n := len(out.AdminNetworkPolicies); n > 0 {
				out.AdminNetworkPolicies = slices.Delete(out.AdminNetworkPolicies, g.r.IntN(n), g.r.IntN(n)+1)
			} else {
				out.AdminNetworkPolicies = append(out.AdminNetworkPolicies, g.anp(7))
			}
		case 3:
			if n := len(out.ClusterNetworkPolicies); n > 0 {
				i := g.r.IntN(n)
				p := g.cnp(i)
				p.Name = out.ClusterNetworkPolicies[i].Name
				out.ClusterNetworkPolicies[i] = p
			} else {
				out.ClusterNetworkPolicies = append(out.ClusterNetworkPolicies, g.cnp(5))
			}
		case 4:
			i := g.r.IntN(len(out.Pods))
			p := out.Pods[i].DeepCopy()
			p.Labels = map[string]string{"pod": g.pick("a", "b", "c", "d")}
			out.Pods[i] = p
		case 5:
			i := g.r.IntN(len(out.Namespaces))
			ns := out.Namespaces[i].DeepCopy()
			ns.Labels = map[string]string{"ns": g.pick("x", "y", "z", "w"), namespaceNameLabel: ns.Name}
			out.Namespaces[i] = ns
		case 6:
			i := g.r.IntN(len(out.Pods))
			switch g.r.IntN(3) {
			case 0:
				out.Pods = slices.Delete(out.Pods, i, i+1)
			case 1:
				p := out.Pods[i].DeepCopy()
				p.Status.Phase = corev1.PodSucceeded
				out.Pods[i] = p
			case 2:
				// A new pod reuses the IPs of a deleted one.
				old := out.Pods[i]
				p := testPod(g.pick("x", "y", "z"), "new", podIPs(old)...)
				out.Pods = append(slices.Delete(out.Pods, i, i+1), p)
			}
		case 7:
			n := out.Nodes[0].DeepCopy()
			n.Labels = map[string]string{"zone": g.pick("a", "b")}
			out.Nodes[0] = n
		case 8:
			// A rewrite that changes nothing but the object: not a change.
			if n := len(out.NetworkPolicies); n > 0 {
				i := g.r.IntN(n)
				p := out.NetworkPolicies[i].DeepCopy()
				p.Annotations = map[string]string{"touched": "yes"}
				out.NetworkPolicies[i] = p
			}
		}
	}
	return out
}

// FuzzChangedIPs checks ChangedIPs against the engine itself: every
// connection between two addresses ChangedIPs leaves out gets the same
// decision, explanation included, before and after a random change.
func FuzzChangedIPs(f *testing.F) {
	addSeeds(f)
	tuples := allTuples()
	f.Fuzz(func(t *testing.T, seed uint64) {
		g := gen{rand.New(rand.NewPCG(seed, ^seed))}
		prevIn := genInput(seed)
		nextIn := mutate(g, prevIn)
		prev, next := Compile(prevIn), Compile(nextIn)
		changed := ChangedIPs(prevIn, prev, nextIn, next)
		if !slices.IsSortedFunc(changed, netip.Addr.Compare) {
			t.Fatalf("ChangedIPs not sorted: %v", changed)
		}
		in := func(a netip.Addr) bool {
			_, ok := slices.BinarySearchFunc(changed, a, netip.Addr.Compare)
			return ok
		}
		for _, tup := range tuples {
			if in(tup.Src) || in(tup.Dst) {
				continue
			}
			if a, b := prev.Decide(tup), next.Decide(tup); a != b {
				t.Fatalf("%v -> %v %v/%d: decision changed but neither address is in ChangedIPs %v:\nbefore %+v\nafter  %+v",
					tup.Src, tup.Dst, tup.Proto, tup.DstPort, changed, a, b)
			}
		}
	})
}

// TestChangedIPsIsPrecise: changes name only the addresses they touch.
func TestChangedIPsIsPrecise(t *testing.T) {
	base := withPolicies(t, testCluster(), `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: "y", name: only-b}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
`)
	ips := func(refs ...string) []netip.Addr {
		var out []netip.Addr
		for _, r := range refs {
			out = append(out, podIP(r[:1], r[2:], false), podIP(r[:1], r[2:], true))
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	podIndex := func(in Input, ns, name string) int {
		return slices.IndexFunc(in.Pods, func(p *corev1.Pod) bool { return p.Namespace == ns && p.Name == name })
	}
	for _, tc := range []struct {
		name   string
		change func(in *Input)
		want   []netip.Addr
	}{
		{"nothing", func(*Input) {}, nil},
		{"same objects, new copies", func(in *Input) {
			for i, p := range in.Pods {
				in.Pods[i] = p.DeepCopy()
			}
			for i, p := range in.NetworkPolicies {
				in.NetworkPolicies[i] = p.DeepCopy()
			}
		}, nil},
		{"pod status churn the engine ignores", func(in *Input) {
			i := podIndex(*in, "z", "c")
			p := in.Pods[i].DeepCopy()
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse})
			in.Pods[i] = p
		}, nil},
		{"policy rule changed: its subjects", func(in *Input) {
			p := in.NetworkPolicies[0].DeepCopy()
			p.Spec.Ingress = nil
			in.NetworkPolicies[0] = p
		}, ips("y/b")},
		{"policy deleted: its former subjects", func(in *Input) { in.NetworkPolicies = nil }, ips("y/b")},
		{"pod relabelled: that pod", func(in *Input) {
			i := podIndex(*in, "x", "a")
			p := in.Pods[i].DeepCopy()
			p.Labels = map[string]string{"pod": "z"}
			in.Pods[i] = p
		}, ips("x/a")},
		{"namespace relabelled: its pods", func(in *Input) {
			ns := in.Namespaces[2].DeepCopy()
			ns.Labels["team"] = "blue"
			in.Namespaces[2] = ns
		}, ips("z/a", "z/b", "z/c")},
		{"node relabelled: its addresses", func(in *Input) {
			n := in.Nodes[0].DeepCopy()
			n.Labels["zone"] = "b"
			in.Nodes[0] = n
		}, []netip.Addr{netip.MustParseAddr("192.168.0.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := base
			next.Pods = slices.Clone(base.Pods)
			next.Namespaces = slices.Clone(base.Namespaces)
			next.Nodes = slices.Clone(base.Nodes)
			next.NetworkPolicies = slices.Clone(base.NetworkPolicies)
			tc.change(&next)
			got := ChangedIPs(base, Compile(base), next, Compile(next))
			if !slices.Equal(got, tc.want) {
				t.Errorf("ChangedIPs = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestChangedIPsSameResourceVersion: objects with the same UID and
// resourceVersion are taken as unchanged without comparing them.
func TestChangedIPsSameResourceVersion(t *testing.T) {
	a := testPod("x", "a", podIP("x", "a", false))
	a.UID, a.ResourceVersion = "u1", "7"
	b := a.DeepCopy()
	prev, next := Input{Pods: []*corev1.Pod{a}}, Input{Pods: []*corev1.Pod{b}}
	if got := ChangedIPs(prev, Compile(prev), next, Compile(next)); len(got) != 0 {
		t.Errorf("same resourceVersion: ChangedIPs = %v", got)
	}
	b.ResourceVersion = "8"
	b.Labels = map[string]string{"pod": "q"}
	if got := ChangedIPs(prev, Compile(prev), next, Compile(next)); fmt.Sprint(got) != "[10.0.1.1]" {
		t.Errorf("new resourceVersion and labels: ChangedIPs = %v", got)
	}
}

// FuzzCompilerReuse checks a Compiler against a fresh Compile: after
// compiling an input and then a random change of it, the reusing compile
// gives the same decisions, explanations included, warnings, stats and
// selected pods as compiling the changed input from scratch.
func FuzzCompilerReuse(f *testing.F) {
	addSeeds(f)
	tuples := allTuples()
	f.Fuzz(func(t *testing.T, seed uint64) {
		g := gen{rand.New(rand.NewPCG(seed, ^seed))}
		var c Compiler
		in := genInput(seed)
		c.Compile(in)
		for step := range 3 {
			in = mutate(g, in)
			got, want := c.Compile(in), Compile(in)
			if !slices.Equal(got.Warnings(), want.Warnings()) {
				t.Fatalf("step %d: warnings differ:\nreusing %q\nfresh   %q", step, got.Warnings(), want.Warnings())
			}
			if got.Stats() != want.Stats() {
				t.Fatalf("step %d: stats differ: reusing %+v, fresh %+v", step, got.Stats(), want.Stats())
			}
			if !slices.Equal(got.SelectedPodIPs(""), want.SelectedPodIPs("")) {
				t.Fatalf("step %d: selected pods differ", step)
			}
			for _, tup := range tuples {
				if a, b := got.Decide(tup), want.Decide(tup); a != b {
					t.Fatalf("step %d: %v -> %v %v/%d: reusing %+v, fresh %+v", step, tup.Src, tup.Dst, tup.Proto, tup.DstPort, a, b)
				}
			}
		}
	})
}

// TestChangedIPsOddObjects: ChangedIPs pairs objects the way Compile reads
// them, also for inputs the apiserver never serves.
func TestChangedIPsOddObjects(t *testing.T) {
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	t.Run("cluster-scoped policy carrying a namespace", func(t *testing.T) {
		// Compile ignores the namespace of a cluster-scoped object; so must
		// ChangedIPs when it matches changed policies to their subjects.
		prev := testCluster()
		next := withPolicies(t, testCluster(), anpAPI+`kind: AdminNetworkPolicy
metadata: {name: deny-x, namespace: "y"}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`)
		got := ChangedIPs(prev, Compile(prev), next, Compile(next))
		want := []netip.Addr{ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3"), ip("fd00::1:1"), ip("fd00::1:2"), ip("fd00::1:3")}
		if !slices.Equal(got, want) {
			t.Errorf("ChangedIPs = %v, want %v", got, want)
		}
	})
	t.Run("two pods under one name", func(t *testing.T) {
		// The first of two x/new pods moves from 10.0.9.1 to 10.0.9.3:
		// its old address changes too.
		a, b := testPod("x", "new", ip("10.0.9.1")), testPod("x", "new", ip("10.0.9.2"))
		moved := testPod("x", "new", ip("10.0.9.3"))
		prev := Input{Pods: []*corev1.Pod{a, b}}
		next := Input{Pods: []*corev1.Pod{moved, b}}
		got := ChangedIPs(prev, Compile(prev), next, Compile(next))
		if !slices.Contains(got, ip("10.0.9.1")) || !slices.Contains(got, ip("10.0.9.3")) {
			t.Errorf("ChangedIPs = %v, want 10.0.9.1 and 10.0.9.3 among them", got)
		}
	})
}
