// Package e2enode runs Tollgate as a user installs it, on the local
// two-node cluster of `make cluster-up` (kubelets, containerd, kube-proxy):
// each install flavour applied with kubectl from deploy/, the DaemonSet from
// the images built from the Dockerfile, and the test/conformance pod model
// (x, y, z × a, b, c) on real pods of a small server image, probed from
// inside the pods with kubectl exec, same-node and cross-node and through a
// ClusterIP Service. `make e2e-node` brings the cluster up, builds and loads
// the images, runs this package and tears the cluster down.
package e2enode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testenv"
	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/localcluster"
)

// Environment set by `make e2e-node-run`.
const (
	envClusterDir   = "TOLLGATE_CLUSTER_DIR"
	envDeciderImage = "TOLLGATE_DECIDER_IMAGE"
	envQueuerImage  = "TOLLGATE_QUEUER_IMAGE"
	envServerImage  = "TOLLGATE_E2E_SERVER_IMAGE"
)

// env is the cluster and the test pods shared by every test.
type env struct {
	dir     string
	cluster *cluster.Cluster
	images  images
	pods    map[string]*testPod // by "ns/name"
}

// images are the images the suite runs.
type images struct{ decider, queuer, server string }

var sys *env

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	skip := func(why string) int { return testenv.SkipMain("e2enode: %s", why) }
	if os.Geteuid() != 0 {
		return skip("needs root")
	}
	dir := os.Getenv(envClusterDir)
	if dir == "" {
		return skip(envClusterDir + " is not set: run through `make e2e-node`")
	}
	kubeconfig := localcluster.AdminKubeconfig(dir)
	if _, err := os.Stat(filepath.Join(dir, "ready")); err != nil {
		return skip("no cluster up in " + dir + " (make cluster-up)")
	}
	e := &env{dir: dir, pods: map[string]*testPod{}, images: images{
		decider: os.Getenv(envDeciderImage), queuer: os.Getenv(envQueuerImage), server: os.Getenv(envServerImage),
	}}
	if e.images.decider == "" || e.images.queuer == "" || e.images.server == "" {
		return skip("image names not set: run through `make e2e-node`")
	}
	var err error
	if e.cluster, err = cluster.Connect(kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}
	defer e.cluster.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := e.createPods(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		fmt.Fprintln(os.Stderr, e.describePods())
		e.deletePods()
		return 1
	}
	fmt.Printf("setup: %d test pods running on %d nodes in %v\n", len(e.pods), len(e.nodes()), time.Since(start).Round(time.Millisecond))
	sys = e
	code := m.Run()
	if err := e.deletePods(); err != nil {
		fmt.Fprintln(os.Stderr, "teardown:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// nodes lists the nodes the test pods run on.
func (e *env) nodes() []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range e.pods {
		if !seen[p.node] {
			seen[p.node] = true
			out = append(out, p.node)
		}
	}
	return out
}

// waitFor polls cond every interval until it returns true or limit passes.
func waitFor(ctx context.Context, limit, interval time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			return errors.Join(fmt.Errorf("timed out after %v", limit), last)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}
