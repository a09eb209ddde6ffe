package explain

import (
	"net/netip"

	"github.com/tollgate/tollgate/decider/api"
	"github.com/tollgate/tollgate/decider/engine"
)

// The types below are the JSON output of `decider explain -o json`,
// documented field by field in docs/explain.md. Fields are only ever added;
// lists are always present (possibly empty), optional objects are omitted.

// Version is the version of the JSON output; it changes only if a field
// changes meaning or goes away.
const Version = 1

// Document is the whole JSON output.
type Document struct {
	Version int `json:"version"`
	// Mode is "flows", "pod" or "matrix".
	Mode string `json:"mode"`
	// Flows answers --from/--to without --with.
	Flows []Flow `json:"flows,omitempty"`
	// Pod answers --pod.
	Pod *Pod `json:"pod,omitempty"`
	// Matrices answers --matrix without --with, one per port.
	Matrices []Matrix `json:"matrices,omitempty"`
	// WhatIf answers --with, for the flows or the matrix.
	WhatIf *WhatIf `json:"whatIf,omitempty"`
}

// Endpoint is one end of a connection.
type Endpoint struct {
	IP string `json:"ip"`
	// Pod is "namespace/name" when the address is a pod's.
	Pod string `json:"pod,omitempty"`
}

// Connection names a connection.
type Connection struct {
	From     Endpoint `json:"from"`
	To       Endpoint `json:"to"`
	Protocol string   `json:"protocol"`
	Port     uint16   `json:"port"`
}

// Result is a verdict with its explanation.
type Result struct {
	// Verdict is "allow" or "deny".
	Verdict string `json:"verdict"`
	// SamePod is set when a pod reaches its own IP directly, which policy
	// does not govern; Directions is then empty.
	SamePod bool `json:"samePod,omitempty"`
	// Directions holds one entry per evaluated direction: egress when the
	// source is a pod, ingress when the destination is.
	Directions []Direction `json:"directions"`
}

// Flow is a connection and its result.
type Flow struct {
	Connection
	Result
}

// PolicyRef names a policy.
type PolicyRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// RuleRef names a rule of a policy.
type RuleRef struct {
	Index int    `json:"index"`
	Name  string `json:"name,omitempty"`
}

// Pass is the admin or baseline rule whose Pass sent the decision on.
type Pass struct {
	Policy PolicyRef `json:"policy"`
	Rule   RuleRef   `json:"rule"`
}

// Direction explains one direction of a connection.
type Direction struct {
	// Direction is "egress" or "ingress".
	Direction string `json:"direction"`
	// Pod is the pod whose policies were evaluated.
	Pod     string `json:"pod"`
	Verdict string `json:"verdict"`
	// Tier, Policy, Rule and Action: what decided (see engine.Explanation);
	// Policy is absent for the default tier, Rule when no rule matched.
	Tier   string     `json:"tier"`
	Policy *PolicyRef `json:"policy,omitempty"`
	Rule   *RuleRef   `json:"rule,omitempty"`
	Action string     `json:"action"`
	Pass   *Pass      `json:"pass,omitempty"`
	// Reason is the one-line summary the gRPC API gives too.
	Reason string `json:"reason"`
	// Steps is the walk through the stages, in order; the last decided.
	Steps []Step `json:"steps"`
}

// Step is one stage of the walk.
type Step struct {
	// Stage is "admin", "NetworkPolicy", "baseline" or "default".
	Stage string `json:"stage"`
	// Policies are the stage's policies that select the pod.
	Policies []PolicyRef `json:"policies"`
	// Outcome is "no-match", "pass" or "decided".
	Outcome string `json:"outcome"`
	// For "pass" and "decided": what matched.
	Tier   string     `json:"tier,omitempty"`
	Policy *PolicyRef `json:"policy,omitempty"`
	Rule   *RuleRef   `json:"rule,omitempty"`
	Action string     `json:"action,omitempty"`
}

// Matrix is the who-reaches-whom grid of some pods on one port.
type Matrix struct {
	Protocol string   `json:"protocol"`
	Port     uint16   `json:"port"`
	Pods     []string `json:"pods"`
	// Verdicts[i][j] is the verdict ("allow" or "deny") from Pods[i] to
	// Pods[j].
	Verdicts [][]string `json:"verdicts"`
}

// WhatIf lists the connections whose verdict the --with files change.
type WhatIf struct {
	Files []string `json:"files"`
	// Checked counts the connections compared.
	Checked int      `json:"checked"`
	Changes []Change `json:"changes"`
}

// Change is one connection whose verdict changes.
type Change struct {
	Connection
	Before Result `json:"before"`
	After  Result `json:"after"`
}

// Pod lists the policies that select a pod.
type Pod struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Node      string   `json:"node"`
	IPs       []string `json:"ips"`
	// Egress and Ingress list the selecting policies in evaluation order.
	Egress  []SelectingPolicy `json:"egress"`
	Ingress []SelectingPolicy `json:"ingress"`
}

