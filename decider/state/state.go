// Package state publishes the decider's compiled snapshots.
//
// Sources (informers, manifest files) say that something changed; State
// coalesces bursts of changes, compiles one new snapshot from the source's
// current objects, numbers it with the next generation and swaps it in
// atomically. Readers never lock: Current is one atomic load.
package state

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate/tollgate/decider/engine"
)

// View is one published snapshot and its generation.
type View struct {
	// Generation starts at 1 for the first published snapshot and grows by
	// one with every publication.
	Generation uint64
	Snapshot   *engine.Snapshot
	// CompileTime is how long engine.Compile took for this snapshot.
	CompileTime time.Duration
}

// State holds the current View and wakes watchers when it changes.
type State struct {
	cur     atomic.Pointer[View]
	kick    chan struct{}
	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every publication
}

// New returns a State with nothing published yet.
func New() *State {
	return &State{kick: make(chan struct{}, 1), changed: make(chan struct{})}
}

// Current returns the latest View, or nil before the first publication.
func (s *State) Current() *View { return s.cur.Load() }

// Changed returns a channel that is closed at the next publication.
func (s *State) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Publish compiles in and makes it the current View.
func (s *State) Publish(in engine.Input) *View {
	start := time.Now()
	snap := engine.Compile(in)
	took := time.Since(start)
	s.mu.Lock()
	defer s.mu.Unlock()
	var gen uint64 = 1
	if old := s.cur.Load(); old != nil {
		gen = old.Generation + 1
	}
	v := &View{Generation: gen, Snapshot: snap, CompileTime: took}
	s.cur.Store(v)
	close(s.changed)
	s.changed = make(chan struct{})
	return v
}

// Trigger asks Run for a rebuild. It never blocks; triggers that arrive
// while a rebuild is pending merge into it.
func (s *State) Trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run rebuilds after triggers until ctx ends. After a trigger it waits
// settle for more changes (so a burst of informer events costs one compile),
// then calls input and publishes. ready gates the first build: Run does not
// publish until ready returns true (for example until informers synced).
// onPublish, if not nil, is called after each publication.
func (s *State) Run(ctx context.Context, settle time.Duration, ready func() bool, input func() engine.Input, onPublish func(*View)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		if settle > 0 {
			t := time.NewTimer(settle)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if ready != nil && !ready() {
			continue // the source triggers again when it syncs
		}
		v := s.Publish(input())
		if onPublish != nil {
			onPublish(v)
		}
	}
}
