package engine

import (
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// usable returns in without the objects the engine cannot place, each
// reported through warn: nil entries, namespaces without a name, and pods
// and NetworkPolicies without a namespace. The apiserver never serves such
// objects; a namespaced object without its namespace can neither be
// selected nor select anything. A slice of in is shared when nothing in it
// is dropped.
func usable(in Input, warn func(format string, args ...any)) Input {
	in.Pods = keep(in.Pods, "Pod", warn, func(p *corev1.Pod) string {
		if p.Namespace == "" {
			return fmt.Sprintf("Pod %s: no namespace; ignored", p.Name)
		}
		return ""
	})
	in.Namespaces = keep(in.Namespaces, "Namespace", warn, func(ns *corev1.Namespace) string {
		if ns.Name == "" {
			return "a Namespace without a name; ignored"
		}
		return ""
	})
	in.Nodes = keep(in.Nodes, "Node", warn, nil)
	in.NetworkPolicies = keep(in.NetworkPolicies, KindNetworkPolicy, warn, func(np *networkingv1.NetworkPolicy) string {
		if np.Namespace == "" {
			return fmt.Sprintf("NetworkPolicy %s: no namespace; ignored", np.Name)
		}
		return ""
	})
	in.AdminNetworkPolicies = keep(in.AdminNetworkPolicies, KindAdminNetworkPolicy, warn, nil)
	in.BaselineAdminNetworkPolicies = keep(in.BaselineAdminNetworkPolicies, KindBaselineAdminNetworkPolicy, warn, nil)
	in.ClusterNetworkPolicies = keep(in.ClusterNetworkPolicies, KindClusterNetworkPolicy, warn, nil)
	return in
}

// keep returns objs without nil entries and without those for which
// problem (nil: none) returns a reason, which goes to warn. It returns objs
// itself when every object is kept.
func keep[T comparable](objs []T, kind string, warn func(format string, args ...any), problem func(T) string) []T {
	var zero T
	why := func(o T) string {
		switch {
		case o == zero:
			return "a nil " + kind + "; ignored"
		case problem != nil:
			return problem(o)
		}
		return ""
	}
	first := slices.IndexFunc(objs, func(o T) bool { return why(o) != "" })
	if first < 0 {
		return objs
	}
	out := slices.Clone(objs[:first])
	for _, o := range objs[first:] {
		if reason := why(o); reason != "" {
			warn("%s", reason)
			continue
		}
		out = append(out, o)
	}
	return out
}
