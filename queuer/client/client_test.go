package client

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/internal/frames"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// fakeDecider allows exactly the queries with an even destination port.
// With collect > 0 it answers only once that many queries arrived, in
// reverse order and one result per message, which a client that waits for
// answers before sending more could never reach. With silent it never
// answers.
type fakeDecider struct {
	tollgatev1.UnimplementedDeciderServiceServer
	gen      uint64
	collect  int
	silent   bool
	messages atomic.Int64
	queries  atomic.Int64
	watch    chan *tollgatev1.WatchResponse
}

func (f *fakeDecider) DecideStream(s grpc.BidiStreamingServer[tollgatev1.DecideStreamRequest, tollgatev1.DecideStreamResponse]) error {
	var held []*tollgatev1.Query
	for {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		f.messages.Add(1)
		f.queries.Add(int64(len(req.GetQueries())))
		if f.silent {
			continue
		}
		held = append(held, req.GetQueries()...)
		if len(held) < f.collect {
			continue
		}
		slices.Reverse(held)
		for _, q := range held {
			if err := s.Send(&tollgatev1.DecideStreamResponse{Results: []*tollgatev1.Result{f.answer(q)}}); err != nil {
				return err
			}
		}
		held = held[:0]
	}
}

func (f *fakeDecider) answer(q *tollgatev1.Query) *tollgatev1.Result {
	v := tollgatev1.Verdict_VERDICT_DENY
	if q.GetDstPort()%2 == 0 {
		v = tollgatev1.Verdict_VERDICT_ALLOW
	}
	if len(q.GetSrcAddr()) != len(q.GetDstAddr()) || q.GetProtocol() == tollgatev1.Protocol_PROTOCOL_UNSPECIFIED {
		return &tollgatev1.Result{Id: q.GetId(), Error: "bad query"}
	}
	// The verdict changes with every port: its range is the port alone.
	r := &tollgatev1.Result{Id: q.GetId(), Verdict: v, Generation: f.gen, DstPortMin: q.GetDstPort(), DstPortMax: q.GetDstPort()}
	if q.GetExplain() != tollgatev1.Explain_EXPLAIN_UNSPECIFIED {
		r.Explanations = []*tollgatev1.Explanation{{Reason: "asked " + q.GetExplain().String()}}
	}
	return r
}

func (f *fakeDecider) Watch(_ *tollgatev1.WatchRequest, s grpc.ServerStreamingServer[tollgatev1.WatchResponse]) error {
	for {
		select {
		case <-s.Context().Done():
			return nil
		case m := <-f.watch:
			if err := s.Send(m); err != nil {
				return err
			}
		}
	}
}

// serve runs f on the Unix socket path until the returned stop is called
// (or the test ends).
func serve(t *testing.T, path string, f *fakeDecider) (stop func()) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	tollgatev1.RegisterDeciderServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			srv.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

// start creates a client on path and runs it until the test ends.
func start(t *testing.T, path string) *Client {
	t.Helper()
	return startWith(t, path, Options{})
}

// startWith is start with opts, and short backoffs.
func startWith(t *testing.T, path string, opts Options) *Client {
	t.Helper()
	opts.MinBackoff, opts.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond
	c, err := New(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = c.Close()
	})
	return c
}

// eventually polls cond for up to five seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func sock(t *testing.T) string { return filepath.Join(t.TempDir(), "decider.sock") }

func query(port uint16) Query {
	return Query{
		Src:     netip.MustParseAddr("10.0.0.1"),
		Dst:     netip.MustParseAddr("10.0.0.2"),
		Proto:   6,
		DstPort: port,
	}
}

