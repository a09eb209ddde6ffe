package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/test/cluster"
)

// Run is one run of some suites against the cluster.
type Run struct {
	// Kubeconfig is the cluster's admin kubeconfig.
	Kubeconfig string
	// BinDir holds the suites' binaries (hack/referee/build.sh).
	BinDir string
	// OutDir receives the logs and raw results of the run.
	OutDir string
	// ReportDir receives the network-policy-api reports (--report-output).
	ReportDir string
	// Short runs each suite's Short cases only.
	Short bool
	// NetpolProcs is the number of Ginkgo processes for the Netpol suite.
	NetpolProcs int
	// TollgateVersion is the version of the images under test.
	TollgateVersion string

	cluster *cluster.Cluster
	current *Suite
}

// SuiteResult is what one suite did.
type SuiteResult struct {
	Suite *Suite
	// Command is the command line that ran it, as a shell would take it.
	Command string
	// Wall is the wall time of the suite's command (install not included).
	Wall time.Duration
	// Cases are the suite's cases; Error a failure of the suite as a
	// whole (install, setup, a crash), when there was one.
	Cases []Case
	Error string
	// Report is the suite's report file, if it writes one.
	Report string
}

// outPath is a file of the run's output directory.
func (r *Run) outPath(name string) string { return filepath.Join(r.OutDir, name) }

// logPath is the log of suite s.
func (r *Run) logPath(s *Suite) string { return r.outPath(s.Key + ".log") }

// reportPath is where network-policy-api suite s writes its report.
func (r *Run) reportPath(s *Suite) string {
	return filepath.Join(r.ReportDir, fmt.Sprintf("network-policy-api-%s.yaml", s.Key))
}

// runSuite installs s's flavour, runs s and removes the flavour again.
func (r *Run) runSuite(ctx context.Context, s *Suite) *SuiteResult {
	r.current = s
	res := &SuiteResult{Suite: s}
	argv := s.command(r, s)
	res.Command = shellJoin(argv)
	if strings.HasPrefix(s.Binary, "npapi-") {
		res.Command = "KUBECONFIG=" + r.Kubeconfig + " " + res.Command
		res.Report = r.reportPath(s)
	}
	if err := r.waitNamespacesGone(ctx, conformanceNamespaces, 5*time.Minute); err != nil {
		res.Error = err.Error()
		return res
	}
	uninstall, err := r.install(ctx, s)
	defer func() {
		if err := uninstall(); err != nil {
			res.Error = joinLines(res.Error, "uninstall: "+err.Error())
		}
	}()
	if err != nil {
		res.Error = "install: " + err.Error()
		return res
	}
	logf("%s: %s", s.Key, res.Command)
	start := time.Now()
	runErr := r.exec(ctx, s, argv)
	res.Wall = time.Since(start)
	cases, setupFailure, err := s.parse(r)
	if r.Short && err == nil {
		var missing []string
		cases, missing = shortCases(cases, s.Short)
		if len(missing) > 0 {
			res.Error = joinLines(res.Error, "short cases that did not run: "+strings.Join(missing, "; "))
		}
	}
	res.Cases = cases
	switch {
	case err != nil:
		res.Error = joinLines(fmt.Sprintf("reading the results: %v", err), exitText(runErr))
	case setupFailure != "":
		res.Error = "the suite failed outside its test cases:\n" + setupFailure
	case len(cases) == 0:
		res.Error = "no test case ran. " + exitText(runErr)
	case runErr != nil && count(cases).Failed == 0:
		res.Error = "the suite failed with no failed case: " + exitText(runErr)
	}
	n := count(cases)
	logf("%s: %d passed, %d passed without SCTP probes, %d failed, %d skipped, %d not run in %v (log: %s)",
		s.Key, n.Passed, n.NoSCTP, n.Failed, n.Skipped, n.NotRun, res.Wall.Round(time.Second), r.logPath(s))
	return res
}

// shortCases keeps the cases a short run asked for (a case whose name
// holds one of short): the suites report every other case as skipped by
// the focus, which says nothing. It also returns the short cases that no
// case matched.
func shortCases(cases []Case, short []string) (kept []Case, missing []string) {
	for _, want := range short {
		found := false
		for _, c := range cases {
			if strings.Contains(c.Name, want) {
				found = true
				kept = append(kept, c)
			}
		}
		if !found {
			missing = append(missing, want)
		}
	}
	return kept, missing
}

