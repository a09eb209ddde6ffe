package engine

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// PodInfo is a pod as the snapshot knows it.
type PodInfo struct {
	Ref  PodRef
	Node string
	IPs  []netip.Addr
}

// Pods lists the pods that take part in policy (not host-network, not
// finished, with an IP), ordered by namespace and name.
func (s *Snapshot) Pods() []PodInfo {
	out := make([]PodInfo, len(s.pods))
	for i, p := range s.pods {
		out[i] = PodInfo{Ref: p.ref, Node: p.node, IPs: slices.Clone(p.ips)}
	}
	return out
}

// PodPolicies is every policy that selects one pod, rule by rule, for tools
// that explain verdicts.
type PodPolicies struct {
	Pod PodInfo
	// Selecting holds, per Direction, the policies that select the pod in
	// that direction, in evaluation order: the admin stage by priority,
	// NetworkPolicies by namespace and name, the baseline stage.
	Selecting [2][]SelectingPolicy
}

// SelectingPolicy is one policy that selects a pod in one direction, with
// its rules for that direction.
type SelectingPolicy struct {
	Stage  Stage
	Tier   Tier
	Policy PolicyRef
	// Priority of an AdminNetworkPolicy or ClusterNetworkPolicy.
	Priority int32
	Rules    []RuleView
}

// RuleView is one compiled rule.
type RuleView struct {
	Index  int
	Name   string
	Action Action
	// AnyPort is set when the rule lists no ports: every port and protocol,
	// ICMP included, matches. Otherwise Ports lists the port clauses the
	// compiler kept, as "80/TCP", "80-90/UDP", "*/SCTP" (every port of the
	// protocol) or a container port name ("serve-80-tcp/TCP"; without a
	// protocol, whatever protocol the pod's port declares). A rule without
	// AnyPort and without Ports matches no connection.
	AnyPort bool
	Ports   []string
	// AllPeers is set when every endpoint is a peer (a NetworkPolicy rule
	// without from/to, or a cluster rule that fails closed); otherwise
	// Peers lists them: the sources the rule admits for ingress, the
	// destinations for egress.
	AllPeers bool
	Peers    []PeerView
}

// PeerView is one peer of a rule.
type PeerView struct {
	// Kind is "pods", "ipBlock", "networks", "nodes" or "unsupported".
	Kind string
	// Description says in words which endpoints match, for example
	// "pods pod=b in namespaces x, y" or "ipBlock 10.0.0.0/8 except
	// 10.1.0.0/16".
	Description string
	// Pods are the snapshot's pods a pods peer matches; Nodes the names of
	// the nodes a nodes peer matches.
	Pods  []PodRef
	Nodes []string
}

// PodPolicies describes the policies that select the pod ref, and reports
// whether the snapshot has that pod.
func (s *Snapshot) PodPolicies(ref PodRef) (PodPolicies, bool) {
	i, ok := slices.BinarySearchFunc(s.pods, ref, func(p *pod, r PodRef) int {
		if c := strings.Compare(p.ref.Namespace, r.Namespace); c != 0 {
			return c
		}
		return strings.Compare(p.ref.Name, r.Name)
	})
	if !ok {
		return PodPolicies{}, false
	}
	p := s.pods[i]
	out := PodPolicies{Pod: PodInfo{Ref: p.ref, Node: p.node, IPs: slices.Clone(p.ips)}}
	for d := Egress; d <= Ingress; d++ {
		for _, cp := range p.admin[d] {
			out.Selecting[d] = append(out.Selecting[d], s.clusterView(StageAdmin, cp, d))
		}
		for _, np := range p.np[d] {
			sp := SelectingPolicy{Stage: StageNetworkPolicy, Tier: TierNetworkPolicy, Policy: np.ref}
			for i, r := range np.rules[d] {
				rv := RuleView{Index: i, Action: ActionAllow, AllPeers: r.allPeers}
				rv.AnyPort, rv.Ports = r.ports.describe()
				for j := range r.peers {
					rv.Peers = append(rv.Peers, s.npPeerView(&r.peers[j]))
				}
				sp.Rules = append(sp.Rules, rv)
			}
			out.Selecting[d] = append(out.Selecting[d], sp)
		}
		for _, cp := range p.baseline[d] {
			out.Selecting[d] = append(out.Selecting[d], s.clusterView(StageBaseline, cp, d))
		}
	}
	return out, true
}

