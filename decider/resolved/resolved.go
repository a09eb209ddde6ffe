// Package resolved keeps what the decider learns from the DNS answers the
// queuer sees: which names each pod of the node resolved to which
// addresses, and until when. domainNames peers match against it
// (engine.Resolved).
//
// Knowledge is kept per pod, not per node: a pod may reach an address
// because it resolved an allowed name to it, and another pod that never
// looked the name up may not, even if both sit on one node. Entries live as
// long as the answer's TTL, with a floor (short TTLs are common for
// load-balanced names, and clients connect after the answer arrives) and a
// cap (so that an address stays allowed no longer than the cap after the
// pod last looked it up). Memory is bounded per pod and in total; past a
// bound the entries that expire soonest go first.
//
// The Store takes the time as an argument and never reads a clock, so
// tests drive it exactly; the decider passes time.Now.
package resolved

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/tollgate/tollgate/decider/engine"
)

// Defaults of Options.
const (
	DefaultMinTTL    = 30 * time.Second
	DefaultMaxTTL    = time.Hour
	DefaultMaxPerPod = 2048
	DefaultMaxTotal  = 65536
)

// Options bound a Store; zero values pick the defaults.
type Options struct {
	// MinTTL and MaxTTL clamp the TTL of an answer.
	MinTTL, MaxTTL time.Duration
	// MaxPerPod bounds the (name, address) pairs kept for one pod;
	// MaxTotal the pairs kept for all pods.
	MaxPerPod, MaxTotal int
}

// Answer is one resolution a pod received: names (the question and the
// CNAMEs it led to, any order) resolved to addrs for ttl.
type Answer struct {
	Names []string
	Addrs []netip.Addr
	TTL   time.Duration
}

// Stats count what a Store holds and did.
type Stats struct {
	// Entries is the number of (pod, name, address) entries held.
	Entries int
	// Pods is the number of pods with entries.
	Pods int
	// Evicted counts entries dropped to stay within the bounds (not by
	// expiry).
	Evicted uint64
}

type key struct {
	addr netip.Addr
	name string
}

// Store is safe for concurrent use.
type Store struct {
	opts Options

	mu      sync.Mutex
	pods    map[netip.Addr]map[key]time.Time // pod -> entry -> expiry
	total   int
	evicted uint64
	// views caches the immutable per-pod views of the last View call;
	// a pod's is rebuilt only after it changed.
	views map[netip.Addr]*podView
	dirty map[netip.Addr]bool
}

// New returns an empty Store.
func New(opts Options) *Store {
	if opts.MinTTL <= 0 {
		opts.MinTTL = DefaultMinTTL
	}
	if opts.MaxTTL <= 0 {
		opts.MaxTTL = DefaultMaxTTL
	}
	opts.MaxTTL = max(opts.MaxTTL, opts.MinTTL)
	if opts.MaxPerPod <= 0 {
		opts.MaxPerPod = DefaultMaxPerPod
	}
	if opts.MaxTotal <= 0 {
		opts.MaxTotal = DefaultMaxTotal
	}
	return &Store{opts: opts, pods: map[netip.Addr]map[key]time.Time{},
		views: map[netip.Addr]*podView{}, dirty: map[netip.Addr]bool{}}
}

// Learn records the answers pod received at now. It reports whether the
// pod's knowledge changed (a name now leads to an address it did not lead
// to before, or an entry was evicted): only then can a verdict change.
// Renewing an entry's expiry is not a change.
func (s *Store) Learn(pod netip.Addr, answers []Answer, now time.Time) (changed bool) {
	pod = pod.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.pods[pod]
	for _, a := range answers {
		ttl := min(max(a.TTL, s.opts.MinTTL), s.opts.MaxTTL)
		exp := now.Add(ttl)
		for _, n := range a.Names {
			n = engine.NormalizeDomain(n)
			if n == "" {
				continue
			}
			for _, addr := range a.Addrs {
				if !addr.IsValid() {
					continue
				}
				if m == nil {
					m = map[key]time.Time{}
					s.pods[pod] = m
				}
				k := key{addr: addr.Unmap().WithZone(""), name: n}
				old, ok := m[k]
				switch {
				case !ok:
					m[k] = exp
					s.total++
					changed = true
				case exp.After(old):
					m[k] = exp
				}
			}
		}
	}
	if changed {
		s.dirty[pod] = true
		s.evictLocked(pod)
	}
	return changed
}

