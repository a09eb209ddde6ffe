package api

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
)

// Metrics are the decider's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	requests      *prometheus.CounterVec
	streamQueries prometheus.Counter
	latency       prometheus.Histogram
	generation    prometheus.Gauge
	buildSeconds  prometheus.Histogram
	selectedPods  prometheus.Gauge
	objects       *prometheus.GaugeVec
	warnings      *prometheus.GaugeVec
	verdicts      *verdictMetrics
	dnsAnswers    *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg. The
// per-policy metrics (verdicts, warnings) give at most maxPolicies
// policies series of their own; the others are counted under the policy
// label OtherPolicy. maxPolicies <= 0 means DefaultMaxPolicySeries.
func NewMetrics(reg prometheus.Registerer, maxPolicies int) *Metrics {
	if maxPolicies <= 0 {
		maxPolicies = DefaultMaxPolicySeries
	}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_decider_requests_total", Help: "Decide calls by outcome.",
		}, []string{"method", "outcome"}),
		streamQueries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_decider_stream_queries_total", Help: "Queries answered on DecideStream.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tollgate_decider_decide_seconds", Help: "Time to answer one Decide call or one DecideStream message.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
		}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_decider_generation", Help: "Generation of the published snapshot.",
		}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tollgate_decider_snapshot_build_seconds", Help: "Time to gather objects, compile one snapshot and work out which addresses it changed.",
			Buckets: prometheus.ExponentialBuckets(1e-4, 4, 10),
		}),
		selectedPods: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_decider_selected_pods", Help: "Pods that some policy selects, cluster-wide.",
		}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_decider_objects", Help: "Objects in the published snapshot by kind.",
		}, []string{"kind"}),
		warnings: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_decider_policy_warnings",
			Help: "Warnings (fields skipped or reinterpreted) about each policy in the published snapshot; policies past the series limit add up under policy=\"" + OtherPolicy + "\".",
		}, []string{"kind", "policy"}),
		verdicts: newVerdictMetrics(maxPolicies),
		dnsAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_decider_dns_answers_total",
			Help: "DNS answers reported with Learn: result=learned (for a pod a domainNames rule governs) or ignored (any other pod).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.requests, m.streamQueries, m.latency, m.generation, m.buildSeconds, m.selectedPods, m.objects,
		m.warnings, m.verdicts, m.dnsAnswers)
	return m
}

// RegisterDNS exports what store holds: entries, pods and evictions.
func RegisterDNS(reg prometheus.Registerer, stats func() (entries, pods int, evicted uint64)) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_decider_dns_entries",
			Help: "Learned (pod, name, address) entries held for domainNames peers.",
		}, func() float64 { e, _, _ := stats(); return float64(e) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_decider_dns_pods",
			Help: "Pods with learned DNS answers.",
		}, func() float64 { _, p, _ := stats(); return float64(p) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tollgate_decider_dns_evicted_total",
			Help: "Learned entries dropped before they expired, to stay within the bounds (the soonest to expire go first).",
		}, func() float64 { _, _, ev := stats(); return float64(ev) }),
	)
}

// learned counts one Learn call.
func (m *Metrics) learned(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.dnsAnswers.WithLabelValues("learned").Inc()
	} else {
		m.dnsAnswers.WithLabelValues("ignored").Inc()
	}
}

func (m *Metrics) request(method, outcome string) {
	if m != nil {
		m.requests.WithLabelValues(method, outcome).Inc()
	}
}

func (m *Metrics) streamed(n int) {
	if m != nil {
		m.streamQueries.Add(float64(n))
	}
}

func (m *Metrics) observe(d time.Duration) {
	if m != nil {
		m.latency.Observe(d.Seconds())
	}
}

// decided records the verdict d of snap for the per-policy counters.
func (m *Metrics) decided(snap *engine.Snapshot, d *engine.Decision, ids *engine.PolicyIDs) {
	if m != nil {
		m.verdicts.count(snap, d, ids)
	}
}

// Published records a new snapshot: its generation, build time, objects
// and warnings, and makes its policies the ones verdicts are counted for.
func (m *Metrics) Published(v *state.View) {
	if m == nil {
		return
	}
	m.verdicts.use(v.Snapshot)
	st := v.Snapshot.Stats()
	m.generation.Set(float64(v.Generation))
	m.buildSeconds.Observe(v.BuildTime.Seconds())
	m.selectedPods.Set(float64(st.SelectedPods))
	for kind, n := range map[string]int{
		"Pod": st.Pods, "Namespace": st.Namespaces, "Node": st.Nodes, "NetworkPolicy": st.NetworkPolicies,
		"AdminNetworkPolicy": st.AdminNetworkPolicies, "BaselineAdminNetworkPolicy": st.BaselineAdminNetworkPolicies,
		"ClusterNetworkPolicy": st.ClusterNetworkPolicies,
	} {
		m.objects.WithLabelValues(kind).Set(float64(n))
	}
	m.warnings.Reset()
	byPolicy := v.Snapshot.WarningsByPolicy()
	refs := slices.SortedFunc(maps.Keys(byPolicy), func(a, b engine.PolicyRef) int {
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	other := map[string]int{}
	for i, ref := range refs {
		if i >= m.verdicts.max {
			other[ref.Kind] += byPolicy[ref]
			continue
		}
		m.warnings.WithLabelValues(ref.Kind, policyLabel(ref)).Set(float64(byPolicy[ref]))
	}
	for kind, n := range other {
		m.warnings.WithLabelValues(kind, OtherPolicy).Set(float64(n))
	}
}