// conformanceNamespaces is the prefix of the namespaces both
// network-policy-api suites create and delete when they end; one suite
// cannot start while the last one's are still terminating.
const conformanceNamespaces = "network-policy-conformance-"

// waitNamespacesGone waits until no namespace's name starts with prefix.
func (r *Run) waitNamespacesGone(ctx context.Context, prefix string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		out, err := r.cluster.Kubectl("get", "namespaces", "-o", "name")
		if err != nil {
			return fmt.Errorf("list namespaces: %v: %s", err, out)
		}
		var left []string
		for _, line := range strings.Fields(out) {
			if name := strings.TrimPrefix(line, "namespace/"); strings.HasPrefix(name, prefix) {
				left = append(left, name)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespaces of an earlier suite still there after %v: %s", limit, strings.Join(left, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// exec runs argv with its output in the suite's log, and shows the lines
// that say how the cases go as they go.
func (r *Run) exec(ctx context.Context, s *Suite, argv []string) error {
	log, err := os.Create(r.logPath(s))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+r.Kubeconfig)
	// The suites' own cleanups need time when they are stopped.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	done := make(chan struct{})
	go func() {
		defer close(done)
		progress(io.TeeReader(pr, log), s.Key)
	}()
	err = cmd.Run()
	pw.Close()
	<-done
	return err
}

// progressLine picks the lines of a suite's output worth showing live.
var progressLine = regexp.MustCompile(`^(•|\[FAIL\]|Ran \d+ of|--- (PASS|FAIL|SKIP): \S+/\S+ |Test Suite|FAIL|ok )|"Action":"(pass|fail|skip)".*"Test":"[^"/]+/[^"/]+"`)

// progress copies the interesting lines of r to the standard output.
func progress(r io.Reader, key string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if progressLine.MatchString(line) {
			if len(line) > 240 {
				line = line[:240] + "…"
			}
			fmt.Printf("  %s| %s\n", key, line)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// install installs suite s's flavour as deploy/README.md says: its CRDs,
// then the rendered manifest with kubectl, then a rollout. The returned
// function removes all of it.
func (r *Run) install(ctx context.Context, s *Suite) (func() error, error) {
	file, err := s.Flavour.File()
	if err != nil {
		return func() error { return nil }, err
	}
	manifest, err := deploy.Manifest(s.Flavour)
	if err != nil {
		return func() error { return nil }, err
	}
	uninstall := func() error {
		var errs []string
		if out, err := r.cluster.KubectlWithInput(string(manifest), "delete", "--ignore-not-found", "--wait", "--timeout=3m", "-f", "-"); err != nil {
			errs = append(errs, fmt.Sprintf("%v: %s", err, out))
		}
		for _, set := range s.CRDs {
			if err := r.cluster.RemoveCRDs(ctx, set); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	}
	start := time.Now()
	for _, set := range s.CRDs {
		if err := r.cluster.InstallCRDs(ctx, set); err != nil {
			return uninstall, err
		}
	}
	if out, err := r.cluster.KubectlWithInput(string(manifest), "apply", "-f", "-"); err != nil {
		return uninstall, fmt.Errorf("%v: %s", err, out)
	}
	if out, err := r.cluster.Kubectl("-n", "kube-system", "rollout", "status", "ds/tollgate", "--timeout=5m"); err != nil {
		pods, _ := r.cluster.Kubectl("-n", "kube-system", "get", "pods", "-o", "wide")
		return uninstall, fmt.Errorf("%v: %s\n%s", err, out, pods)
	}
	logf("%s: deploy/%s installed in %v", s.Key, file, time.Since(start).Round(time.Second))
	return uninstall, nil
}

// shellJoin quotes argv for a POSIX shell.
func shellJoin(argv []string) string {
	safe := regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)
	q := make([]string, len(argv))
	for i, a := range argv {
		if safe.MatchString(a) {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func exitText(err error) string {
	if err == nil {
		return ""
	}
	return "The command failed: " + err.Error()
}

func joinLines(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "\n" + b
}

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	return data, nil
}

func openFile(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	return f, nil
}

func logf(format string, args ...any) {
	fmt.Printf("referee: "+format+"\n", args...)
}
