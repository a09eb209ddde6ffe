package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/knftables"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// fakeDecider answers from a table, or fails with err, or blocks until the
// query's deadline when hang is set.
type fakeDecider struct {
	mu           sync.Mutex
	allow        bool
	deny         map[uint16]bool // by destination port, over allow
	ports        [2]uint32       // the port range every answer claims
	gen          uint64
	err          error
	hang         bool
	disconnected bool
	queries      []client.Query
	learnGen     uint64
	learned      []learnCall
}

func (f *fakeDecider) Decide(ctx context.Context, q client.Query) (client.Result, error) {
	f.mu.Lock()
	f.queries = append(f.queries, q)
	hang, err, allow, gen, ports := f.hang, f.err, f.allow && !f.deny[q.DstPort], f.gen, f.ports
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return client.Result{}, ctx.Err()
	}
	if err != nil {
		return client.Result{}, err
	}
	return client.Result{Allow: allow, Generation: gen, PortMin: ports[0], PortMax: ports[1]}, nil
}

func (f *fakeDecider) DecideFunc(q client.Query, timeout time.Duration, fn func(client.Result, error)) {
	decideFunc(f.Decide, q, timeout, fn)
}

// decideFunc gives DecideFunc's contract to a test decider's Decide: it
// asks on a goroutine of its own with the timeout as deadline.
func decideFunc(decide func(context.Context, client.Query) (client.Result, error), q client.Query, timeout time.Duration, fn func(client.Result, error)) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		fn(decide(ctx, q))
	}()
}

func (f *fakeDecider) Connected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.disconnected
}

func (f *fakeDecider) Watch(ctx context.Context, _ string, _ func(client.WatchUpdate)) error {
	<-ctx.Done()
	return ctx.Err()
}

func (f *fakeDecider) Learn(_ context.Context, pod netip.Addr, rs []client.Resolution) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.learned = append(f.learned, learnCall{pod, rs})
	if f.err != nil {
		return 0, f.err
	}
	return f.learnGen, nil
}

// learnCall is one Learn the fake received.
type learnCall struct {
	pod netip.Addr
	rs  []client.Resolution
}

func (f *fakeDecider) asked() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.queries)
}

func (f *fakeDecider) set(fn func(*fakeDecider)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// failingDataplane is the real dataplane (on knftables' fake) with
// failures injected by method name.
type failingDataplane struct {
	*dataplane.Dataplane
	mu     sync.Mutex
	fail   map[string]error
	sweeps int
}

func (d *failingDataplane) failing(method string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fail[method]
}

func (d *failingDataplane) setFail(method string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail[method] = err
}

func (d *failingDataplane) SyncSelected(ctx context.Context, v4, v6 []netip.Addr) error {
	if err := d.failing("SyncSelected"); err != nil {
		return err
	}
	return d.Dataplane.SyncSelected(ctx, v4, v6)
}

// SweepStale counts the sweeps and fails them on demand.
func (d *failingDataplane) SweepStale(ctx context.Context) error {
	d.mu.Lock()
	d.sweeps++
	d.mu.Unlock()
	if err := d.failing("SweepStale"); err != nil {
		return err
	}
	return d.Dataplane.SweepStale(ctx)
}

func (d *failingDataplane) sweepCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sweeps
}

func (d *failingDataplane) FlushVerdicts(ctx context.Context) error {
	if err := d.failing("FlushVerdicts"); err != nil {
		return err
	}
	return d.Dataplane.FlushVerdicts(ctx)
}

// testAgent is an Agent on a set-up fake dataplane, without its loops.
type testAgent struct {
	*Agent
	dec *fakeDecider
	dp  *failingDataplane
	nft *knftables.Fake
}

