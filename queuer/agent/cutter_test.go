package agent

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
)

// fakeTable is an in-memory conntrack table.
type fakeTable struct {
	mu      sync.Mutex
	flows   []conntrack.Flow
	deleted []conntrack.Flow
	walks   []conntrack.Filter
}

func (f *fakeTable) Walk(_ context.Context, filter conntrack.Filter, fn func(conntrack.Flow) error) error {
	f.mu.Lock()
	f.walks = append(f.walks, filter)
	flows := slices.Clone(f.flows)
	f.mu.Unlock()
	for _, fl := range flows {
		if filter.Mark != 0 && fl.Mark&filter.Mark != filter.Mark {
			continue
		}
		if filter.Addr.IsValid() && fl.Src != filter.Addr && fl.Dst != filter.Addr {
			continue
		}
		if err := fn(fl); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeTable) Delete(_ context.Context, fl conntrack.Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, fl)
	f.flows = slices.DeleteFunc(f.flows, func(x conntrack.Flow) bool { return x == fl })
	return nil
}

func (f *fakeTable) SetMark(_ context.Context, fl conntrack.Flow, mark uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.flows {
		if f.flows[i] == fl {
			f.flows[i].Mark |= mark
		}
	}
	return nil
}

func udpFlow(src string, sport uint16, dst string, dport uint16) conntrack.Flow {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	return conntrack.Flow{Src: s, SrcPort: sport, Dst: d, DstPort: dport, Proto: 17, OrigDst: d, OrigDstPort: dport,
		Mark: dataplane.CtMarkJudged}
}

func addrSet(ss ...string) map[netip.Addr]struct{} {
	m := map[netip.Addr]struct{}{}
	for _, s := range ss {
		m[netip.MustParseAddr(s)] = struct{}{}
	}
	return m
}

// TestCutThenLift: a denied UDP flow with a fixed 5-tuple is cut (both
// directions in the cut set) and, once policy allows it again, lifted at
// the next generation that touches one of its ends; not before.
func TestCutThenLift(t *testing.T) {
	dec := &fakeDecider{allow: true, deny: map[uint16]bool{5353: true}, gen: 1}
	fl := udpFlow("10.0.0.1", 40000, "10.0.0.2", 5353)
	table := &fakeTable{flows: []conntrack.Flow{fl, udpFlow("10.0.0.1", 40001, "10.0.0.3", 53)}}
	a := newTestAgent(t, dec, Config{CutEstablished: true}, table)
	ctx := context.Background()
	selected := []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	a.cutter.once(ctx, selected, nil)
	if len(table.deleted) != 1 || table.deleted[0] != fl {
		t.Fatalf("deleted %v, want the denied flow", table.deleted)
	}
	want := []string{"10.0.0.1 . 10.0.0.2 . udp . 40000 . 5353", "10.0.0.2 . 10.0.0.1 . udp . 5353 . 40000"}
	if got := elements(t, a.nft, "cut4"); !slices.Equal(got, want) {
		t.Fatalf("cut4 = %v, want %v", got, want)
	}
	if st := a.cutter.stats(); st.Cut != 1 || st.Active != 1 {
		t.Errorf("stats %+v, want 1 cut, 1 active", st)
	}
	// Policy allows it again, but the generation touches neither end: the
	// cut stays.
	dec.set(func(d *fakeDecider) { d.deny = nil })
	a.cutter.once(ctx, selected, addrSet("10.0.0.9"))
	if got := elements(t, a.nft, "cut4"); len(got) != 2 {
		t.Errorf("cut4 = %v after an unrelated change, want the cut kept", got)
	}
	// A generation that touches it lifts it.
	a.cutter.once(ctx, selected, addrSet("10.0.0.2"))
	if got := elements(t, a.nft, "cut4"); len(got) != 0 {
		t.Errorf("cut4 = %v after policy allows the flow again, want it lifted", got)
	}
	if n := value(t, a.metrics.cutsLifted); n != 1 || a.cutter.stats().Active != 0 {
		t.Errorf("lifted %v, active %d; want 1, 0", n, a.cutter.stats().Active)
	}
}

