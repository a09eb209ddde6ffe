package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/tollgate/tollgate/queuer/client"
)

// pendingUpdate is the newest announcement not yet in force, with what
// changed since the last one that was: announcements that arrive while one
// is being applied, or after one failed, merge into it.
type pendingUpdate struct {
	u        client.WatchUpdate
	all      bool                    // every verdict may have changed
	changed  map[netip.Addr]struct{} // else: the addresses whose verdicts may have
	first    bool                    // a new stream began since the last application
	received time.Time               // when u arrived
}

// onWatch takes one announcement from the decider; it never blocks on the
// dataplane.
func (a *Agent) onWatch(u client.WatchUpdate) {
	a.wmu.Lock()
	p := a.pending
	if p == nil {
		p = &pendingUpdate{changed: map[netip.Addr]struct{}{}}
		a.pending = p
	}
	p.u = u
	p.received = time.Now()
	p.first = p.first || u.First
	if u.ChangedAll {
		p.all = true
	}
	if !p.all {
		for _, x := range u.Changed {
			p.changed[x.Unmap()] = struct{}{}
		}
	}
	a.wmu.Unlock()
	a.wake()
}

// applyLoop applies announcements as they come and retries a failed
// application every RetryInterval until it succeeds.
func (a *Agent) applyLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-retry.C:
		}
		if err := a.applyOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			retry.Reset(a.cfg.RetryInterval)
			continue
		}
		// The verdicts the change made stale are answered by the queue
		// already; deleting them can wait for a quiet moment, but not
		// hold up the next change.
		a.wmu.Lock()
		more := a.pending != nil
		a.wmu.Unlock()
		if more {
			continue // a.kick is set: the next round applies it, then sweeps
		}
		if err := a.dp.SweepStale(ctx); err != nil && ctx.Err() == nil {
			slog.Error("deleting stale kernel verdicts failed", "err", err)
			a.metrics.applyErrors.Inc()
			a.wmu.Lock()
			a.dirty = true
			a.wmu.Unlock()
			retry.Reset(a.cfg.RetryInterval)
		}
	}
}

// applyOnce applies what is pending, if anything. On failure it keeps it
// pending, marks the agent dirty and returns the error.
func (a *Agent) applyOnce(ctx context.Context) error {
	a.wmu.Lock()
	p, dirty := a.pending, a.dirty
	a.pending = nil
	if p == nil && dirty && a.last != nil {
		// Nothing new, but what is in force was lost (a failed flush, a
		// restored ruleset): apply the last announcement again.
		p = &pendingUpdate{u: *a.last, all: true, changed: map[netip.Addr]struct{}{}, received: time.Now()}
	}
	if p != nil {
		u := p.u
		a.last = &u
	}
	a.wmu.Unlock()
	if p == nil {
		return nil // nothing announced yet, or nothing new
	}
	err := a.apply(ctx, p, dirty)
	if err == nil || ctx.Err() != nil {
		return err
	}
	slog.Error("applying the decider's state failed; caches reset, retrying",
		"generation", p.u.Generation, "retryIn", a.cfg.RetryInterval, "err", err)
	a.metrics.applyErrors.Inc()
	a.wmu.Lock()
	a.dirty = true
	if a.pending == nil {
		a.pending = p
	} else {
		// A newer announcement arrived meanwhile; the next try is a full
		// one anyway.
		a.pending.first = a.pending.first || p.first
	}
	a.wmu.Unlock()
	return err
}

// apply puts p in force: the generation, both cache tiers, the selected-pod
// sets, then the flow cutter. The caches go first so that no verdict of an
// older generation is served once the dataplane can send packets of newly
// selected pods to the queue. On failure both cache tiers are emptied (as far
// as the kernel lets us) and the caller retries with dirty set, which makes
// the next try a full one: every cached verdict dropped and every flow of a
// selected pod re-evaluated.
func (a *Agent) apply(ctx context.Context, p *pendingUpdate, dirty bool) error {
	u := p.u
	prev, seen := a.gen.Load(), a.watched.Load()
	// Another decider process numbers its generations afresh: the same
	// number may mean other policies. Without an instance name, any new
	// stream may be another process.
	restarted := seen && (u.Instance != a.instance || (u.Instance == "" && p.first))
	full := !seen || restarted || dirty || u.Generation < prev || (p.all && u.Generation != prev)
	precise := !full && u.Generation > prev

	a.gen.Store(u.Generation)
	began := time.Now()
	var cacheErr error
	switch {
	case full:
		a.metrics.invalidations.WithLabelValues("full").Inc()
		if restarted || u.Generation < prev {
			slog.Info("decider restarted or generation went backwards; resetting caches",
				"from", prev, "to", u.Generation, "instance", u.Instance)
		}
		a.cache.Reset(u.Generation)
		cacheErr = a.dp.FlushVerdicts(ctx)
	case precise:
		isChanged := func(x netip.Addr) bool { _, ok := p.changed[x.Unmap()]; return ok }
		a.metrics.invalidations.WithLabelValues("precise").Inc()
		a.cache.Advance(u.Generation, isChanged)
		cacheErr = a.dp.InvalidateVerdicts(ctx, isChanged)
	}
	invalidated := time.Now()
	syncErr := errors.Join(a.dp.SyncSelected(ctx, u.IPv4, u.IPv6), a.dp.SyncDNSPods(ctx, u.DNS4, u.DNS6))
	if cacheErr != nil || syncErr != nil {
		a.cache.Reset(u.Generation)
		if cacheErr != nil {
			return fmt.Errorf("invalidate kernel verdicts for generation %d: %w", u.Generation, cacheErr)
		}
		return fmt.Errorf("sync selected pods of generation %d: %w", u.Generation, syncErr)
	}
	a.instance = u.Instance
	a.watched.Store(true)
	a.metrics.generation.Set(float64(u.Generation))
	a.metrics.applyLatency.Observe(time.Since(p.received).Seconds())
	slog.Info("decider state applied", "generation", u.Generation, "ipv4", len(u.IPv4), "ipv6", len(u.IPv6),
		"full", full, "changed", len(p.changed), "waited", began.Sub(p.received),
		"invalidate", invalidated.Sub(began), "sync", time.Since(invalidated))
	a.wmu.Lock()
	a.dirty = false
	a.appliedGen = u.Generation
	close(a.applied)
	a.applied = make(chan struct{})
	a.wmu.Unlock()
	if a.cutter != nil && (full || precise) {
		selected := make([]netip.Addr, 0, len(u.IPv4)+len(u.IPv6))
		selected = append(append(selected, u.IPv4...), u.IPv6...)
		changed := p.changed
		if full {
			changed = nil
		}
		a.cutter.trigger(selected, changed)
	}
	return nil
}
