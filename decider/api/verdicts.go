package api

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/decider/engine"
)

// DefaultMaxPolicySeries is how many policies get their own series in the
// per-policy metrics unless Options say otherwise.
const DefaultMaxPolicySeries = 100

// OtherPolicy is the policy label of the verdicts of policies past the
// series limit. Kubernetes names cannot contain parentheses, so it never
// names a real policy.
const OtherPolicy = "(other)"

// actionIndex maps the actions counted to a counter index.
var actionIndex = [...]int{engine.ActionAllow: 0, engine.ActionDeny: 1, engine.ActionPass: 2}

var actionLabels = [3]string{"Allow", "Deny", "Pass"}

var (
	descVerdicts = prometheus.NewDesc("tollgate_decider_verdicts_total",
		"Directions decided (action Allow or Deny) and Pass rules crossed (action Pass), by the policy's tier and name "+
			"(namespace/name for NetworkPolicy, empty for the default tier); policies past the series limit count as policy=\""+OtherPolicy+"\".",
		[]string{"direction", "tier", "policy", "action"}, nil)
	descVerdictPolicies = prometheus.NewDesc("tollgate_decider_verdict_policies",
		"Policies with their own series in tollgate_decider_verdicts_total; at the limit, new policies count as \""+OtherPolicy+"\".", nil, nil)
	descVerdictPoliciesLimit = prometheus.NewDesc("tollgate_decider_verdict_policies_limit",
		"The most policies that get their own series in tollgate_decider_verdicts_total.", nil, nil)
)

// policyCounters counts the verdicts of one labelled policy (or of the
// other bucket of one tier), by direction and action.
type policyCounters struct {
	tier   engine.Tier
	policy string
	n      [2][3]atomic.Uint64
}

// seriesKey identifies a labelled policy across snapshots.
type seriesKey struct {
	tier engine.Tier
	ref  engine.PolicyRef
}

// verdictTable holds, for one snapshot, each policy's counters by policy id
// (see engine.PolicyIDs), resolved on first use: the hot path costs an
// atomic load and an atomic add, never a lookup by name.
type verdictTable struct {
	snap     *engine.Snapshot
	policies []engine.PolicyInfo
	slots    []atomic.Pointer[policyCounters]
}

// verdictMetrics counts verdicts per policy with at most max labelled
// policies. It is a prometheus.Collector.
type verdictMetrics struct {
	max   int
	table atomic.Pointer[verdictTable]

	mu      sync.Mutex // guards series, other and building Collect's view
	series  map[seriesKey]*policyCounters
	other   map[engine.Tier]*policyCounters
	unnamed *policyCounters // the default tier
}

func newVerdictMetrics(max int) *verdictMetrics {
	return &verdictMetrics{
		max:     max,
		series:  map[seriesKey]*policyCounters{},
		other:   map[engine.Tier]*policyCounters{},
		unnamed: &policyCounters{tier: engine.TierDefault},
	}
}

// use makes snap's policies the ones ids refer to.
func (v *verdictMetrics) use(snap *engine.Snapshot) {
	p := snap.Policies()
	v.table.Store(&verdictTable{snap: snap, policies: p, slots: make([]atomic.Pointer[policyCounters], len(p))})
}

// count records the decision d of snap, whose policies ids names.
func (v *verdictMetrics) count(snap *engine.Snapshot, d *engine.Decision, ids *engine.PolicyIDs) {
	t := v.table.Load()
	for dir, e := range [2]*engine.Explanation{&d.Egress, &d.Ingress} {
		if !e.Evaluated {
			continue
		}
		if e.Tier == engine.TierDefault {
			v.unnamed.n[dir][0].Add(1)
		} else if c := v.counters(t, snap, ids.Policy[dir]); c != nil {
			c.n[dir][actionIndex[e.Action]].Add(1)
		}
		if e.Passed {
			if c := v.counters(t, snap, ids.Pass[dir]); c != nil {
				c.n[dir][actionIndex[engine.ActionPass]].Add(1)
			}
		}
	}
}

// counters returns the counters of policy id of snap.
func (v *verdictMetrics) counters(t *verdictTable, snap *engine.Snapshot, id uint32) *policyCounters {
	if id == 0 {
		return nil
	}
	if t == nil || t.snap != snap {
		// A decision of a snapshot the table does not hold (published a
		// moment ago, or just replaced): the slow way.
		info := snap.Policies()[id-1]
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.resolveLocked(info)
	}
	slot := &t.slots[id-1]
	if c := slot.Load(); c != nil {
		return c
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	c := v.resolveLocked(t.policies[id-1])
	slot.Store(c)
	return c
}

// resolveLocked returns the labelled counters of a policy, creating them
// while under the limit, or its tier's other bucket.
func (v *verdictMetrics) resolveLocked(info engine.PolicyInfo) *policyCounters {
	key := seriesKey{tier: info.Tier, ref: info.Ref}
	if c := v.series[key]; c != nil {
		return c
	}
	if len(v.series) < v.max {
		c := &policyCounters{tier: info.Tier, policy: policyLabel(info.Ref)}
		v.series[key] = c
		return c
	}
	c := v.other[info.Tier]
	if c == nil {
		c = &policyCounters{tier: info.Tier, policy: OtherPolicy}
		v.other[info.Tier] = c
	}
	return c
}

// policyLabel is the policy label of ref: namespace/name for a
// NetworkPolicy, the name for the cluster-scoped kinds.
func policyLabel(ref engine.PolicyRef) string {
	if ref.Namespace != "" {
		return ref.Namespace + "/" + ref.Name
	}
	return ref.Name
}

// Describe implements prometheus.Collector.
func (v *verdictMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descVerdicts
	ch <- descVerdictPolicies
	ch <- descVerdictPoliciesLimit
}

// Collect implements prometheus.Collector: one series per counter that
// is not zero.
func (v *verdictMetrics) Collect(ch chan<- prometheus.Metric) {
	v.mu.Lock()
	all := make([]*policyCounters, 0, len(v.series)+len(v.other)+1)
	all = append(all, v.unnamed)
	for _, c := range v.series {
		all = append(all, c)
	}
	for _, c := range v.other {
		all = append(all, c)
	}
	labelled := len(v.series)
	v.mu.Unlock()
	for _, c := range all {
		for dir := range 2 {
			for a := range 3 {
				if n := c.n[dir][a].Load(); n > 0 {
					ch <- prometheus.MustNewConstMetric(descVerdicts, prometheus.CounterValue, float64(n),
						engine.Direction(dir).String(), c.tier.String(), c.policy, actionLabels[a])
				}
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descVerdictPolicies, prometheus.GaugeValue, float64(labelled))
	ch <- prometheus.MustNewConstMetric(descVerdictPoliciesLimit, prometheus.GaugeValue, float64(v.max))
}
