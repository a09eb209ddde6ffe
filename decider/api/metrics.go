package api

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/decider/engine"
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
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
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
			Name: "tollgate_decider_snapshot_build_seconds", Help: "Time to gather objects and compile one snapshot.",
			Buckets: prometheus.ExponentialBuckets(1e-4, 4, 10),
		}),
		selectedPods: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_decider_selected_pods", Help: "Pods that some policy selects, cluster-wide.",
		}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_decider_objects", Help: "Objects in the published snapshot by kind.",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.requests, m.streamQueries, m.latency, m.generation, m.buildSeconds, m.selectedPods, m.objects)
	return m
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

// Published records a new snapshot.
func (m *Metrics) Published(gen uint64, build time.Duration, st engine.Stats) {
	if m == nil {
		return
	}
	m.generation.Set(float64(gen))
	m.buildSeconds.Observe(build.Seconds())
	m.selectedPods.Set(float64(st.SelectedPods))
	for kind, n := range map[string]int{
		"Pod": st.Pods, "Namespace": st.Namespaces, "Node": st.Nodes, "NetworkPolicy": st.NetworkPolicies,
		"AdminNetworkPolicy": st.AdminNetworkPolicies, "BaselineAdminNetworkPolicy": st.BaselineAdminNetworkPolicies,
		"ClusterNetworkPolicy": st.ClusterNetworkPolicies,
	} {
		m.objects.WithLabelValues(kind).Set(float64(n))
	}
}
