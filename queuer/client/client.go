// Package client is the queuer's side of the decider's gRPC API on a Unix
// socket.
//
// Decide sends every query over one long-lived DecideStream: a sender
// goroutine puts everything pending into one message (batching) without
// waiting for earlier answers (pipelining), and a receiver goroutine routes
// results by id to the waiting callers. When the stream breaks, every waiting
// caller gets an error at once and the client reconnects with capped
// exponential backoff; meanwhile Decide fails fast with ErrUnavailable so
// that the queuer applies its fail mode without waiting for a deadline.
//
// Watch keeps a Watch stream open the same way and delivers the decider's
// generation and the node's selected pod IPs.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// ErrUnavailable is returned by Decide while no DecideStream is open.
var ErrUnavailable = errors.New("client: decider stream not connected")

// ErrStreamBroken is returned to callers whose query was in flight when the
// DecideStream broke.
var ErrStreamBroken = errors.New("client: decider stream broke")

// Query is one connection to decide.
type Query struct {
	// Src and Dst are the addresses (Dst after DNAT), of one family.
	Src, Dst netip.Addr
	// Proto is the IP protocol number. TCP, UDP and SCTP are sent as such;
	// every other protocol has no ports and is decided like ICMP (only
	// policy rules without ports match it).
	Proto uint8
	// DstPort is the destination port.
	DstPort uint16
	// ViaService says the destination was reached through a service address.
	ViaService bool
	// Explain asks for the result's explanations (none by default).
	Explain tollgatev1.Explain
}

// Result is the decider's answer.
type Result struct {
	// Allow is true for VERDICT_ALLOW.
	Allow bool
	// Generation is the decider state that answered.
	Generation uint64
	// Explanations are the decider's, when the query asked for them and the
	// decider gives them: one per evaluated direction.
	Explanations []*tollgatev1.Explanation
	// PortMin and PortMax are the decider's dst_port_min and dst_port_max,
	// as sent; PortRange checks them.
	PortMin, PortMax uint32
}

// PortRange returns the destination ports the verdict holds for, given the
// queried port: the decider's range when it sent one that contains port,
// else port alone.
func (r Result) PortRange(port uint16) (lo, hi uint16) {
	if r.PortMin > uint32(port) || r.PortMax < uint32(port) || r.PortMax > 65535 {
		return port, port
	}
	return uint16(r.PortMin), uint16(r.PortMax)
}

// WatchUpdate is one announcement of the decider's state.
type WatchUpdate struct {
	// Generation is the decider's state generation.
	Generation uint64
	// IPv4 and IPv6 are the node's policy-selected pod IPs.
	IPv4, IPv6 []netip.Addr
	// Instance names the decider's generation numbering (see
	// WatchResponse.instance); empty when the decider does not say.
	Instance string
	// First is set on the first update of a Watch stream: after a
	// reconnect, the decider may be another process.
	First bool
	// ChangedAll is set when every connection may be judged differently
	// than at the previous update; otherwise Changed lists the addresses
	// whose connections may be.
	ChangedAll bool
	Changed    []netip.Addr
	// DNS4 and DNS6 are the node's pods whose DNS answers to report with
	// Learn.
	DNS4, DNS6 []netip.Addr
}

// Resolution is one name chain of a DNS answer (see tollgatev1.Resolution).
type Resolution struct {
	Names []string
	Addrs []netip.Addr
	TTL   uint32
}

// Options tunes a Client. Zero values pick the defaults.
type Options struct {
	// MinBackoff and MaxBackoff bound the reconnect delay (50ms, 250ms).
	// Reconnecting to a local socket costs one connect(2), so the ceiling
	// is low: a restarted decider is in use within about 300ms.
	MinBackoff, MaxBackoff time.Duration
	// MaxBatch is the most queries put in one message (256).
	MaxBatch int
	// FramedSocket, when set, is the decider's framed-stream socket
	// (internal/frames): decisions go there when it accepts a connection,
	// else over DecideStream.
	FramedSocket string
}

