// Package policymodel is the upstream e2e pod model that the end-to-end
// suites share: namespaces x, y and z, each with pods a, b and c, probed
// pairwise on a few (protocol, port, family) targets, and the observed
// reachability compared with an expected truth table. It also builds the
// policy manifests the cases apply. The suites differ only in how pods exist
// (network namespaces in test/conformance, kubelet pods in test/e2enode) and
// how probes are sent.
package policymodel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tollgate/tollgate/test/netsim"
)

// Namespaces and PodNames of the model: pod "x/a" is in namespace x (label
// ns=x) and is labelled pod=a.
var (
	Namespaces = []string{"x", "y", "z"}
	PodNames   = []string{"a", "b", "c"}
)

// PodKeys lists every pod as "namespace/name", in table order.
func PodKeys() []string {
	var out []string
	for _, ns := range Namespaces {
		for _, p := range PodNames {
			out = append(out, ns+"/"+p)
		}
	}
	return out
}

// NS is the namespace of a pod key.
func NS(pod string) string { ns, _, _ := strings.Cut(pod, "/"); return ns }

// Name is the name of a pod key.
func Name(pod string) string { _, name, _ := strings.Cut(pod, "/"); return name }

// Target is one (protocol, port, family) probed between every pod pair.
type Target struct {
	Proto netsim.Proto
	Port  uint16
	V6    bool
}

// String is e.g. "tcp/80/v4".
func (t Target) String() string {
	fam := "v4"
	if t.V6 {
		fam = "v6"
	}
	return fmt.Sprintf("%s/%d/%s", t.Proto, t.Port, fam)
}

// Common targets.
var (
	TCP80   = Target{netsim.TCP, 80, false}
	TCP81   = Target{netsim.TCP, 81, false}
	UDP80   = Target{netsim.UDP, 80, false}
	SCTP80  = Target{netsim.SCTP, 80, false}
	TCP80v6 = Target{netsim.TCP, 80, true}
)

// Cell is one probe of a truth table.
type Cell struct {
	From, To string
	T        Target
}

// Expectation says whether from may reach to on t. A pod reaching its own
// IP is always allowed and is not asked.
type Expectation func(from, to string, t Target) bool

// AllowAll expects every probe to pass.
func AllowAll(string, string, Target) bool { return true }

// Want is the expected outcome of a cell.
func Want(c Cell, expect Expectation) bool { return c.From == c.To || expect(c.From, c.To, c.T) }

// Table renders expected/observed reachability on t, rows from and columns
// to: '.' allowed, 'X' denied, '!' where they differ.
func Table(observed map[Cell]bool, expect Expectation, t Target) string {
	mark := func(b bool) string {
		if b {
			return "."
		}
		return "X"
	}
	var b strings.Builder
	b.WriteString("      ")
	for _, to := range PodKeys() {
		fmt.Fprintf(&b, " %-5s", to)
	}
	b.WriteString("\n")
	for _, from := range PodKeys() {
		fmt.Fprintf(&b, "%-6s", from)
		for _, to := range PodKeys() {
			c := Cell{from, to, t}
			want, got := Want(c, expect), observed[c]
			s := mark(want) + "/" + mark(got)
			if want != got {
				s += "!"
			}
			fmt.Fprintf(&b, " %-5s", s)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// NP is a NetworkPolicy manifest (a YAML document ending in "---").
func NP(namespace, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %s, namespace: %q}\nspec:\n%s\n---\n", name, namespace, Indent(spec))
}

// ANP is an AdminNetworkPolicy manifest.
func ANP(name, spec string) string {
	return fmt.Sprintf("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: %s}\nspec:\n%s\n---\n", name, Indent(spec))
}

// BANP is the BaselineAdminNetworkPolicy manifest (always named default).
func BANP(spec string) string {
	return fmt.Sprintf("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n%s\n---\n", Indent(spec))
}

// CNP is a ClusterNetworkPolicy manifest.
func CNP(name, spec string) string {
	return fmt.Sprintf("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: %s}\nspec:\n%s\n---\n", name, Indent(spec))
}

// Indent indents every line of s by two spaces.
func Indent(s string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n")
}

// Kubectl runs kubectl with stdin; test/cluster's Cluster is one.
type Kubectl interface {
	KubectlWithInput(input string, args ...string) (string, error)
}

// Change applies the manifests apply (kubectl apply) or deletes the
// manifests remove (kubectl delete --wait), whichever is set.
func Change(k Kubectl, apply, remove string) error {
	switch {
	case apply != "":
		if out, err := k.KubectlWithInput(apply, "apply", "-f", "-"); err != nil {
			return fmt.Errorf("kubectl apply: %w\n%s", err, out)
		}
	case remove != "":
		if out, err := k.KubectlWithInput(remove, "delete", "--wait", "-f", "-"); err != nil {
			return fmt.Errorf("kubectl delete: %w\n%s", err, out)
		}
	}
	return nil
}

// Undo deletes what a case applied, last first; objects already gone are
// fine.
func Undo(k Kubectl, applied []string) error {
	var errs []error
	for i := len(applied) - 1; i >= 0; i-- {
		if out, err := k.KubectlWithInput(applied[i], "delete", "--ignore-not-found", "-f", "-"); err != nil {
			errs = append(errs, fmt.Errorf("kubectl delete: %w\n%s", err, out))
		}
	}
	return errors.Join(errs...)
}
