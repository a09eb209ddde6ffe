package api

import (
	"testing"

	"github.com/tollgate/tollgate/decider/engine"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

func TestReasonAndExplanation(t *testing.T) {
	anp := engine.PolicyRef{Kind: "AdminNetworkPolicy", Name: "pass-y"}
	tests := []struct {
		name     string
		e        engine.Explanation
		reason   string
		wantRule bool
	}{{
		name: "network policy rule allows",
		e: engine.Explanation{Evaluated: true, Direction: engine.Ingress, Pod: engine.PodRef{Namespace: "y", Name: "b"},
			Tier: engine.TierNetworkPolicy, Policy: engine.PolicyRef{Kind: "NetworkPolicy", Namespace: "y", Name: "allow-x"},
			Rule: 0, Action: engine.ActionAllow, Allowed: true},
		reason:   "ingress of y/b: NetworkPolicy y/allow-x rule 0 allows",
		wantRule: true,
	}, {
		name: "named admin rule denies",
		e: engine.Explanation{Evaluated: true, Direction: engine.Egress, Pod: engine.PodRef{Namespace: "x", Name: "a"},
			Tier: engine.TierAdminNetworkPolicy, Policy: engine.PolicyRef{Kind: "AdminNetworkPolicy", Name: "deny-z"},
			Rule: 1, RuleName: "deny-all", Action: engine.ActionDeny},
		reason:   `egress of x/a: AdminNetworkPolicy deny-z rule 1 "deny-all" denies`,
		wantRule: true,
	}, {
		name: "default",
		e: engine.Explanation{Evaluated: true, Direction: engine.Ingress, Pod: engine.PodRef{Namespace: "z", Name: "c"},
			Tier: engine.TierDefault, Rule: -1, Action: engine.ActionAllow, Allowed: true},
		reason: "ingress of z/c: no policy decides: allowed by default",
	}, {
		name: "isolation after a pass",
		e: engine.Explanation{Evaluated: true, Direction: engine.Ingress, Pod: engine.PodRef{Namespace: "y", Name: "b"},
			Tier: engine.TierNetworkPolicy, Policy: engine.PolicyRef{Kind: "NetworkPolicy", Namespace: "y", Name: "default-deny"},
			Rule: -1, Action: engine.ActionDeny, Passed: true, PassPolicy: anp, PassRule: 2},
		reason: "ingress of y/b: isolated by NetworkPolicy y/default-deny (after AdminNetworkPolicy pass-y rule 2 passed) and no NetworkPolicy rule allows it: denied",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Reason(tc.e); got != tc.reason {
				t.Errorf("Reason:\n got %s\nwant %s", got, tc.reason)
			}
			x := explanation(tc.e)
			if (x.GetRule() != nil) != tc.wantRule {
				t.Errorf("rule %v, want present=%v", x.GetRule(), tc.wantRule)
			}
			if tc.wantRule && (x.GetRule().GetIndex() != uint32(tc.e.Rule) || x.GetRule().GetName() != tc.e.RuleName) {
				t.Errorf("rule %v", x.GetRule())
			}
			wantDir := tollgatev1.Direction_DIRECTION_INGRESS
			if tc.e.Direction == engine.Egress {
				wantDir = tollgatev1.Direction_DIRECTION_EGRESS
			}
			if x.GetDirection() != wantDir || x.GetPod().GetName() != tc.e.Pod.Name || x.GetPolicy().GetName() != tc.e.Policy.Name ||
				x.GetTier() == tollgatev1.Tier_TIER_UNSPECIFIED || x.GetAction() == tollgatev1.Action_ACTION_UNSPECIFIED {
				t.Errorf("explanation %v", x)
			}
			if (tc.e.Tier == engine.TierDefault) != (x.GetPolicy() == nil) {
				t.Errorf("policy %v for tier %v", x.GetPolicy(), tc.e.Tier)
			}
		})
	}
}