// Client talks to one decider. Create it with New, start it with Run.
type Client struct {
	conn *grpc.ClientConn
	api  tollgatev1.DeciderServiceClient
	opts Options

	nextID atomic.Uint64
	notify chan struct{} // wakes the sender; capacity 1
	pool   sync.Pool     // of chan reply

	// sendMu serialises sends on the open stream: whoever holds it sends
	// everything pending (a caller that finds the stream idle sends its own
	// query and the others', without waking the sender goroutine).
	sendMu sync.Mutex
	tr     transport   // the open stream; under mu, used under sendMu
	kind   string      // the open stream's transport, for logs and tests; under mu
	fail   func(error) // ends the open stream; under mu

	mu        sync.Mutex
	connected bool
	queue     []queued          // queries not yet sent on the current stream
	spare     []queued          // the last batch's slice, reused; under sendMu
	waiting   map[uint64]waiter // queries sent or queued, by id

	// testHookBeforeBatch, when set, runs before a send takes the pending
	// queries (tests use it to observe batching deterministically).
	testHookBeforeBatch func()
}

type queued struct {
	id uint64
	q  Query
}

type reply struct {
	res Result
	err error
}

// waiter is who gets a query's reply: Decide's channel, or DecideFunc's
// function and the timer that fails it when the answer is late.
type waiter struct {
	ch    chan reply
	fn    func(Result, error)
	timer *time.Timer
}

// give hands r to the waiter; the caller has removed it from c.waiting, so
// it happens once.
func (w waiter) give(r reply) {
	if w.fn == nil {
		w.ch <- r // capacity 1 and one reply per id: never blocks
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	w.fn(r.res, r.err)
}

// New creates a client for the decider listening on the Unix socket path.
// It does not connect; Run does.
func New(path string, opts Options) (*Client, error) {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 50 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(250*time.Millisecond, opts.MinBackoff)
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's own reconnect backoff defaults to minutes; a local socket
		// should be retried as quickly as our stream backoff.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  opts.MinBackoff,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   opts.MaxBackoff,
			},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("client: decider socket %s: %w", path, err)
	}
	c := &Client{
		conn:    conn,
		api:     tollgatev1.NewDeciderServiceClient(conn),
		opts:    opts,
		notify:  make(chan struct{}, 1),
		waiting: map[uint64]waiter{},
	}
	c.pool.New = func() any { return make(chan reply, 1) }
	return c, nil
}

// Close releases the connection. Run and Watch return once their contexts
// end; Close does not wait for them.
func (c *Client) Close() error { return c.conn.Close() }

// Connected reports whether the DecideStream is open.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// Decide asks the decider about q and waits for the answer until ctx ends.
func (c *Client) Decide(ctx context.Context, q Query) (Result, error) {
	if !q.Src.IsValid() || !q.Dst.IsValid() || q.Src.Is4() != q.Dst.Is4() {
		return Result{}, fmt.Errorf("client: query addresses %v and %v are not of one family", q.Src, q.Dst)
	}
	id := c.nextID.Add(1)
	ch := c.pool.Get().(chan reply)
	c.mu.Lock()
	if !c.connected {
		c.mu.Unlock()
		c.pool.Put(ch)
		return Result{}, ErrUnavailable
	}
	c.waiting[id] = waiter{ch: ch}
	c.queue = append(c.queue, queued{id: id, q: q})
	c.mu.Unlock()
	c.flush()

	select {
	case r := <-ch:
		c.pool.Put(ch)
		return r.res, r.err
	case <-ctx.Done():
		c.mu.Lock()
		_, mine := c.waiting[id]
		delete(c.waiting, id)
		c.mu.Unlock()
		if !mine {
			// The receiver took it and is delivering exactly one reply;
			// drain it so that the channel can be reused.
			<-ch
		}
		c.pool.Put(ch)
		return Result{}, fmt.Errorf("client: decide: %w", ctx.Err())
	}
}

