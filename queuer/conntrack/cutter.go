package conntrack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Table is the part of the kernel conntrack table the Cutter needs. *Client
// implements it; tests use a fake.
type Table interface {
	// Walk calls fn with each entry that f keeps.
	Walk(ctx context.Context, f Filter, fn func(Flow) error) error
	// Delete removes one entry; an entry already gone gives ErrNotFound.
	Delete(ctx context.Context, f Flow) error
	// SetMark sets the bits of mark on one entry.
	SetMark(ctx context.Context, f Flow, mark uint32) error
}

// DecideFunc answers whether policy, as it stands now, allows f.
type DecideFunc func(ctx context.Context, f Flow) (allow bool, err error)

// Stats are the Cutter's counters since it was created.
type Stats struct {
	// Runs counts calls to Cut.
	Runs uint64
	// Examined counts flows that involved a selected address and were decided.
	Examined uint64
	// Skipped counts flows of selected addresses left alone because neither
	// end's verdict inputs changed.
	Skipped uint64
	// Cut counts entries deleted because policy now denies them.
	Cut uint64
	// Gone counts denied entries that had already disappeared when deleted.
	Gone uint64
	// Adopted counts allowed entries given the Request's mark because they
	// were opened before their pod was selected.
	Adopted uint64
	// DecideErrors counts flows kept because no verdict could be had.
	DecideErrors uint64
	// DeleteErrors counts denied entries that could not be deleted.
	DeleteErrors uint64
}

// Request says which established flows a Cut re-evaluates.
type Request struct {
	// Selected are the node's policy-selected pod addresses: only flows
	// with one of them at an end (source, or real destination) are judged
	// by the dataplane, so only those are re-evaluated.
	Selected []netip.Addr
	// Changed, unless nil, limits the run to flows with an end among these
	// addresses (the decider's list of addresses whose verdicts may have
	// changed); nil means every flow of a selected address.
	Changed map[netip.Addr]struct{}
	// Mark, when non-zero, is the conntrack mark bit the dataplane sets on
	// every connection it judges. With Changed set, only marked entries and
	// the entries of Newly are listed, and allowed entries found without the
	// mark are given it, so that every flow of a selected pod carries it.
	Mark uint32
	// Newly are selected addresses that were not selected at the previous
	// Cut: their flows were opened without being judged, so they carry no
	// mark. Their flows count as changed.
	Newly []netip.Addr
}

// maxAddrWalks is how many addresses of Request.Newly are listed with
// per-address dumps; with more, one walk of the whole table is cheaper
// (each filtered dump still walks the table in the kernel).
const maxAddrWalks = 4

// decideWorkers bounds the decisions a Cut has in flight.
const decideWorkers = 32

// Cutter re-evaluates established flows after a policy change and deletes
// the conntrack entries of those now denied. Its counters are safe for
// concurrent reading; Cut is meant to be called by one goroutine.
type Cutter struct {
	table Table

	// BeforeDelete, when set, runs before each denied entry is deleted, for
	// instance to put the flow into the kernel's cut sets so that the
	// connection's next packet is dropped without a round trip to the
	// decider. An error is logged; the entry is deleted anyway, since
	// keeping it would keep the denied connection open.
	BeforeDelete func(ctx context.Context, f Flow) error

	// FromHost, when set, reports addresses of the host itself. Flows whose
	// original source is one of them were sent by the host (output hook),
	// which the dataplane never judges (kubelet probes, host-network pods),
	// so they are left alone. It is called once per listed flow.
	FromHost func(netip.Addr) bool

	runs, examined, skipped, cut, gone, adopted, decideErrs, deleteErrs atomic.Uint64
}

// NewCutter returns a Cutter working on table.
func NewCutter(table Table) *Cutter {
	return &Cutter{table: table}
}

// Stats returns a snapshot of the counters.
func (c *Cutter) Stats() Stats {
	return Stats{
		Runs:         c.runs.Load(),
		Examined:     c.examined.Load(),
		Skipped:      c.skipped.Load(),
		Cut:          c.cut.Load(),
		Gone:         c.gone.Load(),
		Adopted:      c.adopted.Load(),
		DecideErrors: c.decideErrs.Load(),
		DeleteErrors: c.deleteErrs.Load(),
	}
}

// verdictKey is what a flow's verdict depends on: flows that share it
// share their verdict, so each key is decided once per Cut.
type verdictKey struct {
	src, dst   netip.Addr
	proto      uint8
	dstPort    uint16
	viaService bool
}

func keyOf(f Flow) verdictKey {
	return verdictKey{src: f.Src, dst: f.Dst, proto: f.Proto, dstPort: f.DstPort, viaService: f.ViaService || f.Src == f.Dst}
}

// entryKey tells kernel entries apart, so that an entry listed twice (by
// two filtered dumps) is handled once.
type entryKey struct {
	id      uint32
	zone    uint16
	proto   uint8
	src     netip.Addr
	srcPort uint16
	dst     netip.Addr
	dstPort uint16
}

