// Package nfq reads packets from NFQUEUE and answers them with a verdict.
//
// Run opens Config.Count consecutive queues; the dataplane fans new
// connections out over them by CPU (`queue num A-B fanout`), and each queue
// has its own netlink socket and reading goroutine.
//
// The handler may block: on a verdict-cache miss it waits for the decider up
// to the queuer's decide timeout. Handling packets inline on the reading
// goroutine would serialise those waits, so that one slow miss delays every
// packet behind it and the decider stream never sees more than one query per
// queue. With Config.Workers > 1 the reading goroutine hands packets to a
// small, bounded pool of workers per queue that call the handler and set the
// verdict themselves (go-nfqueue's verdict calls are safe for concurrent use,
// and the kernel accepts verdicts in any order). The pool's channel is
// bounded, so a stalled handler pushes back on the socket and the kernel
// queue rather than growing memory. Workers <= 1 keeps the simple inline
// path.
package nfq

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// DefaultCopyLen is the default number of packet bytes copied to userspace:
// the whole packet, up to the 64 KiB an IP packet can hold. An IPv6
// extension-header chain may push the transport header arbitrarily far
// (one header can be 2 KiB), and a packet whose transport header was not
// copied could not be judged. Only the first packet of a connection is
// queued, and most are small (a TCP SYN), so copying more costs little.
const DefaultCopyLen = 0xffff

// Verdict is the answer for one packet.
type Verdict struct {
	// Accept lets the packet continue; otherwise it is dropped.
	Accept bool
	// SetMark makes the kernel set the packet mark to Mark on an accepted
	// packet.
	SetMark bool
	// Mark is the packet mark to set.
	Mark uint32
	// Token is the handler's own; nfq hands it back to Config.AfterVerdict.
	Token uint64
}

// Packet is one queued packet.
type Packet struct {
	// Queue is the queue number the packet arrived on.
	Queue uint16
	// ID is the kernel's packet id.
	ID uint32
	// Payload is the packet from its IP header, at most Config.CopyLen bytes.
	// It stays valid after the handler returns.
	Payload []byte
	// DNAT is true when conntrack says the connection's destination was
	// translated (it was addressed to a service). Valid only if CtKnown.
	DNAT bool
	// CtKnown says the kernel attached conntrack information.
	CtKnown bool
	// Mark is the packet's mark as queued.
	Mark uint32
}

// Handler decides a packet. It is called concurrently from the goroutines
// of all queues (and their workers).
type Handler func(p Packet) Verdict

// AsyncHandler decides a packet without blocking. It must call answer
// exactly once, before it returns or later from any goroutine; answer sets
// the verdict. It is called on the queues' reading goroutines.
type AsyncHandler func(p Packet, answer func(Verdict))

// Config configures Run.
type Config struct {
	// First is the first queue number; Count queues First..First+Count-1 are
	// opened (Count at least 1).
	First, Count uint16
	// MaxLen is the kernel queue length per queue (default 1024).
	MaxLen uint32
	// CopyLen is how many bytes of each packet are copied (DefaultCopyLen).
	CopyLen uint32
	// Workers is the number of handler goroutines per queue; 0 or 1 runs the
	// handler on the reading goroutine. RunAsync ignores it.
	Workers int
	// Shard, when set with Workers > 1, gives each worker packets of its
	// own: packets with the same Shard value go to the same worker and are
	// handled one after another in the order the kernel queued them (the
	// segments of one TCP connection, say). Without it any idle worker
	// takes the next packet.
	Shard func(Packet) uint32
	// NetNS, when non-zero, is a network-namespace file descriptor to open
	// the queues in (tests use it); zero means the current namespace.
	NetNS int
	// Counters receives the counters; nil creates private ones.
	Counters *Counters
	// OnError, when set, is told about netlink errors that Run survives,
	// such as ENOBUFS (the socket buffer overflowed and the kernel dropped
	// packets).
	OnError func(queue uint16, err error)
	// AfterVerdict, when set, runs after the kernel took a packet's
	// verdict (for an accepted packet: after the rest of the hook ran).
	AfterVerdict func(p Packet, v Verdict)
	// OnOpen, when set, is called once every queue is open and read.
	OnOpen func()
}

// QueueStats are the counters of one queue.
type QueueStats struct {
	// Queue is the queue number.
	Queue uint16
	// Packets counts packets handed to the handler.
	Packets uint64
	// Accepted and Dropped count verdicts set.
	Accepted, Dropped uint64
	// VerdictErrors counts verdicts the kernel did not take.
	VerdictErrors uint64
	// ReadErrors counts receive errors survived (mostly ENOBUFS).
	ReadErrors uint64
}

// Counters are per-queue counters, safe for concurrent use.
type Counters struct {
	first  uint16
	queues []queueCounters
}

type queueCounters struct {
	packets, accepted, dropped, verdictErrors, readErrors atomic.Uint64
}

// NewCounters allocates counters for queues first..first+count-1.
func NewCounters(first, count uint16) *Counters {
	return &Counters{first: first, queues: make([]queueCounters, count)}
}

