package e2enode

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pm "github.com/tollgate/tollgate/test/policymodel"
)

// sample is one probe made during the rolling update.
type sample struct {
	from       string
	start, end time.Time
	reachable  bool
}

// interval is a span of time.
type interval struct{ from, to time.Time }

// rolloutSlack widens the fail-mode windows for the probes' own duration and
// the polling of pod status.
const rolloutSlack = 2 * time.Second

// testRollingUpdate restarts the DaemonSet (kubectl rollout restart) while
// pods on both nodes keep opening connections to x/a, which admits only
// namespace y, and holds the queuer's fail mode to its promise while x/a's
// node has no Ready, non-terminating Tollgate pod (one node at a time:
// maxUnavailable 1). Fail-open (the manifests' default): no allowed
// connection ever fails, a denied one may pass only in that window.
// Fail-closed (--fail-open=false patched into the queuer's arguments): no
// denied connection ever passes, an allowed one may fail only in that
// window. Either way everything is enforced again once the rollout is done.
func (e *env) testRollingUpdate(t *testing.T, failOpen bool) {
	if !failOpen {
		e.setFailOpen(t, false)
		t.Cleanup(func() { e.setFailOpen(t, true) })
	}
	policy := np("x", "from-y", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`)
	t.Cleanup(func() { _, _ = e.cluster.KubectlWithInput(policy, "delete", "--ignore-not-found", "-f", "-") })
	e.runStep(t, step{apply: policy, targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return to != "x/a" || ns(f) == "y" }})
	if t.Failed() {
		return
	}
	allowed := []string{"y/a", "y/c"} // same node as x/a, other node
	denied := []string{"z/a", "z/c"}
	target := probeTarget("tcp", e.pods["x/a"].ip, 80)
	node := e.pods["x/a"].node

	ctx, stop := context.WithCancel(context.Background())
	var mu sync.Mutex
	var samples []sample
	var probeErrs []error
	var wg sync.WaitGroup
	for _, from := range append(append([]string{}, allowed...), denied...) {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				r, err := e.probeFrom(from, []string{target})
				mu.Lock()
				if err != nil {
					probeErrs = append(probeErrs, err)
				} else {
					samples = append(samples, sample{from: from, start: start, end: time.Now(), reachable: r[target].Reachable})
				}
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		})
	}
	var outages []interval
	wg.Go(func() { outages = e.watchEnforcing(ctx, node) })

	time.Sleep(3 * time.Second)
	restart := time.Now()
	if out, err := e.cluster.Kubectl("-n", "kube-system", "rollout", "restart", "ds/tollgate"); err != nil {
		stop()
		wg.Wait()
		t.Fatalf("rollout restart: %v\n%s", err, out)
	}
	out, err := e.cluster.Kubectl("-n", "kube-system", "rollout", "status", "ds/tollgate", "--timeout=4m")
	done := time.Now()
	if err != nil {
		stop()
		wg.Wait()
		t.Fatalf("rollout status: %v\n%s\n%s", err, out, e.tollgateState())
	}
	time.Sleep(10 * time.Second)
	stop()
	wg.Wait()
	t.Logf("rollout took %v; %d probes; %s without an enforcing Tollgate pod for %v", done.Sub(restart).Round(time.Millisecond), len(samples), node, total(outages).Round(time.Millisecond))

	for _, err := range probeErrs {
		t.Errorf("probe failed to run: %v", err)
	}
	isAllowed := map[string]bool{allowed[0]: true, allowed[1]: true}
	inWindow := 0
	for _, s := range samples {
		if s.reachable == isAllowed[s.from] {
			continue // as the policy says
		}
		at := fmt.Sprintf("at %v (%v after the restart)", s.start.Format(time.StampMilli), s.start.Sub(restart).Round(time.Millisecond))
		switch {
		case failOpen && !s.reachable:
			t.Errorf("%s -> x/a failed %s: fail-open must never break an allowed connection", s.from, at)
		case !failOpen && s.reachable:
			t.Errorf("%s -> x/a passed %s: fail-closed must never let a denied connection through", s.from, at)
		case !overlaps(s, outages):
			t.Errorf("%s -> x/a reachable=%v %s while %s had an enforcing Tollgate pod (outages %v)", s.from, s.reachable, at, node, outages)
		default:
			inWindow++
		}
	}
	if failOpen {
		t.Logf("denied connections that passed in the fail-open window: %d", inWindow)
	} else {
		t.Logf("allowed connections that failed in the fail-closed window: %d", inWindow)
	}
	for _, from := range append(append([]string{}, allowed...), denied...) {
		n := 0
		for _, s := range samples {
			if s.from == from && s.start.After(done) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no probe from %s after the rollout: nothing shows enforcement came back", from)
		}
	}
}

// setFailOpen sets the queuer's --fail-open flag in the DaemonSet and waits
// for the rollout that follows.
func (e *env) setFailOpen(t *testing.T, failOpen bool) {
	ctx := context.Background()
	ds, err := e.cluster.Client().AppsV1().DaemonSets("kube-system").Get(ctx, "tollgate", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for i, c := range ds.Spec.Template.Spec.Containers {
		if c.Name != "queuer" {
			continue
		}
		found = true
		args := slices.DeleteFunc(slices.Clone(c.Args), func(a string) bool { return strings.HasPrefix(a, "--fail-open") })
		ds.Spec.Template.Spec.Containers[i].Args = append(args, fmt.Sprintf("--fail-open=%t", failOpen))
	}
	if !found {
		t.Fatal("the DaemonSet has no queuer container")
	}
	if _, err := e.cluster.Client().AppsV1().DaemonSets("kube-system").Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := e.cluster.Kubectl("-n", "kube-system", "rollout", "status", "ds/tollgate", "--timeout=4m"); err != nil {
		t.Fatalf("rollout to --fail-open=%t: %v\n%s\n%s", failOpen, err, out, e.tollgateState())
	}
}

// watchEnforcing polls until ctx ends and returns the intervals in which
// node had no Ready, non-terminating Tollgate pod.
func (e *env) watchEnforcing(ctx context.Context, node string) []interval {
	var out []interval
	var downSince time.Time
	for {
		pods, err := e.cluster.Client().CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=tollgate", FieldSelector: "spec.nodeName=" + node,
		})
		now := time.Now()
		if err == nil {
			up := false
			for _, p := range pods.Items {
				up = up || p.DeletionTimestamp == nil && podReady(&p)
			}
			switch {
			case !up && downSince.IsZero():
				downSince = now
			case up && !downSince.IsZero():
				out = append(out, interval{downSince, now})
				downSince = time.Time{}
			}
		}
		select {
		case <-ctx.Done():
			if !downSince.IsZero() {
				out = append(out, interval{downSince, time.Now()})
			}
			return out
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// overlaps reports whether a probe overlaps an outage, widened by
// rolloutSlack.
func overlaps(s sample, outages []interval) bool {
	for _, o := range outages {
		if s.start.Before(o.to.Add(rolloutSlack)) && s.end.After(o.from.Add(-rolloutSlack)) {
			return true
		}
	}
	return false
}

func total(outages []interval) time.Duration {
	var d time.Duration
	for _, o := range outages {
		d += o.to.Sub(o.from)
	}
	return d
}

func (i interval) String() string {
	return fmt.Sprintf("[%s, %s]", i.from.Format(time.StampMilli), i.to.Format(time.StampMilli))
}