// DecideFunc asks the decider about q without waiting for the answer. fn
// gets it, exactly once: on the goroutine that receives it, or with an
// error when the stream breaks or timeout passes first (wrapping
// context.DeadlineExceeded), or before DecideFunc returns when the query
// cannot be sent (ErrUnavailable). fn must not block: it runs on the
// goroutine that receives every answer.
func (c *Client) DecideFunc(q Query, timeout time.Duration, fn func(Result, error)) {
	if !q.Src.IsValid() || !q.Dst.IsValid() || q.Src.Is4() != q.Dst.Is4() {
		fn(Result{}, fmt.Errorf("client: query addresses %v and %v are not of one family", q.Src, q.Dst))
		return
	}
	id := c.nextID.Add(1)
	c.mu.Lock()
	if !c.connected {
		c.mu.Unlock()
		fn(Result{}, ErrUnavailable)
		return
	}
	// The timer is armed under c.mu, so it finds the waiter in place.
	timer := time.AfterFunc(timeout, func() { c.deliver(id, reply{err: fmt.Errorf("client: decide: %w", context.DeadlineExceeded)}) })
	c.waiting[id] = waiter{fn: fn, timer: timer}
	c.queue = append(c.queue, queued{id: id, q: q})
	c.mu.Unlock()
	c.flush()
}

// flush sends the pending queries from here when the stream is idle,
// without a hand-off to the sender goroutine, and otherwise wakes the
// sender (which takes them with whatever else is pending).
func (c *Client) flush() {
	if c.sendMu.TryLock() {
		c.flushLocked()
		c.sendMu.Unlock()
		return
	}
	select {
	case c.notify <- struct{}{}:
	default: // the sender is already woken
	}
}

// deliver hands r to the waiter of id, if it still waits.
func (c *Client) deliver(id uint64, r reply) {
	c.mu.Lock()
	w, ok := c.waiting[id]
	delete(c.waiting, id)
	c.mu.Unlock()
	if ok {
		w.give(r)
	}
}

// Run keeps a DecideStream open until ctx ends, reconnecting with backoff.
func (c *Client) Run(ctx context.Context) {
	delay := c.opts.MinBackoff
	for ctx.Err() == nil {
		opened, err := c.runStream(ctx)
		if ctx.Err() != nil {
			return
		}
		if opened {
			delay = c.opts.MinBackoff
		}
		logRetry("decider stream down; reconnecting", opened || delay == c.opts.MinBackoff, err, delay)
		if !sleep(ctx, delay) {
			return
		}
		delay = min(2*delay, c.opts.MaxBackoff)
	}
}

// runStream opens one stream (framed when FramedSocket accepts, else
// DecideStream) and serves it until it breaks. It reports whether the
// stream was opened.
func (c *Client) runStream(ctx context.Context) (bool, error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	tr, kind, err := c.open(sctx)
	if err != nil {
		return false, err
	}
	defer tr.Close()
	c.mu.Lock()
	c.connected, c.tr, c.kind, c.fail = true, tr, kind, cancel
	c.mu.Unlock()
	slog.Info("decider stream connected", "transport", kind)

	var wg sync.WaitGroup
	wg.Go(func() { cancel(c.send(sctx)) })
	wg.Go(func() { cancel(c.receive(tr)) })
	go func() {
		<-sctx.Done()
		tr.Close() // unblocks Recv
	}()
	wg.Wait()
	err = context.Cause(sctx)
	c.breakStream()
	return true, err
}