func newTestAgent(t *testing.T, dec *fakeDecider, cfg Config, table conntrack.Table) *testAgent {
	t.Helper()
	nft := knftables.NewFake(knftables.InetFamily, dataplane.TableName)
	d, err := dataplane.NewWithBackends(dataplane.Config{FirstQueue: 100, QueueCount: 1}, dataplane.ModeNFT, nft, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	fd := &failingDataplane{Dataplane: d, fail: map[string]error{}}
	if cfg.DecideTimeout == 0 {
		cfg.DecideTimeout = 20 * time.Millisecond
	}
	cfg.LearnVerdicts = true
	a := New(cfg, cache.New(cache.Options{Size: 128}), dec, fd, table, NewMetrics(nil, nil, "/nonexistent"))
	return &testAgent{Agent: a, dec: dec, dp: fd, nft: nft}
}

// handle runs a packet through Handle and, like the queue readers,
// AfterVerdict.
func (a *testAgent) handle(p nfq.Packet) nfq.Verdict {
	v := a.Handle(p)
	a.AfterVerdict(p, v)
	return v
}

// watch applies u at once.
func (a *testAgent) watch(t *testing.T, u client.WatchUpdate) error {
	t.Helper()
	a.onWatch(u)
	<-a.kick
	return a.applyOnce(context.Background())
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

// learned returns the mark bits of v that ask the kernel to learn it.
func learned(v nfq.Verdict) uint32 {
	if !v.SetMark {
		return 0
	}
	return v.Mark & dataplane.VerdictMask
}

func TestHandleCacheAndDecider(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 3}
	a := newTestAgent(t, dec, Config{FailOpen: true}, nil)
	syn := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40000, 80), Mark: 0x4000 | dataplane.XTMark}
	v := a.handle(syn)
	if !v.Accept || learned(v) != dataplane.MarkLearnAllow {
		t.Fatalf("allowed connection: verdict %+v, want accept and learn allow", v)
	}
	if v.Mark&0x4000 == 0 || v.Mark&dataplane.XTMark != 0 {
		t.Errorf("verdict mark %#x must keep others' bits (0x4000) and clear the queue bit", v.Mark)
	}
	want := client.Query{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DstPort: 80}
	if dec.asked() != 1 || dec.queries[0] != want {
		t.Fatalf("queries %+v, want one %+v", dec.queries, want)
	}
	if n := a.dp.CachedVerdicts(); n != 1 {
		t.Errorf("the dataplane knows %d learned verdicts, want 1", n)
	}
	// Another source port of the same tuple is a userspace cache hit.
	dec.set(func(d *fakeDecider) { d.allow = false })
	again := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40001, 80)}
	if v := a.handle(again); !v.Accept {
		t.Error("cache hit gave the wrong verdict")
	}
	if dec.asked() != 1 {
		t.Errorf("cache hit still asked the decider (%d queries)", dec.asked())
	}
	if n := value(t, a.metrics.packets.WithLabelValues(sourceCache, "accept")); n != 1 {
		t.Errorf("packet_count{source=cache} = %v, want 1", n)
	}
	// A different port misses and takes the decider's deny, learned as such.
	other := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40002, 81)}
	if v := a.handle(other); learned(v) != dataplane.MarkLearnDeny {
		t.Errorf("denied connection: verdict %+v, want the learn-deny mark", v)
	}
	if dec.asked() != 2 {
		t.Errorf("miss did not ask the decider")
	}
}

