package engine

import (
	"net/netip"
	"slices"
)

// Snapshot is a compiled, immutable view of the cluster's policies. All its
// methods are safe for concurrent use.
type Snapshot struct {
	pods       []*pod
	podByIP    map[netip.Addr]*pod
	nodesByIP  map[netip.Addr][]*node
	namespaces []*namespace
	policies   []PolicyInfo // by id - 1; see numberPolicies
	warnings   []string
	stats      Stats
}

// Stats counts what a snapshot holds.
type Stats struct {
	Pods, Namespaces, Nodes               int
	NetworkPolicies, AdminNetworkPolicies int
	BaselineAdminNetworkPolicies          int
	ClusterNetworkPolicies                int
	SelectedPods                          int
	Rules                                 int
}

// pod is a pod as policy sees it: identity, labels, placement, named ports,
// and the compiled policies that select it, per direction and tier.
type pod struct {
	ref    PodRef
	labels map[string]string
	ns     *namespace
	node   string
	ips    []netip.Addr
	ports  []containerPort
	// admin and baseline hold the cluster-scoped policies whose subject
	// selects the pod, in evaluation order, per direction (Egress, Ingress).
	admin    [2][]*clusterPolicy
	np       [2][]*netPolicy
	baseline [2][]*clusterPolicy
	// npRules flattens the rules of np in evaluation order, keeping only the
	// first of identical rules: a rule that did not match once will not
	// match again.
	npRules [2][]npRuleRef
}

// npRuleRef is a NetworkPolicy rule in a pod's flattened list.
type npRuleRef struct {
	rule   *npRule
	policy *netPolicy
	index  int
}

// selected reports whether any policy governs the pod in some direction.
func (p *pod) selected() bool {
	for d := range 2 {
		if len(p.admin[d]) > 0 || len(p.np[d]) > 0 || len(p.baseline[d]) > 0 {
			return true
		}
	}
	return false
}

type containerPort struct {
	name  string
	proto Protocol
	port  uint16
}

type namespace struct {
	name   string
	index  int
	labels map[string]string
}

type node struct {
	name   string
	labels map[string]string
}

// SelectedPodIPs returns, sorted, the IPs of the pods on node that some
// policy (of any tier) selects in some direction. An empty node means every
// node. Connections that involve none of these IPs are allowed by definition,
// so the dataplane needs to queue only connections to or from them.
func (s *Snapshot) SelectedPodIPs(node string) []netip.Addr {
	var out []netip.Addr
	for _, p := range s.pods {
		if (node == "" || p.node == node) && p.selected() {
			out = append(out, p.ips...)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// PodIPs returns the addresses of the pod that owns ip (ip among them),
// its primary address first: a key under which to keep what is known of
// the pod whatever address it used. The slice must not be modified.
func (s *Snapshot) PodIPs(ip netip.Addr) ([]netip.Addr, bool) {
	if p := s.podByIP[ip.Unmap()]; p != nil {
		return p.ips, true
	}
	return nil, false
}

// NodeOf returns the node of the pod that owns ip.
func (s *Snapshot) NodeOf(ip netip.Addr) (string, bool) {
	if p := s.podByIP[ip.Unmap()]; p != nil {
		return p.node, true
	}
	return "", false
}

// DomainPodIPs lists, sorted, the IPs of the node's pods (all pods when
// node is empty) that an egress rule with a domainNames peer governs: the
// pods whose DNS answers must be learned for those rules to match.
func (s *Snapshot) DomainPodIPs(node string) []netip.Addr {
	var out []netip.Addr
	for _, p := range s.pods {
		if (node == "" || p.node == node) && p.usesDomains() {
			out = append(out, p.ips...)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// usesDomains reports whether a cluster-scoped egress rule of the pod has a
// domainNames peer.
func (p *pod) usesDomains() bool {
	for _, tier := range [][]*clusterPolicy{p.admin[Egress], p.baseline[Egress]} {
		for _, cp := range tier {
			for _, r := range cp.rules[Egress] {
				for _, peer := range r.peers {
					if peer.kind == peerDomains {
						return true
					}
				}
			}
		}
	}
	return false
}

// Warnings lists objects or fields the compiler skipped or reinterpreted,
// one line each, in a stable order.
func (s *Snapshot) Warnings() []string { return slices.Clone(s.warnings) }

// Stats returns counts of what the snapshot holds.
func (s *Snapshot) Stats() Stats { return s.stats }

// PodAt returns the pod that owns ip, if any, for callers that explain
// results.
func (s *Snapshot) PodAt(ip netip.Addr) (PodRef, bool) {
	if p := s.podByIP[ip.Unmap()]; p != nil {
		return p.ref, true
	}
	return PodRef{}, false
}
