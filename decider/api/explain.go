package api

import (
	"fmt"

	"github.com/tollgate/tollgate/decider/engine"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

var tiers = map[engine.Tier]tollgatev1.Tier{
	engine.TierAdminNetworkPolicy:           tollgatev1.Tier_TIER_ADMIN_NETWORK_POLICY,
	engine.TierClusterNetworkPolicyAdmin:    tollgatev1.Tier_TIER_CLUSTER_NETWORK_POLICY_ADMIN,
	engine.TierNetworkPolicy:                tollgatev1.Tier_TIER_NETWORK_POLICY,
	engine.TierBaselineAdminNetworkPolicy:   tollgatev1.Tier_TIER_BASELINE_ADMIN_NETWORK_POLICY,
	engine.TierClusterNetworkPolicyBaseline: tollgatev1.Tier_TIER_CLUSTER_NETWORK_POLICY_BASELINE,
	engine.TierDefault:                      tollgatev1.Tier_TIER_DEFAULT,
}

var actions = map[engine.Action]tollgatev1.Action{
	engine.ActionAllow: tollgatev1.Action_ACTION_ALLOW,
	engine.ActionDeny:  tollgatev1.Action_ACTION_DENY,
	engine.ActionPass:  tollgatev1.Action_ACTION_PASS,
}

func podRef(p engine.PodRef) *tollgatev1.PodRef {
	return &tollgatev1.PodRef{Namespace: p.Namespace, Name: p.Name}
}

// explanations converts d, the decision of t by snap: one explanation per
// evaluated direction, or one saying that a pod reached itself.
func explanations(snap *engine.Snapshot, t engine.Tuple, d *engine.Decision) []*tollgatev1.Explanation {
	var out []*tollgatev1.Explanation
	if d.SamePod {
		ref, _ := snap.PodAt(t.Src)
		out = append(out, &tollgatev1.Explanation{
			Direction: tollgatev1.Direction_DIRECTION_EGRESS, Pod: podRef(ref), Tier: tollgatev1.Tier_TIER_DEFAULT,
			Action: tollgatev1.Action_ACTION_ALLOW, Verdict: tollgatev1.Verdict_VERDICT_ALLOW,
			Reason: fmt.Sprintf("%s/%s reaches its own IP directly: not subject to policy", ref.Namespace, ref.Name),
		})
	}
	for _, e := range []*engine.Explanation{&d.Egress, &d.Ingress} {
		if e.Evaluated {
			out = append(out, explanation(*e))
		}
	}
	return out
}

// explanation converts one evaluated direction.
func explanation(e engine.Explanation) *tollgatev1.Explanation {
	out := &tollgatev1.Explanation{
		Direction: tollgatev1.Direction_DIRECTION_INGRESS,
		Pod:       podRef(e.Pod),
		Tier:      tiers[e.Tier],
		Action:    actions[e.Action],
		Verdict:   verdict(e.Allowed),
		Reason:    Reason(e),
		Domain:    e.Domain,
	}
	if e.Direction == engine.Egress {
		out.Direction = tollgatev1.Direction_DIRECTION_EGRESS
	}
	if e.Policy.Kind != "" {
		out.Policy = &tollgatev1.PolicyRef{Kind: e.Policy.Kind, Namespace: e.Policy.Namespace, Name: e.Policy.Name}
	}
	if e.Rule >= 0 {
		out.Rule = &tollgatev1.RuleRef{Index: uint32(e.Rule), Name: e.RuleName}
	}
	return out
}

// Reason is a one-line human summary of an explanation, for example
// `ingress of y/b: NetworkPolicy y/allow-x rule 0 allows`.
func Reason(e engine.Explanation) string {
	who := fmt.Sprintf("%s of %s/%s", e.Direction, e.Pod.Namespace, e.Pod.Name)
	verb := "denies"
	if e.Allowed {
		verb = "allows"
	}
	pass := ""
	if e.Passed {
		pass = fmt.Sprintf(" (after %s rule %d passed)", policyName(e.PassPolicy), e.PassRule)
	}
	switch {
	case e.Tier == engine.TierDefault:
		return fmt.Sprintf("%s: no policy decides%s: allowed by default", who, pass)
	case e.Rule < 0:
		return fmt.Sprintf("%s: isolated by %s%s and no NetworkPolicy rule allows it: denied", who, policyName(e.Policy), pass)
	}
	rule := fmt.Sprintf("rule %d", e.Rule)
	if e.RuleName != "" {
		rule += fmt.Sprintf(" %q", e.RuleName)
	}
	if e.Domain != "" {
		rule += fmt.Sprintf(" (domain %s)", e.Domain)
	}
	return fmt.Sprintf("%s: %s %s %s%s", who, policyName(e.Policy), rule, verb, pass)
}

func policyName(p engine.PolicyRef) string {
	if p.Namespace != "" {
		return fmt.Sprintf("%s %s/%s", p.Kind, p.Namespace, p.Name)
	}
	return fmt.Sprintf("%s %s", p.Kind, p.Name)
}
