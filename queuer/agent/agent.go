// Package agent is the queuer's runtime, everything between the decider's
// socket and the kernel: it answers queued packets (parse, userspace cache,
// decider, fail mode) and tells the kernel which verdicts to learn; it
// applies the decider's Watch announcements to the dataplane and both
// cache tiers, retrying until they are in force; it cuts established flows
// that a change now denies and lifts the cut when policy allows them again;
// and it keeps the nftables ruleset in place, restoring it when someone
// removes or changes it. Package main parses flags and wires the parts.
package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/decisionlog"
	"github.com/tollgate/tollgate/queuer/dns"
)

// Decider is the decider client; *client.Client implements it.
type Decider interface {
	// Decide asks for one verdict and waits for it.
	Decide(ctx context.Context, q client.Query) (client.Result, error)
	// DecideFunc asks for one verdict and gives it to fn exactly once:
	// when it arrives, or with an error (wrapping
	// context.DeadlineExceeded when timeout passed first).
	DecideFunc(q client.Query, timeout time.Duration, fn func(client.Result, error))
	// Connected reports whether a decision stream is open.
	Connected() bool
	// Watch delivers the decider's announcements until ctx ends.
	Watch(ctx context.Context, node string, fn func(client.WatchUpdate)) error
	// Learn reports a DNS answer a pod received.
	Learn(ctx context.Context, pod netip.Addr, rs []client.Resolution) (uint64, error)
}

// Dataplane is the kernel side; *dataplane.Dataplane implements it.
type Dataplane interface {
	Setup(ctx context.Context) error
	Check(ctx context.Context) error
	SyncSelected(ctx context.Context, v4, v6 []netip.Addr) error
	SyncDNSPods(ctx context.Context, v4, v6 []netip.Addr) error
	Learned(v dataplane.Verdict)
	ForgetVerdicts(ctx context.Context, vs []dataplane.Verdict) error
	InvalidateVerdicts(ctx context.Context, changed func(netip.Addr) bool) error
	SweepStale(ctx context.Context) error
	FlushVerdicts(ctx context.Context) error
	AddCuts(ctx context.Context, flows []dataplane.Flow) error
	RemoveCuts(ctx context.Context, flows []dataplane.Flow) error
	ListCuts(ctx context.Context) ([]dataplane.Flow, error)
}

// Config tunes an Agent.
type Config struct {
	// NodeName is the node whose selected pods the decider reports.
	NodeName string
	// FailOpen accepts packets while no verdict can be had because the
	// decider is not there (else they are dropped). A decider that is there
	// but does not answer in time gets its packets dropped in both modes.
	FailOpen bool
	// DecideTimeout is how long a packet waits for the decider.
	DecideTimeout time.Duration
	// LearnVerdicts makes the kernel cache decided tuples (the learn
	// chains); off, every new connection of a selected pod is queued.
	LearnVerdicts bool
	// PortRanges keeps, in the userspace cache, the decider's answer for
	// the whole range of destination ports it says the answer holds for
	// (Result.PortRange); off, for the queried port only.
	PortRanges bool
	// CutEstablished cuts established flows that a change now denies.
	CutEstablished bool
	// CheckInterval is how often the ruleset is checked (and restored);
	// zero turns the check off.
	CheckInterval time.Duration
	// RetryInterval is how soon a Watch announcement that could not be
	// applied is tried again (default 1 s).
	RetryInterval time.Duration
	// MaxCuts bounds the cut flows remembered (default
	// dataplane.DefaultCutSetSize).
	MaxCuts int
	// Decisions, when not nil, logs the connections the agent decides.
	Decisions *decisionlog.Logger
}

// Agent is the queuer's runtime. Create it with New, start its loops with
// Run, and give HandleAsync (or Handle) and AfterVerdict to the NFQUEUE
// readers.
type Agent struct {
	cfg     Config
	cache   *cache.Cache
	dec     Decider
	dp      Dataplane
	metrics *Metrics
	cutter  *flowCutter // nil when cutting is off

	// gen is the generation in force: announced and applied (or being
	// applied) to the caches.
	gen atomic.Uint64
	// watched is set once the decider's state was applied; healthy while
	// the ruleset is known to be in place.
	watched atomic.Bool
	healthy atomic.Bool

	// The Watch application (watch.go).
	wmu      sync.Mutex
	pending  *pendingUpdate      // the newest announcements not yet applied
	last     *client.WatchUpdate // the newest announcement taken for applying
	kick     chan struct{}
	instance string // decider instance of gen; used by the applier only
	dirty    bool   // an application failed: the next one resets everything
	// appliedGen is the last generation put in force; applied is closed
	// (and replaced) whenever one is.
	appliedGen uint64
	applied    chan struct{}

	// streams reassembles DNS answers sent over TCP.
	streams *dns.Streams

	// forgets carries learned verdicts that a change may have made stale
	// (see AfterVerdict); a full channel flushes instead.
	forgets     chan dataplane.Verdict
	flushNeeded atomic.Bool

	// checkNow asks the check loop for an immediate check; readyMu guards
	// lastLook, when Ready last looked at the ruleset.
	checkNow chan struct{}
	readyMu  sync.Mutex
	lastLook time.Time
}