// SelectingPolicy is one policy that selects the pod in one direction.
type SelectingPolicy struct {
	// Stage is "admin", "NetworkPolicy" or "baseline".
	Stage  string    `json:"stage"`
	Tier   string    `json:"tier"`
	Policy PolicyRef `json:"policy"`
	// Priority is set for AdminNetworkPolicy and ClusterNetworkPolicy.
	Priority *int32 `json:"priority,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is one rule of a selecting policy, for the direction.
type Rule struct {
	Index  int    `json:"index"`
	Name   string `json:"name,omitempty"`
	Action string `json:"action"`
	// AnyPort: the rule lists no ports. Otherwise Ports lists them (see
	// engine.RuleView); both empty means the rule matches no port.
	AnyPort bool     `json:"anyPort"`
	Ports   []string `json:"ports"`
	// AllPeers: every endpoint is a peer. Otherwise Peers lists them.
	AllPeers bool   `json:"allPeers"`
	Peers    []Peer `json:"peers"`
}

// Peer is one peer of a rule.
type Peer struct {
	// Kind is "pods", "ipBlock", "networks", "nodes" or "unsupported".
	Kind        string   `json:"kind"`
	Description string   `json:"description"`
	Pods        []string `json:"pods,omitempty"`
	Nodes       []string `json:"nodes,omitempty"`
}

func verdict(allowed bool) string {
	if allowed {
		return "allow"
	}
	return "deny"
}

func podName(p engine.PodRef) string { return p.Namespace + "/" + p.Name }

func policyRef(p engine.PolicyRef) PolicyRef {
	return PolicyRef{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}
}

func optPolicy(p engine.PolicyRef) *PolicyRef {
	if p.Kind == "" {
		return nil
	}
	r := policyRef(p)
	return &r
}

func optRule(index int, name string) *RuleRef {
	if index < 0 {
		return nil
	}
	return &RuleRef{Index: index, Name: name}
}

func policyRefs(ps []engine.PolicyRef) []PolicyRef {
	out := make([]PolicyRef, len(ps))
	for i, p := range ps {
		out[i] = policyRef(p)
	}
	return out
}

// result converts a trace.
func result(tr engine.Trace) Result {
	r := Result{Verdict: verdict(tr.Decision.Allowed), SamePod: tr.Decision.SamePod, Directions: []Direction{}}
	for _, d := range []struct {
		e     engine.Explanation
		steps []engine.Step
	}{{tr.Decision.Egress, tr.Egress}, {tr.Decision.Ingress, tr.Ingress}} {
		if d.e.Evaluated {
			r.Directions = append(r.Directions, direction(d.e, d.steps))
		}
	}
	return r
}

func direction(e engine.Explanation, steps []engine.Step) Direction {
	out := Direction{
		Direction: e.Direction.String(),
		Pod:       podName(e.Pod),
		Verdict:   verdict(e.Allowed),
		Tier:      e.Tier.String(),
		Policy:    optPolicy(e.Policy),
		Rule:      optRule(e.Rule, e.RuleName),
		Action:    e.Action.String(),
		Reason:    api.Reason(e),
		Steps:     make([]Step, len(steps)),
	}
	for i, st := range steps {
		s := Step{Stage: st.Stage.String(), Policies: policyRefs(st.Policies), Outcome: st.Outcome.String()}
		if st.Outcome != engine.OutcomeNoMatch {
			s.Tier, s.Policy, s.Rule, s.Action = st.Tier.String(), optPolicy(st.Policy), optRule(st.Rule, st.RuleName), st.Action.String()
		}
		if st.Outcome == engine.OutcomePass {
			out.Pass = &Pass{Policy: policyRef(st.Policy), Rule: RuleRef{Index: st.Rule, Name: st.RuleName}}
		}
		out.Steps[i] = s
	}
	return out
}

// connection describes a tuple, naming the pods at its ends.
func connection(snap *engine.Snapshot, t engine.Tuple) Connection {
	end := func(ip netip.Addr) Endpoint {
		e := Endpoint{IP: ip.String()}
		if ref, ok := snap.PodAt(ip); ok {
			e.Pod = podName(ref)
		}
		return e
	}
	return Connection{From: end(t.Src), To: end(t.Dst), Protocol: t.Proto.String(), Port: t.DstPort}
}

// podDoc converts a pod's policies.
func podDoc(pp engine.PodPolicies) *Pod {
	out := &Pod{Namespace: pp.Pod.Ref.Namespace, Name: pp.Pod.Ref.Name, Node: pp.Pod.Node, IPs: make([]string, len(pp.Pod.IPs))}
	for i, ip := range pp.Pod.IPs {
		out.IPs[i] = ip.String()
	}
	out.Egress = selecting(pp.Selecting[engine.Egress])
	out.Ingress = selecting(pp.Selecting[engine.Ingress])
	return out
}

func selecting(sps []engine.SelectingPolicy) []SelectingPolicy {
	out := make([]SelectingPolicy, len(sps))
	for i, sp := range sps {
		s := SelectingPolicy{Stage: sp.Stage.String(), Tier: sp.Tier.String(), Policy: policyRef(sp.Policy), Rules: make([]Rule, len(sp.Rules))}
		if sp.Stage != engine.StageNetworkPolicy && sp.Tier != engine.TierBaselineAdminNetworkPolicy {
			prio := sp.Priority
			s.Priority = &prio
		}
		for j, r := range sp.Rules {
			rule := Rule{Index: r.Index, Name: r.Name, Action: r.Action.String(), AnyPort: r.AnyPort, Ports: append([]string{}, r.Ports...),
				AllPeers: r.AllPeers, Peers: make([]Peer, len(r.Peers))}
			for k, p := range r.Peers {
				peer := Peer{Kind: p.Kind, Description: p.Description, Nodes: p.Nodes}
				for _, pod := range p.Pods {
					peer.Pods = append(peer.Pods, podName(pod))
				}
				rule.Peers[k] = peer
			}
			s.Rules[j] = rule
		}
		out[i] = s
	}
	return out
}