func TestPipelining(t *testing.T) {
	const n = 50
	path := sock(t)
	f := &fakeDecider{gen: 7, collect: n}
	serve(t, path, f)
	c := start(t, path)
	eventually(t, "connection", c.Connected)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			port := uint16(1000 + i)
			res, err := c.Decide(ctx, query(port))
			switch {
			case err != nil:
				errs <- err
			case res.Allow != (port%2 == 0) || res.Generation != 7:
				errs <- errors.New("wrong result routed to a caller")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := f.queries.Load(); got != n {
		t.Errorf("server saw %d queries, want %d", got, n)
	}
}

func TestBatching(t *testing.T) {
	const n = 20
	path := sock(t)
	f := &fakeDecider{gen: 1}
	serve(t, path, f)
	c := start(t, path)
	eventually(t, "connection", c.Connected)

	// Hold the sender until all n queries are pending: they must then go
	// out in one message.
	var first atomic.Bool
	c.testHookBeforeBatch = func() {
		if first.Swap(true) {
			return
		}
		eventually(t, "queued queries", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return len(c.queue) == n
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Decide(ctx, query(uint16(i))); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d Decide calls failed", failed.Load())
	}
	if m, q := f.messages.Load(), f.queries.Load(); m != 1 || q != n {
		t.Errorf("server saw %d messages with %d queries, want 1 with %d", m, q, n)
	}
}

func TestDeadline(t *testing.T) {
	path := sock(t)
	serve(t, path, &fakeDecider{silent: true})
	c := start(t, path)
	eventually(t, "connection", c.Connected)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := c.Decide(ctx, query(80))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Decide error = %v, want deadline exceeded", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("Decide took %v past a 50ms deadline", d)
	}
	c.mu.Lock()
	left := len(c.waiting)
	c.mu.Unlock()
	if left != 0 {
		t.Errorf("%d waiters left behind", left)
	}
}

func TestUnavailableFailsFast(t *testing.T) {
	c := start(t, sock(t)) // nobody listens
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Decide(ctx, query(80)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Decide error = %v, want ErrUnavailable", err)
	}
	if c.Connected() {
		t.Error("Connected without a server")
	}
}

func TestStreamBreakAndReconnect(t *testing.T) {
	path := sock(t)
	stop := serve(t, path, &fakeDecider{silent: true})
	c := start(t, path)
	eventually(t, "connection", c.Connected)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Decide(ctx, query(80))
		errc <- err
	}()
	eventually(t, "query in flight", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.waiting) == 1
	})
	stop()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrStreamBroken) {
			t.Fatalf("in-flight Decide error = %v, want ErrStreamBroken", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("in-flight Decide not failed when the stream broke")
	}
	eventually(t, "disconnect", func() bool { return !c.Connected() })

	serve(t, path, &fakeDecider{gen: 2})
	eventually(t, "reconnection", c.Connected)
	res, err := c.Decide(ctx, query(80))
	if err != nil || !res.Allow || res.Generation != 2 {
		t.Fatalf("Decide after reconnect = %+v, %v", res, err)
	}
}

func TestRejectedQuery(t *testing.T) {
	path := sock(t)
	serve(t, path, &fakeDecider{gen: 1})
	c := start(t, path)
	eventually(t, "connection", c.Connected)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := query(80)
	q.Dst = netip.MustParseAddr("fd00::1")
	if _, err := c.Decide(ctx, q); err == nil {
		t.Error("mixed-family query accepted")
	}
	// ICMP and other portless protocols are sent as PROTOCOL_ICMP.
	q = query(0)
	q.Proto = 58
	if res, err := c.Decide(ctx, q); err != nil || !res.Allow {
		t.Errorf("ICMP query = %+v, %v", res, err)
	}
}

func TestExplanations(t *testing.T) {
	path := sock(t)
	serve(t, path, &fakeDecider{gen: 1})
	c := start(t, path)
	eventually(t, "connection", c.Connected)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if res, err := c.Decide(ctx, query(80)); err != nil || res.Explanations != nil {
		t.Errorf("without Explain: %+v, %v", res, err)
	}
	q := query(81)
	q.Explain = tollgatev1.Explain_EXPLAIN_DENIED
	res, err := c.Decide(ctx, q)
	if err != nil || len(res.Explanations) != 1 || res.Explanations[0].GetReason() != "asked EXPLAIN_DENIED" {
		t.Errorf("with Explain: %+v, %v", res, err)
	}
}

func TestWatchResumesAfterRestart(t *testing.T) {
	path := sock(t)
	f1 := &fakeDecider{watch: make(chan *tollgatev1.WatchResponse, 1)}
	stop := serve(t, path, f1)
	c := start(t, path)

	updates := make(chan WatchUpdate, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Watch(ctx, "node-a", func(u WatchUpdate) { updates <- u }) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	}()

	next := func() WatchUpdate {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no watch update")
			return WatchUpdate{}
		}
	}
	f1.watch <- &tollgatev1.WatchResponse{
		Generation:   3,
		SelectedIpv4: [][]byte{{10, 0, 0, 1}, {10, 0, 0, 2}, {1, 2, 3}},
		SelectedIpv6: [][]byte{netip.MustParseAddr("fd00::1").AsSlice()},
	}
	u := next()
	want4 := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}
	if u.Generation != 3 || !slices.Equal(u.IPv4, want4) || len(u.IPv6) != 1 || u.IPv6[0] != netip.MustParseAddr("fd00::1") {
		t.Fatalf("update = %+v", u)
	}

	stop()
	f2 := &fakeDecider{watch: make(chan *tollgatev1.WatchResponse, 1)}
	serve(t, path, f2)
	f2.watch <- &tollgatev1.WatchResponse{Generation: 4}
	if u := next(); u.Generation != 4 || len(u.IPv4) != 0 {
		t.Fatalf("update after restart = %+v", u)
	}
}

