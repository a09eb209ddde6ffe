package engine

import "strings"

// WarningsByPolicy counts the snapshot's warnings about each policy (the
// fields it skipped or reinterpreted), for metrics. Warnings about other
// objects (nodes, pods) are not counted.
func (s *Snapshot) WarningsByPolicy() map[PolicyRef]int {
	out := map[PolicyRef]int{}
	for _, w := range s.warnings {
		if ref, ok := warningPolicy(w); ok {
			out[ref]++
		}
	}
	return out
}

// warningPolicy reads the policy a warning is about from its head: the
// compiler starts every policy warning with PolicyRef.String() and ": ",
// or with "BaselineAdminNetworkPolicy NAME: " for an ignored baseline.
func warningPolicy(w string) (PolicyRef, bool) {
	head, _, ok := strings.Cut(w, ": ")
	if !ok {
		return PolicyRef{}, false
	}
	if name, ok := strings.CutPrefix(head, KindBaselineAdminNetworkPolicy+" "); ok {
		return PolicyRef{Kind: KindBaselineAdminNetworkPolicy, Name: name}, true
	}
	kind, rest, ok := strings.Cut(head, "/")
	if !ok || rest == "" {
		return PolicyRef{}, false
	}
	switch kind {
	case KindNetworkPolicy:
		ns, name, ok := strings.Cut(rest, "/")
		return PolicyRef{Kind: kind, Namespace: ns, Name: name}, ok && name != ""
	case KindAdminNetworkPolicy, KindBaselineAdminNetworkPolicy, KindClusterNetworkPolicy:
		return PolicyRef{Kind: kind, Name: rest}, !strings.Contains(rest, "/")
	}
	return PolicyRef{}, false
}