// New returns an Agent. table may be nil when cfg.CutEstablished is false.
func New(cfg Config, vc *cache.Cache, dec Decider, dp Dataplane, table conntrack.Table, m *Metrics) *Agent {
	if cfg.DecideTimeout <= 0 {
		cfg.DecideTimeout = 250 * time.Millisecond
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.MaxCuts <= 0 {
		cfg.MaxCuts = dataplane.DefaultCutSetSize
	}
	a := &Agent{cfg: cfg, cache: vc, dec: dec, dp: dp, metrics: m,
		kick: make(chan struct{}, 1), forgets: make(chan dataplane.Verdict, 4096), checkNow: make(chan struct{}, 1),
		applied: make(chan struct{}), streams: dns.NewStreams(1024)}
	a.healthy.Store(true)
	if cfg.CutEstablished {
		a.cutter = newFlowCutter(a, table)
		m.countCuts(a.cutter.stats)
	}
	return a
}

// Ready reports whether the node is enforced as the decider says: the
// ruleset is in place, the decider is connected and its state applied. It
// looks at the ruleset itself when the last look is older than half a second,
// so that a probe sees a removed table at once; the repair follows.
func (a *Agent) Ready(ctx context.Context) bool {
	if a.cfg.CheckInterval > 0 {
		a.readyMu.Lock()
		if time.Since(a.lastLook) > 500*time.Millisecond {
			a.lastLook = time.Now()
			if err := a.dp.Check(ctx); errors.Is(err, dataplane.ErrDamaged) {
				a.healthy.Store(false)
				select {
				case a.checkNow <- struct{}{}:
				default:
				}
			}
		}
		a.readyMu.Unlock()
	}
	return a.healthy.Load() && a.watched.Load() && a.dec.Connected()
}

// Run starts the agent's loops (Watch, its application, the flow cutter,
// the ruleset check and the forgetting of stale learned verdicts) and
// returns when ctx ends and all of them have stopped.
func (a *Agent) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if a.cutter != nil {
		a.cutter.adopt(ctx)
		wg.Go(func() { a.cutter.run(ctx) })
	}
	wg.Go(func() { a.applyLoop(ctx) })
	wg.Go(func() { a.forgetLoop(ctx) })
	if a.cfg.CheckInterval > 0 {
		wg.Go(func() { a.checkLoop(ctx) })
	}
	wg.Go(func() {
		_ = a.dec.Watch(ctx, a.cfg.NodeName, a.onWatch)
	})
	wg.Wait()
}

// forgetLoop removes from the kernel, in batches, the learned verdicts
// that AfterVerdict found may be stale, and flushes the verdict sets when
// there were too many to carry.
func (a *Agent) forgetLoop(ctx context.Context) {
	batch := make([]dataplane.Verdict, 0, 256)
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-a.forgets:
			batch = append(batch[:0], v)
		drain:
			for len(batch) < cap(batch) {
				select {
				case v := <-a.forgets:
					batch = append(batch, v)
				default:
					break drain
				}
			}
			if err := a.dp.ForgetVerdicts(ctx, batch); err != nil {
				slog.Warn("removing verdicts learned across a generation change failed; flushing", "count", len(batch), "err", err)
				a.flushNeeded.Store(true)
			}
		}
		if a.flushNeeded.Swap(false) {
			if err := a.dp.FlushVerdicts(ctx); err != nil {
				slog.Warn("flushing the kernel verdict cache failed", "err", err)
				a.markDirty()
			}
		}
	}
}

// markDirty makes the next Watch application reset both cache tiers and
// re-evaluate every flow, and asks for one soon.
func (a *Agent) markDirty() {
	a.wmu.Lock()
	a.dirty = true
	a.wmu.Unlock()
	a.wake()
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}
