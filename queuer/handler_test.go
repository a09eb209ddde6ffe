package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// fakeDecider answers from a table, or fails with err, or blocks until the
// query's deadline when hang is set.
type fakeDecider struct {
	mu      sync.Mutex
	allow   bool
	gen     uint64
	err     error
	hang    bool
	queries []client.Query
}

func (f *fakeDecider) Decide(ctx context.Context, q client.Query) (client.Result, error) {
	f.mu.Lock()
	f.queries = append(f.queries, q)
	f.mu.Unlock()
	if f.hang {
		<-ctx.Done()
		return client.Result{}, ctx.Err()
	}
	if f.err != nil {
		return client.Result{}, f.err
	}
	return client.Result{Allow: f.allow, Generation: f.gen}, nil
}

// fakeSink records kernel-cache traffic.
type fakeSink struct {
	added    []dataplane.Verdict
	resets   []uint64
	advances []uint64
}

func (s *fakeSink) Add(v dataplane.Verdict, _ uint64) { s.added = append(s.added, v) }
func (s *fakeSink) Reset(_ context.Context, gen uint64) error {
	s.resets = append(s.resets, gen)
	return nil
}
func (s *fakeSink) Advance(_ context.Context, gen uint64, _ func(netip.Addr) bool) error {
	s.advances = append(s.advances, gen)
	return nil
}

// fakeSelected records SyncSelected calls.
type fakeSelected struct{ v4, v6 []netip.Addr }

func (f *fakeSelected) SyncSelected(_ context.Context, v4, v6 []netip.Addr) error {
	f.v4, f.v6 = v4, v6
	return nil
}

// pkt4 builds an IPv4 packet with a transport header of proto whose first
// four bytes are the ports (or ICMP type and code).
func pkt4(src, dst string, proto uint8, sport, dport uint16) []byte {
	b := make([]byte, 20+20)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	return b
}

func pkt6ICMP(typ uint8) []byte {
	b := make([]byte, 40+24)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], 24)
	b[6] = 58
	s, d := netip.MustParseAddr("fd00::1").As16(), netip.MustParseAddr("fd00::2").As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b[40] = typ
	return b
}

func newTestHandler(dec *fakeDecider, failOpen bool) (*handler, *fakeSink) {
	sink := &fakeSink{}
	return &handler{
		cache:    cache.New(cache.Options{Size: 128}),
		decider:  dec,
		sink:     sink,
		failOpen: failOpen,
		timeout:  20 * time.Millisecond,
		metrics:  newMetrics(nil, nil, "/nonexistent"),
	}, sink
}

func TestHandlerCacheAndDecider(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 3}
	h, sink := newTestHandler(dec, true)
	syn := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40000, 80)}
	if v := h.handle(syn); !v.Accept {
		t.Fatal("allowed connection dropped")
	}
	if len(dec.queries) != 1 {
		t.Fatalf("decider asked %d times, want 1", len(dec.queries))
	}
	want := client.Query{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DstPort: 80}
	if dec.queries[0] != want {
		t.Errorf("query = %+v, want %+v", dec.queries[0], want)
	}
	if len(sink.added) != 1 || sink.added[0] != (dataplane.Verdict{Src: want.Src, Dst: want.Dst, Proto: 6, DstPort: 80, Allow: true}) {
		t.Errorf("kernel cache got %+v", sink.added)
	}
	// Another source port of the same tuple is a cache hit: no second query.
	dec.allow = false
	again := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40001, 80)}
	if v := h.handle(again); !v.Accept {
		t.Error("cache hit gave the wrong verdict")
	}
	if len(dec.queries) != 1 {
		t.Errorf("cache hit still asked the decider (%d queries)", len(dec.queries))
	}
	if n := value(t, h.metrics.packets.WithLabelValues(sourceCache, "accept")); n != 1 {
		t.Errorf("packet_count{source=cache} = %v, want 1", n)
	}
	// A different port misses and takes the decider's deny.
	other := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40002, 81)}
	if v := h.handle(other); v.Accept {
		t.Error("denied connection accepted")
	}
	if len(dec.queries) != 2 {
		t.Errorf("miss did not ask the decider")
	}
}

