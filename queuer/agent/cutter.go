package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
)

// flowCutter re-evaluates established flows of selected pods whenever a new
// generation is in force, and cuts those policy now denies. Only flows with
// an end whose verdict inputs changed are re-evaluated, unless everything
// may have changed (a new Watch stream, a reset). Established packets never
// leave the kernel, so without it a connection accepted before a deny
// policy would live on.
//
// A cut puts the flow, in both directions, into the kernel cut sets, then
// deletes its conntrack entry: the flow's next packet, from either end, is
// picked up as new (or invalid) and dropped. Without the cut sets, a packet
// from the server side would be judged as a new server-to-client
// connection, which policy may allow, and re-open the flow in reverse.
//
// A cut lasts until policy allows the flow again: at every generation the
// cutter re-decides the cut flows with a changed end and lifts the cuts of
// those now allowed, so that a flow with a fixed 5-tuple (QUIC, WireGuard,
// DNS from a fixed port, SCTP) is not blackholed after a deny is reverted.
// Cuts the kernel still holds after a queuer restart are adopted.
type flowCutter struct {
	a      *Agent
	cutter *conntrack.Cutter

	kick chan struct{}
	mu   sync.Mutex
	// What to do at the next run: the selected addresses, and all, or the
	// addresses whose verdicts may have changed since the last run.
	selected []netip.Addr
	all      bool
	changed  map[netip.Addr]struct{}
	// prevSelected are the selected addresses of the last run: addresses
	// selected now but not then have flows nobody judged.
	prevSelected map[netip.Addr]struct{}

	// cuts are the cut flows in the kernel's cut sets, by their forward
	// direction, with when the kernel forgets them at the latest.
	cmu  sync.Mutex
	cuts map[dataplane.Flow]cutRecord

	hostMu    sync.Mutex
	hostAddrs map[netip.Addr]struct{}
}

// cutRecord is one cut flow.
type cutRecord struct {
	viaService bool
	expires    time.Time
}

func newFlowCutter(a *Agent, table conntrack.Table) *flowCutter {
	f := &flowCutter{a: a, kick: make(chan struct{}, 1), cuts: map[dataplane.Flow]cutRecord{}}
	c := conntrack.NewCutter(table)
	c.BeforeDelete = f.beforeDelete
	c.FromHost = f.fromHost
	f.cutter = c
	return f
}

func (f *flowCutter) stats() CutStats {
	f.cmu.Lock()
	n := len(f.cuts)
	f.cmu.Unlock()
	return CutStats{Stats: f.cutter.Stats(), Active: n}
}

// trigger asks for a run for selected, with changed the addresses whose
// verdicts may have changed (nil: all). Triggers that arrive while one is
// pending merge into it.
func (f *flowCutter) trigger(selected []netip.Addr, changed map[netip.Addr]struct{}) {
	f.mu.Lock()
	f.selected = selected
	switch {
	case changed == nil:
		f.all, f.changed = true, nil
	case !f.all:
		if f.changed == nil {
			f.changed = make(map[netip.Addr]struct{}, len(changed))
		}
		for x := range changed {
			f.changed[x] = struct{}{}
		}
	}
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// run cuts after each trigger until ctx ends.
func (f *flowCutter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		f.mu.Lock()
		selected, all, changed := f.selected, f.all, f.changed
		f.all, f.changed = false, nil
		f.mu.Unlock()
		if !all && changed == nil {
			changed = map[netip.Addr]struct{}{} // nothing changed
		}
		if all {
			changed = nil // every flow of a selected pod
		}
		f.once(ctx, selected, changed)
	}
}

// once is one run: cut what policy now denies, then lift the cuts of
// flows it allows again.
func (f *flowCutter) once(ctx context.Context, selected []netip.Addr, changed map[netip.Addr]struct{}) {
	now := make(map[netip.Addr]struct{}, len(selected))
	var newly []netip.Addr
	for _, x := range selected {
		x = x.Unmap()
		now[x] = struct{}{}
		if _, was := f.prevSelected[x]; !was && f.prevSelected != nil {
			newly = append(newly, x)
		}
	}
	f.prevSelected = now
	f.refreshHostAddrs()

	start := time.Now()
	n, err := f.cutter.Cut(ctx, conntrack.Request{Selected: selected, Changed: changed,
		Mark: dataplane.CtMarkJudged, Newly: newly}, f.decide)
	if err != nil && ctx.Err() == nil {
		slog.Warn("cutting denied flows failed", "err", err)
	}
	if n > 0 {
		slog.Info("cut established flows that policy now denies", "flows", n, "took", time.Since(start))
	}
	f.lift(ctx, changed)
}

// decide asks the decider about fl as it stands now.
func (f *flowCutter) decide(ctx context.Context, fl conntrack.Flow) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	r, err := f.a.dec.Decide(ctx, client.Query{Src: fl.Src, Dst: fl.Dst, Proto: fl.Proto, DstPort: fl.DstPort,
		ViaService: fl.ViaService || fl.Src == fl.Dst})
	return r.Allow, err
}

