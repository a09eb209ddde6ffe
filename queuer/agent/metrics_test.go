package agent

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/nfq"
)

func TestParseProcNFQueue(t *testing.T) {
	f, err := os.Open("testdata/nfnetlink_queue")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := parseProcNFQueue(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []procQueue{
		{queue: 100, total: 0, dropped: 0, userDropped: 0, packetID: 42},
		{queue: 101, total: 3, dropped: 7, userDropped: 2, packetID: 9001},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parse = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"100 1 2\n", "100 1 2 3 4 5 6 x 1\n"} {
		if _, err := parseProcNFQueue(strings.NewReader(bad)); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
}

// gather returns every sample as "name,label=value,...".
func gather(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range mt.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			out[name] = mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
		}
	}
	return out
}

func TestMetricsExposition(t *testing.T) {
	c := cache.New(cache.Options{Size: 8})
	c.Get(cache.Key{})
	m := NewMetrics(c, nfq.NewCounters(100, 2), "testdata/nfnetlink_queue")
	m.observePacket(time.Millisecond, true, sourceDecider)
	m.failMode.WithLabelValues("open").Inc()
	m.unjudgeable.WithLabelValues("truncated").Inc()
	m.deciderRTT.Observe(0.001)
	m.applyLatency.Observe(0.001)
	m.SetMode("xt")
	mfs, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{
		"packet_process_time", "packet_process_duration_microseconds", "packet_count",
		"nfqueue_queue_total", "nfqueue_queue_dropped", "nfqueue_user_dropped", "nfqueue_packet_id",
		"tollgate_cache_hits_total", "tollgate_cache_misses_total", "tollgate_cache_evictions_total",
		"tollgate_decider_rtt_seconds", "tollgate_fail_mode_verdicts_total", "tollgate_dataplane_mode",
		"tollgate_decider_generation", "tollgate_nfqueue_packets_total", "tollgate_packets_unjudgeable_total",
		"tollgate_decider_busy_total", "tollgate_generation_apply_seconds", "tollgate_ruleset_repairs_total",
		"tollgate_watch_apply_errors_total", "tollgate_conntrack_cuts_lifted_total",
	} {
		if !names[want] {
			t.Errorf("metric %s missing", want)
		}
	}
	values := gather(t, m)
	for name, want := range map[string]float64{
		"nfqueue_queue_dropped,queue=100":                     0,
		"nfqueue_queue_dropped,queue=101":                     7,
		"nfqueue_user_dropped,queue=101":                      2,
		"nfqueue_packet_id,queue=101":                         9001,
		"tollgate_cache_misses_total":                         1,
		"tollgate_dataplane_mode,mode=xt":                     1,
		"tollgate_packets_unjudgeable_total,reason=truncated": 1,
	} {
		if got, ok := values[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	// Without the proc file the rest still gathers.
	if _, err := NewMetrics(nil, nil, "/nonexistent").registry.Gather(); err != nil {
		t.Errorf("gather without proc file: %v", err)
	}
}

func TestMetricsBypassed(t *testing.T) {
	// The proc file holds queue 100 (nothing dropped or waiting) and 101
	// (7 dropped, 2 dropped by netlink, 3 waiting): 12 packets accounted for.
	sent := uint64(100)
	m := NewMetrics(nil, nfq.NewCounters(100, 2), "testdata/nfnetlink_queue")
	if _, ok := gather(t, m)["tollgate_queue_bypassed_total,verdict=accept"]; ok {
		t.Fatal("bypassed reported before CountBypass")
	}
	m.CountBypass(func(context.Context) (uint64, error) { return sent, nil }, true)
	for _, step := range []struct {
		sent uint64
		want float64
	}{
		{100, 88},
		{150, 138},
		{140, 138}, // a lower reading never takes the counter back
		{5, 138},
	} {
		sent = step.sent
		v := gather(t, m)
		if got := v["tollgate_queue_bypassed_total,verdict=accept"]; got != step.want {
			t.Errorf("sent %d: bypassed = %v, want %v", step.sent, got, step.want)
		}
		if got := v["tollgate_queue_sent_total"]; got != float64(step.sent) {
			t.Errorf("sent %d: sent_total = %v", step.sent, got)
		}
	}
	// Other programs' queues do not count against ours; fail-closed labels
	// the bypass as dropped.
	m = NewMetrics(nil, nfq.NewCounters(100, 1), "testdata/nfnetlink_queue")
	m.CountBypass(func(context.Context) (uint64, error) { return 20, nil }, false)
	if got := gather(t, m)["tollgate_queue_bypassed_total,verdict=drop"]; got != 20 {
		t.Errorf("fail-closed, queue 100 only: bypassed = %v, want 20", got)
	}
	// A failing read is reported as an error metric, not a zero.
	m = NewMetrics(nil, nfq.NewCounters(100, 2), "testdata/nfnetlink_queue")
	m.CountBypass(func(context.Context) (uint64, error) { return 0, errors.New("nft gone") }, true)
	if _, err := m.registry.Gather(); err == nil || !strings.Contains(err.Error(), "nft gone") {
		t.Errorf("gather with failing counter read: err = %v", err)
	}
}
