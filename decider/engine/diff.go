package engine

import (
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// ChangedIPs returns, sorted, every address whose connections next may judge
// differently from prev, given the inputs each was compiled from: the pods
// that a changed, added or removed policy selects (in either snapshot); the
// pods whose labels, namespace, IPs, named ports or liveness changed; every
// pod of a namespace whose labels changed; and the addresses of changed
// nodes. A connection between two addresses outside the result has the same
// verdict in both snapshots, so a dataplane needs to re-examine only the
// established connections that touch one of them.
func ChangedIPs(prevIn Input, prev *Snapshot, nextIn Input, next *Snapshot) []netip.Addr {
	ignore := func(string, ...any) {}
	prevIn, nextIn = usable(prevIn, ignore), usable(nextIn, ignore)
	out := map[netip.Addr]struct{}{}
	add := func(ips ...netip.Addr) {
		for _, ip := range ips {
			out[ip] = struct{}{}
		}
	}

	policies := map[PolicyRef]struct{}{}
	changedPolicies(prevIn.NetworkPolicies, nextIn.NetworkPolicies, KindNetworkPolicy, true,
		func(p *networkingv1.NetworkPolicy) any { return &p.Spec }, policies)
	changedPolicies(prevIn.AdminNetworkPolicies, nextIn.AdminNetworkPolicies, KindAdminNetworkPolicy, false,
		func(p *v1alpha1.AdminNetworkPolicy) any { return &p.Spec }, policies)
	changedPolicies(prevIn.BaselineAdminNetworkPolicies, nextIn.BaselineAdminNetworkPolicies, KindBaselineAdminNetworkPolicy, false,
		func(p *v1alpha1.BaselineAdminNetworkPolicy) any { return &p.Spec }, policies)
	changedPolicies(prevIn.ClusterNetworkPolicies, nextIn.ClusterNetworkPolicies, KindClusterNetworkPolicy, false,
		func(p *v1alpha2.ClusterNetworkPolicy) any { return &p.Spec }, policies)
	namespaces := map[string]struct{}{}
	diffByName(prevIn.Namespaces, nextIn.Namespaces, func(a, b *corev1.Namespace) bool {
		return equality.Semantic.DeepEqual(a.Labels, b.Labels)
	}, func(ns *corev1.Namespace) { namespaces[ns.Name] = struct{}{} })
	// Pods a changed policy selects, or in a relabelled namespace, before
	// or after the change. A NetworkPolicy selects pods of its own
	// namespace only: when only NetworkPolicies changed, the pods of other
	// namespaces need no look at their policies.
	if len(policies) > 0 || len(namespaces) > 0 {
		set := newPolicySet(policies)
		var scope map[string]struct{} // nil: every namespace
		for ref := range policies {
			if ref.Kind != KindNetworkPolicy {
				scope = nil
				break
			}
			if scope == nil {
				scope = map[string]struct{}{}
			}
			scope[ref.Namespace] = struct{}{}
		}
		for _, s := range []*Snapshot{prev, next} {
			var ns *namespace // the namespace of the pods before, which come grouped by it
			var relabelled, inScope bool
			for _, p := range s.pods {
				if p.ns != ns {
					ns = p.ns
					_, relabelled = namespaces[ns.name]
					_, inScope = scope[ns.name]
					inScope = len(policies) > 0 && (inScope || scope == nil)
				}
				if relabelled || (inScope && p.governedBy(set)) {
					add(p.ips...)
				}
			}
		}
	}

	diffByName(prevIn.Pods, nextIn.Pods, samePod, func(p *corev1.Pod) { add(podIPs(p)...) })
	diffByName(prevIn.Nodes, nextIn.Nodes, func(a, b *corev1.Node) bool {
		return equality.Semantic.DeepEqual(a.Labels, b.Labels) &&
			equality.Semantic.DeepEqual(a.Status.Addresses, b.Status.Addresses)
	}, func(n *corev1.Node) {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				add(ip.Unmap())
			}
		}
	})
	return slices.SortedFunc(maps.Keys(out), netip.Addr.Compare)
}

// governedBy reports whether one of refs is among the policies that select p.
func (p *pod) governedBy(refs policySet) bool {
	for dir := range 2 {
		for _, cp := range p.admin[dir] {
			if refs.has(cp.ref) {
				return true
			}
		}
		for _, cp := range p.baseline[dir] {
			if refs.has(cp.ref) {
				return true
			}
		}
		for _, np := range p.np[dir] {
			if refs.has(np.ref) {
				return true
			}
		}
	}
	return false
}

// policySet is a set of policies that looks a few up faster than a map:
// every pod's policies are checked against it, and a change touches few.
type policySet struct {
	few  []PolicyRef
	many map[PolicyRef]struct{}
}

// newPolicySet returns the set of refs.
func newPolicySet(refs map[PolicyRef]struct{}) policySet {
	if len(refs) > 8 {
		return policySet{many: refs}
	}
	return policySet{few: slices.Collect(maps.Keys(refs))}
}

