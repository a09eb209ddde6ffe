package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// TestDeciderKilledUnderLoad: the decider is SIGKILLed while pods keep
// opening connections, and restarted a second later. With fail-open no
// connection policy allows is refused, and every denied connection that got
// through is counted as a fail-mode verdict or a kernel bypass; with
// fail-closed no denied connection ever gets through. Pods that no policy
// selects are never touched, and once the decider is back the denied
// connection is refused again.
func TestDeciderKilledUnderLoad(t *testing.T) {
	for _, failOpen := range []bool{true, false} {
		t.Run(fmt.Sprintf("fail-open=%v", failOpen), func(t *testing.T) {
			n := newNode(t)
			// Denied attempts go to ports of their own, so that each one
			// misses the kernel's verdict cache and needs a verdict; the
			// queuer keeps answers for the asked port only, or the deny
			// it got for the first port (which covers every port here)
			// would answer the rest from its cache, outage or not.
			const firstPort, ports = 2000, 40
			for p := uint16(firstPort); p < firstPort+ports; p++ {
				if err := n.topo.ServeTCP(n.pods["b"], p); err != nil {
					t.Fatal(err)
				}
			}
			n.start(policyYAML, failOpen, "--cache-port-ranges=false")
			n.check(probe{"a", "b", netsim.TCP, true, true}, probe{"c", "b", netsim.TCP, false, false})
			counted := func() float64 {
				return n.metric("tollgate_fail_mode_verdicts_total") + n.metric("tollgate_queue_bypassed_total")
			}
			before := counted()

			// Three streams of new connections: allowed a -> b:80, denied
			// c -> b on a new port each time, and a -> c, which no policy
			// selects. Each attempt is a new TCP connection; a -> b may be
			// answered by the kernel cache, c -> b is not.
			var mu sync.Mutex
			results := map[string]*loadResult{}
			stopLoad := make(chan struct{})
			var wg sync.WaitGroup
			flows := [][2]string{{"a", "b"}, {"c", "b"}, {"a", "c"}}
			for _, flow := range flows {
				results[flow[0]+"->"+flow[1]] = &loadResult{}
			}
			for _, flow := range flows {
				res := results[flow[0]+"->"+flow[1]]
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stopLoad:
							return
						default:
						}
						port := uint16(80)
						if flow[0] == "c" {
							port = firstPort + uint16(i%ports)
						}
						ok, err := netsim.Probe(n.pods[flow[0]], n.pods[flow[1]].IPv4, port, netsim.TCP, 300*time.Millisecond)
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						res.attempts++
						if ok {
							res.passed++
						}
						mu.Unlock()
					}
				})
			}
			time.Sleep(500 * time.Millisecond)
			n.decider.Kill()
			time.Sleep(time.Second)
			outage := func() map[string]*loadResult {
				mu.Lock()
				defer mu.Unlock()
				out := map[string]*loadResult{}
				for k, r := range results {
					c := *r
					out[k] = &c
				}
				return out
			}()
			n.startDecider()
			time.Sleep(time.Second)
			close(stopLoad)
			wg.Wait()
			t.Logf("over the kill and restart: %v (attempts/passed); up to the restart: %v", fmtResults(results), fmtResults(outage))

			if r := results["a->c"]; r.passed != r.attempts {
				t.Errorf("a -> c (no policy selects either pod): %d of %d connections failed", r.attempts-r.passed, r.attempts)
			}
			denied := outage["c->b"].passed
			if failOpen {
				if r := results["a->b"]; r.passed != r.attempts {
					t.Errorf("fail-open: %d of %d allowed connections a -> b failed", r.attempts-r.passed, r.attempts)
				}
				if denied == 0 {
					t.Error("fail-open: no denied connection got through while the decider was dead; the fail mode was not exercised")
				}
				got := counted() - before
				t.Logf("fail-open: %d denied connections got through while the decider was dead; %v packets counted as fail-mode verdicts or bypasses", denied, got)
				if got < float64(denied) {
					t.Errorf("fail-open: %d denied connections got through but only %v packets were counted as fail-mode verdicts or bypasses", denied, got)
				}
			} else if r := results["c->b"]; r.passed != 0 {
				t.Errorf("fail-closed: %d denied connections c -> b got through", r.passed)
			}
			// Back to policy: a port not tried yet is refused.
			n.eventually("c -> b refused again", 5*time.Second, func() bool {
				ok, _ := netsim.Probe(n.pods["c"], n.pods["b"].IPv4, firstPort+ports-1, netsim.TCP, 300*time.Millisecond)
				return !ok
			})
			n.check(probe{"a", "b", netsim.TCP, true, true})
		})
	}
}

// loadResult counts the connections of one stream.
type loadResult struct{ attempts, passed int }

func fmtResults(m map[string]*loadResult) string {
	s := ""
	for _, k := range []string{"a->b", "c->b", "a->c"} {
		if r, ok := m[k]; ok {
			s += fmt.Sprintf("%s %d/%d ", k, r.attempts, r.passed)
		}
	}
	return s
}

// denyFromX is policyYAML turned around: y/b now refuses namespace x.
const denyFromX = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{port: 80, protocol: TCP}]
`

// TestDeciderRestartedWithOtherPolicies: the decider dies, its policies
// change while it is down, and the new process starts over at generation 1
// — the generation the old one had. The queuer must still drop every
// verdict it cached (userspace and kernel), so that within 1 s of the new
// decider being healthy the allowed-then-denied connection is refused.
func TestDeciderRestartedWithOtherPolicies(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true)
	// a -> b:80 is allowed and, after the first connection, cached in the
	// kernel at generation 1.
	n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"a", "b", netsim.TCP, false, true})
	// The queuer records the generation just after it programs the selected
	// set, so wait for it; the test needs the restarted decider to reach
	// the same number.
	n.eventually("generation 1 applied", 5*time.Second, func() bool { return n.metric("tollgate_decider_generation") == 1 })
	if out, err := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "allow4"); err != nil || !strings.Contains(out, "10.99.1.1 . 10.99.1.2 . tcp . 80") {
		t.Fatalf("a -> b:80 is not in the kernel's allow set before the restart (%v):\n%s", err, out)
	}
	n.decider.Kill()
	n.write("policy.yaml", denyFromX)
	n.startDecider()
	healthy := time.Now()
	var refused time.Duration
	for time.Since(healthy) < 5*time.Second && refused == 0 {
		ok, err := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 80, netsim.TCP, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			refused = time.Since(healthy)
		}
	}
	if refused == 0 {
		t.Fatal("a -> b:80 still connects 5 s after a decider with a policy denying it started: a cached verdict of the old decider is being served")
	}
	t.Logf("a -> b refused %v after the restarted decider became healthy", refused.Round(time.Millisecond))
	if refused > time.Second {
		t.Errorf("the old decider's verdict was served for %v, want under 1s", refused)
	}
	n.eventually("generation 1 again", 5*time.Second, func() bool { return n.metric("tollgate_decider_generation") == 1 })
	n.check(probe{"c", "b", netsim.TCP, false, true})
}
