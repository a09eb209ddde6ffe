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
// Every entry remembers the decider generation of its verdict. Invalidate
// raises the current generation in O(1); older entries then read as misses
// and are removed lazily. A TTL per entry is a safety net in case a
// generation change is ever missed.
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

type entry struct {
	key     Key
	allow   bool
	ref     bool
	gen     uint64
	expires int64 // UnixNano
}

type shard struct {
	mu      sync.Mutex
	index   map[Key]int // key -> position in entries
	entries []entry     // grows to capacity, then slots are reused
	free    []int       // positions of removed entries
	hand    int         // CLOCK hand
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
		c.shards[i].index = make(map[Key]int, per)
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

func (c *Cache) shard(k Key) *shard { return &c.shards[hash(k)&c.mask] }

// Get returns the cached verdict for k; ok is false on a miss, including
// for entries that expired or belong to an older generation.
func (c *Cache) Get(k Key) (allow, ok bool) {
	s := c.shard(k)
	now := c.now().UnixNano()
	gen := c.gen.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	i, found := s.index[k]
	if !found {
		s.misses++
		return false, false
	}
	e := &s.entries[i]
	if e.gen < gen || now >= e.expires {
		s.remove(i)
		s.expired++
		s.misses++
		return false, false
	}
	e.ref = true
	s.hits++
	return e.allow, true
}

// Put stores the verdict allow for k, decided at generation gen. A verdict
// of an older generation than the current one is ignored.
func (c *Cache) Put(k Key, allow bool, gen uint64) {
	s := c.shard(k)
	expires := c.now().Add(c.ttl).UnixNano()
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
	if i, found := s.index[k]; found {
		s.entries[i] = entry{key: k, allow: allow, gen: gen, expires: expires, ref: true}
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
		i = s.victim(cur, c.now().UnixNano())
	}
	s.entries[i] = entry{key: k, allow: allow, gen: gen, expires: expires}
	s.index[k] = i
}

// victim frees and returns a slot of a full shard: the first stale or
// expired entry the CLOCK hand meets, else the first unreferenced one.
func (s *shard) victim(gen uint64, now int64) int {
	// Two sweeps always find a victim: the first clears every reference bit.
	for range 2 * len(s.entries) {
		i := s.hand
		s.hand = (s.hand + 1) % len(s.entries)
		e := &s.entries[i]
		if e.gen < gen || now >= e.expires {
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
			switch {
			case e.gen != cur:
			case changed(e.key.Src) || changed(e.key.Dst):
				s.remove(j)
				s.expired++
			default:
				e.gen = gen
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
// removed.
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