func (s policySet) has(r PolicyRef) bool {
	if s.many != nil {
		_, ok := s.many[r]
		return ok
	}
	for _, x := range s.few {
		if x.Name == r.Name && x == r {
			return true
		}
	}
	return false
}

// object is an API object as diffByName needs it.
type object interface {
	comparable
	metav1.Object
}

// changedPolicies adds to out the refs of the policies added, removed or
// whose spec changed between prev and next. The refs are those Compile
// gives: a cluster-scoped policy's has no namespace, even when the object
// carries one.
func changedPolicies[T object](prev, next []T, kind string, namespaced bool, spec func(T) any, out map[PolicyRef]struct{}) {
	diffByName(prev, next, func(a, b T) bool {
		return equality.Semantic.DeepEqual(spec(a), spec(b))
	}, func(o T) {
		ref := PolicyRef{Kind: kind, Name: o.GetName()}
		if namespaced {
			ref.Namespace = o.GetNamespace()
		}
		out[ref] = struct{}{}
	})
}

// diffByName pairs the objects of prev and next by namespace and name and
// calls changed with each object that is only in one of them, and with both
// versions of an object that same reports different. Objects that are the
// same pointer, or carry the same UID and resourceVersion, are equal without
// comparing their contents (informers hand out unchanged objects that way).
// A name that more than one object of prev or of next holds (the API never
// serves such lists) cannot be paired: each object under it counts as
// changed, when one of them differs between the lists (lists of the same
// objects are equal whatever their order).
func diffByName[T object](prev, next []T, same func(a, b T) bool, changed func(T)) {
	// Most objects are in both lists, as the same pointers: set them aside
	// first, as a pointer is quicker to look up than a name.
	onlyPrev, onlyNext, both := splitByPointer(prev, next)
	if len(onlyPrev) == 0 && len(onlyNext) == 0 {
		return
	}
	type key struct{ ns, name string }
	keyOf := func(o T) key { return key{o.GetNamespace(), o.GetName()} }
	shared := map[key]bool{}
	index := func(objs []T) map[key]T {
		m := make(map[key]T, len(objs))
		for _, o := range objs {
			k := keyOf(o)
			if _, ok := m[k]; ok {
				shared[k] = true
			}
			m[k] = o
		}
		return m
	}
	before, after := index(onlyPrev), index(onlyNext)
	// An object in both lists under the name of one in only one of them
	// shares that name with it in prev or in next.
	names := make([]string, 0, len(onlyPrev)+len(onlyNext))
	for _, o := range slices.Concat(onlyPrev, onlyNext) {
		names = append(names, o.GetName())
	}
	slices.Sort(names)
	names = slices.Compact(names)
	for _, o := range both {
		if _, found := slices.BinarySearch(names, o.GetName()); !found {
			continue
		}
		k := keyOf(o)
		_, b := before[k]
		_, a := after[k]
		if a || b {
			shared[k] = true
			changed(o)
		}
	}
	for _, o := range onlyNext {
		k := keyOf(o)
		old, ok := before[k]
		switch {
		case shared[k] || !ok:
			changed(o)
		case old.GetUID() != "" && old.GetUID() == o.GetUID() &&
			old.GetResourceVersion() != "" && old.GetResourceVersion() == o.GetResourceVersion():
		case !same(old, o):
			changed(old)
			changed(o)
		}
	}
	for _, o := range onlyPrev {
		k := keyOf(o)
		if _, ok := after[k]; shared[k] || !ok {
			changed(o)
		}
	}
}

// splitByPointer returns the objects only in prev, only in next, and in
// both, by pointer (an object twice in one list counts twice).
func splitByPointer[T comparable](prev, next []T) (onlyPrev, onlyNext, both []T) {
	count := make(map[T]int, len(prev))
	for _, o := range prev {
		count[o]++
	}
	both = make([]T, 0, len(next))
	for _, o := range next {
		if count[o] > 0 {
			count[o]--
			both = append(both, o)
			continue
		}
		onlyNext = append(onlyNext, o)
	}
	for _, o := range prev {
		if count[o] > 0 {
			count[o]--
			onlyPrev = append(onlyPrev, o)
		}
	}
	return onlyPrev, onlyNext, both
}

// samePod compares what the engine reads of a pod.
func samePod(a, b *corev1.Pod) bool {
	return equality.Semantic.DeepEqual(a.Labels, b.Labels) &&
		a.Spec.NodeName == b.Spec.NodeName &&
		a.Spec.HostNetwork == b.Spec.HostNetwork &&
		a.Status.Phase == b.Status.Phase &&
		(a.DeletionTimestamp == nil) == (b.DeletionTimestamp == nil) &&
		slices.Equal(podIPs(a), podIPs(b)) &&
		slices.Equal(containerPorts(a), containerPorts(b))
}