// serveFrames answers f's queries on the framed stream at path (one result
// per query, in order) until the returned stop is called.
func serveFrames(t *testing.T, path string, f *fakeDecider) (stop func()) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				r := bufio.NewReader(c)
				for {
					msg, err := frames.Read(r, nil, frames.MaxRequest)
					if err != nil {
						return
					}
					req := &tollgatev1.DecideStreamRequest{}
					if err := proto.Unmarshal(msg, req); err != nil {
						t.Errorf("framed request: %v", err)
						return
					}
					f.messages.Add(1)
					f.queries.Add(int64(len(req.GetQueries())))
					resp := &tollgatev1.DecideStreamResponse{}
					for _, q := range req.GetQueries() {
						resp.Results = append(resp.Results, f.answer(q))
					}
					out, err := frames.Append(nil, resp, frames.MaxResponse)
					if err != nil {
						t.Errorf("framed answer: %v", err)
						return
					}
					if _, err := c.Write(out); err != nil {
						return
					}
				}
			})
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			l.Close()
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

func transportOf(c *Client) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kind
}

// TestFramedStream: the client decides over the framed socket when it
// accepts, and over DecideStream once it no longer does.
func TestFramedStream(t *testing.T) {
	dir := t.TempDir()
	grpcPath, framedPath := filepath.Join(dir, "decider.sock"), filepath.Join(dir, "frames.sock")
	viaGRPC, viaFrames := &fakeDecider{gen: 1}, &fakeDecider{gen: 2}
	serve(t, grpcPath, viaGRPC)
	stopFrames := serveFrames(t, framedPath, viaFrames)

	c := startWith(t, grpcPath, Options{FramedSocket: framedPath})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	decide := func(want uint64) {
		t.Helper()
		var wg sync.WaitGroup
		for port := range uint16(20) {
			wg.Go(func() {
				res, err := c.Decide(ctx, query(port))
				if err != nil || res.Allow != (port%2 == 0) || res.Generation != want || res.PortMin != uint32(port) || res.PortMax != uint32(port) {
					t.Errorf("port %d: %+v, %v; want generation %d", port, res, err, want)
				}
			})
		}
		wg.Wait()
	}

	eventually(t, "connection", c.Connected)
	if got := transportOf(c); got != "framed" {
		t.Fatalf("transport %q, want framed", got)
	}
	decide(2)
	if viaFrames.queries.Load() != 20 || viaGRPC.queries.Load() != 0 {
		t.Errorf("queries: framed %d, gRPC %d; want 20, 0", viaFrames.queries.Load(), viaGRPC.queries.Load())
	}

	stopFrames()
	eventually(t, "DecideStream", func() bool { return transportOf(c) == "DecideStream" })
	decide(1)
	if viaGRPC.queries.Load() != 20 {
		t.Errorf("gRPC queries %d, want 20", viaGRPC.queries.Load())
	}
}

// funcResult is one call of a DecideFunc callback.
type funcResult struct {
	res Result
	err error
}

// decideFunc calls c.DecideFunc and returns a channel that gets every call
// of its callback (there must be exactly one).
func decideFunc(c *Client, q Query, timeout time.Duration) chan funcResult {
	ch := make(chan funcResult, 2)
	c.DecideFunc(q, timeout, func(res Result, err error) { ch <- funcResult{res, err} })
	return ch
}

// once waits for the callback's one call and checks that no second follows.
func once(t *testing.T, ch chan funcResult, within time.Duration) funcResult {
	t.Helper()
	var r funcResult
	select {
	case r = <-ch:
	case <-time.After(within):
		t.Fatalf("DecideFunc's callback not called within %v", within)
	}
	select {
	case extra := <-ch:
		t.Fatalf("DecideFunc's callback called twice: %+v, then %+v", r, extra)
	case <-time.After(100 * time.Millisecond):
	}
	return r
}

