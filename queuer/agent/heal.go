package agent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tollgate/tollgate/queuer/dataplane"
)

// checkLoop checks the ruleset every CheckInterval and restores it when it
// is missing or changed: `nft flush ruleset` (Debian's nftables.service
// runs one at start), another agent or an operator's mistake would
// otherwise leave the node unenforced, silently, until the next restart.
// While it is damaged the agent is not ready.
func (a *Agent) checkLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.checkNow:
		}
		a.checkOnce(ctx)
	}
}

// checkOnce checks the ruleset once and restores it if needed.
func (a *Agent) checkOnce(ctx context.Context) {
	err := a.dp.Check(ctx)
	if err == nil {
		a.healthy.Store(true)
		return
	}
	if ctx.Err() != nil {
		return
	}
	if !errors.Is(err, dataplane.ErrDamaged) {
		a.metrics.checkErrors.Inc()
		slog.Warn("checking the ruleset failed", "err", err)
		return
	}
	a.healthy.Store(false)
	a.metrics.repairs.Inc()
	slog.Error("the ruleset was changed behind the queuer's back; restoring it", "problem", err)
	start := time.Now()
	if err := a.dp.Setup(ctx); err != nil {
		slog.Error("restoring the ruleset failed; trying again", "err", err, "in", a.cfg.CheckInterval)
		return
	}
	if a.cutter != nil {
		if err := a.cutter.restoreCuts(ctx); err != nil {
			slog.Warn("restoring the cut flows failed", "err", err)
		}
	}
	// The selected sets and caches must be made whole from the decider's
	// state again, and every flow re-evaluated.
	a.markDirty()
	if err := a.dp.Check(ctx); err != nil {
		slog.Error("the restored ruleset does not check out", "err", err)
		return
	}
	a.healthy.Store(true)
	slog.Info("ruleset restored", "took", time.Since(start))
}
