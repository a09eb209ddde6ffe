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

			token, err := c.ServiceAccountToken("kube-system", "tollgate", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			kubeconfig, err := c.WriteKubeconfigForToken(token)
			if err != nil {
				t.Fatal(err)
			}
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
}
