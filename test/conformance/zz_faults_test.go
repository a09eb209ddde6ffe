package conformance

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// TestAPIServerRestart (runs last: it stops the shared apiserver): while the
// apiserver is down the deciders keep serving their last state and stay
// healthy; after it returns they resync and enforce new policies.
func TestAPIServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deny := np("z", "deny", `podSelector: {}`)
	sys.run(t, tcase{steps: []step{{apply: deny, targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "z" }}}})
	before, err := sys.generations(ctx)
	if err != nil {
		t.Fatal(err)
	}

	sys.cluster.StopAPIServer()
	time.Sleep(2 * time.Second) // let the informers notice
	after, err := sys.generations(ctx)
	if err != nil {
		t.Fatalf("decider stopped answering without the apiserver: %v", err)
	}
	for i := range before {
		if after[i] != before[i] {
			t.Errorf("decider %d changed generation %d -> %d while the apiserver was down", i, before[i], after[i])
		}
	}
	for _, sock := range sys.sockets {
		if err := exec.Command(filepath.Join(sys.workDir, "decider"), "healthcheck", "--socket", sock).Run(); err != nil {
			t.Errorf("decider %s unhealthy while the apiserver is down: %v", sock, err)
		}
	}
	for _, c := range []struct {
		from, to string
		want     bool
	}{{"x/a", "z/a", false}, {"x/a", "y/c", true}, {"z/b", "x/c", true}} {
		ok, err := netsim.Probe(sys.pods[c.from], sys.addr(c.to, false), 80, netsim.TCP, 800*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if ok != c.want {
			t.Errorf("apiserver down: %s -> %s reachable=%v, want %v", c.from, c.to, ok, c.want)
		}
	}

	if err := sys.cluster.StartAPIServer(ctx); err != nil {
		t.Fatalf("restart apiserver: %v", err)
	}
	// The deciders resync and pick up a change made after the restart. When
	// they do depends on client-go's reflector backoff, which grows with the
	// outage (0.8 s doubling to 30 s, with up to 100% jitter) so that a
	// returning apiserver is not hit by every node at once: 6–13 s measured
	// after this outage, bounded here at 45 s like test/faults does.
	sys.runStep(t, step{apply: np("y", "deny", `podSelector: {}`), targets: []target{tcp80}, publishWithin: 45 * time.Second, expect: func(f, to string, _ target) bool {
		return ns(to) != "z" && ns(to) != "y"
	}})
	sys.runStep(t, step{remove: np("y", "deny", `podSelector: {}`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "z" }})
}