// open opens the framed stream if FramedSocket accepts a connection, else a
// DecideStream.
func (c *Client) open(ctx context.Context) (transport, string, error) {
	if c.opts.FramedSocket != "" {
		d := net.Dialer{Timeout: time.Second}
		conn, err := d.DialContext(ctx, "unix", c.opts.FramedSocket)
		if err == nil {
			return newFramed(conn), "framed", nil
		}
		slog.Debug("decider framed stream unavailable; using DecideStream", "socket", c.opts.FramedSocket, "err", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.api.DecideStream(sctx)
	if err != nil {
		cancel()
		return nil, "", fmt.Errorf("open DecideStream: %w", err)
	}
	return &grpcStream{stream: stream, cancel: cancel}, "DecideStream", nil
}

// breakStream marks the stream down and fails every waiting caller.
func (c *Client) breakStream() {
	c.mu.Lock()
	c.connected, c.tr, c.kind, c.fail = false, nil, "", nil
	waiting := c.waiting
	c.waiting = map[uint64]waiter{}
	c.queue = nil
	c.mu.Unlock()
	for _, w := range waiting {
		w.give(reply{err: ErrStreamBroken})
	}
}

// send sends what is pending whenever woken, until ctx ends.
func (c *Client) send(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-c.notify:
		}
		c.sendMu.Lock()
		c.flushLocked()
		c.sendMu.Unlock()
	}
}

// flushLocked sends every pending query on the open stream, in batches of
// at most MaxBatch; a failed send ends the stream. c.sendMu is held.
func (c *Client) flushLocked() {
	if c.testHookBeforeBatch != nil {
		c.testHookBeforeBatch()
	}
	c.mu.Lock()
	pending, tr, fail := c.queue, c.tr, c.fail
	c.queue = c.spare[:0]
	c.mu.Unlock()
	if tr == nil {
		return // breakStream fails the waiters
	}
	for start := 0; start < len(pending); start += c.opts.MaxBatch {
		part := pending[start:min(len(pending), start+c.opts.MaxBatch)]
		req := &tollgatev1.DecideStreamRequest{Queries: make([]*tollgatev1.Query, len(part))}
		for i, item := range part {
			req.Queries[i] = toProto(item)
		}
		if err := tr.Send(req); err != nil {
			fail(fmt.Errorf("send: %w", err))
			return
		}
	}
	c.spare = pending
}

// receive routes results to waiters until the stream ends.
func (c *Client) receive(tr transport) error {
	for {
		resp, err := tr.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		for _, r := range resp.GetResults() {
			c.deliver(r.GetId(), fromProto(r))
		}
	}
}

func toProto(item queued) *tollgatev1.Query {
	q := item.q
	var src, dst []byte
	if q.Src.Is4() {
		s, d := q.Src.As4(), q.Dst.As4()
		src, dst = s[:], d[:]
	} else {
		s, d := q.Src.As16(), q.Dst.As16()
		src, dst = s[:], d[:]
	}
	return &tollgatev1.Query{
		Id:         item.id,
		SrcAddr:    src,
		DstAddr:    dst,
		Protocol:   protocol(q.Proto),
		DstPort:    uint32(q.DstPort),
		ViaService: q.ViaService,
		Explain:    q.Explain,
	}
}

// protocol maps an IP protocol number to the API's protocol.
func protocol(p uint8) tollgatev1.Protocol {
	switch p {
	case 6:
		return tollgatev1.Protocol_PROTOCOL_TCP
	case 17:
		return tollgatev1.Protocol_PROTOCOL_UDP
	case 132:
		return tollgatev1.Protocol_PROTOCOL_SCTP
	default:
		// ICMP, ICMPv6 and every other protocol without ports: only policy
		// rules without ports match them, which is the API's ICMP rule.
		return tollgatev1.Protocol_PROTOCOL_ICMP
	}
}

func fromProto(r *tollgatev1.Result) reply {
	switch r.GetVerdict() {
	case tollgatev1.Verdict_VERDICT_ALLOW, tollgatev1.Verdict_VERDICT_DENY:
		return reply{res: Result{Allow: r.GetVerdict() == tollgatev1.Verdict_VERDICT_ALLOW, Generation: r.GetGeneration(),
			Explanations: r.GetExplanations(), PortMin: r.GetDstPortMin(), PortMax: r.GetDstPortMax()}}
	default:
		return reply{err: fmt.Errorf("client: decider rejected query: %s", r.GetError())}
	}
}

