package engine

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// mutate returns a copy of in with a few random changes of the kinds a
// cluster sees: policies of every kind added, removed or rewritten, pods
// relabelled, deleted, finished, terminating, moved to a new IP, node or
// port list, replicated (a new pod with the same labels), namespaces
// relabelled, added or removed, nodes relabelled, readdressed, added or
// removed, rewrites that change nothing, and odd objects (one of them an
// object given twice). Objects it does not touch are shared with in, as an
// informer's are.
func mutate(g gen, in Input) Input {
	out := in
	out.Pods = slices.Clone(in.Pods)
	out.Namespaces = slices.Clone(in.Namespaces)
	out.Nodes = slices.Clone(in.Nodes)
	out.NetworkPolicies = slices.Clone(in.NetworkPolicies)
	out.AdminNetworkPolicies = slices.Clone(in.AdminNetworkPolicies)
	out.BaselineAdminNetworkPolicies = slices.Clone(in.BaselineAdminNetworkPolicies)
	out.ClusterNetworkPolicies = slices.Clone(in.ClusterNetworkPolicies)
	for range 1 + g.r.IntN(3) {
		switch g.r.IntN(16) {
		case 0:
			if i, ok := some(g, out.NetworkPolicies); ok && g.r.IntN(3) == 0 {
				out.NetworkPolicies = slices.Delete(out.NetworkPolicies, i, i+1)
			} else {
				out.NetworkPolicies = append(out.NetworkPolicies, g.networkPolicy(100+g.r.IntN(1<<20)))
			}
		case 1:
			out.NetworkPolicies = rewrite(g, out.NetworkPolicies, func() *networkingv1.NetworkPolicy { return g.networkPolicy(0) })
		case 2:
			out.AdminNetworkPolicies = rewrite(g, out.AdminNetworkPolicies, func() *v1alpha1.AdminNetworkPolicy { return g.anp(7) })
		case 3:
			out.ClusterNetworkPolicies = rewrite(g, out.ClusterNetworkPolicies, func() *v1alpha2.ClusterNetworkPolicy { return g.cnp(5) })
		case 4:
			out.BaselineAdminNetworkPolicies = rewrite(g, out.BaselineAdminNetworkPolicies, g.banp)
		case 5:
			if i, ok := some(g, out.Pods); ok {
				p := out.Pods[i].DeepCopy()
				p.Labels = map[string]string{"pod": g.pick("a", "b", "c", "d")}
				out.Pods[i] = p
			}
		case 6:
			if i, ok := some(g, out.Namespaces); ok {
				ns := out.Namespaces[i].DeepCopy()
				ns.Labels = map[string]string{"ns": g.pick("x", "y", "z", "w"), namespaceNameLabel: ns.Name}
				out.Namespaces[i] = ns
			}
		case 7:
			i, ok := some(g, out.Pods)
			if !ok {
				break
			}
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
		case 8:
			i, ok := some(g, out.Pods)
			if !ok {
				break
			}
			p := out.Pods[i].DeepCopy()
			switch g.r.IntN(5) {
			case 0: // a new IP, perhaps one another pod holds
				ip := g.pick(spareIPv4, "10.0.1.1")
				p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}, {IP: spareIPv6}}
			case 1:
				ports := p.Spec.Containers[0].Ports
				p.Spec.Containers[0].Ports = ports[:g.r.IntN(len(ports)+1)]
			case 2:
				p.DeletionTimestamp = &metav1.Time{}
			case 3:
				p.Spec.HostNetwork = true
			case 4:
				p.Spec.NodeName = g.pick("n1", "n2")
			}
			out.Pods[i] = p
		case 9:
			i, ok := some(g, out.Nodes)
			if !ok {
				out.Nodes = append(out.Nodes, g.node("n2"))
				break
			}
			switch g.r.IntN(4) {
			case 0:
				n := out.Nodes[i].DeepCopy()
				n.Labels = map[string]string{"zone": g.pick("a", "b")}
				out.Nodes[i] = n
			case 1: // new addresses, or none
				n := g.node(out.Nodes[i].Name)
				if g.r.IntN(4) == 0 {
					n.Status.Addresses = nil
				}
				n.Labels = out.Nodes[i].Labels
				out.Nodes[i] = n
			case 2:
				out.Nodes = slices.Delete(out.Nodes, i, i+1)
			case 3:
				out.Nodes = append(out.Nodes, g.node(fmt.Sprintf("n%d", 3+g.r.IntN(2))))
			}
		case 10:
			if i, ok := some(g, out.Namespaces); ok && g.r.IntN(2) == 0 {
				out.Namespaces = slices.Delete(out.Namespaces, i, i+1)
			} else {
				out.Namespaces = append(out.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
					Name: "w", Labels: map[string]string{"ns": g.pick("w", "x")}}})
				out.Pods = append(out.Pods, testPod("w", "a", parseAddr(spareIPv4), parseAddr(spareIPv6)))
			}
		case 11:
			g.odd(&out)
		case 12:
			// A replica: a new pod with the labels of a pod of its
			// namespace, on the spare addresses.
			if i, ok := some(g, out.Pods); ok && g.r.IntN(4) == 0 {
				// Or the same object twice, which no informer gives.
				out.Pods = append(out.Pods, out.Pods[i])
				if j, ok := some(g, out.NetworkPolicies); ok {
					out.NetworkPolicies = append(out.NetworkPolicies, out.NetworkPolicies[j])
				}
			} else if ok {
				old := out.Pods[i]
				p := testPod(old.Namespace, old.Name+"-r", parseAddr(spareIPv4), parseAddr(spareIPv6))
				p.Labels = maps.Clone(old.Labels)
				out.Pods = append(out.Pods, p)
			}
		default:
			// Rewrites that change nothing but the object: not a change.
			touch := map[string]string{"touched": "yes"}
			if i, ok := some(g, out.NetworkPolicies); ok {
				p := out.NetworkPolicies[i].DeepCopy()
				p.Annotations = touch
				out.NetworkPolicies[i] = p
			}
			if i, ok := some(g, out.AdminNetworkPolicies); ok {
				p := out.AdminNetworkPolicies[i].DeepCopy()
				p.Annotations = touch
				out.AdminNetworkPolicies[i] = p
			}
			if i, ok := some(g, out.Pods); ok {
				p := out.Pods[i].DeepCopy()
				p.Annotations = touch
				out.Pods[i] = p
			}
		}
	}
	return out
}