func (s *Snapshot) clusterView(stage Stage, cp *clusterPolicy, d Direction) SelectingPolicy {
	sp := SelectingPolicy{Stage: stage, Tier: cp.tier, Policy: cp.ref, Priority: cp.priority}
	for _, r := range cp.rules[d] {
		rv := RuleView{Index: r.index, Name: r.name, Action: r.action, AllPeers: r.all}
		if r.all {
			rv.AnyPort = true
		} else {
			rv.AnyPort, rv.Ports = r.ports.describe()
		}
		for i := range r.peers {
			rv.Peers = append(rv.Peers, s.clusterPeerView(&r.peers[i]))
		}
		sp.Rules = append(sp.Rules, rv)
	}
	return sp
}

func (s *Snapshot) npPeerView(p *npPeer) PeerView {
	if !p.ipBlock {
		return s.podsPeerView(p.ns, p.pods)
	}
	desc := "ipBlock " + p.cidr.String()
	if len(p.except) > 0 {
		desc += " except " + joinPrefixes(p.except)
	}
	return PeerView{Kind: "ipBlock", Description: desc}
}

func (s *Snapshot) clusterPeerView(p *clusterPeer) PeerView {
	switch p.kind {
	case peerPods:
		return s.podsPeerView(p.ns, p.pods)
	case peerNetworks:
		return PeerView{Kind: "networks", Description: "networks " + joinPrefixes(p.nets)}
	case peerNodes:
		v := PeerView{Kind: "nodes", Description: "nodes " + p.nodes.String()}
		for _, nodes := range s.nodesByIP {
			for _, n := range nodes {
				if p.nodes.matches(n.labels) && !slices.Contains(v.Nodes, n.name) {
					v.Nodes = append(v.Nodes, n.name)
				}
			}
		}
		slices.Sort(v.Nodes)
		return v
	}
	names := make([]string, len(p.domains))
	for i, d := range p.domains {
		names[i] = d.String()
	}
	return PeerView{Kind: "domainNames", Description: "domainNames " + strings.Join(names, ", ") +
		" (the addresses the pod resolved them to, learned from its DNS answers)"}
}

// podsPeerView describes a peer of the pods of namespaces ns that pods
// selects (nil: all of them) and lists them.
func (s *Snapshot) podsPeerView(ns nsSet, pods *selector) PeerView {
	var names []string
	for _, n := range s.namespaces {
		if ns.has(n.index) {
			names = append(names, n.name)
		}
	}
	desc := "all pods"
	if pods != nil {
		desc = "pods " + pods.String()
	}
	switch {
	case len(names) == 0:
		desc += " in no namespace"
	case len(names) == len(s.namespaces):
		desc += " in every namespace"
	default:
		desc += " in namespaces " + strings.Join(names, ", ")
	}
	v := PeerView{Kind: "pods", Description: desc}
	for _, p := range s.pods {
		if ns.has(p.ns.index) && (pods == nil || pods.matches(p.labels)) {
			v.Pods = append(v.Pods, p.ref)
		}
	}
	return v
}

func joinPrefixes(ps []netip.Prefix) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return strings.Join(out, ", ")
}

// describe lists a port set's clauses (see RuleView.Ports).
func (ps portSet) describe() (anyPort bool, ports []string) {
	if ps.any {
		return true, nil
	}
	for _, e := range ps.entries {
		switch {
		case e.name != "" && e.proto == ProtocolUnknown:
			ports = append(ports, e.name)
		case e.name != "":
			ports = append(ports, e.name+"/"+e.proto.String())
		case e.lo == 0 && e.hi == 65535:
			ports = append(ports, "*/"+e.proto.String())
		case e.lo == e.hi:
			ports = append(ports, fmt.Sprintf("%d/%s", e.lo, e.proto))
		default:
			ports = append(ports, fmt.Sprintf("%d-%d/%s", e.lo, e.hi, e.proto))
		}
	}
	return false, ports
}

// String writes the selector as kubectl's label selector syntax does:
// "pod=b,tier in (db,web),!legacy". The empty selector is "{}" (every
// object); an invalid one "<invalid: matches nothing>".
func (s *selector) String() string {
	if s.none {
		return "<invalid: matches nothing>"
	}
	if len(s.reqs) == 0 {
		return "{}"
	}
	parts := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		switch {
		case r.op == opIn && len(r.values) == 1:
			parts[i] = r.key + "=" + r.values[0]
		case r.op == opIn:
			parts[i] = r.key + " in (" + strings.Join(r.values, ",") + ")"
		case r.op == opNotIn:
			parts[i] = r.key + " notin (" + strings.Join(r.values, ",") + ")"
		case r.op == opExists:
			parts[i] = r.key
		default:
			parts[i] = "!" + r.key
		}
	}
	return strings.Join(parts, ",")
}
