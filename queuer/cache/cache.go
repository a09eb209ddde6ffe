// Package cache is the queuer's userspace verdict cache: the tier behind the
// kernel's verdict sets that answers repeated connections without asking the
// decider.
//
// The cache is bounded and sharded by key hash. Each shard has its own mutex
// and evicts with the CLOCK algorithm (a cheap approximation of LRU: a hit
// sets a reference bit, the eviction hand clears bits until it finds an
// unreferenced entry), so queue goroutines hitting different keys rarely
// contend and no global lock sits on the hit path.
//
// An entry holds the verdict for one port, or, when the decider said its
// verdict holds for a range of destination ports, up to four such ranges
// for one address pair and protocol: one answer then serves every port of
// its range. A lookup tries the port's own entry, then the pair's ranges.
//
// Every verdict remembers the decider generation it was given in.
// Invalidate raises the current generation in O(1); older verdicts then
// read as misses and are removed lazily. A TTL per verdict is a safety net
// in case a generation change is ever missed.
package cache

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Key identifies a connection for policy purposes. The source port is not
// part of it: policy never depends on it.
type Key struct {
	// Src and Dst are the connection's addresses (Dst after DNAT).
	Src, Dst netip.Addr
	// Proto is the IP protocol number.
	Proto uint8
	// DstPort is the destination port (zero for protocols without ports).
	DstPort uint16
	// ViaService says the destination was reached through a service address.
	ViaService bool
}

// Options configures a Cache.
type Options struct {
	// Size is the maximum number of entries (default 65536).
	Size int
	// TTL bounds the lifetime of an entry (default one minute).
	TTL time.Duration
	// Shards is the number of independently locked shards, rounded down to a
	// power of two and to at most Size (default 64).
	Shards int
	// Now is the clock (default time.Now); tests inject their own.
	Now func() time.Time
}

// Stats are cumulative counters of a Cache.
type Stats struct {
	// Hits and Misses count Get results.
	Hits, Misses uint64
	// Evictions counts entries removed to make room for new ones.
	Evictions uint64
	// Expired counts entries dropped because their TTL passed or their
	// generation became stale.
	Expired uint64
	// StalePuts counts Put calls ignored because their generation was older
	// than the current one.
	StalePuts uint64
}

// Cache is a bounded, generation-aware verdict cache, safe for concurrent use.
type Cache struct {
	shards []shard
	mask   uint64
	ttl    time.Duration
	now    func() time.Time
	gen    atomic.Uint64
}

// slot is what an entry is stored under: a Key, or for the ranges of an
// address pair a Key with DstPort zero and ranged set.
type slot struct {
	Key
	ranged bool
}

// rangesPerEntry bounds the port ranges an address pair keeps; a new one
// beyond it replaces the oldest.
const rangesPerEntry = 4

// answer is one verdict for the ports lo to hi.
type answer struct {
	lo, hi  uint16
	allow   bool
	gen     uint64
	expires int64 // UnixNano
}

// stale reports whether a is of an older generation than gen or expired.
func (a *answer) stale(gen uint64, now int64) bool { return a.gen < gen || now >= a.expires }

// entry is a port's answer (n == 1) or an address pair's ranges (n of
// them, not overlapping).
type entry struct {
	key     slot
	answers [rangesPerEntry]answer
	n       uint8 // answers in use
	next    uint8 // the answer a new range replaces when all are in use
	ref     bool
}

// live reports whether any answer of e is neither stale nor expired.
func (e *entry) live(gen uint64, now int64) bool {
	for i := range e.n {
		if !e.answers[i].stale(gen, now) {
			return true
		}
	}
	return false
}

// drop removes answer i, keeping the others in place order.
func (e *entry) drop(i uint8) {
	copy(e.answers[i:e.n], e.answers[i+1:e.n])
	e.n--
	e.answers[e.n] = answer{}
	if e.next > i {
		e.next--
	}
	if e.next >= e.n {
		e.next = 0
	}
}

type shard struct {
	mu      sync.Mutex
	index   map[slot]int // key -> position in entries
	entries []entry      // grows to capacity, then slots are reused
	free    []int        // positions of removed entries
	hand    int          // CLOCK hand
	cap     int

	hits, misses, evictions, expired, stalePuts uint64

	_ [64]byte // keep shards on separate cache lines
}

