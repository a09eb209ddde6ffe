package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/netsim"
)

// TestQueuerKilledAndRestarted SIGKILLs the queuer of a node whose pod y/b
// accepts TCP 80 and 81 from namespace x only (testdata/manifests), while
// z/c tries to reach y/b in a tight loop, then starts a new queuer.
// Fail-closed: while the queuer is gone, new connections of y/b are
// refused (an allowed tuple never seen before too), pods no policy selects
// are untouched; the new queuer adopts the table without a window: no
// denied probe ever succeeds, and allowed connections work again.
// Fail-open: while it is gone the queue is bypassed, so new connections of
// y/b pass; after the restart policy applies again.
func TestQueuerKilledAndRestarted(t *testing.T) {
	t.Parallel()
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail-open=%v", failOpen), func(t *testing.T) {
			t.Parallel()
			testQueuerKilledAndRestarted(t, failOpen)
		})
	}
}

func testQueuerKilledAndRestarted(t *testing.T, failOpen bool) {
	n := newSimNode(t, "tgfk", "10.97.1", []string{"a", "b", "c"}, 80, 81, 82)
	manifests := filepath.Join(t.TempDir(), "manifests")
	if err := os.CopyFS(manifests, os.DirFS("testdata/manifests")); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "decider.sock")
	proc.ForTest(t, "decider", exec.Command(bin("decider"), "--manifests", manifests, "--socket", sock,
		"--node-name", "node-1", "--metrics-bind-address", ""))
	eventually(t, "decider SERVING", 15*time.Second, func() bool { return healthcheck(sock) == 0 })
	b := n.pods["b"].IPv4.String()
	q := n.startQueuer("queuer-1", sock, b, failOpen)
	if !n.passed("a", "b", 80, time.Second) || n.passed("c", "b", 80, 500*time.Millisecond) {
		t.Fatal("policy not enforced before the fault")
	}

	// z/c -> y/b in a tight loop through the kill and the restart.
	var attempts, leaked atomic.Int64
	var harnessErr atomic.Value
	stopLoop := make(chan struct{})
	var wg sync.WaitGroup
	if !failOpen {
		wg.Go(func() {
			for port := uint16(80); ; port = 161 - port { // 80, 81, 80, ...
				select {
				case <-stopLoop:
					return
				default:
				}
				r, err := netsim.ProbeDetail(n.pods["c"], n.pods["b"].IPv4, port, netsim.TCP, 300*time.Millisecond)
				if err != nil {
					harnessErr.Store(err)
					return
				}
				attempts.Add(1)
				if r.Reachable || strings.HasSuffix(r.Reason, "connection refused") {
					leaked.Add(1)
				}
			}
		})
	}
	stopProbing := func() {
		select {
		case <-stopLoop:
		default:
			close(stopLoop)
		}
		wg.Wait()
	}
	t.Cleanup(stopProbing)

	time.Sleep(300 * time.Millisecond)
	q.Kill()
	killed := time.Now()
	time.Sleep(200 * time.Millisecond)
	if _, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate"); err != nil {
		t.Errorf("the table is gone after SIGKILL: %v", err)
	}
	// x/a -> y/b:81 is allowed but was never tried, so no kernel verdict
	// cache entry answers it: the fail mode alone decides.
	if got := n.passed("a", "b", 81, time.Second); got != failOpen {
		t.Errorf("queuer gone: a new allowed connection x/a -> y/b:81 passed=%v, want %v (the fail mode)", got, failOpen)
	}
	if got := n.passed("c", "b", 82, time.Second); got != failOpen {
		t.Errorf("queuer gone: a new connection z/c -> y/b:82 passed=%v, want %v (the fail mode)", got, failOpen)
	}
	if !n.passed("a", "c", 80, time.Second) {
		t.Error("queuer gone: x/a -> z/c (no policy selects either) was blocked")
	}

	restarted := time.Now()
	q2 := n.startQueuer("queuer-2", sock, b, failOpen)
	eventually(t, "x/a -> y/b:81 allowed after the restart", 10*time.Second, func() bool { return n.passed("a", "b", 81, 500*time.Millisecond) })
	t.Logf("queuer down for %v; allowed traffic flowed again %v after the new queuer was started",
		restarted.Sub(killed).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	stopProbing()
	if err, _ := harnessErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if !failOpen {
		t.Logf("%d denied probes through the kill and the restart", attempts.Load())
		if attempts.Load() < 5 {
			t.Errorf("only %d denied probes ran; the loop did not cover the fault", attempts.Load())
		}
		if leaked.Load() > 0 {
			t.Errorf("%d denied connections got through while the queuer was killed and restarted", leaked.Load())
		}
	}
	if n.passed("c", "b", 81, time.Second) {
		t.Error("after the restart: z/c -> y/b:81 passed, want denied")
	}
	if q2.Exited() {
		t.Error("the new queuer exited")
	}
}