func (c *Counters) queue(q uint16) *queueCounters {
	i := int(q) - int(c.first)
	if i < 0 || i >= len(c.queues) {
		return nil
	}
	return &c.queues[i]
}

// Has reports whether queue q is one of the counted queues.
func (c *Counters) Has(q uint16) bool { return c.queue(q) != nil }

// Snapshot returns the current counters of every queue.
func (c *Counters) Snapshot() []QueueStats {
	out := make([]QueueStats, len(c.queues))
	for i := range c.queues {
		q := &c.queues[i]
		out[i] = QueueStats{
			Queue:         c.first + uint16(i),
			Packets:       q.packets.Load(),
			Accepted:      q.accepted.Load(),
			Dropped:       q.dropped.Load(),
			VerdictErrors: q.verdictErrors.Load(),
			ReadErrors:    q.readErrors.Load(),
		}
	}
	return out
}

// Run reads the queues until ctx ends and then returns nil, or returns an
// error if a queue cannot be opened or its socket fails beyond recovery
// (after closing the other queues).
func Run(ctx context.Context, cfg Config, h Handler) error {
	return run(ctx, cfg, h, nil)
}

// RunAsync is Run with an AsyncHandler, called on the reading goroutines.
func RunAsync(ctx context.Context, cfg Config, h AsyncHandler) error {
	cfg.Workers, cfg.Shard = 0, nil
	return run(ctx, cfg, nil, h)
}

func run(ctx context.Context, cfg Config, h Handler, ah AsyncHandler) error {
	if cfg.Count == 0 {
		return errors.New("nfq: queue count must be at least 1")
	}
	if int(cfg.First)+int(cfg.Count)-1 > 65535 {
		return fmt.Errorf("nfq: queues %d..%d exceed 65535", cfg.First, int(cfg.First)+int(cfg.Count)-1)
	}
	if cfg.MaxLen == 0 {
		cfg.MaxLen = 1024
	}
	if cfg.CopyLen == 0 {
		cfg.CopyLen = DefaultCopyLen
	}
	if cfg.Counters == nil {
		cfg.Counters = NewCounters(cfg.First, cfg.Count)
	}
	runCtx, cancel := context.WithCancelCause(ctx)
	var queues []*reader
	defer func() {
		// End the reading loops first, then close their sockets.
		cancel(nil)
		for _, r := range queues {
			r.close()
		}
	}()
	for i := range cfg.Count {
		r, err := open(runCtx, cancel, cfg, cfg.First+i, h, ah)
		if err != nil {
			return err
		}
		queues = append(queues, r)
	}
	slog.Info("nfqueue readers running", "first", cfg.First, "count", cfg.Count,
		"workers", cfg.Workers, "async", ah != nil, "copyLen", cfg.CopyLen)
	if cfg.OnOpen != nil {
		cfg.OnOpen()
	}
	<-runCtx.Done()
	if err := context.Cause(runCtx); ctx.Err() == nil && err != nil {
		return err
	}
	return nil
}

// reader is one open queue.
type reader struct {
	num      uint16
	nf       *nfqueue.Nfqueue
	h        Handler
	ah       AsyncHandler
	counters *queueCounters
	jobs     []chan Packet // one shared, or one per worker with shard
	shard    func(Packet) uint32
	workers  sync.WaitGroup
	onError  func(uint16, error)
	after    func(Packet, Verdict)
}

