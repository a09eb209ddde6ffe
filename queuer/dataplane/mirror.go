package dataplane

import (
	"net/netip"
	"sync"
	"time"
)

// verdictKey names one element of a verdict set: the tuple and which of
// the allow and deny sets holds it.
type verdictKey struct {
	src, dst netip.Addr
	proto    uint8
	dstPort  uint16
	allow    bool
}

func keyOfVerdict(v Verdict) verdictKey {
	return verdictKey{src: v.Src.Unmap().WithZone(""), dst: v.Dst.Unmap().WithZone(""), proto: v.Proto, dstPort: v.DstPort, allow: v.Allow}
}

func (k verdictKey) verdict() Verdict {
	return Verdict{Src: k.src, Dst: k.dst, Proto: k.proto, DstPort: k.dstPort, Allow: k.allow}
}

// mirror remembers which elements the verdict sets may hold and until when,
// so that a policy change removes exactly the verdicts it affects. It has
// its own lock, taken on the packet path for one map write, never while the
// kernel is being written to.
//
// It holds at most limit elements, the size of one set times four. When it
// is full it stops recording and marks itself overflowed: it no longer
// knows every element, so the next invalidation empties the sets instead.
// Entries may outlive their kernel element (the set was full, or the
// element was flushed by someone else); removing those is harmless.
type mirror struct {
	mu         sync.Mutex
	m          map[verdictKey]time.Time // expiry
	limit      int
	ttl        time.Duration
	now        func() time.Time
	overflowed bool
	isKnown    bool
	pruneAt    int
}

func newMirror(setSize int, ttl time.Duration, now func() time.Time) *mirror {
	return &mirror{m: map[verdictKey]time.Time{}, limit: 4 * setSize, ttl: ttl, now: now, pruneAt: 4096}
}

// note records that the kernel holds v and expires it no earlier than a
// TTL from now (learning renews an element's timeout).
func (m *mirror) note(v Verdict) {
	k := keyOfVerdict(v)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.overflowed {
		return
	}
	now := m.now()
	if _, ok := m.m[k]; !ok && len(m.m) >= min(m.pruneAt, m.limit) {
		m.pruneLocked(now)
		if len(m.m) >= m.limit {
			m.overflowed = true
			return
		}
	}
	m.m[k] = now.Add(m.ttl)
}

// pruneLocked forgets expired elements. m.mu is held.
func (m *mirror) pruneLocked(now time.Time) {
	for k, exp := range m.m {
		if !exp.After(now) {
			delete(m.m, k)
		}
	}
	m.pruneAt = min(m.limit, max(4096, 2*len(m.m)))
}

// take removes and returns the live elements with an end for which changed
// is true. all says the mirror does not know every element (it overflowed,
// or it was never filled): the caller must empty the sets instead.
func (m *mirror) take(changed func(netip.Addr) bool) (keys []verdictKey, all bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.overflowed || !m.isKnown {
		return nil, true
	}
	now := m.now()
	for k, exp := range m.m {
		if !exp.After(now) {
			delete(m.m, k)
			continue
		}
		if changed(k.src) || changed(k.dst) {
			keys = append(keys, k)
			delete(m.m, k)
		}
	}
	return keys, false
}

// forget drops v.
func (m *mirror) forget(v Verdict) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.m, keyOfVerdict(v))
}

// reset empties the mirror: the sets are empty.
func (m *mirror) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.m)
	m.overflowed = false
	m.isKnown = true
	m.pruneAt = 4096
}

// rebuild replaces the mirror with elements read from the kernel, each
// assumed to live a full TTL. ok false (the listing failed) leaves the
// mirror not knowing the sets, so that the next invalidation empties them.
func (m *mirror) rebuild(vs []Verdict, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.m)
	m.overflowed = !ok || len(vs) > m.limit
	m.isKnown = true
	if m.overflowed {
		return
	}
	exp := m.now().Add(m.ttl)
	for _, v := range vs {
		m.m[keyOfVerdict(v)] = exp
	}
	m.pruneAt = min(m.limit, max(4096, 2*len(m.m)))
}

// known reports whether the mirror was reset or rebuilt since it was made.
func (m *mirror) known() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.isKnown
}

// size returns how many elements the mirror holds.
func (m *mirror) size() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.m)
}
