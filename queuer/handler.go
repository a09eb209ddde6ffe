package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/decisionlog"
	"github.com/tollgate/tollgate/queuer/nfq"
	"github.com/tollgate/tollgate/queuer/packet"
)

// decider answers verdicts; *client.Client implements it.
type decider interface {
	Decide(ctx context.Context, q client.Query) (client.Result, error)
}

// verdictSink receives decided tuples for the kernel verdict cache;
// *kernelBatcher implements it.
type verdictSink interface {
	Add(v dataplane.Verdict, gen uint64)
	// Reset empties the kernel cache for generation gen.
	Reset(ctx context.Context, gen uint64) error
	// Advance moves to generation gen, dropping only the verdicts that
	// involve an address changed reports.
	Advance(ctx context.Context, gen uint64, changed func(netip.Addr) bool) error
}

// selectedSyncer programs the selected-pod sets; *dataplane.Dataplane
// implements it.
type selectedSyncer interface {
	SyncSelected(ctx context.Context, v4, v6 []netip.Addr) error
}

// How a packet's verdict was reached (label "source" of the packet metrics).
const (
	sourceCache    = "cache"
	sourceDecider  = "decider"
	sourceFailMode = "fail-mode"
	sourceBypass   = "bypass" // ICMPv6 neighbour discovery
)

// handler decides queued packets: parse, userspace cache, decider, fail
// mode. It is safe for concurrent use by all queue goroutines.
type handler struct {
	cache    *cache.Cache
	decider  decider
	sink     verdictSink
	failOpen bool
	timeout  time.Duration
	metrics  *metrics
	// decisions, if not nil, logs the connections decided.
	decisions *decisionlog.Logger

	// gen is the last generation announced by Watch; watched is set once
	// the first announcement was applied.
	mu       sync.Mutex // serialises applyWatch
	instance string     // the decider instance of gen; under mu
	gen      atomic.Uint64
	watched  atomic.Bool
}

// handle is the nfq.Handler.
func (h *handler) handle(p nfq.Packet) nfq.Verdict {
	start := time.Now()
	allow, source := h.decide(p)
	h.metrics.observePacket(time.Since(start), allow, source)
	return nfq.Verdict{Accept: allow}
}

// decide returns the verdict for p and how it was reached.
func (h *handler) decide(p nfq.Packet) (allow bool, source string) {
	info, err := packet.Parse(p.Payload)
	if err != nil {
		h.metrics.parseErrors.Inc()
		return h.failMode(), sourceFailMode
	}
	if info.Proto == packet.ProtoICMPv6 && info.ICMPType >= 133 && info.ICMPType <= 137 {
		return true, sourceBypass
	}
	if info.Fragment {
		// A later fragment without a transport header: conntrack reassembles
		// before our hooks, so this is unexpected; it cannot be decided.
		h.metrics.parseErrors.Inc()
		return h.failMode(), sourceFailMode
	}
	q := client.Query{Src: info.Src, Dst: info.Dst, Proto: info.Proto, DstPort: info.DstPort, Explain: h.decisions.Explain()}
	var res client.Result
	defer func() {
		h.decisions.Log(decisionlog.Decision{Src: q.Src, Dst: q.Dst, SrcPort: info.SrcPort, DstPort: q.DstPort, Proto: q.Proto,
			ViaService: q.ViaService, Allow: allow, Answered: source, Generation: res.Generation, Explanations: res.Explanations})
	}()
	switch {
	case p.CtKnown:
		q.ViaService = p.DNAT
	default:
		// Without conntrack information: a pod's packet to its own address
		// only leaves the pod when it was sent to a service and hairpinned
		// back, so at our hooks source == destination means via a service.
		q.ViaService = info.Src == info.Dst
	}
	key := cache.Key{Src: q.Src, Dst: q.Dst, Proto: q.Proto, DstPort: q.DstPort, ViaService: q.ViaService}
	if allow, ok := h.cache.Get(key); ok {
		return allow, sourceCache
	}

	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	begin := time.Now()
	res, err = h.decider.Decide(ctx, q)
	if err != nil {
		h.metrics.deciderErrors.Inc()
		return h.failMode(), sourceFailMode
	}
	h.metrics.deciderRTT.Observe(time.Since(begin).Seconds())
	h.cache.Put(key, res.Allow, res.Generation)
	if h.sink != nil && kernelCacheable(q) && res.Generation >= h.gen.Load() {
		h.sink.Add(dataplane.Verdict{Src: q.Src, Dst: q.Dst, Proto: q.Proto, DstPort: q.DstPort, Allow: res.Allow}, res.Generation)
	}
	return res.Allow, sourceDecider
}

// kernelCacheable says whether the kernel verdict sets can hold q: they key
// on ports, so only TCP, UDP and SCTP; and they cannot tell a direct
// connection from one through a service, which only matters when a pod
// reaches itself.
func kernelCacheable(q client.Query) bool {
	switch q.Proto {
	case packet.ProtoTCP, packet.ProtoUDP, packet.ProtoSCTP:
		return q.Src != q.Dst
	}
	return false
}

// failMode is the verdict while no decision can be had; it is counted.
func (h *handler) failMode() bool {
	if h.failOpen {
		h.metrics.failMode.WithLabelValues("open").Inc()
		return true
	}
	h.metrics.failMode.WithLabelValues("closed").Inc()
	return false
}