// rewrite changes one of objs, which it may modify: it deletes one,
// replaces one with a fresh object under the same name, or adds a fresh one
// when it picks none.
func rewrite[T object](g gen, objs []T, fresh func() T) []T {
	i, ok := some(g, objs)
	switch {
	case !ok:
		return append(objs, fresh())
	case g.r.IntN(3) == 0:
		return slices.Delete(objs, i, i+1)
	}
	p := fresh()
	p.SetName(objs[i].GetName())
	p.SetNamespace(objs[i].GetNamespace())
	objs[i] = p
	return objs
}

// some picks the index of a non-nil element of objs, if there is one.
func some[T comparable](g gen, objs []T) (int, bool) {
	var zero T
	if len(objs) == 0 {
		return 0, false
	}
	i := g.r.IntN(len(objs))
	return i, objs[i] != zero
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
		if g.r.IntN(2) == 0 {
			prevIn = mutate(g, prevIn)
		}
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
				t.Fatalf("%+v: decision changed but neither address is in ChangedIPs %v:\nbefore %+v\nafter  %+v",
					tup, changed, a, b)
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
// compiling an input and then each of a few random changes of it, the
// reusing compile answers exactly as compiling the changed input from
// scratch does (every decision with its explanation and policy ids,
// policies, warnings, stats, pods, the policies that select each pod), and
// the snapshot before it still answers as it did (checkReuse).
func FuzzCompilerReuse(f *testing.F) {
	addSeeds(f)
	tuples := allTuples()
	f.Fuzz(func(t *testing.T, seed uint64) {
		checkReuse(t, seed, 4, tuples)
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

// TestFuzzInputsCover: the generators behind FuzzEngine, FuzzChangedIPs and
// FuzzCompilerReuse produce, among their first seeds, each kind of object
// and change the review found missing, and odd objects.
func TestFuzzInputsCover(t *testing.T) {
	seen := map[string]int{}
	for seed := range uint64(300) {
		g := gen{rand.New(rand.NewPCG(seed, ^seed))}
		ignore := func(string, ...any) {}
		rawPrev := genInput(seed)
		rawNext := mutate(g, rawPrev)
		for _, in := range []Input{rawPrev, rawNext} {
			if len(usable(in, ignore).Pods) != len(in.Pods) {
				seen["pod without a namespace or nil"]++
			}
			if w := Compile(in).Warnings(); len(w) > 0 {
				seen["input with warnings"]++
			}
		}
		prev, next := usable(rawPrev, ignore), usable(rawNext, ignore)
		for _, p := range prev.ClusterNetworkPolicies {
			if len(p.Spec.Egress) > 0 {
				seen["CNP egress rule"]++
			}
		}
		for _, p := range prev.AdminNetworkPolicies {
			for _, r := range p.Spec.Ingress {
				for _, f := range r.From {
					if f.Pods != nil {
						seen["ANP ingress pod peer"]++
					}
				}
			}
			for _, r := range p.Spec.Egress {
				for _, to := range r.To {
					if to.Pods != nil {
						seen["ANP egress pod peer"]++
					}
				}
			}
		}
		for _, p := range prev.BaselineAdminNetworkPolicies {
			if len(p.Spec.Egress) > 0 {
				seen["BANP egress rule"]++
			}
		}
		diffByName(prev.BaselineAdminNetworkPolicies, next.BaselineAdminNetworkPolicies, func(a, b *v1alpha1.BaselineAdminNetworkPolicy) bool {
			return equality.Semantic.DeepEqual(a.Spec, b.Spec)
		}, func(*v1alpha1.BaselineAdminNetworkPolicy) { seen["BANP change"]++ })
		diffByName(prev.Nodes, next.Nodes, func(a, b *corev1.Node) bool {
			return equality.Semantic.DeepEqual(a.Status.Addresses, b.Status.Addresses)
		}, func(*corev1.Node) { seen["node address change"]++ })
	}
	for _, what := range []string{"CNP egress rule", "ANP ingress pod peer", "ANP egress pod peer", "BANP egress rule",
		"BANP change", "node address change", "pod without a namespace or nil", "input with warnings"} {
		if seen[what] < 5 {
			t.Errorf("%s: %d times in 300 seeds", what, seen[what])
		}
	}
	t.Log(seen)
}

// TestDiffByName: which objects diffByName reports, by pointer, UID and
// resourceVersion, contents, and names held twice.
func TestDiffByName(t *testing.T) {
	np := func(name, uid, rv string, port int32) *networkingv1.NetworkPolicy {
		p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid), ResourceVersion: rv}}
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(port))}}}}
		return p
	}
	a, b, c := np("a", "ua", "1", 80), np("b", "ub", "1", 80), np("c", "uc", "1", 80)
	aEdited := np("a", "ua", "2", 81) // a new version of a
	aCopy := np("a", "ua", "1", 80)   // another copy of the same version
	aRelisted := np("a", "", "", 80)  // the same contents without UID or version
	aTwin := np("a", "ua2", "1", 80)  // another object under a's name
	type objs = []*networkingv1.NetworkPolicy
	for _, tc := range []struct {
		name       string
		prev, next objs
		want       objs
	}{
		{"same objects", objs{a, b, c}, objs{a, b, c}, nil},
		{"reordered", objs{a, b, c}, objs{c, a, b}, nil},
		{"edited", objs{a, b, c}, objs{b, aEdited, c}, objs{a, aEdited}},
		{"same version, another copy", objs{a, b}, objs{aCopy, b}, nil},
		{"same contents, no version", objs{a, b}, objs{aRelisted, b}, nil},
		{"added", objs{a, b}, objs{a, b, c}, objs{c}},
		{"removed", objs{a, b, c}, objs{a, c}, objs{b}},
		{"a twin removed", objs{a, aTwin, b}, objs{a, b}, objs{a, aTwin}},
		{"a twin added", objs{a, b}, objs{b, aTwin, a}, objs{a, aTwin}},
		{"twins kept", objs{a, aTwin, b}, objs{aTwin, b, a}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got objs
			diffByName(tc.prev, tc.next, func(x, y *networkingv1.NetworkPolicy) bool {
				return equality.Semantic.DeepEqual(x.Spec, y.Spec)
			}, func(o *networkingv1.NetworkPolicy) {
				if !slices.Contains(got, o) {
					got = append(got, o)
				}
			})
			if len(got) != len(tc.want) {
				t.Fatalf("reported %d objects, want %d", len(got), len(tc.want))
			}
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("%s/%s (uid %q, rv %q) not reported", w.Namespace, w.Name, w.UID, w.ResourceVersion)
				}
			}
		})
	}
}
