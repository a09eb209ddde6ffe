package e2enode

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	pm "github.com/tollgate/tollgate/test/policymodel"
)

// testService puts x/a behind a ClusterIP Service and probes the Service
// from every other pod, both nodes, through each node's kube-proxy: first
// with no policy, then with x/a admitting only namespace y. Policy applies
// to the pod behind the ClusterIP, after kube-proxy's DNAT.
func (e *env) testService(t *testing.T) {
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "svc-a"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"pod": "a"},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(80)}},
		},
	}
	created, err := e.cluster.Client().CoreV1().Services("x").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.cluster.Client().CoreV1().Services("x").Delete(context.Background(), "svc-a", metav1.DeleteOptions{})
	})
	vip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("ClusterIP %q: %v", created.Spec.ClusterIP, err)
	}
	var sources []string
	for _, p := range pm.PodKeys() {
		if p != "x/a" { // a pod reaching itself through a Service is hairpin NAT: not asked
			sources = append(sources, p)
		}
	}
	target := probeTarget("tcp", vip, 80)
	check := func(what string, want func(from string) bool) {
		t.Helper()
		start := time.Now()
		var wrong []string
		for time.Since(start) < enforceWithin {
			results := e.probeEach(t, sources, target)
			wrong = wrong[:0]
			for _, from := range sources {
				r := results[from]
				ok := r.Reachable && r.Server == "x/a"
				if ok != want(from) {
					wrong = append(wrong, fmt.Sprintf("%s (%s) -> ClusterIP %s:80 (x/a on %s): reachable=%v server=%q reason=%q, want reachable=%v",
						from, e.pods[from].node, vip, e.pods["x/a"].node, r.Reachable, r.Server, r.Reason, want(from)))
				}
			}
			if len(wrong) == 0 {
				t.Logf("%s: as expected from %d pods after %v", what, len(sources), time.Since(start).Round(time.Millisecond))
				return
			}
		}
		sort.Strings(wrong)
		t.Errorf("%s:\n%s", what, strings.Join(wrong, "\n"))
	}
	check("no policy: every pod reaches x/a through the ClusterIP", func(string) bool { return true })
	policy := np("x", "from-y", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`)
	if out, err := e.cluster.KubectlWithInput(policy, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = e.cluster.KubectlWithInput(policy, "delete", "--ignore-not-found", "-f", "-") })
	check("x/a admits namespace y only: through the ClusterIP too", func(from string) bool { return ns(from) == "y" })
}

// probeEach probes one target from each source pod, concurrently.
func (e *env) probeEach(t *testing.T, sources []string, target string) map[string]probeResult {
	t.Helper()
	out := map[string]probeResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var failed []error
	for _, from := range sources {
		wg.Go(func() {
			r, err := e.probeFrom(from, []string{target})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, err)
				return
			}
			out[from] = r[target]
		})
	}
	wg.Wait()
	for _, err := range failed {
		t.Fatalf("probe: %v", err)
	}
	return out
}
