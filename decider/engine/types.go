// Package engine compiles Kubernetes network policies into an immutable
// snapshot and answers connection verdicts from it.
//
// The package is pure: no I/O, no goroutines, no clocks, no locks. Callers
// build an Input from API objects, call Compile, and publish the resulting
// *Snapshot (for example through an atomic.Pointer); Decide on a snapshot is
// safe for concurrent use and does not allocate.
package engine

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Input is everything the engine needs to know about a cluster. The engine
// reads the objects and never modifies them; snapshots keep the label maps
// of pods and nodes. A Compiler takes an object it was given before (the
// same pointer) as unchanged, so callers replace an object that changes
// rather than modify it, as informers do.
type Input struct {
	Pods                         []*corev1.Pod
	Namespaces                   []*corev1.Namespace
	Nodes                        []*corev1.Node
	NetworkPolicies              []*networkingv1.NetworkPolicy
	AdminNetworkPolicies         []*v1alpha1.AdminNetworkPolicy
	BaselineAdminNetworkPolicies []*v1alpha1.BaselineAdminNetworkPolicy
	ClusterNetworkPolicies       []*v1alpha2.ClusterNetworkPolicy
}

// Protocol is a transport protocol as policies know it.
type Protocol uint8

// Protocols. ICMP stands for ICMPv4 and ICMPv6 alike.
const (
	ProtocolUnknown Protocol = iota
	ProtocolTCP
	ProtocolUDP
	ProtocolSCTP
	ProtocolICMP
)

// String returns the protocol name as the Kubernetes API spells it.
func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "TCP"
	case ProtocolUDP:
		return "UDP"
	case ProtocolSCTP:
		return "SCTP"
	case ProtocolICMP:
		return "ICMP"
	}
	return "unknown"
}

// Tuple describes a connection by its first packet after DNAT. The source
// port is absent on purpose: policy never depends on it.
type Tuple struct {
	Src, Dst netip.Addr
	Proto    Protocol
	DstPort  uint16
	// ViaService is true when the destination was reached through a service
	// address. A pod reaching its own IP directly is not subject to policy;
	// through a service it is.
	ViaService bool
	// DNS is what the source pod resolved, for domainNames peers; nil
	// means nothing is known, and no domainNames peer matches.
	DNS Resolved
}

// Tier is the stage of evaluation that decided one direction.
type Tier uint8

// Tiers in evaluation order (admin kinds first, then NetworkPolicy, then the
// baseline kinds, then the default).
const (
	TierNone Tier = iota
	TierAdminNetworkPolicy
	TierClusterNetworkPolicyAdmin
	TierNetworkPolicy
	TierBaselineAdminNetworkPolicy
	TierClusterNetworkPolicyBaseline
	TierDefault
)

// String names the tier.
func (t Tier) String() string {
	switch t {
	case TierAdminNetworkPolicy:
		return "AdminNetworkPolicy"
	case TierClusterNetworkPolicyAdmin:
		return "ClusterNetworkPolicy(Admin)"
	case TierNetworkPolicy:
		return "NetworkPolicy"
	case TierBaselineAdminNetworkPolicy:
		return "BaselineAdminNetworkPolicy"
	case TierClusterNetworkPolicyBaseline:
		return "ClusterNetworkPolicy(Baseline)"
	case TierDefault:
		return "default"
	}
	return "none"
}

// Action is what a rule says.
type Action uint8

// Actions. ClusterNetworkPolicy's Accept is ActionAllow.
const (
	ActionNone Action = iota
	ActionAllow
	ActionDeny
	ActionPass
)

// String names the action.
func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "Allow"
	case ActionDeny:
		return "Deny"
	case ActionPass:
		return "Pass"
	}
	return "none"
}

// Direction is the side of a connection a policy applies to.
type Direction uint8

// Directions.
const (
	Egress Direction = iota
	Ingress
)

// String names the direction.
func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// PolicyRef names a policy object.
type PolicyRef struct {
	Kind      string // "NetworkPolicy", "AdminNetworkPolicy", ...
	Namespace string // NetworkPolicy only
	Name      string
}

// String returns kind/name or kind/namespace/name.
func (p PolicyRef) String() string {
	if p.Kind == "" {
		return ""
	}
	if p.Namespace != "" {
		return p.Kind + "/" + p.Namespace + "/" + p.Name
	}
	return p.Kind + "/" + p.Name
}

// PodRef names a pod.
type PodRef struct {
	Namespace, Name string
}

// Explanation says why one direction was allowed or denied.
type Explanation struct {
	// Evaluated is false when that endpoint is not a known pod (then the
	// direction is not subject to policy and nothing else is set).
	Evaluated bool
	Direction Direction
	Pod       PodRef
	Tier      Tier
	// Policy is the deciding policy (zero for TierDefault). For a
	// NetworkPolicy denial it is the first (by namespace/name) policy that
	// isolates the pod in this direction.
	Policy PolicyRef
	// Rule is the index of the deciding rule in the policy's list for this
	// direction, or -1 when no rule matched.
	Rule     int
	RuleName string
	Action   Action
	// Passed is true when an admin-tier Pass rule sent the decision on; then
	// PassPolicy and PassRule name it.
	Passed     bool
	PassPolicy PolicyRef
	PassRule   int
	Allowed    bool
	// Domain is the name by which a domainNames peer of the deciding rule
	// matched: one the source pod resolved to the destination, or
	// RemoteDomain.
	Domain string
}

// Decision is a full verdict: both directions of one connection.
type Decision struct {
	Allowed bool
	// SamePod is true when a pod reached its own IP directly, which policy
	// does not govern.
	SamePod bool
	Egress  Explanation
	Ingress Explanation
	// Ports are the destination ports, the tuple's own among them, over
	// which this Decision holds: the same tuple with any port in the range
	// is decided alike, by the same rules. It is as wide as the port
	// clauses that the evaluation looked at allow, which is often much
	// wider than the one port: a cache can keep one answer for all of it.
	Ports PortRange
}

// PortRange is an inclusive range of port numbers.
type PortRange struct {
	Lo, Hi uint16
}

// Contains reports whether port is in r.
func (r PortRange) Contains(port uint16) bool { return r.Lo <= port && port <= r.Hi }