// New creates a cache.
func New(opts Options) *Cache {
	if opts.Size <= 0 {
		opts.Size = 65536
	}
	if opts.TTL <= 0 {
		opts.TTL = time.Minute
	}
	if opts.Shards <= 0 {
		opts.Shards = 64
	}
	if opts.Shards > opts.Size {
		opts.Shards = opts.Size
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	n := 1 << (bits.Len(uint(opts.Shards)) - 1) // round down to a power of two
	c := &Cache{
		shards: make([]shard, n),
		mask:   uint64(n - 1),
		ttl:    opts.TTL,
		now:    opts.Now,
	}
	per := opts.Size / n // floor: the total never exceeds Size
	for i := range c.shards {
		c.shards[i].cap = per
		c.shards[i].index = make(map[slot]int, per)
	}
	return c
}

// hash mixes every key field into 64 bits without allocating.
func hash(k Key) uint64 {
	s, d := k.Src.As16(), k.Dst.As16()
	h := binary.LittleEndian.Uint64(s[:8]) ^ bits.RotateLeft64(binary.LittleEndian.Uint64(s[8:]), 17)
	h ^= bits.RotateLeft64(binary.LittleEndian.Uint64(d[:8]), 31) ^ bits.RotateLeft64(binary.LittleEndian.Uint64(d[8:]), 47)
	h ^= uint64(k.Proto)<<16 | uint64(k.DstPort)
	if k.ViaService {
		h ^= 1 << 24
	}
	// splitmix64 finalizer.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// pairOf is the slot of k's address pair ranges.
func pairOf(k Key) slot {
	k.DstPort = 0
	return slot{Key: k, ranged: true}
}

// shard returns the shard that holds sl.
func (c *Cache) shard(sl slot) *shard {
	h := hash(sl.Key)
	if sl.ranged {
		h = bits.RotateLeft64(h, 1)
	}
	return &c.shards[h&c.mask]
}

// Get returns the cached verdict for k; ok is false on a miss, including
// for entries that expired or belong to an older generation.
func (c *Cache) Get(k Key) (allow, ok bool) {
	now := c.now().UnixNano()
	gen := c.gen.Load()
	if allow, ok := c.lookup(slot{Key: k}, k.DstPort, gen, now, false); ok {
		return allow, true
	}
	return c.lookup(pairOf(k), k.DstPort, gen, now, true)
}

// lookup finds the answer of entry sl for port, removing it (and the entry
// when it was its last) if it is stale; last counts a miss.
func (c *Cache) lookup(sl slot, port uint16, gen uint64, now int64, last bool) (allow, ok bool) {
	s := c.shard(sl)
	s.mu.Lock()
	defer s.mu.Unlock()
	if allow, ok := s.lookup(sl, port, gen, now); ok {
		s.hits++
		return allow, true
	}
	if last {
		s.misses++
	}
	return false, false
}

// lookup is Cache.lookup within s, which the caller has locked.
func (s *shard) lookup(sl slot, port uint16, gen uint64, now int64) (allow, ok bool) {
	i, found := s.index[sl]
	if !found {
		return false, false
	}
	e := &s.entries[i]
	for j := range e.n {
		a := &e.answers[j]
		if port < a.lo || port > a.hi {
			continue
		}
		if a.stale(gen, now) {
			e.drop(j)
			s.expired++
			if e.n == 0 {
				s.remove(i)
			}
			return false, false
		}
		e.ref = true
		return a.allow, true
	}
	return false, false
}

// Put stores the verdict allow for k, decided at generation gen. A verdict
// of an older generation than the current one is ignored.
func (c *Cache) Put(k Key, allow bool, gen uint64) {
	c.PutRange(k, k.DstPort, k.DstPort, allow, gen)
}

// PutRange stores the verdict allow, decided at generation gen, for k and
// every destination port from lo to hi with the rest of k alike. A range
// that does not contain k.DstPort stores k's port alone. A verdict of an
// older generation than the current one is ignored.
func (c *Cache) PutRange(k Key, lo, hi uint16, allow bool, gen uint64) {
	sl := slot{Key: k}
	if lo == hi || k.DstPort < lo || k.DstPort > hi {
		lo, hi = k.DstPort, k.DstPort
	} else {
		sl = pairOf(k)
	}
	s := c.shard(sl)
	now := c.now().UnixNano()
	a := answer{lo: lo, hi: hi, allow: allow, gen: gen, expires: now + int64(c.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A Put racing with Invalidate may still store an entry of the old
	// generation; Get compares generations, so it reads as a miss.
	cur := c.gen.Load()
	if gen < cur {
		s.stalePuts++
		return
	}
	if s.cap == 0 {
		return
	}
	if i, found := s.index[sl]; found {
		e := &s.entries[i]
		e.ref = true
		// Ranges of one pair never overlap: a new one replaces those it
		// meets, and stale ones go too.
		for j := uint8(0); j < e.n; {
			o := &e.answers[j]
			if (o.lo <= hi && lo <= o.hi) || o.stale(cur, now) {
				e.drop(j)
				continue
			}
			j++
		}
		if e.n < rangesPerEntry {
			e.answers[e.n] = a
			e.n++
			return
		}
		e.answers[e.next] = a
		e.next = (e.next + 1) % rangesPerEntry
		return
	}
	var i int
	switch {
	case len(s.free) > 0:
		i = s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
	case len(s.entries) < s.cap:
		s.entries = append(s.entries, entry{})
		i = len(s.entries) - 1
	default:
		i = s.victim(cur, now)
	}
	s.entries[i] = entry{key: sl, n: 1}
	s.entries[i].answers[0] = a
	s.index[sl] = i
}

// victim frees and returns a slot of a full shard: the first entry the
// CLOCK hand meets with nothing but stale or expired answers, else the
// first unreferenced one.
func (s *shard) victim(gen uint64, now int64) int {
	// Two sweeps always find a victim: the first clears every reference bit.
	for range 2 * len(s.entries) {
		i := s.hand
		s.hand = (s.hand + 1) % len(s.entries)
		e := &s.entries[i]
		if !e.live(gen, now) {
			s.expired++
			delete(s.index, e.key)
			return i
		}
		if e.ref {
			e.ref = false
			continue
		}
		s.evictions++
		delete(s.index, e.key)
		return i
	}
	// Unreachable: after one sweep no entry is referenced.
	i := s.hand
	s.evictions++
	delete(s.index, s.entries[i].key)
	return i
}

// remove frees slot i.
func (s *shard) remove(i int) {
	delete(s.index, s.entries[i].key)
	s.entries[i] = entry{}
	s.free = append(s.free, i)
}

// Invalidate announces generation gen: every entry of an older generation
// becomes a miss, and later Puts of older generations are ignored. The
// generation never goes backwards.
func (c *Cache) Invalidate(gen uint64) {
	for {
		cur := c.gen.Load()
		if gen <= cur || c.gen.CompareAndSwap(cur, gen) {
			return
		}
	}
}

// Advance announces generation gen when the decider says which addresses
// it may now judge differently: entries of the current generation that
// involve one of them (changed reports which) are dropped, the others are
// carried over to gen, since their verdicts stand. Entries already stale
// stay stale. It takes every shard lock in turn; a gen not newer than the
// current one does nothing.
func (c *Cache) Advance(gen uint64, changed func(netip.Addr) bool) {
	cur := c.gen.Load()
	if gen <= cur {
		return
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, j := range s.index {
			e := &s.entries[j]
			if changed(e.key.Src) || changed(e.key.Dst) {
				s.remove(j)
				s.expired++
				continue
			}
			for k := range e.n {
				if a := &e.answers[k]; a.gen == cur {
					a.gen = gen
				}
			}
		}
		s.mu.Unlock()
	}
	// Puts of cur that raced with the sweep stay at cur and read as misses
	// from here on.
	c.Invalidate(gen)
}

// Reset drops every entry and sets the generation to gen, even if gen is
// lower than the current one. It is for a decider that restarted and counts
// generations afresh; it takes every shard lock in turn.
func (c *Cache) Reset(gen uint64) {
	c.gen.Store(gen)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.index)
		s.entries = s.entries[:0]
		s.free = s.free[:0]
		s.hand = 0
		s.mu.Unlock()
	}
}

// Generation returns the current generation.
func (c *Cache) Generation() uint64 { return c.gen.Load() }

// Len returns the number of stored entries, including stale ones not yet
// removed: one per port answered alone, one per address pair with port
// ranges.
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.index)
		s.mu.Unlock()
	}
	return n
}

// Stats returns the cumulative counters.
func (c *Cache) Stats() Stats {
	var st Stats
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		st.Hits += s.hits
		st.Misses += s.misses
		st.Evictions += s.evictions
		st.Expired += s.expired
		st.StalePuts += s.stalePuts
		s.mu.Unlock()
	}
	return st
}
