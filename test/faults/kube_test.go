package faults

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/internal/proc"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/cluster"
)

// Pod IPs of testdata/cluster.yaml.
const (
	ipXA = "10.50.0.1"
	ipYA = "10.50.0.2"
	ipZA = "10.50.0.3"
)

// kubeEnv is a control plane holding testdata/cluster.yaml, started
// without any network-policy-api CRD.
type kubeEnv struct {
	c *cluster.Cluster
}

func newKubeEnv(t *testing.T) *kubeEnv {
	t.Helper()
	c := cluster.StartForTest(t, cluster.Options{})
	e := &kubeEnv{c: c}
	e.apply(t, "testdata/cluster.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range []struct{ ns, ip string }{{"x", ipXA}, {"y", ipYA}, {"z", ipZA}} {
		pod, err := c.Client().CoreV1().Pods(p.ns).Get(ctx, "a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetPodStatus(ctx, pod, []string{p.ip}, corev1.PodRunning); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// apply runs kubectl apply on a file.
func (e *kubeEnv) apply(t *testing.T, file string) {
	t.Helper()
	if out, err := e.c.Kubectl("apply", "-f", file); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// applyYAML runs kubectl apply on a manifest.
func (e *kubeEnv) applyYAML(t *testing.T, manifest string) {
	t.Helper()
	if out, err := e.c.KubectlWithInput(manifest, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// kubeDecider is a decider process watching the test apiserver.
type kubeDecider struct {
	p       *proc.Proc
	sock    string
	metrics string // host:port of /metrics and /readyz
	client  tollgatev1.DeciderServiceClient
}

// startKubeDecider runs a decider with kubeconfig, checking discovery
// every second. It does not wait for it to sync.
func startKubeDecider(t *testing.T, name, kubeconfig string) *kubeDecider {
	t.Helper()
	sock := fmt.Sprintf("%s/%s.sock", t.TempDir(), name)
	addr := freeAddr(t)
	p := proc.ForTest(t, name, exec.Command(bin("decider"), "--kubeconfig", kubeconfig, "--socket", sock,
		"--node-name", "node-1", "--metrics-bind-address", addr, "--crd-check-interval", "1s"))
	return &kubeDecider{p: p, sock: sock, metrics: addr, client: deciderClient(t, sock)}
}

// waitServing waits until `decider healthcheck` exits 0.
func (d *kubeDecider) waitServing(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	return eventually(t, "decider SERVING", limit, func() bool {
		if d.p.Exited() {
			t.Fatal("the decider exited")
		}
		return healthcheck(d.sock) == 0
	})
}

// verdict is the decider's answer for TCP src -> dst:80; it fails the test
// when the decider does not answer.
func (d *kubeDecider) verdict(t *testing.T, src, dst string) (tollgatev1.Verdict, uint64) {
	t.Helper()
	r, err := decide(d.client, src, dst)
	if err != nil {
		t.Fatalf("Decide %s -> %s: %v", src, dst, err)
	}
	return r.GetVerdict(), r.GetGeneration()
}

// waitVerdict polls until src -> dst gets want and returns how long it took.
func (d *kubeDecider) waitVerdict(t *testing.T, src, dst string, want tollgatev1.Verdict, limit time.Duration) time.Duration {
	t.Helper()
	return eventually(t, fmt.Sprintf("%s -> %s %v", src, dst, want), limit, func() bool {
		v, _ := d.verdict(t, src, dst)
		return v == want
	})
}

// quietGeneration waits until the decider's generation has not moved for
// quiet and returns it. A snapshot can be rebuilt with the same content (the
// source kicks once more when it notices it has synced, which can come a
// poll interval after the first snapshot), so a test that wants to see
// "no change" must start from a generation that has settled.
func (d *kubeDecider) quietGeneration(t *testing.T, src, dst string, quiet, limit time.Duration) uint64 {
	t.Helper()
	_, gen := d.verdict(t, src, dst)
	since := time.Now()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, g := d.verdict(t, src, dst); g != gen {
			gen, since = g, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return gen
		}
	}
	t.Fatalf("the decider's generation kept changing for %v (now %d)", limit, gen)
	return 0
}

// readyz returns the HTTP status of the decider's /readyz, or 0.
func (d *kubeDecider) readyz() int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + d.metrics + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// freeAddr returns a 127.0.0.1 address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// tokenKubeconfig returns a kubeconfig of the read-only service account of
// testdata/rbac.yaml.
func (e *kubeEnv) tokenKubeconfig(t *testing.T) string {
	t.Helper()
	e.apply(t, "testdata/rbac.yaml")
	token, err := e.c.ServiceAccountToken("kube-system", "faults-decider", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path, err := e.c.WriteKubeconfigForToken(token)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

const denyIngressZ = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: z}
spec: {podSelector: {}, policyTypes: [Ingress]}
`

const denyIngressX = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
`

// cnpDenyZToX denies ingress of namespace x from namespace z in the admin
// tier.
const cnpDenyZToX = `apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-z-to-x}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{name: deny-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]
`

// TestKubeFaults runs the apiserver faults against one control plane,
// started without the network-policy-api CRDs. The subtests run in order
// and share the cluster and the first decider.
func TestKubeFaults(t *testing.T) {
	t.Parallel()
	e := newKubeEnv(t)
	d := startKubeDecider(t, "decider-admin", e.c.Kubeconfig())
	t.Logf("admin decider SERVING after %v", d.waitServing(t, 30*time.Second).Round(time.Millisecond))
	t.Run("CRDInstalledAndRemoved", func(t *testing.T) { testCRDInstalledAndRemoved(t, e, d) })
	t.Run("APIServerStoppedAndRestarted", func(t *testing.T) { testAPIServerStoppedAndRestarted(t, e, d) })
	t.Run("ChangesWhileCutOff", func(t *testing.T) { testChangesWhileCutOff(t, e) })
}

const denyIngressY = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: "y"}
spec: {podSelector: {}, policyTypes: [Ingress]}
`

// testChangesWhileCutOff: a decider loses the apiserver (a partition: the
// apiserver itself stays up) while policies are created and deleted. It
// keeps serving its last state meanwhile, and once it reaches the
// apiserver again it has both changes.
func testChangesWhileCutOff(t *testing.T, e *kubeEnv) {
	proxy := startProxy(t, e.c.APIServerAddr())
	kubeconfig, err := e.c.WriteAdminKubeconfigVia(proxy.Addr())
	if err != nil {
		t.Fatal(err)
	}
	d := startKubeDecider(t, "decider-proxied", kubeconfig)
	d.waitServing(t, 30*time.Second)
	e.applyYAML(t, denyIngressZ)
	d.waitVerdict(t, ipXA, ipZA, tollgatev1.Verdict_VERDICT_DENY, 20*time.Second)
	gen := d.quietGeneration(t, ipXA, ipZA, 500*time.Millisecond, 20*time.Second)

	proxy.cut()
	if out, err := e.c.Kubectl("delete", "networkpolicy", "-n", "z", "deny-ingress"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	e.applyYAML(t, denyIngressY)
	// Cut off for 3 s: the last state, still SERVING.
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		vz, gz := d.verdict(t, ipXA, ipZA)
		vy, _ := d.verdict(t, ipXA, ipYA)
		if vz != tollgatev1.Verdict_VERDICT_DENY || vy != tollgatev1.Verdict_VERDICT_ALLOW || gz != gen {
			t.Fatalf("cut off: x/a -> z/a %v, x/a -> y/a %v at generation %d; want the last state (DENY, ALLOW at %d)", vz, vy, gz, gen)
		}
		if code := healthcheck(d.sock); code != 0 {
			t.Fatalf("synced decider unhealthy while cut off: exit %d", code)
		}
	}

	proxy.restore()
	back := time.Now()
	eventually(t, "the changes made while cut off", 60*time.Second, func() bool {
		vz, _ := d.verdict(t, ipXA, ipZA)
		vy, _ := d.verdict(t, ipXA, ipYA)
		return vz == tollgatev1.Verdict_VERDICT_ALLOW && vy == tollgatev1.Verdict_VERDICT_DENY
	})
	t.Logf("the deletion and the creation made while cut off are in force %v after the apiserver was reachable again",
		time.Since(back).Round(time.Millisecond))
	if d.p.Exited() {
		t.Error("the decider exited")
	}
	if out, err := e.c.Kubectl("delete", "networkpolicy", "-A", "--all"); err != nil {
		t.Logf("cleanup: %v\n%s", err, out)
	}
}

// testCRDInstalledAndRemoved: the ClusterNetworkPolicy CRD appears under a
// running decider, a policy of the new kind takes effect; the CRD goes away,
// the decider keeps running and the policy's effect disappears.
func testCRDInstalledAndRemoved(t *testing.T, e *kubeEnv, d *kubeDecider) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if v, _ := d.verdict(t, ipZA, ipXA); v != tollgatev1.Verdict_VERDICT_ALLOW {
		t.Fatalf("z/a -> x/a before any policy: %v, want ALLOW", v)
	}
	if err := e.c.InstallCRDs(ctx, cluster.ClusterNetworkPolicyCRDs); err != nil {
		t.Fatal(err)
	}
	installed := time.Now()
	e.applyYAML(t, cnpDenyZToX)
	took := d.waitVerdict(t, ipZA, ipXA, tollgatev1.Verdict_VERDICT_DENY, 20*time.Second)
	t.Logf("ClusterNetworkPolicy enforced %v after it was applied (%v after the CRD was established)",
		took.Round(time.Millisecond), time.Since(installed).Round(time.Millisecond))
	if v, _ := d.verdict(t, ipYA, ipXA); v != tollgatev1.Verdict_VERDICT_ALLOW {
		t.Errorf("y/a -> x/a under the CNP: %v, want ALLOW", v)
	}

	if err := e.c.RemoveCRDs(ctx, cluster.ClusterNetworkPolicyCRDs); err != nil {
		t.Fatal(err)
	}
	took = d.waitVerdict(t, ipZA, ipXA, tollgatev1.Verdict_VERDICT_ALLOW, 20*time.Second)
	t.Logf("the removed kind's policy stopped applying %v after the CRD was deleted", took.Round(time.Millisecond))
	// A few more discovery rounds: still up, still healthy, still ALLOW.
	time.Sleep(2 * time.Second)
	if d.p.Exited() {
		t.Fatal("the decider exited after the CRD was removed")
	}
	if code := healthcheck(d.sock); code != 0 {
		t.Errorf("healthcheck after the CRD was removed: exit %d, want 0", code)
	}
	if v, _ := d.verdict(t, ipZA, ipXA); v != tollgatev1.Verdict_VERDICT_ALLOW {
		t.Errorf("z/a -> x/a after the CRD was removed: %v, want ALLOW", v)
	}
}

// testAPIServerStoppedAndRestarted: with the apiserver down, a synced
// decider answers from its last snapshot and stays SERVING, while a decider
// started meanwhile stays NOT_SERVING; once the apiserver is back both
// serve and a policy applied then changes their verdicts.
func testAPIServerStoppedAndRestarted(t *testing.T, e *kubeEnv, d *kubeDecider) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tokenConfig := e.tokenKubeconfig(t)
	e.applyYAML(t, denyIngressZ)
	d.waitVerdict(t, ipXA, ipZA, tollgatev1.Verdict_VERDICT_DENY, 20*time.Second)
	gen := d.quietGeneration(t, ipXA, ipZA, 500*time.Millisecond, 20*time.Second)

	e.c.StopAPIServer()
	stopped := true
	t.Cleanup(func() {
		if stopped { // a failure below left it down: later cleanups need it
			_ = e.c.StartAPIServer(context.Background())
		}
	})
	// Over 3 s without the apiserver: the same generation, the same
	// verdicts, still SERVING.
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		for _, c := range []struct {
			src, dst string
			want     tollgatev1.Verdict
		}{{ipXA, ipZA, tollgatev1.Verdict_VERDICT_DENY}, {ipZA, ipXA, tollgatev1.Verdict_VERDICT_ALLOW}, {ipXA, ipYA, tollgatev1.Verdict_VERDICT_ALLOW}} {
			v, g := d.verdict(t, c.src, c.dst)
			if v != c.want || g != gen {
				t.Fatalf("apiserver down: %s -> %s = %v at generation %d, want %v at %d", c.src, c.dst, v, g, c.want, gen)
			}
		}
		if code := healthcheck(d.sock); code != 0 {
			t.Fatalf("synced decider unhealthy while the apiserver is down: exit %d", code)
		}
	}

	// A decider that never synced says so.
	late := startKubeDecider(t, "decider-token", tokenConfig)
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if late.p.Exited() {
			t.Fatal("a decider started without an apiserver exited")
		}
		if code := healthcheck(late.sock); code != 1 {
			t.Fatalf("decider started without an apiserver: healthcheck exit %d, want 1 (NOT_SERVING)", code)
		}
		if r, err := decide(late.client, ipXA, ipZA); err == nil {
			t.Fatalf("decider started without an apiserver answered %v at generation %d", r.GetVerdict(), r.GetGeneration())
		}
	}
	if code := late.readyz(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz of the unsynced decider: %d, want 503", code)
	}

	if err := e.c.StartAPIServer(ctx); err != nil {
		t.Fatalf("restart the apiserver: %v", err)
	}
	stopped = false
	back := time.Now()
	t.Logf("late decider SERVING %v after the apiserver returned", late.waitServing(t, 45*time.Second).Round(time.Millisecond))
	if code := late.readyz(); code != http.StatusOK {
		t.Errorf("/readyz of the synced decider: %d, want 200", code)
	}
	if v, _ := late.verdict(t, ipXA, ipZA); v != tollgatev1.Verdict_VERDICT_DENY {
		t.Errorf("late decider: x/a -> z/a = %v, want DENY (policy applied before the outage)", v)
	}

	// A change made after the restart reaches both deciders.
	e.applyYAML(t, denyIngressX)
	applied := time.Now()
	seen := map[string]time.Duration{}
	deciders := map[string]*kubeDecider{"admin": d, "token": late}
	eventually(t, "both deciders enforce the policy applied after the restart", 45*time.Second, func() bool {
		for name, dd := range deciders {
			if _, ok := seen[name]; !ok {
				if v, _ := dd.verdict(t, ipZA, ipXA); v == tollgatev1.Verdict_VERDICT_DENY {
					seen[name] = time.Since(applied)
				}
			}
		}
		return len(seen) == len(deciders)
	})
	for name, took := range seen {
		t.Logf("%s decider enforces the new policy %v after it was applied (%v after the apiserver returned)", name,
			took.Round(time.Millisecond), (took + applied.Sub(back)).Round(time.Millisecond))
	}
	if _, g := d.verdict(t, ipZA, ipXA); g <= gen {
		t.Errorf("admin decider generation %d after the resync, want > %d", g, gen)
	}
	if d.p.Exited() || late.p.Exited() {
		t.Error("a decider exited")
	}
	if out, err := e.c.Kubectl("delete", "networkpolicy", "-A", "--all"); err != nil {
		t.Logf("cleanup: %v\n%s", err, out)
	}
	_ = os.Remove(tokenConfig)
}
