package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Explanation accounts for cases that cannot pass on this machine for a
// reason that is not Tollgate's, shown with evidence. It applies only while
// Holds. A failed case is explained only when its failure text matches
// Failure, so a case that fails for another reason stays a failure; a
// skipped case only when the explanation says the runner skips it.
type Explanation struct {
	// ID names the explanation in docs/conformance.md.
	ID string
	// Suites and Case select the cases (Case matches the case name).
	Suites []string
	Case   *regexp.Regexp
	// Failure must match a failed case's failure text.
	Failure *regexp.Regexp
	// Skip has the runner skip the cases instead of running them: they
	// cannot pass here and take long to fail.
	Skip bool
	// NoSCTP explains cases that passed with their SCTP probes not made.
	NoSCTP bool
	// Holds reports whether the reason holds on this machine.
	Holds func() bool
	// Why is the explanation, in Markdown.
	Why string
	// evidence gathers the evidence on the cluster, when a case needed it.
	evidence func(ctx context.Context, r *Run) (string, error)
}

// noSCTP holds where the kernel opens no SCTP sockets.
func noSCTP() bool { return !kernelHasSCTP() }

// sctpWhy is the explanation of every SCTP case.
const sctpWhy = "This machine's kernel has no SCTP sockets (CONFIG_IP_SCTP is unset and " +
	"there are no modules to load). agnhost's SCTP server (`agnhost porter` with " +
	"`SERVE_SCTP_PORT_<port>`) and its SCTP client (`agnhost connect --protocol=sctp`) " +
	"both open kernel SCTP sockets, which fail with \"protocol not supported\" (see the " +
	"evidence), so no SCTP connection can be made here whatever the policies say. " +
	"Tollgate's own SCTP verdicts are tested with raw-socket SCTP packets (test/netsim). " +
	"On a kernel with SCTP these explanations do not apply and the cases run as released."

// Explanations are the cases this machine cannot pass.
var Explanations = []Explanation{
	{
		ID:     "sctp",
		Suites: []string{"netpol"},
		Case:   regexp.MustCompile(`\[Feature:SCTPConnectivity\]`),
		Skip:   true,
		Holds:  noSCTP,
		Why: "The three Netpol SCTP specs are skipped (`--skip`): their server pods run " +
			"`agnhost porter`, whose container exits at once and restarts for ever, and the " +
			"spec then probes every pair of pods over SCTP, 10 tries of 81 probes of 10 seconds " +
			"each, before it fails: about 45 minutes a spec for a failure known in advance.",
		evidence: sctpEvidence,
	},
	{
		ID:     "sctp",
		Suites: []string{"cnp", "anp"},
		Case:   regexp.MustCompile(`.`),
		NoSCTP: true,
		Holds:  noSCTP,
		Why: "In the network-policy-api suites the SCTP probes are not made (see how the " +
			"suites are run here): each logs that it was not run, every TCP and UDP probe of " +
			"the case runs as released, and the case counts as \"passed, SCTP probes not " +
			"run\", not as passed. The tests named …SCTP probe over SCTP only, so they verify " +
			"nothing here.",
		evidence: sctpEvidence,
	},
}

// explain returns the explanation of case c of suite key, if it failed or
// was skipped for an explained reason.
func explain(key string, c Case) *Explanation {
	for i := range Explanations {
		e := &Explanations[i]
		if !slices.Contains(e.Suites, key) || !e.Case.MatchString(c.Name) || !e.Holds() {
			continue
		}
		switch {
		case c.State == Failed && e.Failure != nil && e.Failure.MatchString(c.Failure):
			return e
		case c.State == Skipped && e.Skip:
			return e
		case c.State == NoSCTP && e.NoSCTP:
			return e
		}
	}
	return nil
}

// stale reports whether an explanation that holds expected case c of suite
// key not to pass, and it passed: the explanation must be looked at again.
func stale(key string, c Case) bool {
	if c.State != Passed {
		return false
	}
	for _, e := range Explanations {
		// An explanation of skipped probes says nothing of a case that
		// made all of its probes.
		if e.NoSCTP {
			continue
		}
		if slices.Contains(e.Suites, key) && e.Case.MatchString(c.Name) && e.Holds() {
			return true
		}
	}
	return false
}

