package nfq

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tollgate/tollgate/internal/testenv"
	"github.com/tollgate/tollgate/queuer/packet"
)

func nla(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func TestCtDNAT(t *testing.T) {
	tuple := nla(1|0x8000, nla(2, []byte{1, 2, 3}))
	tests := []struct {
		name         string
		in           []byte
		dnat, wantOK bool
	}{
		{"dnat", append(tuple, nla(ctaStatus, be32(ipsDstNAT|0x8))...), true, true},
		{"no dnat", append(tuple, nla(ctaStatus, be32(0x8|1<<4))...), false, true},
		{"no status", tuple, false, false},
		{"empty", nil, false, false},
		{"bad length", []byte{200, 0, 3, 0, 0, 0, 0, 0}, false, false},
		{"short status", nla(ctaStatus, []byte{1, 2}), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dnat, ok := ctDNAT(tt.in)
			if dnat != tt.dnat || ok != tt.wantOK {
				t.Errorf("ctDNAT = %v, %v; want %v, %v", dnat, ok, tt.dnat, tt.wantOK)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{{First: 1, Count: 0}, {First: 65535, Count: 2}} {
		if err := Run(context.Background(), cfg, nil); err == nil {
			t.Errorf("Run(%+v) accepted an invalid config", cfg)
		}
	}
}

// netns is a network namespace made for one test.
type netns struct {
	name string
	fd   int
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	testenv.NeedRoot(t, "to create a network namespace and open NFQUEUE")
	testenv.LookPath(t, "ip")
	name := fmt.Sprintf("tg-nfq-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	n := &netns{name: name, fd: fd}
	n.exec(t, "ip", "link", "set", "lo", "up")
	return n
}

func (n *netns) exec(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// do runs fn on an OS thread inside the namespace; sockets fn creates stay
// in the namespace. The thread is discarded afterwards.
func (n *netns) do(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("setns: %v", err)
	}
}

func TestRunVerdictsAndCancel(t *testing.T) {
	for _, async := range []bool{false, true} {
		t.Run(fmt.Sprintf("async=%v", async), func(t *testing.T) { testRunVerdictsAndCancel(t, async) })
	}
}

// testRunVerdictsAndCancel runs two queues with Run and workers, or with
// RunAsync and a handler that answers the accepted port later from a
// goroutine of its own (as the decider client does) and the dropped port
// at once.
func testRunVerdictsAndCancel(t *testing.T, async bool) {
	ns := newNetns(t)
	const first = 200
	ns.exec(t, "iptables", "-A", "OUTPUT", "-p", "tcp", "--syn", "-m", "multiport", "--dports", "5001,5002",
		"-j", "NFQUEUE", "--queue-balance", "200:201")

	var ln1, ln2 net.Listener
	ns.do(t, func() {
		var err error
		if ln1, err = net.Listen("tcp", "127.0.0.1:5001"); err != nil {
			t.Error(err)
		}
		if ln2, err = net.Listen("tcp", "127.0.0.1:5002"); err != nil {
			t.Error(err)
		}
	})
	if t.Failed() {
		return
	}
	defer ln1.Close()
	defer ln2.Close()

	counters := NewCounters(first, 2)
	handler := func(p Packet) Verdict {
		info, err := packet.Parse(p.Payload)
		if err != nil {
			t.Errorf("queued packet does not parse: %v", err)
			return Verdict{Accept: true}
		}
		if p.Queue < first || p.Queue > first+1 {
			t.Errorf("packet on queue %d", p.Queue)
		}
		if p.CtKnown && p.DNAT {
			t.Error("conntrack says DNAT for a connection without NAT")
		}
		return Verdict{Accept: info.DstPort == 5001, SetMark: true, Mark: 0x10}
	}
	var afterMu sync.Mutex
	after := map[bool]int{} // AfterVerdict calls by Accept
	cfg := Config{First: first, Count: 2, Workers: 4, NetNS: ns.fd, Counters: counters,
		AfterVerdict: func(_ Packet, v Verdict) {
			afterMu.Lock()
			after[v.Accept]++
			afterMu.Unlock()
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		if !async {
			done <- Run(ctx, cfg, handler)
			return
		}
		done <- RunAsync(ctx, cfg, func(p Packet, answer func(Verdict)) {
			v := handler(p)
			if !v.Accept {
				answer(v)
				return
			}
			go func() {
				time.Sleep(5 * time.Millisecond)
				answer(v)
			}()
		})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	// Wait until the queues are bound: connections to 5001 then succeed.
	var ok bool
	for range 50 {
		ns.do(t, func() {
			c, err := net.DialTimeout("tcp", "127.0.0.1:5001", 200*time.Millisecond)
			if err == nil {
				c.Close()
				ok = true
			}
		})
		if ok {
			break
		}
	}
	if !ok {
		t.Fatal("no connection to the accepted port got through")
	}
	var dialErr error
	ns.do(t, func() {
		c, err := net.DialTimeout("tcp", "127.0.0.1:5002", 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		dialErr = err
	})
	if dialErr == nil {
		t.Error("connection to the dropped port got through")
	}
	var total QueueStats
	for _, q := range counters.Snapshot() {
		total.Packets += q.Packets
		total.Accepted += q.Accepted
		total.Dropped += q.Dropped
		total.VerdictErrors += q.VerdictErrors
	}
	if total.Accepted < 1 || total.Dropped < 1 || total.Packets != total.Accepted+total.Dropped || total.VerdictErrors != 0 {
		t.Errorf("counters = %+v", total)
	}
	afterMu.Lock()
	defer afterMu.Unlock()
	if after[true] != int(total.Accepted) || after[false] != int(total.Dropped) {
		t.Errorf("AfterVerdict saw %d accepted and %d dropped, want %d and %d", after[true], after[false], total.Accepted, total.Dropped)
	}
}

func TestRunFailsOnBusyQueue(t *testing.T) {
	ns := newNetns(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{First: 300, Count: 1, NetNS: ns.fd}, func(Packet) Verdict { return Verdict{Accept: true} })
	}()
	time.Sleep(200 * time.Millisecond)
	// A second reader of the same queue in the same namespace is refused.
	err := Run(ctx, Config{First: 300, Count: 1, NetNS: ns.fd}, func(Packet) Verdict { return Verdict{Accept: true} })
	if err == nil {
		t.Error("second Run on a bound queue succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("first Run returned %v", err)
	}
}

// TestRunStartsEveryTime: on a kernel that refuses conntrack information
// the first bind of each queue is retried without it; the refused socket
// can hold the queue a moment longer, which must not make Run fail.
func TestRunStartsEveryTime(t *testing.T) {
	ns := newNetns(t)
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Config{First: 400, Count: 2, NetNS: ns.fd}, func(Packet) Verdict { return Verdict{Accept: true} })
		}()
		select {
		case err := <-done:
			cancel()
			t.Fatalf("start %d: Run returned %v before it was cancelled", i, err)
		case <-time.After(50 * time.Millisecond):
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
	}
}

// TestShardKeepsOrder: with Shard, the packets of one flow are handled one
// after another in the order they were queued, however long each takes.
func TestShardKeepsOrder(t *testing.T) {
	ns := newNetns(t)
	const queue = 210
	ns.exec(t, "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5003", "-j", "NFQUEUE", "--queue-num", fmt.Sprint(queue))
	var mu sync.Mutex
	var order []byte
	handler := func(p Packet) Verdict {
		info, err := packet.Parse(p.Payload)
		if err != nil || len(p.Payload) <= info.Transport+8 {
			t.Errorf("queued packet does not parse: %v", err)
			return Verdict{Accept: true}
		}
		seq := p.Payload[info.Transport+8]
		if seq%2 == 0 {
			time.Sleep(5 * time.Millisecond) // the even ones are slow
		}
		mu.Lock()
		order = append(order, seq)
		mu.Unlock()
		return Verdict{Accept: true}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	shard := func(Packet) uint32 { return 7 } // one flow
	go func() {
		done <- Run(ctx, Config{First: queue, Count: 1, Workers: 4, NetNS: ns.fd, Shard: shard}, handler)
	}()
	defer func() {
		cancel()
		<-done
	}()
	time.Sleep(200 * time.Millisecond) // the queue is bound
	const n = 40
	ns.do(t, func() {
		c, err := net.Dial("udp", "127.0.0.1:5003")
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		for i := range n {
			if _, err := c.Write([]byte{byte(i)}); err != nil {
				t.Error(err)
			}
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(order)
		mu.Unlock()
		if len(got) == n {
			for i, seq := range got {
				if int(seq) != i {
					t.Fatalf("handled out of order: %v", got)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d packets handled", len(got), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
