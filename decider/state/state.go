// Package state publishes the decider's compiled snapshots.
//
// Sources (informers, manifest files) say that something changed; State
// coalesces bursts of changes, compiles one new snapshot from the source's
// current objects, numbers it with the next generation and swaps it in
// atomically. Readers never lock: Current is one atomic load.
package state

import (
	"context"
	"net/netip"
	"slices"
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
	// BuildTime is all the work that made this View: gathering the
	// source's objects (when Run did it), compiling, and working out what
	// changed.
	BuildTime time.Duration
	// Changed lists, sorted, the addresses whose connections this snapshot
	// may judge differently from the previous generation's (see
	// engine.ChangedIPs). It is nil for the first generation, which changes
	// everything.
	Changed []netip.Addr
	// DNS is what the node's pods resolved, for domainNames peers (see
	// engine.Tuple.DNS); nil when nothing was learned.
	DNS engine.Resolved
}

// historySize is how many generations' changes State remembers for
// ChangedBetween; a watcher further behind is told that everything changed.
const historySize = 64

// maxChanged bounds the addresses ChangedBetween returns; beyond it, telling
// a watcher that everything changed is cheaper for both sides.
const maxChanged = 16384

// State holds the current View and wakes watchers when it changes.
type State struct {
	cur      atomic.Pointer[View]
	kick     chan struct{}
	mu       sync.Mutex
	changed  chan struct{}   // closed and replaced at every publication
	publish  sync.Mutex      // serialises Publish
	input    engine.Input    // what the current View was compiled from; under publish
	compiler engine.Compiler // reuses what one input shares with the next; under publish
	dns      engine.Resolved // the DNS view every new View gets; under publish
	history  [historySize]*View
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

// Publish compiles in, works out what changed since the previous View, and
// makes it the current View.
func (s *State) Publish(in engine.Input) *View {
	return s.publishGathered(in, 0)
}

// publishGathered is Publish of an input that took gathered to gather.
func (s *State) publishGathered(in engine.Input, gathered time.Duration) *View {
	s.publish.Lock()
	defer s.publish.Unlock()
	start := time.Now()
	snap := s.compiler.Compile(in)
	took := time.Since(start)
	old := s.cur.Load()
	var changed []netip.Addr
	if old != nil {
		changed = engine.ChangedIPs(s.input, old.Snapshot, in, snap)
	}
	s.input = in
	return s.store(&View{Snapshot: snap, CompileTime: took, BuildTime: gathered + time.Since(start), Changed: changed, DNS: s.dns})
}

// PublishDNS makes dns the DNS view of a new View of the current snapshot,
// numbered with the next generation; changed lists the pods whose answers
// changed. Before the first Publish it only keeps dns for it, and returns
// nil.
func (s *State) PublishDNS(dns engine.Resolved, changed []netip.Addr) *View {
	s.publish.Lock()
	defer s.publish.Unlock()
	s.dns = dns
	old := s.cur.Load()
	if old == nil {
		return nil
	}
	changed = slices.Clone(changed)
	slices.SortFunc(changed, netip.Addr.Compare)
	return s.store(&View{Snapshot: old.Snapshot, CompileTime: old.CompileTime, BuildTime: old.BuildTime, Changed: changed, DNS: dns})
}

// store numbers v with the next generation and makes it current. s.publish
// is held.
func (s *State) store(v *View) *View {
	s.mu.Lock()
	defer s.mu.Unlock()
	v.Generation = 1
	if old := s.cur.Load(); old != nil {
		v.Generation = old.Generation + 1
	}
	s.history[v.Generation%historySize] = v
	s.cur.Store(v)
	close(s.changed)
	s.changed = make(chan struct{})
	return v
}

// ChangedBetween returns, sorted, the addresses whose connections may be
// judged differently at generation to than at generation from (from < to),
// or all=true when State cannot tell: from is 0 (nothing seen yet), too
// old, or the union would be too large to be worth listing.
func (s *State) ChangedBetween(from, to uint64) (ips []netip.Addr, all bool) {
	switch {
	case from == 0 || from > to || to-from >= historySize:
		return nil, true
	case from == to:
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.Addr
	for g := from + 1; g <= to; g++ {
		v := s.history[g%historySize]
		if v == nil || v.Generation != g {
			return nil, true
		}
		out = append(out, v.Changed...)
		if len(out) > 2*maxChanged {
			return nil, true
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	if len(out) > maxChanged {
		return nil, true
	}
	return out, false
}

// Trigger asks Run for a rebuild. It never blocks; triggers that arrive
// while a rebuild is pending merge into it.
func (s *State) Trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run rebuilds after triggers until ctx ends. A trigger after a quiet
// spell is built at once; one that follows a rebuild waits until settle has
// passed since that rebuild ended, gathering the changes that arrive
// meanwhile, so that a burst of informer events costs two compiles, not
// one each. Each rebuild calls input and publishes. ready gates the first
// build: Run does not publish until ready returns true (for example until
// informers synced). onPublish, if not nil, is called after each
// publication.
func (s *State) Run(ctx context.Context, settle time.Duration, ready func() bool, input func() engine.Input, onPublish func(*View)) {
	var last time.Time // when the previous rebuild ended
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		if wait := settle - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		// Triggers that came during the settle are covered by the input
		// about to be read.
		select {
		case <-s.kick:
		default:
		}
		if ready != nil && !ready() {
			continue // the source triggers again when it syncs
		}
		start := time.Now()
		in := input()
		v := s.publishGathered(in, time.Since(start))
		if onPublish != nil {
			onPublish(v)
		}
		last = time.Now()
	}
}
