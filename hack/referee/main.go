// Command referee runs the upstream test suites that referee Tollgate on
// the local cluster of `make cluster-up` (see docs/conformance.md):
// Kubernetes' "[sig-network] Netpol" e2e specs and network-policy-api's
// conformance suites, each against the install flavour it needs, and
// writes what they found.
//
//	referee run [flags]           run the suites (make conformance-upstream)
//	referee strip-sctp IN OUT     used by hack/referee/build.sh
//	referee skip-sctp-probes FILE used by hack/referee/build.sh
//	referee kernel-sctp           yes or no: does this kernel open SCTP sockets
//
// The suites' binaries come from hack/referee/build.sh; the images they run
// from hack/referee/images.sh.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/test/cluster"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: referee run [flags] | strip-sctp IN OUT | skip-sctp-probes FILE | kernel-sctp")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCommand(os.Args[2:])
	case "strip-sctp":
		err = stripSCTPCommand(os.Args[2:])
	case "skip-sctp-probes":
		err = skipSCTPProbesCommand(os.Args[2:])
	case "kernel-sctp":
		fmt.Println(map[bool]string{true: "yes", false: "no"}[kernelHasSCTP()])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "referee:", err)
		os.Exit(1)
	}
}

func runCommand(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "admin kubeconfig of the cluster")
	binDir := fs.String("bin", "", "directory of the suites' binaries (hack/referee/build.sh)")
	outDir := fs.String("out", "", "directory for the logs and raw results of this run")
	reportDir := fs.String("reports", "", "directory for the network-policy-api reports (default: -out)")
	doc := fs.String("doc", "", "write the Markdown report here (docs/conformance.md)")
	suites := fs.String("suites", "netpol,cnp,anp", "suites to run, comma-separated")
	short := fs.Bool("short", false, "run each suite's few short cases only (make test)")
	procs := fs.Int("netpol-procs", 2, "Ginkgo processes for the Netpol suite")
	version := fs.String("version", "dev", "Tollgate version under test")
	command := fs.String("command", "make conformance-upstream", "the command that runs this, for the report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeconfig == "" || *binDir == "" || *outDir == "" {
		return errors.New("run: -kubeconfig, -bin and -out are required")
	}
	if *reportDir == "" {
		*reportDir = *outDir
	}
	var selected []*Suite
	for _, key := range strings.Split(*suites, ",") {
		s, err := suiteByKey(strings.TrimSpace(key))
		if err != nil {
			return err
		}
		selected = append(selected, s)
	}
	for _, s := range selected {
		if _, err := os.Stat(filepath.Join(*binDir, s.Binary)); err != nil {
			return fmt.Errorf("suite %s: %w (run hack/referee/build.sh)", s.Key, err)
		}
	}
	for _, dir := range []string{*outDir, *reportDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	c, err := cluster.Connect(*kubeconfig)
	if err != nil {
		return err
	}
	defer c.Stop()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := &Run{
		Kubeconfig: *kubeconfig, BinDir: *binDir, OutDir: *outDir, ReportDir: *reportDir,
		Short: *short, NetpolProcs: *procs, TollgateVersion: *version, cluster: c,
	}
	rep := &Report{Date: time.Now(), TollgateVersion: *version, Command: *command, Evidence: map[string]string{}}
	rep.Environment = r.environment(ctx)
	start := time.Now()
	for _, s := range selected {
		if ctx.Err() != nil {
			break
		}
		rep.Suites = append(rep.Suites, r.runSuite(ctx, s))
	}
	rep.Wall = time.Since(start)
	r.gatherEvidence(ctx, rep)

	if *doc != "" {
		if err := os.WriteFile(*doc, []byte(rep.Markdown()), 0o644); err != nil {
			return err
		}
		logf("wrote %s", *doc)
	}
	v := judge(rep.Suites)
	for _, s := range rep.Suites {
		t := tallyOf(s)
		logf("%-6s %3d cases: %d passed, %d passed without SCTP probes (%d explained), %d failed (%d explained), %d skipped (%d explained), %d not run, %v",
			s.Suite.Key, len(s.Cases), t.Passed, t.NoSCTP, t.ExplainedNoSCTP, t.Failed, t.ExplainedFailed, t.Skipped, t.ExplainedSkipped, t.NotRun, s.Wall.Round(time.Second))
	}
	if !v.OK() {
		for _, u := range v.Unexplained {
			logf("NOT EXPLAINED %s", u)
		}
		for _, s := range v.Stale {
			logf("STALE EXPLANATION (the case passed) %s", s)
		}
		return fmt.Errorf("%d unexplained failures, %d stale explanations (logs in %s)", len(v.Unexplained), len(v.Stale), *outDir)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	logf("every case that did not pass is explained; %v", rep.Wall.Round(time.Second))
	return nil
}

// gatherEvidence runs the evidence of every explanation a case needed,
// once per explanation ID.
func (r *Run) gatherEvidence(ctx context.Context, rep *Report) {
	for _, s := range rep.Suites {
		for _, c := range s.Cases {
			e := explain(s.Suite.Key, c)
			if e == nil || e.evidence == nil {
				continue
			}
			if _, done := rep.Evidence[e.ID]; done {
				continue
			}
			logf("gathering the evidence of %s", e.ID)
			ev, err := e.evidence(ctx, r)
			if err != nil {
				ev += "\ngathering the evidence failed: " + err.Error()
			}
			rep.Evidence[e.ID] = ev
		}
	}
}

// environment describes the cluster and the images under test.
func (r *Run) environment(ctx context.Context) []string {
	var env []string
	nodes, err := r.cluster.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return []string{"nodes: " + err.Error()}
	}
	var names []string
	for _, n := range nodes.Items {
		i := n.Status.NodeInfo
		names = append(names, fmt.Sprintf("%s (kubelet %s, %s, kernel %s, %s)",
			n.Name, i.KubeletVersion, i.ContainerRuntimeVersion, i.KernelVersion, i.OSImage))
	}
	sort.Strings(names)
	env = append(env, "nodes: "+strings.Join(names, "; "))
	if v, err := r.cluster.Client().Discovery().ServerVersion(); err == nil {
		env = append(env, "apiserver: "+v.GitVersion)
	}
	if objs, err := deploy.Objects(deploy.NetworkPolicy); err == nil {
		for _, o := range objs {
			if ds, ok := o.(*appsv1.DaemonSet); ok {
				var images []string
				for _, c := range ds.Spec.Template.Spec.Containers {
					images = append(images, c.Image)
				}
				env = append(env, "Tollgate images (built from the Dockerfile with buildah): "+strings.Join(images, ", "))
			}
		}
	}
	env = append(env, fmt.Sprintf("Netpol runs in %d Ginkgo processes", r.NetpolProcs))
	return env
}
