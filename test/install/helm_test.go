package install

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/internal/testenv"
	"github.com/tollgate/tollgate/test/cluster"
)

// chartDir is the Helm chart, from this package's directory.
const chartDir = "../../deploy/helm/tollgate"

// helmRunner runs the helm binary against one cluster, with its own
// cache, config and data directories.
type helmRunner struct {
	bin        string
	kubeconfig string
	home       string
}

func newHelm(t *testing.T, c *cluster.Cluster) *helmRunner {
	t.Helper()
	bin := os.Getenv("TOLLGATE_HELM")
	if bin == "" {
		bin = testenv.LookPath(t, "helm") // make tools installs it
	}
	return &helmRunner{bin: bin, kubeconfig: c.Kubeconfig(), home: t.TempDir()}
}

func (h *helmRunner) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, append(args, "--kubeconfig", h.kubeconfig)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+h.home+"/cache", "HELM_CONFIG_HOME="+h.home+"/config", "HELM_DATA_HOME="+h.home+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestHelmChart installs the chart with helm into a real apiserver, then
// upgrades it through each policy API flavour: every object is accepted,
// the ServiceAccount may read exactly the enabled APIs and write nothing,
// and the decider syncs with its token. The plugin example's values then
// drop the RBAC, and uninstall removes everything.
func TestHelmChart(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{CRDs: []cluster.CRDSet{cluster.AdminNetworkPolicyCRDs, cluster.ClusterNetworkPolicyCRDs}})
	h := newHelm(t, c)
	bin := filepath.Join(t.TempDir(), "decider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tollgate/tollgate/decider").CombinedOutput(); err != nil {
		t.Fatalf("build decider: %v\n%s", err, out)
	}
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := c.Kubectl(args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}

	for _, step := range []struct {
		name     string
		set      string
		anp, cnp bool
	}{
		{"networkpolicy", "policyAPIs.adminNetworkPolicy=false", false, false},
		{"anp", "policyAPIs.adminNetworkPolicy=true", true, false},
		{"cnp", "policyAPIs.clusterNetworkPolicy=true", false, true},
	} {
		t.Run(step.name, func(t *testing.T) {
			h.run(t, "upgrade", "--install", "tollgate", chartDir, "--namespace", "kube-system", "--set", step.set)
			if got := kubectl("-n", "kube-system", "get", "daemonset,serviceaccount", "-o", "name"); got != "daemonset.apps/tollgate\nserviceaccount/tollgate" {
				t.Errorf("kube-system holds %q", got)
			}
			if got := kubectl("get", "clusterrolebinding", "tollgate", "-o", "jsonpath={.subjects[0].namespace}/{.subjects[0].name}"); got != "kube-system/tollgate" {
				t.Errorf("the binding names %q", got)
			}

			token, err := c.ServiceAccountToken("kube-system", "tollgate", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			kubeconfig, err := c.WriteKubeconfigForToken(token)
			if err != nil {
				t.Fatal(err)
			}
			yesNo := map[bool]string{true: "yes", false: "no"}
			for _, check := range []struct {
				verb, resource, want string
			}{
				{"watch", "pods", "yes"},
				{"list", "networkpolicies.networking.k8s.io", "yes"},
				{"list", "adminnetworkpolicies.policy.networking.k8s.io", yesNo[step.anp]},
				{"watch", "baselineadminnetworkpolicies.policy.networking.k8s.io", yesNo[step.anp]},
				{"list", "clusternetworkpolicies.policy.networking.k8s.io", yesNo[step.cnp]},
				{"create", "networkpolicies.networking.k8s.io", "no"},
				{"get", "secrets", "no"},
			} {
				out, _ := c.KubectlAs(kubeconfig, "", "auth", "can-i", check.verb, check.resource, "--all-namespaces")
				if got := strings.TrimSpace(out); got != check.want {
					t.Errorf("can the ServiceAccount %s %s? %q, want %q", check.verb, check.resource, got, check.want)
				}
			}

			sock := filepath.Join(t.TempDir(), "d.sock")
			p := proc.ForTest(t, "decider", exec.Command(bin, "--kubeconfig", kubeconfig, "--socket", sock, "--node-name", "n1", "--metrics-bind-address", ""))
			for deadline := time.Now().Add(30 * time.Second); exec.Command(bin, "healthcheck", "--socket", sock).Run() != nil; time.Sleep(200 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the decider never became SERVING with the chart's ServiceAccount")
				}
			}
			if log := p.Log(); strings.Contains(log, "forbidden") {
				t.Errorf("the decider hit forbidden requests:\n%s", log)
			}
		})
	}

	// The plugin example: no RBAC, the plugin's image in the decider container.
	h.run(t, "upgrade", "tollgate", chartDir, "--namespace", "kube-system", "-f", "../../examples/deciders/allowlist/deploy/values.yaml")
	if out, err := c.Kubectl("get", "clusterrole", "tollgate"); err == nil || !strings.Contains(out, "NotFound") {
		t.Errorf("the ClusterRole survived rbac.create=false: %v\n%s", err, out)
	}
	if got := kubectl("-n", "kube-system", "get", "daemonset", "tollgate", "-o", "jsonpath={.spec.template.spec.containers[0].image}"); got != "REGISTRY/tollgate-allowlist-decider:0.1.0" {
		t.Errorf("decider image %q after the plugin upgrade", got)
	}

	h.run(t, "uninstall", "tollgate", "--namespace", "kube-system")
	if got := kubectl("-n", "kube-system", "get", "daemonset,serviceaccount", "-o", "name"); got != "" {
		t.Errorf("after uninstall kube-system still holds %q", got)
	}
}
