package e2enode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/localcluster"
	"github.com/tollgate/tollgate/test/netsim"
)

// deployDir is the repository's deploy/ seen from this package.
const deployDir = "../../deploy"

// crdsOf are the CRDs a flavour needs, installed before it as
// deploy/README.md says.
var crdsOf = map[deploy.Flavour][]cluster.CRDSet{
	deploy.AdminNetworkPolicy:   {cluster.AdminNetworkPolicyCRDs},
	deploy.ClusterNetworkPolicy: {cluster.ClusterNetworkPolicyCRDs},
}

// install installs a flavour as deploy/README.md tells users to: its CRDs,
// then `kubectl apply -f deploy/<file>` when the images carry the names the
// manifests use (images loaded into the nodes, as on kind), otherwise a
// kustomization of the rendered file with the image names set; then
// `kubectl rollout status`. The flavour is removed when the test ends.
func (e *env) install(t *testing.T, f deploy.Flavour) {
	t.Helper()
	ctx := context.Background()
	for _, set := range crdsOf[f] {
		if err := e.cluster.InstallCRDs(ctx, set); err != nil {
			t.Fatal(err)
		}
	}
	file, err := f.File()
	if err != nil {
		t.Fatal(err)
	}
	apply, err := e.applyArgs(t, file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tollgate at failure:\n%s", e.tollgateState())
		}
		e.uninstall(t, f)
	})
	start := time.Now()
	if out, err := e.cluster.Kubectl(apply...); err != nil {
		t.Fatalf("install %s: %v\n%s", file, err, out)
	}
	if out, err := e.cluster.Kubectl("-n", "kube-system", "rollout", "status", "ds/tollgate", "--timeout=4m"); err != nil {
		t.Fatalf("rollout of %s: %v\n%s\n%s", file, err, out, e.tollgateState())
	}
	t.Logf("%s installed and rolled out in %v", file, time.Since(start).Round(time.Millisecond))
	e.checkInstalled(t)
}

// applyArgs are the kubectl arguments that apply file, one of the rendered
// manifests in deploy/: the file itself when its images are the ones the
// suite runs, otherwise a kustomization of it that sets them, as
// deploy/README.md tells users with a registry.
func (e *env) applyArgs(t *testing.T, file string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(deployDir, file))
	if err != nil {
		return nil, err
	}
	objs, err := deploy.Decode(data)
	if err != nil {
		return nil, err
	}
	want := map[string]string{"tollgate-decider": e.images.decider, "tollgate-queuer": e.images.queuer}
	same := true
	for _, o := range objs {
		if ds, ok := o.(*appsv1.DaemonSet); ok {
			spec := ds.Spec.Template.Spec
			for _, c := range append(spec.InitContainers, spec.Containers...) {
				name, _, _ := strings.Cut(c.Image, ":")
				same = same && c.Image == want[name]
			}
		}
	}
	if same {
		return []string{"apply", "-f", filepath.Join(deployDir, file)}, nil
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
		return nil, err
	}
	kustomization := fmt.Sprintf("resources: [%s]\nimages:\n%s%s", file, imageOverride("tollgate-decider", e.images.decider), imageOverride("tollgate-queuer", e.images.queuer))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kustomization), 0o644); err != nil {
		return nil, err
	}
	return []string{"apply", "-k", dir}, nil
}

// imageOverride is a kustomize images entry pointing name at ref.
func imageOverride(name, ref string) string {
	newName, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		newName, tag = ref[:i], ref[i+1:]
	}
	s := fmt.Sprintf("  - name: %s\n    newName: %s\n", name, newName)
	if tag != "" {
		s += fmt.Sprintf("    newTag: %q\n", tag)
	}
	return s
}

// uninstall uninstalls flavour f as deploy/README.md says: delete what was
// applied and wait until the Tollgate pods are gone, then apply
// deploy/cleanup.yaml, wait for its rollout (queuer cleanup has run on
// every node) and delete it; then the flavour's CRDs. It checks that no
// node keeps Tollgate's nftables table or iptables chain. Running it again
// is harmless.
func (e *env) uninstall(t *testing.T, f deploy.Flavour) {
	t.Helper()
	file, err := f.File()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, step := range []struct {
		file  string
		ds    string
		label string
	}{{file, "tollgate", "app.kubernetes.io/name=tollgate"}, {deploy.CleanupFile, "tollgate-cleanup", "app.kubernetes.io/name=tollgate-cleanup"}} {
		apply, err := e.applyArgs(t, step.file)
		if err != nil {
			t.Fatal(err)
		}
		if step.file == deploy.CleanupFile {
			if out, err := e.cluster.Kubectl(apply...); err != nil {
				t.Fatalf("apply %s: %v\n%s", step.file, err, out)
			}
			if out, err := e.cluster.Kubectl("-n", "kube-system", "rollout", "status", "ds/"+step.ds, "--timeout=2m"); err != nil {
				t.Fatalf("rollout of %s: %v\n%s", step.file, err, out)
			}
		}
		del := append([]string{"delete", "--ignore-not-found", "--wait", "--timeout=2m"}, apply[1:]...)
		if out, err := e.cluster.Kubectl(del...); err != nil {
			t.Errorf("delete %s: %v\n%s", step.file, err, out)
		}
		err = waitFor(ctx, 2*time.Minute, time.Second, func() (bool, error) {
			pods, err := e.cluster.Client().CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: step.label})
			return err == nil && len(pods.Items) == 0, err
		})
		if err != nil {
			t.Errorf("%s pods still there after kubectl delete: %v", step.ds, err)
		}
	}
	for _, n := range localcluster.NodeConfigs(localcluster.Options{Dir: e.dir}) {
		if out, err := netsim.Exec(n.Netns, "nft", "list", "table", "inet", dataplane.TableName); err == nil {
			t.Errorf("node %s keeps table inet %s after the uninstall:\n%s", n.Name, dataplane.TableName, out)
		}
		if out, err := netsim.Exec(n.Netns, "iptables-save"); err != nil || strings.Contains(out, dataplane.XTChain) {
			t.Errorf("node %s keeps iptables chain %s after the uninstall (%v):\n%s", n.Name, dataplane.XTChain, err, out)
		}
	}
	for _, set := range crdsOf[f] {
		if err := e.cluster.RemoveCRDs(ctx, set); err != nil {
			t.Errorf("remove CRDs: %v", err)
		}
	}
}

