package faults

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/netsim"
)

// slowDecider is a fake decider for the overflow test. Watch selects one
// IPv4 address; DecideStream waits delay before answering each message,
// denying queries from the addresses in deny and allowing the rest.
type slowDecider struct {
	tollgatev1.UnimplementedDeciderServiceServer
	selected netip.Addr
	deny     map[netip.Addr]bool
	delay    time.Duration
	queries  atomic.Int64
}

// Watch implements tollgatev1.DeciderServiceServer.
func (d *slowDecider) Watch(_ *tollgatev1.WatchRequest, s tollgatev1.DeciderService_WatchServer) error {
	ip := d.selected.As4()
	if err := s.Send(&tollgatev1.WatchResponse{Generation: 1, SelectedIpv4: [][]byte{ip[:]}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

// DecideStream implements tollgatev1.DeciderServiceServer.
func (d *slowDecider) DecideStream(s tollgatev1.DeciderService_DecideStreamServer) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		select {
		case <-time.After(d.delay):
		case <-s.Context().Done():
			return nil
		}
		resp := &tollgatev1.DecideStreamResponse{}
		for _, q := range req.GetQueries() {
			d.queries.Add(1)
			v := tollgatev1.Verdict_VERDICT_ALLOW
			if src, ok := netip.AddrFromSlice(q.GetSrcAddr()); ok && d.deny[src.Unmap()] {
				v = tollgatev1.Verdict_VERDICT_DENY
			}
			resp.Results = append(resp.Results, &tollgatev1.Result{Id: q.GetId(), Verdict: v, Generation: 1})
		}
		if err := s.Send(resp); err != nil {
			return nil
		}
	}
}

// serveFake serves d on a Unix socket in a temporary directory until the
// test ends and returns the socket path.
func serveFake(t *testing.T, d tollgatev1.DeciderServiceServer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	tollgatev1.RegisterDeciderServiceServer(g, d)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return sock
}

// Burst parameters: connections, each to its own port so that no verdict
// cache can answer, from three pods in turn.
const (
	burstConns   = 200
	burstPort    = 2000
	burstTimeout = 2 * time.Second
)

// TestQueueOverflow: a queuer with one queue of 4 packets and one worker
// faces a decider that takes 200 ms per answer and a burst of 200 new
// connections to a selected pod from three pods, one of them denied.
// Whatever the fail mode, the queuer stays up, the kernel drops what does
// not fit (a busy queuer is not an absent one: no denied connection gets
// through), every packet is accounted for, the next normal connection gets
// its correct verdict promptly, and neither memory nor goroutines pile up.
func TestQueueOverflow(t *testing.T) {
	t.Parallel()
	for _, failOpen := range []bool{true, false} {
		t.Run(fmt.Sprintf("fail-open=%v", failOpen), func(t *testing.T) {
			t.Parallel()
			testQueueOverflow(t, failOpen)
		})
	}
}

func testQueueOverflow(t *testing.T, failOpen bool) {
	subnet := "10.98.1"
	if !failOpen {
		subnet = "10.98.2"
	}
	n := newSimNode(t, "tgfo", subnet, []string{"a", "b", "c", "d"}, 80)
	fake := &slowDecider{
		selected: n.pods["b"].IPv4,
		deny:     map[netip.Addr]bool{n.pods["c"].IPv4: true},
		delay:    200 * time.Millisecond,
	}
	sock := serveFake(t, fake)
	q := n.startQueuer("queuer", sock, n.pods["b"].IPv4.String(), failOpen,
		"--queues", "1", "--queue-maxlen", "4", "--queue-workers", "1", "--decide-timeout", "2s")
	pid := q.Pid() // ip netns exec execs the queuer in place

	// Warm up (first connections, first decider stream), then measure.
	eventually(t, "a -> b allowed before the burst", 5*time.Second, func() bool { return n.passed("a", "b", 80, time.Second) })
	if n.passed("c", "b", 80, 500*time.Millisecond) {
		t.Fatal("c -> b passed before the burst; the fake decider denies it")
	}
	before := n.metrics()
	ruleBefore, ruleOK := n.xtQueueRulePackets()
	rssBefore, err := rssKiB(pid)
	if err != nil {
		t.Fatal(err)
	}

	sources := []string{"a", "c", "d"}
	var passed [3]atomic.Int64
	var harnessErr atomic.Value
	var mu sync.Mutex
	reasons := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for i := range burstConns {
		wg.Go(func() {
			src := i % len(sources)
			r, err := netsim.ProbeDetail(n.pods[sources[src]], n.pods["b"].IPv4, uint16(burstPort+i), netsim.TCP, burstTimeout)
			if err != nil {
				harnessErr.Store(err)
				return
			}
			if r.Reachable || strings.HasSuffix(r.Reason, "connection refused") {
				passed[src].Add(1)
			}
			mu.Lock()
			reasons[r.Reason]++
			mu.Unlock()
		})
	}
	wg.Wait()
	burst := time.Since(start)
	if err, _ := harnessErr.Load().(error); err != nil {
		t.Fatalf("burst: %v", err)
	}
	t.Logf("burst outcomes: %v", reasons)
	if q.Exited() {
		t.Fatal("the queuer exited during the burst")
	}
	sent := func(src int) int64 {
		c := 0
		for i := range burstConns {
			if i%len(sources) == src {
				c++
			}
		}
		return int64(c)
	}

	// The queue drains: nothing waits in the kernel once the burst is over.
	eventually(t, "the queue to drain", 5*time.Second, func() bool { return n.metrics()["nfqueue_queue_total"] == 0 })
	after := n.metrics()
	read := after["tollgate_nfqueue_packets_total"] - before["tollgate_nfqueue_packets_total"]
	kernelDropped := after["nfqueue_queue_dropped"] - before["nfqueue_queue_dropped"]
	accepted := after["packet_count"] - before["packet_count"]
	t.Logf("burst of %d connections took %v; passed: a %d/%d, c (denied) %d/%d, d %d/%d; queuer read %v packets, answered %v, "+
		"decider got %d queries; kernel queue_dropped +%v, user_dropped +%v; fail-mode verdicts +%v",
		burstConns, burst.Round(time.Millisecond), passed[0].Load(), sent(0), passed[1].Load(), sent(1), passed[2].Load(), sent(2),
		read, accepted, fake.queries.Load(), kernelDropped, after["nfqueue_user_dropped"]-before["nfqueue_user_dropped"],
		after["tollgate_fail_mode_verdicts_total"]-before["tollgate_fail_mode_verdicts_total"])

	// Every packet sent to the queue is accounted for: read by the queuer,
	// dropped by the kernel with a count, or answered by the kernel alone
	// (nobody listening) and counted by tollgate_queue_bypassed_total.
	sentQ := after["tollgate_queue_sent_total"] - before["tollgate_queue_sent_total"]
	userDropped := after["nfqueue_user_dropped"] - before["nfqueue_user_dropped"]
	bypassed := after["tollgate_queue_bypassed_total"] - before["tollgate_queue_bypassed_total"]
	t.Logf("sent to the queue +%v, bypassed +%v", sentQ, bypassed)
	if ruleAfter, ok := n.xtQueueRulePackets(); ok && ruleOK && ruleAfter-ruleBefore != sentQ {
		// Both count the same packets: nft marks them, iptables queues them.
		t.Errorf("tollgate_queue_sent_total grew by %v, the iptables NFQUEUE rule by %v", sentQ, ruleAfter-ruleBefore)
	}
	if unaccounted := sentQ - read - kernelDropped - userDropped - bypassed; unaccounted != 0 {
		t.Errorf("%v packets sent to the queue are in no metric (sent %v, read %v, dropped %v+%v, bypassed %v)",
			unaccounted, sentQ, read, kernelDropped, userDropped, bypassed)
	}
	if bypassed != 0 {
		t.Errorf("with the queuer listening: bypassed grew by %v, want 0 (overflow is nfqueue_queue_dropped)", bypassed)
	}
	if read >= burstConns {
		t.Errorf("the queuer read %v packets for %d SYNs: the queue never overflowed, the test proves nothing", read, burstConns)
	}
	// A full queue drops in both modes: the senders retransmit.
	if got := passed[1].Load(); got != 0 {
		t.Errorf("fail-open=%v: %d denied connections got through during the overflow", failOpen, got)
	}
	if kernelDropped == 0 {
		t.Error("the queue overflowed but nfqueue_queue_dropped did not grow")
	}

	// No hang: the next connections get their verdicts promptly.
	took := eventually(t, "a -> b allowed after the burst", 5*time.Second, func() bool { return n.passed("a", "b", 80, time.Second) })
	t.Logf("a -> b allowed %v after the burst", took.Round(time.Millisecond))
	if n.passed("c", "b", 80, time.Second) {
		t.Error("c -> b passed after the burst; the decider denies it")
	}

	// No leak: RSS and goroutines are back near their level.
	time.Sleep(500 * time.Millisecond)
	final := n.metrics()
	rssAfter, err := rssKiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("queuer RSS %d KiB -> %d KiB, goroutines %v -> %v", rssBefore, rssAfter, before["go_goroutines"], final["go_goroutines"])
	if rssAfter > rssBefore+64*1024 {
		t.Errorf("queuer RSS grew from %d KiB to %d KiB over one burst", rssBefore, rssAfter)
	}
	if final["go_goroutines"] > before["go_goroutines"]+50 {
		t.Errorf("queuer goroutines grew from %v to %v over one burst", before["go_goroutines"], final["go_goroutines"])
	}
}