func TestHandleFailModesAndBusy(t *testing.T) {
	tests := []struct {
		name     string
		dec      *fakeDecider
		failOpen bool
		accept   bool
		source   string
	}{
		{"unavailable fail-open", &fakeDecider{err: client.ErrUnavailable, disconnected: true}, true, true, sourceFailMode},
		{"unavailable fail-closed", &fakeDecider{err: client.ErrUnavailable, disconnected: true}, false, false, sourceFailMode},
		{"stream broke fail-open", &fakeDecider{err: client.ErrStreamBroken}, true, true, sourceFailMode},
		// A connected decider that does not answer in time is busy, not
		// gone: a flood must not turn into acceptance.
		{"busy fail-open", &fakeDecider{hang: true}, true, false, sourceBusy},
		{"busy fail-closed", &fakeDecider{hang: true}, false, false, sourceBusy},
		{"timeout while disconnected fail-open", &fakeDecider{hang: true, disconnected: true}, true, true, sourceFailMode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, tt.dec, Config{FailOpen: tt.failOpen}, nil)
			p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 17, 5000, 53)}
			begin := time.Now()
			v := a.handle(p)
			if v.Accept != tt.accept || learned(v) != 0 {
				t.Errorf("verdict %+v, want accept %v and nothing learned", v, tt.accept)
			}
			if d := time.Since(begin); d > time.Second {
				t.Errorf("handle took %v with a 20ms decide timeout", d)
			}
			verdict := "drop"
			if tt.accept {
				verdict = "accept"
			}
			if n := value(t, a.metrics.packets.WithLabelValues(tt.source, verdict)); n != 1 {
				t.Errorf("packet_count{source=%s,verdict=%s} = %v, want 1", tt.source, verdict, n)
			}
			if n := value(t, a.metrics.deciderErrors); n != 1 {
				t.Errorf("decider errors = %v, want 1", n)
			}
			if a.cache.Len() != 0 || a.dp.CachedVerdicts() != 0 {
				t.Errorf("fail-mode verdict cached: %d entries, %d kernel", a.cache.Len(), a.dp.CachedVerdicts())
			}
		})
	}
}

func TestHandleSpecialPackets(t *testing.T) {
	for _, failOpen := range []bool{true, false} {
		dec := &fakeDecider{allow: false, gen: 1}
		a := newTestAgent(t, dec, Config{FailOpen: failOpen}, nil)
		// Neighbour solicitation passes without the decider.
		if v := a.handle(nfq.Packet{Payload: pkt6ICMP(135)}); !v.Accept {
			t.Error("neighbour solicitation dropped")
		}
		// An ICMPv6 echo is decided like any other packet, never learned.
		if v := a.handle(nfq.Packet{Payload: pkt6ICMP(128)}); v.Accept || learned(v) != 0 {
			t.Errorf("echo request: %+v, want a plain drop", v)
		}
		// A packet that cannot be read is dropped in both fail modes.
		truncated := pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)[:30]
		if v := a.handle(nfq.Packet{Payload: truncated}); v.Accept {
			t.Errorf("fail-open=%v: unreadable packet accepted", failOpen)
		}
		if n := value(t, a.metrics.unjudgeable.WithLabelValues("truncated")); n != 1 {
			t.Errorf("unjudgeable{truncated} = %v, want 1", n)
		}
		// A pod reaching itself is via a service (no conntrack info), and is
		// not learned: the kernel sets cannot tell.
		self := nfq.Packet{Payload: pkt4("10.0.0.5", "10.0.0.5", 6, 1234, 8080)}
		if v := a.handle(self); learned(v) != 0 {
			t.Errorf("self connection learned: %+v", v)
		}
		// With conntrack information, DNAT decides.
		a.handle(nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.9", 6, 1234, 8080), CtKnown: true, DNAT: true})
		var via []bool
		for _, q := range dec.queries {
			via = append(via, q.ViaService)
		}
		if !slices.Equal(via, []bool{false, true, true}) {
			t.Errorf("via-service of queries = %v, want [false true true]", via)
		}
	}
}

