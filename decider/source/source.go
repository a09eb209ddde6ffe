// Package source provides the decider's objects: pods, namespaces, nodes and
// policies, either watched from a Kubernetes API server (Kube) or read from
// manifest files in a directory (Manifests).
//
// Both sources call a changed callback whenever their objects change; the
// caller (state.State.Trigger) coalesces the calls and later asks Input for
// the current objects. The objects a source returns are shared with the
// source and must not be modified.
package source

import (
	"context"
	"fmt"

	"github.com/tollgate/tollgate/decider/engine"
)

// Source is where the decider's objects come from.
type Source interface {
	// Run watches until ctx ends, calling changed after every change (and
	// once after the initial sync). It returns an error only for
	// unrecoverable start-up failures.
	Run(ctx context.Context, changed func()) error
	// HasSynced reports whether the initial load completed.
	HasSynced() bool
	// Input returns the current objects (a consistent copy; safe to call
	// from another goroutine).
	Input() engine.Input
}

// Warning is a problem in a manifest that did not stop the load: the
// offending document or object was skipped or read leniently.
type Warning struct {
	// File is the path of the file.
	File string
	// Doc is the 1-based index of the document in the file (YAML documents
	// separated by ---, or JSON values), 0 when the warning is about the
	// whole file.
	Doc int
	// Message says what is wrong.
	Message string
}

// String formats the warning as "file (document N): message".
func (w Warning) String() string {
	if w.Doc == 0 {
		return fmt.Sprintf("%s: %s", w.File, w.Message)
	}
	return fmt.Sprintf("%s (document %d): %s", w.File, w.Doc, w.Message)
}
