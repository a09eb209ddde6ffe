package conntrack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
)

// Table is the part of the kernel conntrack table the Cutter needs. *Client
// implements it; tests use a fake.
type Table interface {
	// List returns every entry.
	List(ctx context.Context) ([]Flow, error)
	// Delete removes one entry; an entry already gone gives ErrNotFound.
	Delete(ctx context.Context, f Flow) error
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
	// DecideErrors counts flows kept because no verdict could be had.
	DecideErrors uint64
	// DeleteErrors counts denied entries that could not be deleted.
	DeleteErrors uint64
}

// Cutter re-evaluates established flows after a policy change and deletes
// the conntrack entries of those now denied. Its counters are safe for
// concurrent reading; Cut itself may run concurrently but is meant to be
// called by one goroutine per policy generation.
type Cutter struct {
	table Table

	// BeforeDelete, when set, runs before each denied entry is deleted, for
	// instance to put the tuple into the kernel's deny set so that the
	// connection's next packet is dropped without a round trip to the
	// decider. An error is logged and counted; the entry is deleted anyway,
	// since keeping it would keep the denied connection open.
	BeforeDelete func(ctx context.Context, f Flow) error

	// FromHost, when set, reports addresses of the host itself. Flows whose
	// original source is one of them were sent by the host (output hook),
	// which the dataplane never judges (kubelet probes, host-network pods),
	// so they are left alone.
	FromHost func(netip.Addr) bool

	runs, examined, skipped, cut, gone, decideErrs, deleteErrs atomic.Uint64
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
		DecideErrors: c.decideErrs.Load(),
		DeleteErrors: c.deleteErrs.Load(),
	}
}

// Cut lists the conntrack table, keeps the flows whose source or real
// (post-DNAT) destination is one of selected and, unless changed is nil,
// whose source or destination is one of changed (the addresses whose
// verdicts may have changed), asks decide about each, and deletes the
// entries decide denies. It returns how many entries it deleted.
//
// A flow whose decision fails is kept (and counted); entries already gone are
// not errors. Cut stops early when ctx ends and returns ctx's error. The
// returned error also reports failed decisions and deletions, with the first
// cause; the other flows were still handled.
func (c *Cutter) Cut(ctx context.Context, selected []netip.Addr, changed map[netip.Addr]struct{}, decide DecideFunc) (int, error) {
	c.runs.Add(1)
	if len(selected) == 0 || (changed != nil && len(changed) == 0) {
		return 0, nil
	}
	want := make(map[netip.Addr]struct{}, len(selected))
	for _, a := range selected {
		want[a.Unmap().WithZone("")] = struct{}{}
	}
	flows, err := c.table.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("conntrack: cut: %w", err)
	}

	var cut, failedDecide, failedDelete int
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	for _, f := range flows {
		if !c.involves(f, want) {
			continue
		}
		if changed != nil {
			_, src := changed[f.Src]
			_, dst := changed[f.Dst]
			if !src && !dst {
				c.skipped.Add(1)
				continue
			}
		}
		if err := ctx.Err(); err != nil {
			return cut, fmt.Errorf("conntrack: cut stopped after %d entries: %w", cut, err)
		}
		c.examined.Add(1)
		allow, err := decide(ctx, f)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return cut, fmt.Errorf("conntrack: cut stopped after %d entries: %w", cut, ctxErr)
			}
			c.decideErrs.Add(1)
			failedDecide++
			fail(fmt.Errorf("decide %s: %w", f, err))
			continue
		}
		if allow {
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
			fail(err)
		}
	}
	if firstErr != nil {
		return cut, fmt.Errorf("conntrack: cut: %d decisions and %d deletions failed, first: %w",
			failedDecide, failedDelete, firstErr)
	}
	return cut, nil
}

// involves reports whether f has a selected end and was not sent by the host.
func (c *Cutter) involves(f Flow, selected map[netip.Addr]struct{}) bool {
	if c.FromHost != nil && c.FromHost(f.Src) {
		return false
	}
	_, src := selected[f.Src]
	_, dst := selected[f.Dst]
	return src || dst
}
