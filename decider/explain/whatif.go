package explain

import (
	"fmt"
	"io"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/source"
)

// withPolicies compiles in with the policies of files added, each replacing
// the policy of the same kind, namespace and name if there is one. It
// prints the warnings of the files and the compile warnings that were not
// in known.
func withPolicies(in engine.Input, files []string, stderr io.Writer, known []string) (*engine.Snapshot, error) {
	add, warnings, err := source.LoadFiles(files...)
	if err != nil {
		return nil, fmt.Errorf("--with: %w", err)
	}
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if len(add.Pods) > 0 || len(add.Nodes) > 0 {
		fmt.Fprintln(stderr, "warning: --with: pods and nodes are ignored; only policies are added or replaced")
	}
	in.NetworkPolicies = merge(in.NetworkPolicies, add.NetworkPolicies)
	in.AdminNetworkPolicies = merge(in.AdminNetworkPolicies, add.AdminNetworkPolicies)
	in.BaselineAdminNetworkPolicies = merge(in.BaselineAdminNetworkPolicies, add.BaselineAdminNetworkPolicies)
	in.ClusterNetworkPolicies = merge(in.ClusterNetworkPolicies, add.ClusterNetworkPolicies)
	snap := engine.Compile(in)
	for _, w := range snap.Warnings() {
		if !slices.Contains(known, w) {
			fmt.Fprintf(stderr, "warning: with %v: %s\n", files, w)
		}
	}
	return snap, nil
}

// merge returns base with each object of add replacing the one of the same
// namespace and name, or appended.
func merge[T metav1.Object](base, add []T) []T {
	out := slices.Clone(base)
	for _, a := range add {
		i := slices.IndexFunc(out, func(b T) bool { return b.GetNamespace() == a.GetNamespace() && b.GetName() == a.GetName() })
		if i >= 0 {
			out[i] = a
		} else {
			out = append(out, a)
		}
	}
	return out
}

// whatIf compares the verdicts of tuples before and after.
func whatIf(before, after *engine.Snapshot, tuples []engine.Tuple, files []string) *WhatIf {
	w := &WhatIf{Files: files, Checked: len(tuples), Changes: []Change{}}
	for _, t := range tuples {
		if before.Decide(t).Allowed == after.Decide(t).Allowed {
			continue
		}
		w.Changes = append(w.Changes, Change{Connection: connection(before, t), Before: result(before.Trace(t)), After: result(after.Trace(t))})
	}
	return w
}