func TestHandlerFailModes(t *testing.T) {
	tests := []struct {
		name     string
		dec      *fakeDecider
		failOpen bool
		accept   bool
	}{
		{"timeout fail-open", &fakeDecider{hang: true}, true, true},
		{"timeout fail-closed", &fakeDecider{hang: true}, false, false},
		{"unavailable fail-open", &fakeDecider{err: client.ErrUnavailable}, true, true},
		{"unavailable fail-closed", &fakeDecider{err: client.ErrUnavailable}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, sink := newTestHandler(tt.dec, tt.failOpen)
			p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 17, 5000, 53)}
			begin := time.Now()
			if v := h.handle(p); v.Accept != tt.accept {
				t.Errorf("Accept = %v, want %v", v.Accept, tt.accept)
			}
			if d := time.Since(begin); d > time.Second {
				t.Errorf("handle took %v with a 20ms decide timeout", d)
			}
			mode := "closed"
			if tt.failOpen {
				mode = "open"
			}
			if n := value(t, h.metrics.failMode.WithLabelValues(mode)); n != 1 {
				t.Errorf("fail-mode %s counter = %v, want 1", mode, n)
			}
			if n := value(t, h.metrics.deciderErrors); n != 1 {
				t.Errorf("decider errors = %v, want 1", n)
			}
			// Fail-mode verdicts are never cached.
			if h.cache.Len() != 0 || len(sink.added) != 0 {
				t.Errorf("fail-mode verdict cached: %d entries, %d kernel adds", h.cache.Len(), len(sink.added))
			}
		})
	}
}

func TestHandlerSpecialPackets(t *testing.T) {
	dec := &fakeDecider{allow: false, gen: 1}
	h, sink := newTestHandler(dec, false)
	// Neighbour solicitation passes without the decider, even fail-closed.
	if v := h.handle(nfq.Packet{Payload: pkt6ICMP(135)}); !v.Accept {
		t.Error("neighbour solicitation dropped")
	}
	// An ICMPv6 echo is decided like any other packet.
	if v := h.handle(nfq.Packet{Payload: pkt6ICMP(128)}); v.Accept {
		t.Error("echo request not decided")
	}
	// A malformed packet gets the fail mode.
	if v := h.handle(nfq.Packet{Payload: []byte{0x45, 0}}); v.Accept {
		t.Error("malformed packet accepted fail-closed")
	}
	if n := value(t, h.metrics.parseErrors); n != 1 {
		t.Errorf("parse errors = %v, want 1", n)
	}
	// A pod reaching itself is via a service (no conntrack info), and is not
	// put into the kernel cache, which cannot tell.
	self := nfq.Packet{Payload: pkt4("10.0.0.5", "10.0.0.5", 6, 1234, 8080)}
	h.handle(self)
	// With conntrack information, DNAT decides.
	h.handle(nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.9", 6, 1234, 8080), CtKnown: true, DNAT: true})
	var via []bool
	for _, q := range dec.queries {
		via = append(via, q.ViaService)
	}
	if !slices.Equal(via, []bool{false, true, true}) {
		t.Errorf("via-service of queries = %v, want [false true true]", via)
	}
	if len(sink.added) != 1 || sink.added[0].Dst != netip.MustParseAddr("10.0.0.9") {
		t.Errorf("kernel cache adds = %+v, want only the TCP tuple between two pods", sink.added)
	}
}

func TestApplyWatch(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 5}
	h, sink := newTestHandler(dec, true)
	sel := &fakeSelected{}
	ctx := context.Background()
	v4 := []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	if err := h.applyWatch(ctx, sel, client.WatchUpdate{Generation: 5, IPv4: v4}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sel.v4, v4) || !h.watched.Load() {
		t.Fatalf("selected = %v, watched = %v", sel.v4, h.watched.Load())
	}
	p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	h.handle(p)
	h.handle(p)
	if len(dec.queries) != 1 {
		t.Fatalf("decider asked %d times, want 1 (second from cache)", len(dec.queries))
	}
	// Same generation again: the caches stay.
	if err := h.applyWatch(ctx, sel, client.WatchUpdate{Generation: 5}); err != nil {
		t.Fatal(err)
	}
	h.handle(p)
	if len(dec.queries) != 1 {
		t.Error("same generation invalidated the cache")
	}
	// A new generation that may change anything invalidates both tiers.
	dec.gen = 6
	if err := h.applyWatch(ctx, sel, client.WatchUpdate{Generation: 6, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	h.handle(p)
	if len(dec.queries) != 2 {
		t.Error("new generation did not invalidate the cache")
	}
	// A result of an older generation is neither cached nor sent to the kernel.
	dec.gen = 5
	adds := len(sink.added)
	other := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.3", 6, 1, 80)}
	h.handle(other)
	h.handle(other)
	if len(dec.queries) != 4 || len(sink.added) != adds {
		t.Errorf("stale result cached: %d queries, %d kernel adds (was %d)", len(dec.queries), len(sink.added), adds)
	}
	// A decider restart starts over at a lower generation.
	dec.gen = 1
	if err := h.applyWatch(ctx, sel, client.WatchUpdate{Generation: 1}); err != nil {
		t.Fatal(err)
	}
	h.handle(p)
	h.handle(p)
	if len(dec.queries) != 5 {
		t.Errorf("after a restart to generation 1: %d queries, want 5 (one miss, one hit)", len(dec.queries))
	}
	if !slices.Equal(sink.resets, []uint64{5, 6, 1}) {
		t.Errorf("kernel cache resets = %v, want [5 6 1]", sink.resets)
	}
	if g := value(t, h.metrics.generation); g != 1 {
		t.Errorf("generation gauge = %v", g)
	}
}

// fakeStore records kernel verdict writes.
type fakeStore struct {
	mu      sync.Mutex
	batches [][]dataplane.Verdict
	flushes int
	err     error
}

func (s *fakeStore) AddVerdicts(_ context.Context, vs []dataplane.Verdict) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, slices.Clone(vs))
	return s.err
}

