package engine

import (
	"cmp"
	"slices"
	"strings"
)

// Stage is one step of the evaluation of a direction. The admin stage holds
// AdminNetworkPolicies and ClusterNetworkPolicies of tier Admin (ordered by
// priority together), the baseline stage ClusterNetworkPolicies of tier
// Baseline and the BaselineAdminNetworkPolicy.
type Stage uint8

// Stages in evaluation order.
const (
	StageAdmin Stage = iota + 1
	StageNetworkPolicy
	StageBaseline
	StageDefault
)

// String names the stage.
func (s Stage) String() string {
	switch s {
	case StageAdmin:
		return "admin"
	case StageNetworkPolicy:
		return "NetworkPolicy"
	case StageBaseline:
		return "baseline"
	case StageDefault:
		return "default"
	}
	return "none"
}

// Outcome is what a stage did with a connection.
type Outcome uint8

// Outcomes.
const (
	// OutcomeNoMatch: no rule of the stage matched (or no policy of the
	// stage selects the pod); evaluation went on to the next stage.
	OutcomeNoMatch Outcome = iota
	// OutcomePass: a Pass rule matched; evaluation went on to the next
	// stage.
	OutcomePass
	// OutcomeDecided: the stage decided the direction.
	OutcomeDecided
)

// String names the outcome.
func (o Outcome) String() string {
	switch o {
	case OutcomePass:
		return "pass"
	case OutcomeDecided:
		return "decided"
	}
	return "no-match"
}

// Step records one stage of the walk through the tiers for one direction.
type Step struct {
	Stage Stage
	// Policies are the policies of the stage that select the pod in this
	// direction, in evaluation order; empty when none does.
	Policies []PolicyRef
	Outcome  Outcome
	// For OutcomePass and OutcomeDecided: the tier, policy and rule that
	// matched (Rule -1 for a NetworkPolicy isolation that no rule allowed,
	// and for the default stage) and its action.
	Tier     Tier
	Policy   PolicyRef
	Rule     int
	RuleName string
	Action   Action
}

// Trace is a Decision with the walk that led to it: for each evaluated
// direction, the stages visited in order. The last step of a direction is
// the one that decided it, and agrees with the Decision's explanation.
type Trace struct {
	Decision        Decision
	Egress, Ingress []Step
}

// Trace decides t as Decide does, recording every stage visited. It
// allocates; it is meant for tools that explain verdicts, not for the
// packet path.
func (s *Snapshot) Trace(t Tuple) Trace {
	w := [2]walk{{trace: true}, {trace: true}}
	d := s.decide(t, &w)
	return Trace{Decision: d, Egress: w[Egress].steps, Ingress: w[Ingress].steps}
}

// clusterStep records an admin or baseline stage: the policies that select
// the pod and the rule that matched, if any.
func (w *walk) clusterStep(stage Stage, policies []*clusterPolicy, p *clusterPolicy, r *clusterRule) {
	if r != nil {
		if r.action == ActionPass {
			w.passID = p.id
		} else {
			w.id = p.id
		}
	}
	if !w.trace {
		return
	}
	st := Step{Stage: stage, Rule: -1}
	for _, cp := range policies {
		st.Policies = append(st.Policies, cp.ref)
	}
	if r != nil {
		st.Outcome = OutcomeDecided
		if r.action == ActionPass {
			st.Outcome = OutcomePass
		}
		st.Tier, st.Policy, st.Rule, st.RuleName, st.Action = p.tier, p.ref, r.index, r.name, r.action
	}
	w.steps = append(w.steps, st)
}

// npStep records the NetworkPolicy stage: the policies that isolate the pod
// (none: the stage did not decide) and e, the explanation when one did,
// by policy decider.
func (w *walk) npStep(nps []*netPolicy, decider *netPolicy, e Explanation) {
	if decider != nil {
		w.id = decider.id
	}
	if !w.trace {
		return
	}
	st := Step{Stage: StageNetworkPolicy, Rule: -1}
	for _, p := range nps {
		st.Policies = append(st.Policies, p.ref)
	}
	if decider != nil {
		st.Outcome, st.Tier, st.Policy, st.Rule, st.Action = OutcomeDecided, e.Tier, e.Policy, e.Rule, e.Action
	}
	w.steps = append(w.steps, st)
}

// defaultStep records that no stage decided: the default allows.
func (w *walk) defaultStep() {
	if w.trace {
		w.steps = append(w.steps, Step{Stage: StageDefault, Outcome: OutcomeDecided, Tier: TierDefault, Rule: -1, Action: ActionAllow})
	}
}

// PolicyInfo names a policy and the tier it is evaluated in.
type PolicyInfo struct {
	Ref  PolicyRef
	Tier Tier
}

// Policies lists the policies that select at least one pod, ordered by
// kind, namespace and name. The ids of DecideIDs index it: id n names
// Policies()[n-1].
func (s *Snapshot) Policies() []PolicyInfo { return slices.Clone(s.policies) }

// numberPolicies gives every policy attached to a pod its id (see
// PolicyIDs). Ids follow the order of kind, namespace and name, so that the
// same policies get the same ids whatever the input order.
func (s *Snapshot) numberPolicies() {
	type numbered struct {
		info PolicyInfo
		id   *uint32
	}
	seen := map[*uint32]bool{}
	var all []numbered
	add := func(info PolicyInfo, id *uint32) {
		if !seen[id] {
			seen[id] = true
			all = append(all, numbered{info, id})
		}
	}
	for _, pd := range s.pods {
		for d := range 2 {
			for _, p := range pd.admin[d] {
				add(PolicyInfo{p.ref, p.tier}, &p.id)
			}
			for _, p := range pd.baseline[d] {
				add(PolicyInfo{p.ref, p.tier}, &p.id)
			}
			for _, p := range pd.np[d] {
				add(PolicyInfo{p.ref, TierNetworkPolicy}, &p.id)
			}
		}
	}
	slices.SortFunc(all, func(a, b numbered) int {
		return cmp.Or(strings.Compare(a.info.Ref.Kind, b.info.Ref.Kind), strings.Compare(a.info.Ref.Namespace, b.info.Ref.Namespace),
			strings.Compare(a.info.Ref.Name, b.info.Ref.Name))
	})
	s.policies = make([]PolicyInfo, len(all))
	for i, n := range all {
		*n.id = uint32(i + 1)
		s.policies[i] = n.info
	}
}