// Learn reports a DNS answer that pod received and returns the generation
// from which the decider's verdicts take it into account. A decider that
// does not learn answers returns an UNIMPLEMENTED error.
func (c *Client) Learn(ctx context.Context, pod netip.Addr, rs []Resolution) (uint64, error) {
	req := &tollgatev1.LearnRequest{PodAddr: pod.Unmap().AsSlice()}
	for _, r := range rs {
		pr := &tollgatev1.Resolution{Names: r.Names, TtlSeconds: r.TTL}
		for _, a := range r.Addrs {
			pr.Addresses = append(pr.Addresses, a.Unmap().AsSlice())
		}
		req.Resolutions = append(req.Resolutions, pr)
	}
	resp, err := c.api.Learn(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("client: learn: %w", err)
	}
	return resp.GetGeneration(), nil
}

// Watch subscribes to the decider's state for node and calls fn with every
// update, from one goroutine, until ctx ends. After a broken stream it
// reconnects with backoff; the decider then sends its whole current state
// again. Watch returns ctx's error.
func (c *Client) Watch(ctx context.Context, node string, fn func(WatchUpdate)) error {
	delay := c.opts.MinBackoff
	for {
		received, err := c.watchOnce(ctx, node, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if received {
			delay = c.opts.MinBackoff
		}
		logRetry("decider watch down; reconnecting", received || delay == c.opts.MinBackoff, err, delay)
		if !sleep(ctx, delay) {
			return ctx.Err()
		}
		delay = min(2*delay, c.opts.MaxBackoff)
	}
}

// watchOnce serves one Watch stream; it reports whether any update arrived.
func (c *Client) watchOnce(ctx context.Context, node string, fn func(WatchUpdate)) (bool, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.api.Watch(wctx, &tollgatev1.WatchRequest{NodeName: node})
	if err != nil {
		return false, fmt.Errorf("open Watch: %w", err)
	}
	received := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return received, fmt.Errorf("watch: %w", err)
		}
		fn(WatchUpdate{
			Generation: resp.GetGeneration(),
			IPv4:       addrs(resp.GetSelectedIpv4(), 4),
			IPv6:       addrs(resp.GetSelectedIpv6(), 16),
			Instance:   resp.GetInstance(),
			First:      !received,
			ChangedAll: resp.GetChangedAll() || !received,
			Changed:    anyAddrs(resp.GetChanged()),
			DNS4:       addrs(resp.GetDnsIpv4(), 4),
			DNS6:       addrs(resp.GetDnsIpv6(), 16),
		})
		received = true
	}
}

// anyAddrs converts raw 4- or 16-byte addresses, skipping malformed ones.
func anyAddrs(raw [][]byte) []netip.Addr {
	out := make([]netip.Addr, 0, len(raw))
	for _, b := range raw {
		if a, ok := netip.AddrFromSlice(b); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// addrs converts raw addresses of length n, skipping malformed ones.
func addrs(raw [][]byte, n int) []netip.Addr {
	out := make([]netip.Addr, 0, len(raw))
	for _, b := range raw {
		a, ok := netip.AddrFromSlice(b)
		if !ok || len(b) != n {
			slog.Warn("decider sent a malformed selected address; skipping", "bytes", b)
			continue
		}
		out = append(out, a)
	}
	return out
}

// logRetry logs a reconnect: as a warning when the connection was just lost
// (or first failed), at debug level while retries keep failing.
func logRetry(msg string, first bool, err error, delay time.Duration) {
	level := slog.LevelDebug
	if first {
		level = slog.LevelWarn
	}
	slog.Log(context.Background(), level, msg, "err", err, "in", delay)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