// skips are the Ginkgo --skip patterns of suite key: the cases of the
// explanations that hold and skip.
func skips(key string) []string {
	var out []string
	for _, e := range Explanations {
		if e.Skip && slices.Contains(e.Suites, key) && e.Holds() {
			out = append(out, e.Case.String())
		}
	}
	return out
}

// agnhostImage is the agnhost image Kubernetes' e2e tests of KubeVersion
// ask for (test/utils/image/manifest.go).
const agnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.59"

// sctpEvidenceNamespace holds the evidence pod.
const sctpEvidenceNamespace = "referee-sctp-evidence"

// sctpEvidencePod runs agnhost's SCTP server and, beside it, its SCTP
// client towards it; neither is restarted.
var sctpEvidencePod = fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: Pod
metadata:
  name: sctp
  namespace: %[1]s
spec:
  restartPolicy: Never
  containers:
  - name: server
    image: %[2]s
    command: ["/agnhost", "porter"]
    env:
    - name: SERVE_SCTP_PORT_9003
      value: foo
  - name: client
    image: %[2]s
    command: ["/agnhost", "connect", "--protocol=sctp", "--timeout=5s", "127.0.0.1:9003"]
`, sctpEvidenceNamespace, agnhostImage)

// sctpEvidence shows the kernel's answer to an SCTP socket here, and what
// agnhost's SCTP server and client say in a pod of the cluster.
func sctpEvidence(ctx context.Context, r *Run) (string, error) {
	var b strings.Builder
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		fmt.Fprintf(&b, "kernel: %s\n", unix.ByteSliceToString(uts.Release[:]))
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err == nil {
		unix.Close(fd)
		fmt.Fprintf(&b, "socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): ok\n")
	} else {
		fmt.Fprintf(&b, "socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): %v\n", err)
	}
	if protocols, err := os.ReadFile("/proc/net/protocols"); err == nil {
		fmt.Fprintf(&b, "SCTP in /proc/net/protocols: %v\n", regexp.MustCompile(`(?m)^SCTP`).Match(protocols))
	}

	if out, err := r.cluster.KubectlWithInput(sctpEvidencePod, "apply", "-f", "-"); err != nil {
		return b.String(), fmt.Errorf("%v: %s", err, out)
	}
	defer func() {
		_, _ = r.cluster.Kubectl("delete", "namespace", sctpEvidenceNamespace, "--wait", "--timeout=2m")
	}()
	phase := ""
	for deadline := time.Now().Add(3 * time.Minute); phase != "Failed" && phase != "Succeeded"; {
		if time.Now().After(deadline) {
			return b.String(), errors.New("the SCTP evidence pod did not finish in 3 minutes (phase " + phase + ")")
		}
		select {
		case <-ctx.Done():
			return b.String(), ctx.Err()
		case <-time.After(2 * time.Second):
		}
		out, _ := r.cluster.Kubectl("-n", sctpEvidenceNamespace, "get", "pod", "sctp", "-o", "jsonpath={.status.phase}")
		phase = strings.TrimSpace(out)
	}
	for _, c := range []string{"server", "client"} {
		code, _ := r.cluster.Kubectl("-n", sctpEvidenceNamespace, "get", "pod", "sctp", "-o",
			fmt.Sprintf(`jsonpath={.status.containerStatuses[?(@.name=="%s")].state.terminated.exitCode}`, c))
		logs, err := r.cluster.Kubectl("-n", sctpEvidenceNamespace, "logs", "sctp", "-c", c)
		if err != nil {
			logs = err.Error()
		}
		fmt.Fprintf(&b, "\n$ kubectl logs sctp -c %s   # exit code %s\n%s", c, strings.TrimSpace(code), strings.TrimRight(logs, "\n")+"\n")
	}
	return b.String(), nil
}
