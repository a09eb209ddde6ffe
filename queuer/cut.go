package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
)

// flowCutter re-evaluates established flows of selected pods whenever the
// decider announces a new generation, and cuts those policy now denies. Only
// flows with an end whose verdict inputs changed are re-evaluated, unless
// the decider says everything may have changed (a new Watch stream).
// Established packets never leave the kernel, so without it a connection
// accepted before a deny policy would live on.
//
// A cut puts the flow, in both directions, into the kernel cut sets (kept
// for dataplane.CutTTL, across generations) and its tuple into the deny
// sets, then deletes its conntrack entry: the flow's next packet, from
// either end, is picked up as new (or invalid) and dropped. Without the cut
// sets, a packet from the server side after the next generation's flush
// would be judged as a new server-to-client connection, which policy may
// allow, and re-open the flow in reverse.
type flowCutter struct {
	cutter  *conntrack.Cutter
	dec     decider
	timeout time.Duration

	kick     chan struct{}
	mu       sync.Mutex
	selected []netip.Addr
	// all and changed accumulate what changed since the last run: all, or
	// the addresses whose verdicts may have changed.
	all     bool
	changed map[netip.Addr]struct{}
}

// cutStore is the kernel side a cut writes to; *dataplane.Dataplane
// implements it.
type cutStore interface {
	verdictStore
	AddCuts(ctx context.Context, flows []dataplane.Flow) error
}

func newFlowCutter(table conntrack.Table, dec decider, store cutStore, timeout time.Duration) *flowCutter {
	c := conntrack.NewCutter(table)
	c.BeforeDelete = func(ctx context.Context, f conntrack.Flow) error {
		// The flow itself, both directions, for CutTTL whatever the next
		// generations bring; and the tuple's denial until the next one.
		err := store.AddCuts(ctx, []dataplane.Flow{
			{Src: f.Src, Dst: f.Dst, Proto: f.Proto, SrcPort: f.SrcPort, DstPort: f.DstPort},
			{Src: f.Dst, Dst: f.Src, Proto: f.Proto, SrcPort: f.DstPort, DstPort: f.SrcPort},
		})
		return errors.Join(err, store.AddVerdicts(ctx, []dataplane.Verdict{
			{Src: f.Src, Dst: f.Dst, Proto: f.Proto, DstPort: f.DstPort},
			{Src: f.Dst, Dst: f.Src, Proto: f.Proto, DstPort: f.SrcPort},
		}))
	}
	c.FromHost = hostAddress
	return &flowCutter{cutter: c, dec: dec, timeout: timeout, kick: make(chan struct{}, 1)}
}

// Trigger asks for a re-evaluation of the flows that touch an address whose
// verdicts u says may have changed, against u's selected pod IPs. Triggers
// that arrive while one is pending merge into it.
func (f *flowCutter) Trigger(u client.WatchUpdate) {
	f.mu.Lock()
	f.selected = append(slices.Clone(u.IPv4), u.IPv6...)
	switch {
	case u.ChangedAll:
		f.all, f.changed = true, nil
	case !f.all:
		if f.changed == nil {
			f.changed = make(map[netip.Addr]struct{}, len(u.Changed))
		}
		for _, a := range u.Changed {
			f.changed[a.Unmap()] = struct{}{}
		}
	}
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run cuts after each trigger until ctx ends.
func (f *flowCutter) Run(ctx context.Context) {
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
		start := time.Now()
		n, err := f.cutter.Cut(ctx, conntrack.Request{Selected: selected, Changed: changed}, f.decide)
		if err != nil {
			slog.Warn("cutting denied flows failed", "err", err)
		}
		if n > 0 {
			slog.Info("cut established flows that policy now denies", "flows", n, "took", time.Since(start))
		}
	}
}

func (f *flowCutter) decide(ctx context.Context, fl conntrack.Flow) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	r, err := f.dec.Decide(ctx, client.Query{Src: fl.Src, Dst: fl.Dst, Proto: fl.Proto, DstPort: fl.DstPort, ViaService: fl.ViaService || fl.Src == fl.Dst})
	return r.Allow, err
}

// hostAddress reports whether ip is assigned to this network namespace:
// flows the host itself opened are never judged by the dataplane.
func hostAddress(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ip.Unmap() {
			return true
		}
	}
	return false
}