// TestAfterVerdictAcrossAGeneration: a verdict decided before a new
// generation came into force, learned by the kernel after that generation's
// invalidation may have run, is removed again.
func TestAfterVerdictAcrossAGeneration(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 1}
	a := newTestAgent(t, dec, Config{FailOpen: true}, nil)
	if err := a.watch(t, client.WatchUpdate{Generation: 1, Instance: "a", First: true, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	v := a.Handle(p)
	// Generation 2 comes into force between the decision and the kernel
	// taking the verdict.
	if err := a.watch(t, client.WatchUpdate{Generation: 2, Instance: "a", Changed: []netip.Addr{netip.MustParseAddr("10.0.0.2")}}); err != nil {
		t.Fatal(err)
	}
	a.AfterVerdict(p, v)
	select {
	case got := <-a.forgets:
		if got.Dst != netip.MustParseAddr("10.0.0.2") || !got.Allow {
			t.Errorf("forgot %+v", got)
		}
	default:
		t.Fatal("a verdict learned across a generation change was not removed")
	}
	// Within one generation nothing is removed.
	q := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.3", 6, 1, 80)}
	a.AfterVerdict(q, a.Handle(q))
	select {
	case got := <-a.forgets:
		t.Errorf("removed %+v learned within one generation", got)
	default:
	}
}

func TestApplyWatch(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 5}
	a := newTestAgent(t, dec, Config{FailOpen: true}, nil)
	v4 := []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	if err := a.watch(t, client.WatchUpdate{Generation: 5, IPv4: v4, First: true, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, a.nft, "selected4"); !slices.Equal(got, []string{"10.0.0.1"}) || !a.watched.Load() {
		t.Fatalf("selected4 = %v, watched = %v", got, a.watched.Load())
	}
	p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	a.handle(p)
	a.handle(p)
	if dec.asked() != 1 {
		t.Fatalf("decider asked %d times, want 1 (second from cache)", dec.asked())
	}
	// Same generation again: the caches stay.
	if err := a.watch(t, client.WatchUpdate{Generation: 5, IPv4: v4}); err != nil {
		t.Fatal(err)
	}
	a.handle(p)
	if dec.asked() != 1 {
		t.Error("same generation invalidated the cache")
	}
	// A new generation that may change anything invalidates both tiers.
	dec.set(func(d *fakeDecider) { d.gen = 6 })
	if err := a.watch(t, client.WatchUpdate{Generation: 6, IPv4: v4, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	if a.dp.CachedVerdicts() != 0 {
		t.Error("kernel verdicts kept across a changed_all generation")
	}
	a.handle(p)
	if dec.asked() != 2 {
		t.Error("new generation did not invalidate the cache")
	}
	// A result of an older generation is neither cached nor learned.
	dec.set(func(d *fakeDecider) { d.gen = 5 })
	other := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.3", 6, 1, 80)}
	if v := a.handle(other); learned(v) != 0 {
		t.Errorf("stale result learned: %+v", v)
	}
	a.handle(other)
	if dec.asked() != 4 {
		t.Errorf("stale result cached: %d queries, want 4", dec.asked())
	}
	// A decider restart starts over at a lower generation.
	dec.set(func(d *fakeDecider) { d.gen = 1 })
	if err := a.watch(t, client.WatchUpdate{Generation: 1, IPv4: v4}); err != nil {
		t.Fatal(err)
	}
	a.handle(p)
	a.handle(p)
	if dec.asked() != 5 {
		t.Errorf("after a restart to generation 1: %d queries, want 5 (one miss, one hit)", dec.asked())
	}
	if g := value(t, a.metrics.generation); g != 1 {
		t.Errorf("generation gauge = %v", g)
	}
	var h dto.Metric
	if err := a.metrics.applyLatency.Write(&h); err != nil || h.GetHistogram().GetSampleCount() != 4 {
		t.Errorf("tollgate_generation_apply_seconds observed %d applications (%v), want 4", h.GetHistogram().GetSampleCount(), err)
	}
}

// TestApplyWatchDeciderRestartSameGeneration: a restarted decider may reach
// the generation number the old one had; its instance name (or, without
// one, the new stream) still resets the caches.
func TestApplyWatchDeciderRestartSameGeneration(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 3}
	a := newTestAgent(t, dec, Config{FailOpen: true}, nil)
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
		if err := a.watch(t, step.u); err != nil {
			t.Fatal(err)
		}
		a.handle(p)
		a.handle(p)
		if dec.asked() != step.queries {
			t.Errorf("step %d (%+v): %d decider queries, want %d", i, step.u, dec.asked(), step.queries)
		}
	}
}

// TestApplyWatchPrecise: with the changed addresses listed, a new
// generation drops only the verdicts involving them, in both tiers.
func TestApplyWatchPrecise(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 5}
	a := newTestAgent(t, dec, Config{FailOpen: true}, nil)
	if err := a.watch(t, client.WatchUpdate{Generation: 5, Instance: "a", First: true, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	ab := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	cd := nfq.Packet{Payload: pkt4("10.0.0.3", "10.0.0.4", 6, 1, 80)}
	a.handle(ab)
	a.handle(cd)
	if dec.asked() != 2 || a.dp.CachedVerdicts() != 2 {
		t.Fatalf("%d queries and %d kernel verdicts, want 2 and 2", dec.asked(), a.dp.CachedVerdicts())
	}
	// Generation 6 changed 10.0.0.4 only: a -> b stays cached, c -> d is
	// asked again.
	dec.set(func(d *fakeDecider) { d.gen = 6 })
	if err := a.watch(t, client.WatchUpdate{Generation: 6, Instance: "a", Changed: []netip.Addr{netip.MustParseAddr("10.0.0.4")}}); err != nil {
		t.Fatal(err)
	}
	if a.dp.CachedVerdicts() != 1 {
		t.Errorf("%d kernel verdicts after a precise change, want 1", a.dp.CachedVerdicts())
	}
	a.handle(ab)
	a.handle(cd)
	if dec.asked() != 3 || dec.queries[2].Dst != netip.MustParseAddr("10.0.0.4") {
		t.Errorf("after a change of 10.0.0.4: queries %v, want only c -> d asked again", dec.queries)
	}
	if got := value(t, a.metrics.invalidations.WithLabelValues("precise")); got != 1 {
		t.Errorf("precise invalidations = %v", got)
	}
}

// TestApplyWatchFailure: an announcement that cannot be put in force (the
// selected sets cannot be written) still drops every cached verdict, and
// is retried; the next success is a full one, with every flow re-decided.
func TestApplyWatchFailure(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 1}
	table := &fakeTable{}
	a := newTestAgent(t, dec, Config{FailOpen: true, CutEstablished: true}, table)
	v4 := []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	if err := a.watch(t, client.WatchUpdate{Generation: 1, Instance: "a", First: true, ChangedAll: true, IPv4: v4}); err != nil {
		t.Fatal(err)
	}
	<-a.cutter.kick
	p := nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 1, 80)}
	a.handle(p)
	if a.cache.Len() != 1 || a.dp.CachedVerdicts() != 1 {
		t.Fatal("verdict not cached")
	}

	a.dp.setFail("SyncSelected", errors.New("nft: netlink exploded"))
	dec.set(func(d *fakeDecider) { d.gen = 2 })
	u := client.WatchUpdate{Generation: 2, Instance: "a", Changed: []netip.Addr{netip.MustParseAddr("10.0.0.9")},
		IPv4: append(v4, netip.MustParseAddr("10.0.0.7"))}
	if err := a.watch(t, u); err == nil {
		t.Fatal("a failing SyncSelected was not reported")
	}
	if a.cache.Len() != 0 {
		t.Error("the userspace cache kept verdicts after a failed application")
	}
	select {
	case <-a.cutter.kick:
		t.Error("the cutter ran for a generation that was not in force")
	default:
	}
	if n := value(t, a.metrics.applyErrors); n != 1 {
		t.Errorf("apply errors = %v, want 1", n)
	}

	// The retry (nothing new announced) succeeds: a full application.
	a.dp.setFail("SyncSelected", nil)
	if err := a.applyOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, a.nft, "selected4"); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.7"}) {
		t.Errorf("selected4 after the retry = %v", got)
	}
	if a.dp.CachedVerdicts() != 0 {
		t.Error("the kernel verdict cache was not flushed after a failed application")
	}
	<-a.cutter.kick
	a.cutter.mu.Lock()
	all := a.cutter.all
	a.cutter.mu.Unlock()
	if !all {
		t.Error("after a failed application the cutter must re-decide every flow")
	}
	if n := value(t, a.metrics.invalidations.WithLabelValues("full")); n != 2 {
		t.Errorf("full invalidations = %v, want 2 (first sight, retry)", n)
	}
}

