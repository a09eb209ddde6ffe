// Package install proves the shipped manifests against a real apiserver:
// every object of every flavour is accepted, the decider runs with a token
// of the ServiceAccount they create (so the RBAC is sufficient), and the
// same token cannot write.
package install

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/cluster"
)

func TestInstallManifests(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{CRDs: []cluster.CRDSet{cluster.AdminNetworkPolicyCRDs, cluster.ClusterNetworkPolicyCRDs}})
	bin := filepath.Join(t.TempDir(), "decider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tollgate/tollgate/decider").CombinedOutput(); err != nil {
		t.Fatalf("build decider: %v\n%s", err, out)
	}
	for _, flavour := range deploy.Flavours {
		file, err := flavour.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(file), func(t *testing.T) {
			manifest, err := deploy.Manifest(flavour)
			if err != nil {
				t.Fatal(err)
			}
			out, err := c.KubectlWithInput(string(manifest), "apply", "--server-side", "--force-conflicts", "-f", "-")
			if err != nil {
				t.Fatalf("apply %s: %v\n%s", file, err, out)
			}
			objs, err := deploy.Objects(flavour)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(out, "serverside-applied"); n != len(objs) {
				t.Errorf("%d of %d objects applied:\n%s", n, len(objs), out)
			}

			kubeconfig := serviceAccountKubeconfig(t, c)
			// The ServiceAccount may read what the decider needs and write
			// nothing.
			for _, check := range []struct {
				args []string
				want string
			}{
				{[]string{"auth", "can-i", "watch", "pods", "--all-namespaces"}, "yes"},
				{[]string{"auth", "can-i", "list", "networkpolicies.networking.k8s.io", "--all-namespaces"}, "yes"},
				{[]string{"auth", "can-i", "create", "networkpolicies.networking.k8s.io", "-n", "default"}, "no"},
				{[]string{"auth", "can-i", "get", "secrets", "-n", "kube-system"}, "no"},
				{[]string{"auth", "can-i", "patch", "pods", "-n", "default"}, "no"},
			} {
				out, _ := c.KubectlAs(kubeconfig, "", check.args...)
				if strings.TrimSpace(out) != check.want {
					t.Errorf("kubectl %s as the ServiceAccount: %q, want %q", strings.Join(check.args, " "), strings.TrimSpace(out), check.want)
				}
			}
			out, err = c.KubectlAs(kubeconfig, "apiVersion: v1\nkind: Namespace\nmetadata: {name: tollgate-write-test}\n", "create", "-f", "-")
			if err == nil || !strings.Contains(out, "Forbidden") && !strings.Contains(out, "forbidden") {
				t.Errorf("creating a namespace with the decider's token: err=%v\n%s", err, out)
			}

			// The decider syncs with exactly these permissions.
			dir := t.TempDir()
			sock := filepath.Join(dir, "d.sock")
			cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--socket", sock, "--node-name", "n1", "--metrics-bind-address", "")
			p := proc.ForTest(t, "decider", cmd)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for {
				if exec.Command(bin, "healthcheck", "--socket", sock).Run() == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatal("the decider never became SERVING with the ServiceAccount's token")
				}
				time.Sleep(200 * time.Millisecond)
			}
			if log := p.Log(); strings.Contains(log, "forbidden") {
				t.Errorf("the decider hit forbidden requests:\n%s", log)
			}
		})
	}
	t.Run("decider explain", func(t *testing.T) { explainLive(t, c, bin) })
}

// serviceAccountKubeconfig writes a kubeconfig with a token of the
// decider's ServiceAccount.
func serviceAccountKubeconfig(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	token, err := c.ServiceAccountToken("kube-system", "tollgate", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := c.WriteKubeconfigForToken(token)
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

// explainLive runs `decider explain --kubeconfig` with the ServiceAccount's
// token (whose RBAC the flavours applied) on two pods and a NetworkPolicy:
// the one-shot listing works with the shipped RBAC and sees the cluster's
// objects.
func explainLive(t *testing.T, c *cluster.Cluster, bin string) {
	out, err := c.KubectlWithInput(`
apiVersion: v1
kind: Namespace
metadata: {name: explain, labels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: explain, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: explain, labels: {app: b}}
spec: {nodeName: n1, containers: [{name: c, image: none}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-a-to-b, namespace: explain}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
`, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, ip := range map[string]string{"a": "10.9.0.1", "b": "10.9.0.2"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "explain", Name: name}}
		if _, err := c.SetPodStatus(ctx, pod, []string{ip}, corev1.PodRunning); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := serviceAccountKubeconfig(t, c)
	for _, tc := range []struct {
		port, want string
		code       int
	}{{"80", "NetworkPolicy explain/only-a-to-b rule 0 matches: Allow", 0}, {"81", "no rule allows it: Deny", 1}} {
		cmd := exec.CommandContext(ctx, bin, "explain", "--kubeconfig", kubeconfig, "--from", "explain/a", "--to", "explain/b", "--port", tc.port)
		outb, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(string(outb), tc.want) || strings.Contains(string(outb), "forbidden") {
			t.Errorf("decider explain on port %s: exit %d, want %d and %q:\n%s", tc.port, code, tc.code, tc.want, outb)
		}
	}
}
