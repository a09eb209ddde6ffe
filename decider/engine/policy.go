package engine

import "net/netip"

// clusterPolicy is a compiled AdminNetworkPolicy, BaselineAdminNetworkPolicy
// or ClusterNetworkPolicy: the cluster-scoped kinds share one shape.
type clusterPolicy struct {
	ref      PolicyRef
	id       uint32 // see Explanation.PolicyID
	tier     Tier
	priority int32
	subject  subject
	rules    [2][]clusterRule // per Direction
}

// subject is a compiled ANP/BANP/CNP subject.
type subject struct {
	ns   nsSet
	pods *selector // nil: every pod of the selected namespaces
}

// clusterRule is one ingress or egress rule of a cluster-scoped policy.
type clusterRule struct {
	name   string
	index  int
	action Action
	peers  []clusterPeer
	ports  portSet
	// all marks a rule that matches every connection: a Deny or Pass rule
	// with a peer or port this engine cannot interpret fails closed that way
	// (and is turned into a Deny).
	all bool
}

type peerKind uint8

const (
	peerPods peerKind = iota // namespaces or pods peers
	peerNodes
	peerNetworks
	peerDomains // domainNames: matched against the source pod's DNS answers
)

// clusterPeer is one peer of a cluster-scoped rule.
type clusterPeer struct {
	kind  peerKind
	ns    nsSet     // peerPods
	pods  *selector // peerPods; nil means every pod of ns
	nodes *selector // peerNodes
	nets  []netip.Prefix
	// domains are the patterns of a peerDomains peer.
	domains []domainPattern
}

// netPolicy is a compiled NetworkPolicy.
type netPolicy struct {
	ref   PolicyRef
	id    uint32       // see Explanation.PolicyID
	rules [2][]*npRule // per Direction; identical rules are shared
}

// npRule is one ingress or egress rule of a NetworkPolicy.
type npRule struct {
	// key is the rule's canonical content, under which it is interned.
	key string
	// allPeers is set when the rule lists no peers: every endpoint matches.
	allPeers bool
	peers    []npPeer
	ports    portSet
}

// npPeer is one element of a NetworkPolicy rule's from/to list.
type npPeer struct {
	ipBlock bool
	// Pod peers: namespaces and an optional pod selector (nil: all pods).
	ns   nsSet
	pods *selector
	// ipBlock peers.
	cidr   netip.Prefix
	except []netip.Prefix
}

// endpoint is the other side of a connection as a peer rule sees it.
type endpoint struct {
	ip  netip.Addr
	pod *pod // nil when the IP is not a pod's
}

func (p *npPeer) matches(e endpoint) bool {
	if p.ipBlock {
		if !p.cidr.Contains(e.ip) {
			return false
		}
		for _, x := range p.except {
			if x.Contains(e.ip) {
				return false
			}
		}
		return true
	}
	if e.pod == nil {
		return false
	}
	return p.ns.has(e.pod.ns.index) && (p.pods == nil || p.pods.matches(e.pod.labels))
}

func (s *Snapshot) peerMatches(p *clusterPeer, e endpoint) bool {
	switch p.kind {
	case peerPods:
		return e.pod != nil && p.ns.has(e.pod.ns.index) && (p.pods == nil || p.pods.matches(e.pod.labels))
	case peerNetworks:
		for _, n := range p.nets {
			if n.Contains(e.ip) {
				return true
			}
		}
	case peerNodes:
		for _, n := range s.nodesByIP[e.ip] {
			if p.nodes.matches(n.labels) {
				return true
			}
		}
	}
	return false
}