// elements lists a set's elements in the fake, each as "k1 . k2".
func elements(t *testing.T, nft *knftables.Fake, set string) []string {
	t.Helper()
	elems, err := nft.ListElements(context.Background(), "set", set)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range elems {
		out = append(out, strings.Join(e.Key, " . "))
	}
	slices.Sort(out)
	return out
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

func TestHandlePortRanges(t *testing.T) {
	conn := func(port uint16) nfq.Packet {
		return nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40000, port)}
	}
	// Verdicts are learned: a deny is an accept with the learn-deny mark.
	allowed := func(v nfq.Verdict) bool { return v.Accept && learned(v) == dataplane.MarkLearnAllow }
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("PortRanges=%v", on), func(t *testing.T) {
			dec := &fakeDecider{allow: true, gen: 3, ports: [2]uint32{1000, 2000}}
			a := newTestAgent(t, dec, Config{PortRanges: on}, nil)
			if v := a.handle(conn(1500)); !allowed(v) {
				t.Fatalf("verdict %+v, want accept", v)
			}
			// The decider now denies everything: what the cache answers
			// shows which ports the first answer covers.
			dec.set(func(d *fakeDecider) { d.allow, d.ports = false, [2]uint32{} })
			for _, port := range []uint16{1000, 1800, 2000} {
				asked := dec.asked()
				v := a.handle(conn(port))
				if on && (!allowed(v) || dec.asked() != asked) {
					t.Errorf("port %d, in the answered range: verdict %+v after %d queries, want the cached accept", port, v, dec.asked()-asked)
				}
				if !on && (allowed(v) || dec.asked() != asked+1) {
					t.Errorf("port %d with ranges off: verdict %+v after %d queries, want the decider's deny", port, v, dec.asked()-asked)
				}
			}
			asked := dec.asked()
			if v := a.handle(conn(2001)); allowed(v) || dec.asked() != asked+1 {
				t.Errorf("port 2001, outside the range: verdict %+v, want the decider asked and its deny", v)
			}
		})
	}
	// A range that does not contain the queried port is not believed.
	dec := &fakeDecider{allow: true, gen: 3, ports: [2]uint32{1000, 2000}}
	a := newTestAgent(t, dec, Config{PortRanges: true}, nil)
	a.handle(conn(80))
	dec.set(func(d *fakeDecider) { d.allow = false })
	if v := a.handle(conn(1500)); allowed(v) || dec.asked() != 2 {
		t.Errorf("a range without its port was cached: verdict %+v, %d queries", v, dec.asked())
	}
}