// beforeDelete puts a denied flow into the cut sets, both directions, and
// remembers it.
func (f *flowCutter) beforeDelete(ctx context.Context, fl conntrack.Flow) error {
	fwd := dataplane.Flow{Src: fl.Src, Dst: fl.Dst, Proto: fl.Proto, SrcPort: fl.SrcPort, DstPort: fl.DstPort}
	if !dataplane.Cacheable(fl.Proto) {
		return nil // no ports to key a cut on (ICMP): deleting the entry is all
	}
	f.cmu.Lock()
	_, known := f.cuts[fwd]
	full := !known && len(f.cuts) >= f.a.cfg.MaxCuts
	f.cmu.Unlock()
	if full {
		f.a.metrics.cutsNotGuarded.Inc()
		return fmt.Errorf("%d cut flows remembered already: %s cut without its guard", f.a.cfg.MaxCuts, fl)
	}
	if err := f.a.dp.AddCuts(ctx, []dataplane.Flow{fwd}); err != nil {
		f.a.metrics.cutsNotGuarded.Inc()
		return err
	}
	f.cmu.Lock()
	f.cuts[fwd] = cutRecord{viaService: fl.ViaService, expires: time.Now().Add(dataplane.CutTTL)}
	f.cmu.Unlock()
	return nil
}

// lift re-decides the cut flows with an end in changed (all of them when
// changed is nil) and takes those policy allows again out of the cut sets.
// Cuts the kernel has forgotten are forgotten here too.
func (f *flowCutter) lift(ctx context.Context, changed map[netip.Addr]struct{}) {
	now := time.Now()
	f.cmu.Lock()
	var check []dataplane.Flow
	var recs []cutRecord
	for fl, rec := range f.cuts {
		if !rec.expires.After(now) {
			delete(f.cuts, fl)
			continue
		}
		if changed != nil {
			_, src := changed[fl.Src]
			_, dst := changed[fl.Dst]
			if !src && !dst {
				continue
			}
		}
		check = append(check, fl)
		recs = append(recs, rec)
	}
	f.cmu.Unlock()
	var lift []dataplane.Flow
	for i, fl := range check {
		allow, err := f.decide(ctx, conntrack.Flow{Src: fl.Src, Dst: fl.Dst, Proto: fl.Proto,
			SrcPort: fl.SrcPort, DstPort: fl.DstPort, ViaService: recs[i].viaService})
		if err != nil {
			if ctx.Err() == nil {
				slog.Warn("re-deciding a cut flow failed; it stays cut", "flow", fl, "err", err)
			}
			continue
		}
		if allow {
			lift = append(lift, fl)
		}
	}
	if len(lift) == 0 {
		return
	}
	if err := f.a.dp.RemoveCuts(ctx, lift); err != nil {
		slog.Warn("lifting cuts of flows policy allows again failed", "flows", len(lift), "err", err)
		return
	}
	f.cmu.Lock()
	for _, fl := range lift {
		delete(f.cuts, fl)
	}
	f.cmu.Unlock()
	f.a.metrics.cutsLifted.Add(float64(len(lift)))
	slog.Info("lifted the cuts of flows that policy allows again", "flows", len(lift))
}

// adopt takes over the cuts a previous process left in the kernel; they
// are re-decided at the first generation, which covers everything.
func (f *flowCutter) adopt(ctx context.Context) {
	flows, err := f.a.dp.ListCuts(ctx)
	if err != nil {
		slog.Warn("could not read the cut flows of a previous run; they expire on their own", "err", err)
		return
	}
	f.cmu.Lock()
	defer f.cmu.Unlock()
	exp := time.Now().Add(dataplane.CutTTL)
	for _, fl := range flows {
		if len(f.cuts) >= f.a.cfg.MaxCuts {
			break
		}
		f.cuts[fl] = cutRecord{expires: exp}
	}
	if len(flows) > 0 {
		slog.Info("adopted the cut flows of a previous run", "flows", len(f.cuts))
	}
}

// restoreCuts puts every remembered cut back into the kernel, after the
// ruleset was restored.
func (f *flowCutter) restoreCuts(ctx context.Context) error {
	f.cmu.Lock()
	flows := make([]dataplane.Flow, 0, len(f.cuts))
	for fl := range f.cuts {
		flows = append(flows, fl)
	}
	f.cmu.Unlock()
	return f.a.dp.AddCuts(ctx, flows)
}

// fromHost reports whether ip is assigned to this network namespace: flows
// the host itself opened are never judged by the dataplane. The addresses
// are read once per run.
func (f *flowCutter) fromHost(ip netip.Addr) bool {
	f.hostMu.Lock()
	defer f.hostMu.Unlock()
	_, ok := f.hostAddrs[ip.Unmap()]
	return ok
}

func (f *flowCutter) refreshHostAddrs() {
	addrs, err := net.InterfaceAddrs()
	m := make(map[netip.Addr]struct{}, len(addrs))
	if err != nil {
		slog.Warn("reading the host's addresses failed", "err", err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			m[p.Addr().Unmap()] = struct{}{}
		}
	}
	f.hostMu.Lock()
	f.hostAddrs = m
	f.hostMu.Unlock()
}
