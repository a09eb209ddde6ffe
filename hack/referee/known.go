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

// Explanation accounts for failures that are not Tollgate's: a case of a
// suite that fails on this machine for a reason shown with evidence. A case
// is explained only when it fails with a failure text that matches Failure,
// so a case that fails for another reason stays a failure.
type Explanation struct {
	// ID names the explanation in docs/conformance.md.
	ID string
	// Suites and Case select the cases (Case matches the case name).
	Suites []string
	Case   *regexp.Regexp
	// Failure must match the case's failure text.
	Failure *regexp.Regexp
	// Why is the explanation, in Markdown.
	Why string
	// evidence gathers the evidence on the cluster, when a case needed it.
	evidence func(ctx context.Context, r *Run) (string, error)
}

// sctpWhy is the explanation of every SCTP failure.
const sctpWhy = "This machine's kernel has no SCTP sockets (CONFIG_IP_SCTP is unset; " +
	"there are no modules to load). agnhost's SCTP server (`agnhost porter` with " +
	"`SERVE_SCTP_PORT_<port>`) and its SCTP client (`agnhost connect --protocol=sctp`) " +
	"both open kernel SCTP sockets, which fail with \"protocol not supported\", so no " +
	"SCTP connection can be made on this machine whatever the policies say. Tollgate's " +
	"own SCTP verdicts are tested with raw-socket SCTP packets (test/netsim)."

// Explanations are the failures this machine causes.
var Explanations = []Explanation{
	{
		ID:      "sctp",
		Suites:  []string{"netpol"},
		Case:    regexp.MustCompile(`\[Feature:SCTPConnectivity\]`),
		Failure: regexp.MustCompile(`(?s)pod.*(not running|timed out|Terminated|CrashLoopBackOff|Error)|(?i)protocol not supported`),
		Why: sctpWhy + " The SCTP Netpol cases run a server pod whose `agnhost porter` " +
			"exits at once, so their pods never run.",
		evidence: sctpEvidence,
	},
	{
		ID:      "sctp",
		Suites:  []string{"cnp", "anp"},
		Case:    regexp.MustCompile(`SCTP$`),
		Failure: regexp.MustCompile(`protocol not supported`),
		Why: sctpWhy + " In the network-policy-api suites the SCTP servers are taken out of " +
			"the base manifests (otherwise no pod of the suite turns Ready and no test runs, " +
			"see above); the SCTP tests then fail in the client, whose socket call fails.",
		evidence: sctpEvidence,
	},
}

// explain returns the explanation of case c of suite key, if it failed for
// an explained reason.
func explain(key string, c Case) *Explanation {
	if c.State != Failed {
		return nil
	}
	for i := range Explanations {
		e := &Explanations[i]
		if slices.Contains(e.Suites, key) && e.Case.MatchString(c.Name) && e.Failure.MatchString(c.Failure) {
			return e
		}
	}
	return nil
}

// stale reports whether an explanation expected case c of suite key to
// fail and it did not: then the explanation no longer holds and must be
// looked at again.
func stale(key string, c Case) bool {
	if c.State != Passed {
		return false
	}
	for _, e := range Explanations {
		if slices.Contains(e.Suites, key) && e.Case.MatchString(c.Name) {
			return true
		}
	}
	return false
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