// tollgateState is the DaemonSet's pods, their recent logs and events.
func (e *env) tollgateState() string {
	var b strings.Builder
	pods, _ := e.cluster.Kubectl("-n", "kube-system", "get", "pods", "-o", "wide", "-l", "app.kubernetes.io/name=tollgate")
	b.WriteString(pods)
	for _, c := range []string{"decider", "queuer"} {
		logs, err := e.cluster.Kubectl("-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=tollgate", "-c", c, "--tail=30", "--prefix")
		fmt.Fprintf(&b, "--- %s logs (%v) ---\n%s\n", c, err, logs)
	}
	events, _ := e.cluster.Kubectl("-n", "kube-system", "get", "events", "--sort-by=.lastTimestamp")
	fmt.Fprintf(&b, "--- events ---\n%s\n", tailLines(events, 30))
	return b.String()
}

// checkInstalled holds the running pods to the design: one Ready pod per
// node; in each node, the queuer runs as uid 0 with exactly CAP_NET_ADMIN,
// the decider as 65532 with no capability; the decider talks to the
// apiserver through the in-cluster kubernetes Service, as kube-proxy's DNAT
// of 10.96.0.1:443 in the node's conntrack table shows; and the host's own
// netfilter rules are still those `make cluster-up` found.
func (e *env) checkInstalled(t *testing.T) {
	t.Helper()
	if before, err := os.ReadFile(filepath.Join(e.dir, "host-before.txt")); err != nil {
		t.Errorf("host state from cluster-up: %v", err)
	} else if was, now := localcluster.Netfilter(string(before)), localcluster.Netfilter(localcluster.HostState()); was != now {
		t.Errorf("the host's netfilter rules changed while the cluster runs Tollgate:\n--- at cluster-up\n%s\n--- now\n%s", was, now)
	}
	ctx := context.Background()
	pods, err := e.cluster.Client().CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=tollgate"})
	if err != nil {
		t.Fatal(err)
	}
	onNode := map[string]int{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			onNode[p.Spec.NodeName]++
		}
	}
	nodes := localcluster.NodeConfigs(localcluster.Options{Dir: e.dir})
	for _, n := range nodes {
		if onNode[n.Name] != 1 {
			t.Errorf("node %s has %d Ready tollgate pods, want 1", n.Name, onNode[n.Name])
		}
		for _, want := range []struct {
			binary string
			uid    int
			capEff uint64
		}{
			{"/usr/local/bin/queuer", 0, 1 << 12}, // CAP_NET_ADMIN
			{"/usr/local/bin/decider", 65532, 0},
		} {
			procs, err := processesInNetns(n.Netns, want.binary)
			if err != nil {
				t.Fatal(err)
			}
			if len(procs) != 1 {
				t.Errorf("node %s: %d %s processes, want 1", n.Name, len(procs), want.binary)
				continue
			}
			if p := procs[0]; p.uid != want.uid || p.capEff != want.capEff {
				t.Errorf("node %s: %s runs as uid %d with CapEff %#x, want uid %d with %#x", n.Name, want.binary, p.uid, p.capEff, want.uid, want.capEff)
			}
		}
		out, err := netsim.Exec(n.Netns, "conntrack", "-L", "-p", "tcp", "--orig-dst", "10.96.0.1", "--dport", "443", "--reply-src", localcluster.APIServerIP.String())
		if err != nil || !strings.Contains(out, "ESTABLISHED") {
			t.Errorf("node %s: no established connection to the kubernetes Service translated to the apiserver (%v):\n%s", n.Name, err, out)
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// process is what checkInstalled looks at in /proc.
type process struct {
	pid    int
	uid    int
	capEff uint64
}

// processesInNetns lists the processes running binary (argv[0]) in the
// named network namespace.
func processesInNetns(netns, binary string) ([]process, error) {
	var want, got os.FileInfo
	want, err := os.Stat(filepath.Join("/var/run/netns", netns))
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || strings.SplitN(string(cmdline), "\x00", 2)[0] != binary {
			continue
		}
		if got, err = os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || !os.SameFile(want, got) {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		p := process{pid: pid}
		for line := range strings.SplitSeq(string(status), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			switch fields[0] {
			case "Uid:":
				p.uid, _ = strconv.Atoi(fields[2]) // effective
			case "CapEff:":
				p.capEff, _ = strconv.ParseUint(fields[1], 16, 64)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
