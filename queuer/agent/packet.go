package agent

import (
	"context"
	"errors"
	"time"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/decisionlog"
	"github.com/tollgate/tollgate/queuer/nfq"
	"github.com/tollgate/tollgate/queuer/packet"
)

// How a packet's verdict was reached (label "source" of the packet metrics).
const (
	sourceCache       = "cache"
	sourceDecider     = "decider"
	sourceFailMode    = "fail-mode"
	sourceBusy        = "busy"        // the decider did not answer in time
	sourceUnjudgeable = "unjudgeable" // the packet could not be read
	sourceBypass      = "bypass"      // ICMPv6 neighbour discovery
)

// Handle decides a queued packet; it is the nfq.Handler. It is safe for
// concurrent use by all queue readers.
func (a *Agent) Handle(p nfq.Packet) nfq.Verdict {
	start := time.Now()
	v, allow, source := a.decide(p)
	a.metrics.observePacket(time.Since(start), allow, source)
	return v
}

var (
	accept = nfq.Verdict{Accept: true}
	drop   = nfq.Verdict{}
)

// decide returns the verdict for p, whether it lets the packet on, and
// how it was reached.
func (a *Agent) decide(p nfq.Packet) (v nfq.Verdict, allow bool, source string) {
	info, err := packet.Parse(p.Payload)
	if err != nil {
		// Not a decider outage: a packet nobody can judge is dropped in
		// both fail modes, or a crafted header chain would be a way past
		// policy.
		a.metrics.unjudgeable.WithLabelValues(unjudgeableReason(err)).Inc()
		return drop, false, sourceUnjudgeable
	}
	if info.Proto == packet.ProtoICMPv6 && info.ICMPType >= 133 && info.ICMPType <= 137 {
		return accept, true, sourceBypass
	}
	if info.Fragment {
		// A later fragment without a transport header. conntrack
		// reassembles before our hooks, so only untracked traffic gets
		// here this way; it cannot be judged.
		a.metrics.unjudgeable.WithLabelValues("fragment").Inc()
		return drop, false, sourceUnjudgeable
	}
	q := client.Query{Src: info.Src, Dst: info.Dst, Proto: info.Proto, DstPort: info.DstPort, Explain: a.cfg.Decisions.Explain()}
	var res client.Result
	defer func() {
		a.cfg.Decisions.Log(decisionlog.Decision{Src: q.Src, Dst: q.Dst, SrcPort: info.SrcPort, DstPort: q.DstPort, Proto: q.Proto,
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
	// The generation in force before looking anything up: AfterVerdict
	// compares it with the one in force after the kernel learned the verdict.
	gen := a.gen.Load()
	key := cache.Key{Src: q.Src, Dst: q.Dst, Proto: q.Proto, DstPort: q.DstPort, ViaService: q.ViaService}
	if allow, ok := a.cache.Get(key); ok {
		return a.verdict(p, q, allow, gen, true), allow, sourceCache
	}

	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.DecideTimeout)
	defer cancel()
	begin := time.Now()
	res, err = a.dec.Decide(ctx, q)
	if err != nil {
		a.metrics.deciderErrors.Inc()
		if errors.Is(err, context.DeadlineExceeded) && a.dec.Connected() {
			// The decider is there but busy: drop, whatever the fail
			// mode, so that a flood of new tuples cannot turn into
			// acceptance. The sender retransmits.
			a.metrics.busy.Inc()
			return drop, false, sourceBusy
		}
		allow := a.failMode()
		if allow {
			return accept, true, sourceFailMode
		}
		return drop, false, sourceFailMode
	}
	a.metrics.deciderRTT.Observe(time.Since(begin).Seconds())
	a.cache.Put(key, res.Allow, res.Generation)
	return a.verdict(p, q, res.Allow, gen, res.Generation >= gen), res.Allow, sourceDecider
}

// verdict answers p with allow, and, when learn holds and the kernel can
// cache q, with the mark that makes the learn chain add q's tuple to the
// kernel verdict cache. token is the generation the verdict was decided in.
func (a *Agent) verdict(p nfq.Packet, q client.Query, allow bool, token uint64, learn bool) nfq.Verdict {
	if !learn || !a.cfg.LearnVerdicts || !kernelCacheable(q) {
		if allow {
			return accept
		}
		return drop
	}
	bits := dataplane.MarkLearnDeny
	if allow {
		bits = dataplane.MarkLearnAllow
	}
	// Accepted in both cases: a learned deny is dropped by the learn
	// chain after it added the tuple to the deny set.
	return nfq.Verdict{Accept: true, SetMark: true, Mark: p.Mark&^dataplane.VerdictMask | bits, Token: token}
}

// AfterVerdict runs once the kernel took a verdict; it is the
// nfq.Config.AfterVerdict. For a learned verdict it records the kernel
// element, and if a new generation came into force since the verdict was
// decided (its invalidation may have run before the kernel learned it), it
// has the element removed again.
func (a *Agent) AfterVerdict(p nfq.Packet, v nfq.Verdict) {
	bits := v.Mark & dataplane.VerdictMask
	if !v.SetMark || (bits != dataplane.MarkLearnAllow && bits != dataplane.MarkLearnDeny) {
		return
	}
	info, err := packet.Parse(p.Payload)
	if err != nil {
		return // cannot happen: Handle parsed it
	}
	dv := dataplane.Verdict{Src: info.Src, Dst: info.Dst, Proto: info.Proto, DstPort: info.DstPort,
		Allow: bits == dataplane.MarkLearnAllow}
	a.dp.Learned(dv)
	if a.gen.Load() != v.Token {
		a.metrics.learnedStale.Inc()
		select {
		case a.forgets <- dv:
		default:
			// Too many to carry: the forget loop, busy with the queue,
			// empties the verdict sets when it is done.
			a.flushNeeded.Store(true)
		}
	}
}

// kernelCacheable says whether the kernel verdict sets can hold q: they key
// on ports, so only TCP, UDP and SCTP; and they cannot tell a direct
// connection from one through a service, which only matters when a pod
// reaches itself.
func kernelCacheable(q client.Query) bool {
	return dataplane.Cacheable(q.Proto) && q.Src != q.Dst
}

// failMode is the verdict while no decider can be asked; it is counted.
func (a *Agent) failMode() bool {
	if a.cfg.FailOpen {
		a.metrics.failMode.WithLabelValues("open").Inc()
		return true
	}
	a.metrics.failMode.WithLabelValues("closed").Inc()
	return false
}

// unjudgeableReason names a parse error for the metric.
func unjudgeableReason(err error) string {
	switch {
	case errors.Is(err, packet.ErrTruncated):
		return "truncated"
	case errors.Is(err, packet.ErrTooManyExtHeaders):
		return "extension-headers"
	case errors.Is(err, packet.ErrVersion):
		return "version"
	default:
		return "malformed"
	}
}