// TestApplyLoopSweepsStale: after a generation is in force and no newer
// one waits, the apply loop has the stale kernel verdicts deleted; a failed
// sweep counts as a failed application and is followed by a full one.
func TestApplyLoopSweepsStale(t *testing.T) {
	a := newTestAgent(t, &fakeDecider{}, Config{RetryInterval: 20 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { a.applyLoop(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	applied := func(gen uint64) func() bool {
		return func() bool { a.wmu.Lock(); defer a.wmu.Unlock(); return a.appliedGen == gen && !a.dirty }
	}

	a.onWatch(client.WatchUpdate{Generation: 1, Instance: "a", First: true, ChangedAll: true})
	wait("generation 1 applied and swept", func() bool { return applied(1)() && a.dp.sweepCount() == 1 })

	a.dp.setFail("SweepStale", errors.New("injected"))
	a.onWatch(client.WatchUpdate{Generation: 2, Instance: "a", Changed: []netip.Addr{netip.MustParseAddr("10.0.0.2")}})
	wait("a failed sweep", func() bool { return value(t, a.metrics.applyErrors) == 1 })
	a.dp.setFail("SweepStale", nil)
	wait("the full application after it", func() bool { return applied(2)() && a.dp.sweepCount() >= 3 })
	if n := value(t, a.metrics.invalidations.WithLabelValues("full")); n != 2 {
		t.Errorf("full invalidations = %v, want 2 (the first generation and the retry)", n)
	}
}