func TestDecideFunc(t *testing.T) {
	t.Run("answers, routed by id", func(t *testing.T) {
		path := sock(t)
		serve(t, path, &fakeDecider{gen: 3})
		c := start(t, path)
		eventually(t, "connection", c.Connected)
		var chans []chan funcResult
		for port := range uint16(20) {
			chans = append(chans, decideFunc(c, query(1000+port), 5*time.Second))
		}
		for i, ch := range chans {
			r := once(t, ch, 5*time.Second)
			if r.err != nil || r.res.Allow != (i%2 == 0) || r.res.Generation != 3 {
				t.Errorf("query %d: %+v, %v", i, r.res, r.err)
			}
		}
	})
	t.Run("a late answer times out and the waiter goes", func(t *testing.T) {
		path := sock(t)
		serve(t, path, &fakeDecider{silent: true})
		c := start(t, path)
		eventually(t, "connection", c.Connected)
		begin := time.Now()
		r := once(t, decideFunc(c, query(80), 50*time.Millisecond), 5*time.Second)
		if !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("error = %v, want deadline exceeded", r.err)
		}
		if d := time.Since(begin); d < 50*time.Millisecond {
			t.Errorf("timed out after %v, before the 50ms timeout", d)
		}
		c.mu.Lock()
		left := len(c.waiting)
		c.mu.Unlock()
		if left != 0 {
			t.Errorf("%d waiters left behind", left)
		}
	})
	t.Run("a broken stream fails the query in flight", func(t *testing.T) {
		path := sock(t)
		stop := serve(t, path, &fakeDecider{silent: true})
		c := start(t, path)
		eventually(t, "connection", c.Connected)
		ch := decideFunc(c, query(80), 10*time.Second)
		stop()
		if r := once(t, ch, 3*time.Second); !errors.Is(r.err, ErrStreamBroken) {
			t.Fatalf("error = %v, want ErrStreamBroken", r.err)
		}
	})
	t.Run("unavailable and malformed fail at once", func(t *testing.T) {
		c := start(t, sock(t)) // nobody listens
		ch := decideFunc(c, query(80), time.Minute)
		select {
		case r := <-ch:
			if !errors.Is(r.err, ErrUnavailable) {
				t.Fatalf("error = %v, want ErrUnavailable", r.err)
			}
		default:
			t.Fatal("callback not called before DecideFunc returned")
		}
		q := query(80)
		q.Dst = netip.MustParseAddr("fd00::1")
		if r := once(t, decideFunc(c, q, time.Minute), time.Second); r.err == nil {
			t.Fatal("a query of two families was sent")
		}
	})
}

func TestPool(t *testing.T) {
	path := sock(t)
	f := &fakeDecider{gen: 5}
	serve(t, path, f)
	opts := Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	p, err := NewPool(path, opts, 3)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = p.Close()
	})
	eventually(t, "every stream connected", p.Connected)

	// Pairs of addresses spread over the streams; each pair keeps to one.
	const pairs = 30
	var chans []chan funcResult
	for i := range pairs {
		q := query(uint16(2 * i)) // even ports: allowed
		q.Dst = netip.AddrFrom4([4]byte{10, 0, 1, byte(i)})
		for range 2 {
			ch := make(chan funcResult, 2)
			p.DecideFunc(q, 5*time.Second, func(res Result, err error) { ch <- funcResult{res, err} })
			chans = append(chans, ch)
		}
	}
	for i, ch := range chans {
		if r := once(t, ch, 5*time.Second); r.err != nil || !r.res.Allow || r.res.Generation != 5 {
			t.Errorf("query %d: %+v, %v", i, r.res, r.err)
		}
	}
	used := 0
	for _, c := range p.lanes {
		n := c.nextID.Load()
		if n%2 != 0 {
			t.Errorf("a stream sent %d queries: a pair's two queries went to different streams", n)
		}
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("%d pairs used %d of 3 streams", pairs, used)
	}
	if got := f.queries.Load(); got != 2*pairs {
		t.Errorf("decider saw %d queries, want %d", got, 2*pairs)
	}
}

func TestResultPortRange(t *testing.T) {
	tests := []struct {
		min, max uint32
		port     uint16
		lo, hi   uint16
	}{
		{0, 0, 80, 80, 80},       // no range sent
		{0, 65535, 80, 0, 65535}, // every port
		{80, 80, 80, 80, 80},     // the port alone
		{10000, 20000, 15000, 10000, 20000},
		{10000, 20000, 9999, 9999, 9999},    // does not contain the port: ignored
		{10000, 20000, 20001, 20001, 20001}, // idem
		{20000, 10000, 15000, 15000, 15000}, // inverted
		{0, 70000, 80, 80, 80},              // beyond port numbers
		{0, 0, 0, 0, 0},
	}
	for _, tc := range tests {
		lo, hi := Result{PortMin: tc.min, PortMax: tc.max}.PortRange(tc.port)
		if lo != tc.lo || hi != tc.hi {
			t.Errorf("range %d-%d, port %d: got %d-%d, want %d-%d", tc.min, tc.max, tc.port, lo, hi, tc.lo, tc.hi)
		}
	}
}