// Cut lists the conntrack entries that r asks about, asks decide about each
// distinct verdict key among them, and deletes the entries decide denies.
// It returns how many entries it deleted.
//
// Memory stays bounded by the flows that involve a selected address and a
// changed one, whatever the size of the table. A flow whose decision fails
// is kept (and counted); entries already gone are not errors. Cut stops
// early when ctx ends and returns ctx's error. The returned error also
// reports failed decisions and deletions, with the first cause; the other
// flows were still handled.
func (c *Cutter) Cut(ctx context.Context, r Request, decide DecideFunc) (int, error) {
	c.runs.Add(1)
	if len(r.Selected) == 0 || (r.Changed != nil && len(r.Changed) == 0 && len(r.Newly) == 0) {
		return 0, nil
	}
	selected := make(map[netip.Addr]struct{}, len(r.Selected))
	for _, a := range r.Selected {
		selected[a.Unmap().WithZone("")] = struct{}{}
	}
	changed := r.Changed
	if changed != nil && len(r.Newly) > 0 {
		changed = make(map[netip.Addr]struct{}, len(r.Changed)+len(r.Newly))
		for a := range r.Changed {
			changed[a] = struct{}{}
		}
		for _, a := range r.Newly {
			changed[a.Unmap().WithZone("")] = struct{}{}
		}
	}

	var candidates []Flow
	seen := map[entryKey]struct{}{}
	keep := func(f Flow) error {
		if !c.involves(f, selected) {
			return nil
		}
		if changed != nil {
			_, src := changed[f.Src]
			_, dst := changed[f.Dst]
			if !src && !dst {
				c.skipped.Add(1)
				return nil
			}
		}
		k := entryKey{id: f.id, zone: f.zone, proto: f.Proto, src: f.Src, srcPort: f.SrcPort, dst: f.OrigDst, dstPort: f.OrigDstPort}
		if _, dup := seen[k]; dup {
			return nil
		}
		seen[k] = struct{}{}
		candidates = append(candidates, f)
		return nil
	}
	var err error
	switch {
	case r.Changed == nil || r.Mark == 0 || len(r.Newly) > maxAddrWalks:
		err = c.table.Walk(ctx, Filter{}, keep)
	default:
		err = c.table.Walk(ctx, Filter{Mark: r.Mark}, keep)
		for _, a := range r.Newly {
			if err != nil {
				break
			}
			err = c.table.Walk(ctx, Filter{Addr: a}, keep)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("conntrack: cut: %w", err)
	}
	if len(candidates) == 0 {
		return 0, nil
	}

	verdicts, decideErr := c.decideAll(ctx, candidates, decide)
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("conntrack: cut stopped: %w", err)
	}

	var cut, failedDelete int
	var firstErr error
	for _, f := range candidates {
		v, ok := verdicts[keyOf(f)]
		if !ok {
			continue // no verdict: kept, counted by decideAll
		}
		if err := ctx.Err(); err != nil {
			return cut, fmt.Errorf("conntrack: cut stopped after %d entries: %w", cut, err)
		}
		if v {
			if r.Mark != 0 && f.Mark&r.Mark != r.Mark {
				if err := c.table.SetMark(ctx, f, r.Mark); err == nil {
					c.adopted.Add(1)
				} else if !errors.Is(err, ErrNotFound) {
					slog.Debug("conntrack: could not mark an adopted flow", "flow", f.String(), "err", err)
				}
			}
			continue
		}
		if c.BeforeDelete != nil {
			if err := c.BeforeDelete(ctx, f); err != nil {
				slog.Warn("conntrack: before-delete hook failed, deleting anyway", "flow", f.String(), "err", err)
			}
		}
		switch err := c.table.Delete(ctx, f); {
		case err == nil:
			c.cut.Add(1)
			cut++
			slog.Debug("conntrack: cut denied flow", "flow", f.String())
		case errors.Is(err, ErrNotFound):
			c.gone.Add(1)
		default:
			c.deleteErrs.Add(1)
			failedDelete++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if decideErr != nil || firstErr != nil {
		return cut, fmt.Errorf("conntrack: cut: %d deletions failed: %w", failedDelete, errors.Join(decideErr, firstErr))
	}
	return cut, nil
}

// decideAll decides each distinct verdict key of flows once, with a bounded
// number of decisions in flight. Keys whose decision failed are missing
// from the result; the error counts them and names the first.
func (c *Cutter) decideAll(ctx context.Context, flows []Flow, decide DecideFunc) (map[verdictKey]bool, error) {
	byKey := map[verdictKey]Flow{}
	for _, f := range flows {
		if _, ok := byKey[keyOf(f)]; !ok {
			byKey[keyOf(f)] = f
		}
	}
	c.examined.Add(uint64(len(flows)))
	var (
		mu       sync.Mutex
		out      = make(map[verdictKey]bool, len(byKey))
		failed   int
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, decideWorkers)
	)
	for k, f := range byKey {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			allow, err := decide(ctx, f)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if ctx.Err() == nil {
					failed++
					if firstErr == nil {
						firstErr = fmt.Errorf("decide %s: %w", f, err)
					}
				}
				return
			}
			out[k] = allow
		})
	}
	wg.Wait()
	if failed > 0 {
		// Count every flow that shares a failed key.
		for _, f := range flows {
			if _, ok := out[keyOf(f)]; !ok {
				c.decideErrs.Add(1)
			}
		}
		return out, fmt.Errorf("%d decisions failed, first: %w", failed, firstErr)
	}
	return out, nil
}

// involves reports whether f has a selected end and was not sent by the host.
func (c *Cutter) involves(f Flow, selected map[netip.Addr]struct{}) bool {
	_, src := selected[f.Src]
	_, dst := selected[f.Dst]
	if !src && !dst {
		return false
	}
	return c.FromHost == nil || !c.FromHost(f.Src)
}