// TestCutAdoptedFromAPreviousRun: a new process adopts the cut flows the
// kernel holds, in the direction they were opened, and lifts them when
// policy allows them.
func TestCutAdoptedFromAPreviousRun(t *testing.T) {
	dec := &fakeDecider{allow: false, gen: 1}
	a := newTestAgent(t, dec, Config{CutEstablished: true}, &fakeTable{})
	ctx := context.Background()
	fwd := dataplane.Flow{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 132, SrcPort: 7, DstPort: 9}
	if err := a.dp.AddCuts(ctx, []dataplane.Flow{fwd}); err != nil {
		t.Fatal(err)
	}
	b := New(a.cfg, a.cache, dec, a.dp, &fakeTable{}, NewMetrics(nil, nil, "/nonexistent"))
	b.cutter.adopt(ctx)
	if st := b.cutter.stats(); st.Active != 1 {
		t.Fatalf("adopted %d cuts, want 1 (the forward direction)", st.Active)
	}
	b.cutter.once(ctx, []netip.Addr{fwd.Src}, nil)
	if got := elements(t, a.nft, "cut4"); len(got) != 2 {
		t.Errorf("cut4 = %v while policy still denies, want both directions kept", got)
	}
	dec.set(func(d *fakeDecider) { d.allow = true })
	b.cutter.once(ctx, []netip.Addr{fwd.Src}, nil)
	if got := elements(t, a.nft, "cut4"); len(got) != 0 {
		t.Errorf("cut4 = %v, want the adopted cut lifted", got)
	}
}

// TestCutNewlySelected: flows of an address selected since the last run
// carry no mark; the run lists them by address and marks the allowed ones.
func TestCutNewlySelected(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 1}
	unmarked := udpFlow("10.0.0.5", 1, "10.0.0.6", 53)
	unmarked.Mark = 0
	table := &fakeTable{flows: []conntrack.Flow{unmarked}}
	a := newTestAgent(t, dec, Config{CutEstablished: true}, table)
	ctx := context.Background()
	a.cutter.once(ctx, []netip.Addr{netip.MustParseAddr("10.0.0.1")}, nil)
	table.walks = nil
	a.cutter.once(ctx, []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.5")}, addrSet())
	want := []conntrack.Filter{{Mark: dataplane.CtMarkJudged}, {Addr: netip.MustParseAddr("10.0.0.5")}}
	if !slices.Equal(table.walks, want) {
		t.Errorf("walks %v, want %v", table.walks, want)
	}
	if table.flows[0].Mark&dataplane.CtMarkJudged == 0 {
		t.Error("the allowed flow of a newly selected pod was not marked")
	}
}

// closingTable fails the test if it is used after Close.
type closingTable struct {
	fakeTable
	closed  atomic.Bool
	walking chan struct{}
	t       *testing.T
}

func (c *closingTable) Walk(ctx context.Context, f conntrack.Filter, fn func(conntrack.Flow) error) error {
	if c.closed.Load() {
		c.t.Error("the conntrack table was used after it was closed")
	}
	close(c.walking)
	<-ctx.Done() // a long walk, still running at shutdown
	time.Sleep(50 * time.Millisecond)
	if c.closed.Load() {
		c.t.Error("the conntrack table was closed while a walk was running")
	}
	return ctx.Err()
}

// TestRunStopsCutterBeforeReturning: Run returns only once the flow cutter
// has stopped, so that the caller can close the conntrack socket after it
// (the queuer used to close it first).
func TestRunStopsCutterBeforeReturning(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 1}
	table := &closingTable{walking: make(chan struct{}), t: t}
	a := newTestAgent(t, dec, Config{CutEstablished: true}, table)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		a.Run(ctx)
		table.closed.Store(true) // what main does once Run returned
		close(done)
	}()
	a.cutter.trigger([]netip.Addr{netip.MustParseAddr("10.0.0.1")}, nil)
	<-table.walking
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