// evictLocked keeps pod within MaxPerPod and the store within MaxTotal,
// dropping the entries that expire soonest. s.mu is held.
func (s *Store) evictLocked(pod netip.Addr) {
	if m := s.pods[pod]; len(m) > s.opts.MaxPerPod {
		s.dropSoonest(map[netip.Addr]map[key]time.Time{pod: m}, len(m)-s.opts.MaxPerPod)
	}
	if s.total > s.opts.MaxTotal {
		s.dropSoonest(s.pods, s.total-s.opts.MaxTotal)
	}
}

// dropSoonest drops the n entries of pods that expire soonest.
func (s *Store) dropSoonest(pods map[netip.Addr]map[key]time.Time, n int) {
	type ref struct {
		pod netip.Addr
		k   key
		exp time.Time
	}
	var all []ref
	for pod, m := range pods {
		for k, exp := range m {
			all = append(all, ref{pod, k, exp})
		}
	}
	slices.SortFunc(all, func(a, b ref) int { return a.exp.Compare(b.exp) })
	for _, r := range all[:min(n, len(all))] {
		s.deleteLocked(r.pod, r.k)
		s.evicted++
	}
}

func (s *Store) deleteLocked(pod netip.Addr, k key) {
	m := s.pods[pod]
	if _, ok := m[k]; !ok {
		return
	}
	delete(m, k)
	s.total--
	s.dirty[pod] = true
	if len(m) == 0 {
		delete(s.pods, pod)
	}
}

// Expire drops the entries expired at now and returns, sorted, the pods
// whose knowledge changed.
func (s *Store) Expire(now time.Time) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []netip.Addr
	for pod, m := range s.pods {
		before := len(m)
		for k, exp := range m {
			if !exp.After(now) {
				s.deleteLocked(pod, k)
			}
		}
		if len(m) != before {
			changed = append(changed, pod)
		}
	}
	slices.SortFunc(changed, netip.Addr.Compare)
	return changed
}

// Retain forgets the pods for which keep is false (no longer on the node,
// or no longer governed by a domainNames rule) and returns, sorted, those
// that had entries.
func (s *Store) Retain(keep func(netip.Addr) bool) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []netip.Addr
	for pod, m := range s.pods {
		if keep(pod) {
			continue
		}
		for k := range m {
			s.deleteLocked(pod, k)
		}
		gone = append(gone, pod)
	}
	slices.SortFunc(gone, netip.Addr.Compare)
	return gone
}

// Stats returns what the store holds and did.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Entries: s.total, Pods: len(s.pods), Evicted: s.evicted}
}

// View returns an immutable view of what the store holds now, for
// engine.Tuple.DNS. local says which pods' answers this decider learns; key,
// if not nil, maps any address of a pod to the one its answers are kept
// under (a pod that resolved a name over IPv4 may connect over IPv6). Pods
// whose entries did not change since the last View share their part with
// it.
func (s *Store) View(local func(netip.Addr) bool, key func(netip.Addr) netip.Addr) engine.Resolved {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pod := range s.dirty {
		if m, ok := s.pods[pod]; ok {
			s.views[pod] = newPodView(m)
		} else {
			delete(s.views, pod)
		}
	}
	clear(s.dirty)
	return &view{local: local, key: key, pods: maps.Clone(s.views)}
}

// view is an immutable engine.Resolved.
type view struct {
	local func(netip.Addr) bool
	key   func(netip.Addr) netip.Addr
	pods  map[netip.Addr]*podView
}

// podView is one pod's names by address.
type podView struct {
	byAddr map[netip.Addr][]string
}

func newPodView(m map[key]time.Time) *podView {
	v := &podView{byAddr: make(map[netip.Addr][]string, len(m))}
	for k := range m {
		v.byAddr[k.addr] = append(v.byAddr[k.addr], k.name)
	}
	for _, names := range v.byAddr {
		slices.Sort(names)
	}
	return v
}

// Local implements engine.Resolved.
func (v *view) Local(pod netip.Addr) bool { return v.local != nil && v.local(pod) }

// Names implements engine.Resolved.
func (v *view) Names(pod, addr netip.Addr) []string {
	if v.key != nil {
		pod = v.key(pod)
	}
	pv := v.pods[pod]
	if pv == nil {
		return nil
	}
	return pv.byAddr[addr]
}