func (s *fakeStore) FlushVerdicts(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushes++
	return nil
}

func (s *fakeStore) InvalidateVerdicts(context.Context, func(netip.Addr) bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushes++ // a fake cannot tell the two apart; both empty the cache
	return nil
}

func (s *fakeStore) snapshot() ([][]dataplane.Verdict, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batches), s.flushes
}

func verdict(port uint16) dataplane.Verdict {
	return dataplane.Verdict{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DstPort: port, Allow: true}
}

func TestKernelBatcher(t *testing.T) {
	store := &fakeStore{}
	m := newMetrics(nil, nil, "/nonexistent")
	b := newKernelBatcher(store, m)
	b.interval = 20 * time.Millisecond
	if err := b.Reset(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	// Queued before Run starts: one batch, without the stale generation.
	b.Add(verdict(1), 2)
	b.Add(verdict(2), 1)
	b.Add(verdict(3), 3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var batches [][]dataplane.Verdict
	for range 200 {
		if batches, _ = store.snapshot(); len(batches) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(batches) != 1 || !slices.Equal(batches[0], []dataplane.Verdict{verdict(1), verdict(3)}) {
		t.Fatalf("batches = %+v, want one with ports 1 and 3", batches)
	}
	if n := value(t, m.kernelCacheStale); n != 1 {
		t.Errorf("stale counter = %v, want 1", n)
	}
	if _, flushes := store.snapshot(); flushes != 1 {
		t.Errorf("flushes = %d, want 1", flushes)
	}
	// A full batch is written without waiting for the interval.
	b.interval = time.Hour
	b.maxBatch = 3
	for i := range 3 {
		b.Add(verdict(uint16(10+i)), 3)
	}
	for range 200 {
		if batches, _ = store.snapshot(); len(batches) > 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(batches) != 2 || len(batches[1]) != 3 {
		t.Errorf("full batch not written: %+v", batches)
	}
}

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

func TestMetricsExposition(t *testing.T) {
	c := cache.New(cache.Options{Size: 8})
	c.Get(cache.Key{})
	m := newMetrics(c, nfq.NewCounters(100, 2), "testdata/nfnetlink_queue")
	m.observePacket(time.Millisecond, true, sourceDecider)
	m.failMode.WithLabelValues("open").Inc()
	m.deciderRTT.Observe(0.001)
	m.dataplaneMode.WithLabelValues("xt").Set(1)
	names := map[string]bool{}
	mfs, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{
		"packet_process_time", "packet_process_duration_microseconds", "packet_count",
		"nfqueue_queue_total", "nfqueue_queue_dropped", "nfqueue_user_dropped", "nfqueue_packet_id",
		"tollgate_cache_hits_total", "tollgate_cache_misses_total", "tollgate_cache_evictions_total",
		"tollgate_decider_rtt_seconds", "tollgate_fail_mode_verdicts_total", "tollgate_dataplane_mode",
		"tollgate_decider_generation", "tollgate_nfqueue_packets_total",
	} {
		if !names[want] {
			t.Errorf("metric %s missing", want)
		}
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range mt.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			values[name] = mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"nfqueue_queue_dropped,queue=100": 0,
		"nfqueue_queue_dropped,queue=101": 7,
		"nfqueue_user_dropped,queue=101":  2,
		"nfqueue_packet_id,queue=101":     9001,
		"tollgate_cache_misses_total":     1,
		"tollgate_dataplane_mode,mode=xt": 1,
	} {
		if got, ok := values[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	// Without the proc file the rest still gathers.
	if _, err := newMetrics(nil, nil, "/nonexistent").registry.Gather(); err != nil {
		t.Errorf("gather without proc file: %v", err)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	m := newMetrics(nil, nil, "/nonexistent")
	var ready bool
	mux := newMux(m, func() bool { return ready })
	get := func(path string) int {
		rec := httptestRecorder()
		mux.ServeHTTP(rec, httptestRequest(path))
		return rec.Code
	}
	if get("/healthz") != 200 || get("/readyz") != 503 {
		t.Error("before ready: want healthz 200, readyz 503")
	}
	ready = true
	if get("/readyz") != 200 || get("/metrics") != 200 {
		t.Error("after ready: want readyz and metrics 200")
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--node-name", "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.failOpen || o.firstQueue != 100 || o.metricsAddr != ":9080" || o.queueMode != "auto" ||
		o.deciderSocket != "/run/tollgate/decider.sock" || o.queueMaxLen != 1024 || o.queues < 1 {
		t.Errorf("defaults = %+v", o)
	}
	for _, bad := range [][]string{
		{"--queues", "0"},
		{"--nfqueue-id", "65535", "--queues", "2"},
		{"--decide-timeout", "0s"},
		{"--cache-size", "0"},
		{"extra"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%v) accepted", bad)
		}
	}
	if _, err := parseFlags([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

func httptestRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }
func httptestRequest(path string) *http.Request {
	return httptest.NewRequest(http.MethodGet, path, nil)
}

// value reads a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

func TestMetricsBypassed(t *testing.T) {
	gather := func(m *metrics) map[string]float64 {
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
				out[name] = mt.GetCounter().GetValue()
			}
		}
		return out
	}
	// The proc file holds queue 100 (nothing dropped or waiting) and 101
	// (7 dropped, 2 dropped by netlink, 3 waiting): 12 packets accounted for.
	sent := uint64(100)
	m := newMetrics(nil, nfq.NewCounters(100, 2), "testdata/nfnetlink_queue")
	if _, ok := gather(m)["tollgate_queue_bypassed_total,verdict=accept"]; ok {
		t.Fatal("bypassed reported before countBypass")
	}
	m.countBypass(func(context.Context) (uint64, error) { return sent, nil }, true)
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
		v := gather(m)
		if got := v["tollgate_queue_bypassed_total,verdict=accept"]; got != step.want {
			t.Errorf("sent %d: bypassed = %v, want %v", step.sent, got, step.want)
		}
		if got := v["tollgate_queue_sent_total"]; got != float64(step.sent) {
			t.Errorf("sent %d: sent_total = %v", step.sent, got)
		}
	}
	// Other programs' queues do not count against ours; fail-closed labels
	// the bypass as dropped.
	m = newMetrics(nil, nfq.NewCounters(100, 1), "testdata/nfnetlink_queue")
	m.countBypass(func(context.Context) (uint64, error) { return 20, nil }, false)
	if got := gather(m)["tollgate_queue_bypassed_total,verdict=drop"]; got != 20 {
		t.Errorf("fail-closed, queue 100 only: bypassed = %v, want 20", got)
	}
	// A failing read is reported as an error metric, not a zero.
	m = newMetrics(nil, nfq.NewCounters(100, 2), "testdata/nfnetlink_queue")
	m.countBypass(func(context.Context) (uint64, error) { return 0, errors.New("nft gone") }, true)
	if _, err := m.registry.Gather(); err == nil || !strings.Contains(err.Error(), "nft gone") {
		t.Errorf("gather with failing counter read: err = %v", err)
	}
}

// TestApplyWatchDeciderRestartSameGeneration: a restarted decider may reach
// the generation number the old one had; its instance name (or, without
// one, the new stream) still resets the caches.
func TestApplyWatchDeciderRestartSameGeneration(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 3}
	h, sink := newTestHandler(dec, true)
	sel := &fakeSelected{}
	ctx := context.Background()
	p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	for i, step := range []struct {
		u       client.WatchUpdate
		queries int // decider queries after handling p twice
	}{
		{client.WatchUpdate{Generation: 3, Instance: "a", First: true}, 1},
		{client.WatchUpdate{Generation: 3, Instance: "a"}, 1},              // same decider: cache kept
		{client.WatchUpdate{Generation: 3, Instance: "a", First: true}, 1}, // reconnect to it: kept
		{client.WatchUpdate{Generation: 3, Instance: "b", First: true}, 2}, // restarted: reset
		{client.WatchUpdate{Generation: 3, Instance: "", First: true}, 3},  // cannot tell: reset
		{client.WatchUpdate{Generation: 3, Instance: ""}, 3},               // same stream: kept
	} {
		if err := h.applyWatch(ctx, sel, step.u); err != nil {
			t.Fatal(err)
		}
		h.handle(p)
		h.handle(p)
		if len(dec.queries) != step.queries {
			t.Errorf("step %d (%+v): %d decider queries, want %d", i, step.u, len(dec.queries), step.queries)
		}
	}
	if !slices.Equal(sink.resets, []uint64{3, 3, 3}) {
		t.Errorf("kernel cache resets = %v, want [3 3 3] (first sight, restart, unnamed stream)", sink.resets)
	}
}

// TestApplyWatchPrecise: with the changed addresses listed, a new
// generation drops only the verdicts involving them, in both tiers.
func TestApplyWatchPrecise(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 5}
	h, sink := newTestHandler(dec, true)
	sel := &fakeSelected{}
	ctx := context.Background()
	if err := h.applyWatch(ctx, sel, client.WatchUpdate{Generation: 5, Instance: "a", First: true, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	ab := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	cd := nfq.Packet{Payload: pkt4("10.0.0.3", "10.0.0.4", 6, 1, 80)}
	h.handle(ab)
	h.handle(cd)
	if len(dec.queries) != 2 {
		t.Fatalf("%d queries, want 2", len(dec.queries))
	}
	// Generation 6 changed 10.0.0.4 only: a -> b stays cached, c -> d is
	// asked again.
	dec.gen = 6
	if err := h.applyWatch(ctx, sel, client.WatchUpdate{Generation: 6, Instance: "a", Changed: []netip.Addr{netip.MustParseAddr("10.0.0.4")}}); err != nil {
		t.Fatal(err)
	}
	h.handle(ab)
	h.handle(cd)
	if len(dec.queries) != 3 || dec.queries[2].Dst != netip.MustParseAddr("10.0.0.4") {
		t.Errorf("after a change of 10.0.0.4: queries %v, want only c -> d asked again", dec.queries)
	}
	if !slices.Equal(sink.advances, []uint64{6}) || !slices.Equal(sink.resets, []uint64{5}) {
		t.Errorf("kernel cache: advances %v resets %v, want [6] and [5]", sink.advances, sink.resets)
	}
	if got := value(t, h.metrics.invalidations.WithLabelValues("precise")); got != 1 {
		t.Errorf("precise invalidations = %v", got)
	}
}