// applyWatch applies one announcement of the decider: the selected-pod sets,
// and on a new generation the invalidation of both cache tiers: precise
// when the decider listed the changed addresses, complete otherwise (a new
// stream, or changed_all). A lower generation than the last one, or another
// decider instance, means the numbering started afresh, so the caches are
// reset.
func (h *handler) applyWatch(ctx context.Context, dp selectedSyncer, u client.WatchUpdate) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := dp.SyncSelected(ctx, u.IPv4, u.IPv6); err != nil {
		return fmt.Errorf("sync selected pods of generation %d: %w", u.Generation, err)
	}
	prev, seen := h.gen.Load(), h.watched.Load()
	// Another decider process numbers its generations afresh: the same
	// number may mean other policies. Without an instance name, any new
	// stream may be another process.
	restarted := seen && (u.Instance != h.instance || (u.Instance == "" && u.First))
	h.instance = u.Instance
	if seen && !restarted && !u.ChangedAll && u.Generation > prev {
		// The decider listed what changed: verdicts between two unlisted
		// addresses stand, in both tiers.
		changed := make(map[netip.Addr]struct{}, len(u.Changed))
		for _, a := range u.Changed {
			changed[a.Unmap()] = struct{}{}
		}
		isChanged := func(a netip.Addr) bool { _, ok := changed[a.Unmap()]; return ok }
		h.cache.Advance(u.Generation, isChanged)
		h.gen.Store(u.Generation)
		h.metrics.invalidations.WithLabelValues("precise").Inc()
		if h.sink != nil {
			if err := h.sink.Advance(ctx, u.Generation, isChanged); err != nil {
				return fmt.Errorf("invalidate kernel verdicts for generation %d: %w", u.Generation, err)
			}
		}
	} else if !seen || restarted || u.Generation != prev {
		h.metrics.invalidations.WithLabelValues("full").Inc()
		if restarted || u.Generation < prev {
			slog.Info("decider restarted or generation went backwards; resetting caches",
				"from", prev, "to", u.Generation, "instance", u.Instance)
			h.cache.Reset(u.Generation)
		} else {
			h.cache.Invalidate(u.Generation)
		}
		h.gen.Store(u.Generation)
		if h.sink != nil {
			if err := h.sink.Reset(ctx, u.Generation); err != nil {
				return fmt.Errorf("flush kernel verdicts for generation %d: %w", u.Generation, err)
			}
		}
	}
	h.metrics.generation.Set(float64(u.Generation))
	h.watched.Store(true)
	return nil
}

// verdictStore is the kernel side the batcher writes to; *dataplane.Dataplane
// implements it.
type verdictStore interface {
	AddVerdicts(ctx context.Context, vs []dataplane.Verdict) error
	FlushVerdicts(ctx context.Context) error
	InvalidateVerdicts(ctx context.Context, changed func(netip.Addr) bool) error
}

// kernelBatcher moves decided tuples into the kernel verdict sets off the
// packet path: it collects them for a short interval (or up to maxBatch)
// and writes them in one transaction. It never writes a verdict of an older
// generation than the current one: Reset and the writes are serialised, and
// each write filters by the generation in force.
type kernelBatcher struct {
	store    verdictStore
	queue    chan pendingVerdict
	maxBatch int
	interval time.Duration
	metrics  *metrics

	mu  sync.Mutex
	gen uint64
}

type pendingVerdict struct {
	v   dataplane.Verdict
	gen uint64
}

func newKernelBatcher(store verdictStore, m *metrics) *kernelBatcher {
	return &kernelBatcher{
		store:    store,
		queue:    make(chan pendingVerdict, 4096),
		maxBatch: 256,
		interval: 5 * time.Millisecond,
		metrics:  m,
	}
}

// Add queues v; when the queue is full the verdict is only counted, since
// the userspace cache still holds it.
func (b *kernelBatcher) Add(v dataplane.Verdict, gen uint64) {
	select {
	case b.queue <- pendingVerdict{v: v, gen: gen}:
	default:
		b.metrics.kernelCacheDropped.Inc()
	}
}

// Reset makes gen current and empties the kernel verdict sets. Queued
// verdicts of older generations are dropped when their batch is written.
func (b *kernelBatcher) Reset(ctx context.Context, gen uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen = gen
	return b.store.FlushVerdicts(ctx)
}

// Advance makes gen current and removes from the kernel the verdicts that
// involve an address changed reports. Queued verdicts of older generations
// are dropped when their batch is written, affected or not.
func (b *kernelBatcher) Advance(ctx context.Context, gen uint64, changed func(netip.Addr) bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen = gen
	return b.store.InvalidateVerdicts(ctx, changed)
}

// Run writes batches until ctx ends.
func (b *kernelBatcher) Run(ctx context.Context) {
	batch := make([]pendingVerdict, 0, b.maxBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-b.queue:
			if len(batch) == 0 {
				timer.Reset(b.interval)
			}
			batch = append(batch, p)
			if len(batch) < b.maxBatch {
				continue
			}
			timer.Stop()
		case <-timer.C:
		}
		b.write(ctx, batch)
		batch = batch[:0]
	}
}

// write stores the verdicts of batch that are not of an older generation.
func (b *kernelBatcher) write(ctx context.Context, batch []pendingVerdict) {
	b.mu.Lock()
	defer b.mu.Unlock()
	vs := make([]dataplane.Verdict, 0, len(batch))
	for _, p := range batch {
		if p.gen < b.gen {
			b.metrics.kernelCacheStale.Inc()
			continue
		}
		vs = append(vs, p.v)
	}
	if len(vs) == 0 {
		return
	}
	if err := b.store.AddVerdicts(ctx, vs); err != nil {
		b.metrics.kernelCacheErrors.Inc()
		slog.Warn("adding verdicts to the kernel cache failed", "count", len(vs), "err", err)
	}
}