// open opens queue num, asking for conntrack information first and, on
// kernels built without CONFIG_NETFILTER_NETLINK_GLUE_CT (which refuse that
// flag), without it.
func open(ctx context.Context, fail context.CancelCauseFunc, cfg Config, num uint16, h Handler, ah AsyncHandler) (*reader, error) {
	r, err := openWith(ctx, fail, cfg, num, h, ah, true)
	if errors.Is(err, unix.EOPNOTSUPP) {
		slog.Info("nfq: kernel cannot attach conntrack information to queued packets; service DNAT is inferred", "queue", num)
		// The refused attempt had already bound the queue; the kernel lets
		// it go when that socket is released, which can trail its Close.
		// Until then a new bind gets EPERM, so retry for a while.
		for attempt := 0; ; attempt++ {
			r, err = openWith(ctx, fail, cfg, num, h, ah, false)
			if !errors.Is(err, unix.EPERM) || attempt == 50 || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return r, err
}

func openWith(ctx context.Context, fail context.CancelCauseFunc, cfg Config, num uint16, h Handler, ah AsyncHandler, conntrack bool) (*reader, error) {
	// Never NFQA_CFG_F_FAIL_OPEN: with it the kernel accepts a packet when
	// the queue is full, so a pod that floods new tuples would get its
	// next, undecided, connection through. A full queue drops instead (and
	// the kernel counts it); senders retransmit. The fail modes apply to a
	// queuer or decider that is not there, not to one that is busy.
	flags := uint32(nfqueue.NfQaCfgFlagGSO)
	if conntrack {
		flags |= nfqueue.NfQaCfgFlagConntrack
	}
	r := &reader{num: num, h: h, ah: ah, counters: cfg.Counters.queue(num), onError: cfg.OnError, after: cfg.AfterVerdict}
	if r.counters == nil {
		return nil, fmt.Errorf("nfq: counters do not cover queue %d", num)
	}
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      num,
		MaxQueueLen:  cfg.MaxLen,
		MaxPacketLen: cfg.CopyLen,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        flags,
		NetNS:        cfg.NetNS,
	})
	if err != nil {
		return nil, fmt.Errorf("nfq: open queue %d: %w", num, err)
	}
	r.nf = nf
	// Without this, a full socket buffer would end the read loop with
	// ENOBUFS; with it the kernel just drops (and counts) what overflows.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		slog.Debug("nfq: NETLINK_NO_ENOBUFS not set", "queue", num, "err", err)
	}
	errfn := func(err error) int {
		if ctx.Err() != nil {
			return 1
		}
		if errors.Is(err, unix.ENOBUFS) {
			r.counters.readErrors.Add(1)
			if r.onError != nil {
				r.onError(num, err)
			}
			return 0
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0
		}
		r.counters.readErrors.Add(1)
		fail(fmt.Errorf("nfq: queue %d: receive: %w", num, err))
		return 1
	}
	if cfg.Workers > 1 {
		channels, size := 1, 4*cfg.Workers
		if cfg.Shard != nil {
			channels, size, r.shard = cfg.Workers, 4, cfg.Shard
		}
		for range channels {
			r.jobs = append(r.jobs, make(chan Packet, size))
		}
		for w := range cfg.Workers {
			jobs := r.jobs[w%channels]
			r.workers.Add(1)
			go func() {
				defer r.workers.Done()
				for p := range jobs {
					r.answer(p)
				}
			}()
		}
	}
	if err := nf.RegisterWithErrorFunc(ctx, r.hook, errfn); err != nil {
		r.close()
		return nil, fmt.Errorf("nfq: register queue %d: %w", num, err)
	}
	return r, nil
}

// hook runs on the reading goroutine for each message.
func (r *reader) hook(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		return 0
	}
	p := Packet{Queue: r.num, ID: *a.PacketID}
	if a.Payload != nil {
		p.Payload = *a.Payload
	}
	if a.Ct != nil {
		p.DNAT, p.CtKnown = ctDNAT(*a.Ct)
	}
	if a.Mark != nil {
		p.Mark = *a.Mark
	}
	r.counters.packets.Add(1)
	if r.ah != nil {
		r.ah(p, func(v Verdict) { r.set(p, v) })
		return 0
	}
	if r.jobs != nil {
		i := 0
		if r.shard != nil {
			i = int(r.shard(p) % uint32(len(r.jobs)))
		}
		r.jobs[i] <- p
		return 0
	}
	r.answer(p)
	return 0
}

// answer runs the handler and sets the verdict.
func (r *reader) answer(p Packet) {
	r.set(p, r.h(p))
}

// set sets p's verdict, counts it and runs the AfterVerdict hook.
func (r *reader) set(p Packet, v Verdict) {
	var err error
	switch {
	case !v.Accept:
		r.counters.dropped.Add(1)
		err = r.nf.SetVerdict(p.ID, nfqueue.NfDrop)
	case v.SetMark:
		r.counters.accepted.Add(1)
		err = r.nf.SetVerdictWithMark(p.ID, nfqueue.NfAccept, int(v.Mark))
	default:
		r.counters.accepted.Add(1)
		err = r.nf.SetVerdict(p.ID, nfqueue.NfAccept)
	}
	if err != nil {
		r.counters.verdictErrors.Add(1)
		if r.onError != nil {
			r.onError(r.num, fmt.Errorf("set verdict: %w", err))
		}
		return
	}
	if r.after != nil {
		r.after(p, v)
	}
}

// close stops the workers and closes the socket (which unbinds the queue
// once the reading goroutine has seen the context end).
func (r *reader) close() {
	if r.jobs != nil {
		// The reading goroutine is the only sender; Close waits for it
		// before we close the channel.
		if err := r.nf.Close(); err != nil {
			slog.Debug("nfq: close", "queue", r.num, "err", err)
		}
		for _, jobs := range r.jobs {
			close(jobs)
		}
		r.workers.Wait()
		return
	}
	if err := r.nf.Close(); err != nil {
		slog.Debug("nfq: close", "queue", r.num, "err", err)
	}
}

// Conntrack attribute numbers and status bits (linux/netfilter/nfnetlink_conntrack.h,
// linux/netfilter/nf_conntrack_common.h).
const (
	ctaStatus  = 3
	ipsDstNAT  = 1 << 5
	nlaTypeMsk = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// ctDNAT reads CTA_STATUS from the nested conntrack attributes of a queued
// packet and reports whether destination NAT applies.
func ctDNAT(b []byte) (dnat, ok bool) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMsk
		if l < 4 || l > len(b) {
			return false, false
		}
		if typ == ctaStatus && l >= 8 {
			return binary.BigEndian.Uint32(b[4:8])&ipsDstNAT != 0, true
		}
		next := (l + 3) &^ 3
		if next > len(b) {
			return false, false
		}
		b = b[next:]
	}
	return false, false
}
