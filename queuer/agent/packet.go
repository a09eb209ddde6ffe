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

// Handle decides a queued packet and waits for the verdict; it is an
// nfq.Handler, safe for concurrent use. The queuer's own queues use
// HandleAsync.
func (a *Agent) Handle(p nfq.Packet) nfq.Verdict {
	ch := make(chan nfq.Verdict, 1)
	a.HandleAsync(p, func(v nfq.Verdict) { ch <- v })
	return <-ch
}

var (
	accept = nfq.Verdict{Accept: true}
	drop   = nfq.Verdict{}
)

// HandleAsync decides a queued packet; it is the nfq.AsyncHandler. A packet
// the userspace cache (or the packet alone) decides is answered before it
// returns; a miss is answered from the decider client's goroutine when the
// decider's answer arrives or the decide timeout passes.
func (a *Agent) HandleAsync(p nfq.Packet, answer func(nfq.Verdict)) {
	start := time.Now()
	m, v, allow, source, asked := a.lookup(p)
	if !asked {
		a.metrics.observePacket(time.Since(start), allow, source)
		answer(v)
		return
	}
	begin := time.Now()
	a.dec.DecideFunc(m.q, a.cfg.DecideTimeout, func(res client.Result, err error) {
		v, allow, source := a.decided(p, m, begin, res, err)
		a.metrics.observePacket(time.Since(start), allow, source)
		answer(v)
	})
}

// miss is what a packet that needs the decider carries to its answer.
type miss struct {
	q       client.Query
	srcPort uint16
	key     cache.Key
	// gen is the generation in force before the lookup: AfterVerdict
	// compares it with the one in force after the kernel learned the
	// verdict.
	gen uint64
}

// lookup decides p when it can without the decider. Otherwise asked is set
// and m says what to ask.
func (a *Agent) lookup(p nfq.Packet) (m miss, v nfq.Verdict, allow bool, source string, asked bool) {
	info, err := packet.Parse(p.Payload)
	if err != nil {
		// Not a decider outage: a packet nobody can judge is dropped in
		// both fail modes, or a crafted header chain would be a way past
		// policy.
		a.metrics.unjudgeable.WithLabelValues(unjudgeableReason(err)).Inc()
		return m, drop, false, sourceUnjudgeable, false
	}
	if info.Proto == packet.ProtoICMPv6 && info.ICMPType >= 133 && info.ICMPType <= 137 {
		return m, accept, true, sourceBypass, false
	}
	if info.Fragment {
		// A later fragment without a transport header. conntrack
		// reassembles before our hooks, so only untracked traffic gets
		// here this way; it cannot be judged.
		a.metrics.unjudgeable.WithLabelValues("fragment").Inc()
		return m, drop, false, sourceUnjudgeable, false
	}
	m.q = client.Query{Src: info.Src, Dst: info.Dst, Proto: info.Proto, DstPort: info.DstPort, Explain: a.cfg.Decisions.Explain()}
	m.srcPort = info.SrcPort
	switch {
	case p.CtKnown:
		m.q.ViaService = p.DNAT
	default:
		// Without conntrack information: a pod's packet to its own address
		// only leaves the pod when it was sent to a service and hairpinned
		// back, so at our hooks source == destination means via a service.
		m.q.ViaService = info.Src == info.Dst
	}
	m.gen = a.gen.Load()
	m.key = cache.Key{Src: m.q.Src, Dst: m.q.Dst, Proto: m.q.Proto, DstPort: m.q.DstPort, ViaService: m.q.ViaService}
	if allow, ok := a.cache.Get(m.key); ok {
		a.log(m, allow, sourceCache, client.Result{})
		return m, a.verdict(p, m.q, allow, m.gen, true), allow, sourceCache, false
	}
	return m, nfq.Verdict{}, false, "", true
}

// decided turns the decider's answer to m (or the error in its place) into
// p's verdict.
func (a *Agent) decided(p nfq.Packet, m miss, begin time.Time, res client.Result, err error) (v nfq.Verdict, allow bool, source string) {
	defer func() { a.log(m, allow, source, res) }()
	if err != nil {
		a.metrics.deciderErrors.Inc()
		if errors.Is(err, context.DeadlineExceeded) && a.dec.Connected() {
			// The decider is there but busy: drop, whatever the fail
			// mode, so that a flood of new tuples cannot turn into
			// acceptance. The sender retransmits.
			a.metrics.busy.Inc()
			return drop, false, sourceBusy
		}
		if a.failMode() {
			return accept, true, sourceFailMode
		}
		return drop, false, sourceFailMode
	}
	a.metrics.deciderRTT.Observe(time.Since(begin).Seconds())
	lo, hi := m.q.DstPort, m.q.DstPort
	if a.cfg.PortRanges && dataplane.Cacheable(m.q.Proto) {
		lo, hi = res.PortRange(m.q.DstPort)
	}
	a.cache.PutRange(m.key, lo, hi, res.Allow, res.Generation)
	return a.verdict(p, m.q, res.Allow, m.gen, res.Generation >= m.gen), res.Allow, sourceDecider
}

// log records a decided connection in the decision log.
func (a *Agent) log(m miss, allow bool, source string, res client.Result) {
	a.cfg.Decisions.Log(decisionlog.Decision{Src: m.q.Src, Dst: m.q.Dst, SrcPort: m.srcPort, DstPort: m.q.DstPort, Proto: m.q.Proto,
		ViaService: m.q.ViaService, Allow: allow, Answered: source, Generation: res.Generation, Explanations: res.Explanations})
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
