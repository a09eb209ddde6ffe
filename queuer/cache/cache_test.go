package cache

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a manually advanced clock for TTL tests.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func key(i int) Key {
	return Key{
		Src:     netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}),
		Dst:     netip.MustParseAddr("10.1.0.1"),
		Proto:   6,
		DstPort: 80,
	}
}

func TestGetPut(t *testing.T) {
	c := New(Options{Size: 16, Shards: 4})
	k := key(1)
	if _, ok := c.Get(k); ok {
		t.Fatal("empty cache hit")
	}
	c.Put(k, true, 0)
	if allow, ok := c.Get(k); !ok || !allow {
		t.Fatalf("Get = %v, %v; want allow hit", allow, ok)
	}
	c.Put(k, false, 0)
	if allow, ok := c.Get(k); !ok || allow {
		t.Fatalf("Get after overwrite = %v, %v; want deny hit", allow, ok)
	}
	// Every key field matters.
	for _, other := range []Key{
		{Src: k.Src, Dst: k.Dst, Proto: 17, DstPort: 80},
		{Src: k.Src, Dst: k.Dst, Proto: 6, DstPort: 81},
		{Src: k.Src, Dst: k.Dst, Proto: 6, DstPort: 80, ViaService: true},
		{Src: k.Dst, Dst: k.Src, Proto: 6, DstPort: 80},
		{Src: netip.MustParseAddr("::ffff:10.0.0.1"), Dst: k.Dst, Proto: 6, DstPort: 80},
	} {
		if _, ok := c.Get(other); ok {
			t.Errorf("Get(%+v) hit the entry of %+v", other, k)
		}
	}
	st := c.Stats()
	if st.Hits != 2 || st.Misses != 6 {
		t.Errorf("Stats = %+v, want 2 hits, 6 misses", st)
	}
	if c.Len() != 1 {
		t.Errorf("Len = %d, want 1", c.Len())
	}
}

func TestTTL(t *testing.T) {
	clk := &clock{}
	c := New(Options{Size: 16, TTL: 10 * time.Second, Now: clk.now})
	c.Put(key(1), true, 0)
	clk.advance(9 * time.Second)
	if _, ok := c.Get(key(1)); !ok {
		t.Fatal("entry expired before its TTL")
	}
	clk.advance(time.Second)
	if _, ok := c.Get(key(1)); ok {
		t.Fatal("entry outlived its TTL")
	}
	if c.Len() != 0 {
		t.Errorf("expired entry not removed: Len = %d", c.Len())
	}
	if st := c.Stats(); st.Expired != 1 {
		t.Errorf("Expired = %d, want 1", st.Expired)
	}
	// Re-putting refreshes the TTL.
	c.Put(key(2), true, 0)
	clk.advance(8 * time.Second)
	c.Put(key(2), true, 0)
	clk.advance(8 * time.Second)
	if _, ok := c.Get(key(2)); !ok {
		t.Error("Put did not refresh the TTL")
	}
}

func TestBound(t *testing.T) {
	for _, tc := range []struct{ size, shards int }{{1, 64}, {10, 4}, {100, 3}, {1000, 64}} {
		t.Run(fmt.Sprintf("size%d-shards%d", tc.size, tc.shards), func(t *testing.T) {
			c := New(Options{Size: tc.size, Shards: tc.shards})
			for i := range 20 * tc.size {
				c.Put(key(i), i%2 == 0, 0)
				if n := c.Len(); n > tc.size {
					t.Fatalf("after %d puts Len = %d > size %d", i+1, n, tc.size)
				}
			}
			if c.Len() == 0 {
				t.Fatal("cache holds nothing")
			}
			if st := c.Stats(); st.Evictions == 0 {
				t.Error("no evictions counted")
			}
			// The most recently put key is always present.
			last := 20*tc.size - 1
			if allow, ok := c.Get(key(last)); !ok || allow != (last%2 == 0) {
				t.Errorf("last key: Get = %v, %v", allow, ok)
			}
		})
	}
}

func TestClockKeepsReferencedEntries(t *testing.T) {
	c := New(Options{Size: 4, Shards: 1})
	for i := range 4 {
		c.Put(key(i), true, 0)
	}
	// Reference 0 and 1; inserting two new keys must evict 2 and 3.
	c.Get(key(0))
	c.Get(key(1))
	c.Put(key(10), true, 0)
	c.Put(key(11), true, 0)
	for _, i := range []int{0, 1, 10, 11} {
		if _, ok := c.Get(key(i)); !ok {
			t.Errorf("key %d evicted", i)
		}
	}
	for _, i := range []int{2, 3} {
		if _, ok := c.Get(key(i)); ok {
			t.Errorf("key %d survived, want it evicted", i)
		}
	}
}

func TestInvalidate(t *testing.T) {
	c := New(Options{Size: 64})
	c.Put(key(1), true, 1)
	c.Put(key(2), false, 2)
	c.Put(key(3), true, 3)
	c.Invalidate(2)
	if _, ok := c.Get(key(1)); ok {
		t.Error("generation 1 entry survived Invalidate(2)")
	}
	for _, i := range []int{2, 3} {
		if _, ok := c.Get(key(i)); !ok {
			t.Errorf("entry %d of a current or newer generation was dropped", i)
		}
	}
	// Stale puts are ignored; current and newer ones are kept.
	c.Put(key(4), true, 1)
	if _, ok := c.Get(key(4)); ok {
		t.Error("Put of generation 1 after Invalidate(2) was stored")
	}
	if st := c.Stats(); st.StalePuts != 1 {
		t.Errorf("StalePuts = %d, want 1", st.StalePuts)
	}
	// Generations never go backwards.
	c.Invalidate(1)
	if g := c.Generation(); g != 2 {
		t.Errorf("Generation = %d after Invalidate(1), want 2", g)
	}
	c.Invalidate(5)
	for _, i := range []int{2, 3} {
		if _, ok := c.Get(key(i)); ok {
			t.Errorf("entry %d survived Invalidate(5)", i)
		}
	}
	if c.Len() != 0 {
		t.Errorf("Len = %d after every entry went stale and was read", c.Len())
	}
}

func TestReset(t *testing.T) {
	c := New(Options{Size: 8, Shards: 2})
	c.Invalidate(9)
	for i := range 8 {
		c.Put(key(i), true, 9)
	}
	c.Reset(1)
	if c.Len() != 0 || c.Generation() != 1 {
		t.Fatalf("after Reset(1): Len = %d, Generation = %d", c.Len(), c.Generation())
	}
	c.Put(key(1), false, 1)
	if allow, ok := c.Get(key(1)); !ok || allow {
		t.Errorf("Put of the reset generation: Get = %v, %v", allow, ok)
	}
	for i := range 20 {
		c.Put(key(i), true, 1)
	}
	if c.Len() > 8 {
		t.Errorf("Len = %d after Reset and refill, want <= 8", c.Len())
	}
}

func TestStaleEntriesAreEvictedFirst(t *testing.T) {
	c := New(Options{Size: 2, Shards: 1})
	c.Put(key(1), true, 1)
	c.Put(key(2), true, 2)
	c.Get(key(1)) // referenced, but about to be stale
	c.Get(key(2))
	c.Invalidate(2)
	c.Put(key(3), true, 2)
	if _, ok := c.Get(key(2)); !ok {
		t.Error("current entry evicted while a stale one was present")
	}
	if st := c.Stats(); st.Evictions != 0 || st.Expired != 1 {
		t.Errorf("Stats = %+v, want the stale entry counted as expired", st)
	}
}

func TestConcurrent(t *testing.T) {
	c := New(Options{Size: 256, Shards: 8})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := key((g*7919 + i) % 600)
				if allow, ok := c.Get(k); ok && allow != (k.Src.As4()[3]%2 == 0) {
					t.Errorf("wrong verdict for %v", k.Src)
					return
				}
				c.Put(k, k.Src.As4()[3]%2 == 0, uint64(i/500))
				if i%500 == 0 && g == 0 {
					c.Invalidate(uint64(i / 500))
				}
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 256 {
		t.Errorf("Len = %d > 256", n)
	}
	st := c.Stats()
	if st.Hits+st.Misses != 16*2000 {
		t.Errorf("hits+misses = %d, want %d", st.Hits+st.Misses, 16*2000)
	}
}

func TestGetDoesNotAllocate(t *testing.T) {
	c := New(Options{Size: 64})
	c.Put(key(1), true, 0)
	if n := testing.AllocsPerRun(100, func() { c.Get(key(1)); c.Get(key(2)) }); n != 0 {
		t.Errorf("Get allocates %v times", n)
	}
}

func BenchmarkGetHitParallel(b *testing.B) {
	c := New(Options{Size: 4096})
	for i := range 1024 {
		c.Put(key(i), true, 0)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Get(key(i & 1023))
			i++
		}
	})
}

func TestAdvance(t *testing.T) {
	c := New(Options{Size: 64})
	c.Invalidate(3)
	c.Put(key(1), true, 3)  // src 10.0.0.1: changed below
	c.Put(key(2), false, 3) // src 10.0.0.2: unchanged
	c.Put(key(3), true, 2)  // already stale (Put ignored)
	c.Put(key(4), true, 4)  // already of the next generation
	changedIP := netip.MustParseAddr("10.0.0.1")
	c.Advance(4, func(a netip.Addr) bool { return a == changedIP })
	if g := c.Generation(); g != 4 {
		t.Fatalf("Generation = %d after Advance(4)", g)
	}
	if _, ok := c.Get(key(1)); ok {
		t.Error("an entry involving a changed address survived Advance")
	}
	if allow, ok := c.Get(key(2)); !ok || allow {
		t.Errorf("an unaffected entry: %v %v, want the cached deny", allow, ok)
	}
	if _, ok := c.Get(key(3)); ok {
		t.Error("a stale entry came back")
	}
	if _, ok := c.Get(key(4)); !ok {
		t.Error("an entry of the new generation was dropped")
	}
	// The destination counts too.
	dst := Key{Src: netip.MustParseAddr("10.9.9.9"), Dst: changedIP, Proto: 6, DstPort: 80}
	c.Put(dst, true, 4)
	c.Advance(5, func(a netip.Addr) bool { return a == changedIP })
	if _, ok := c.Get(dst); ok {
		t.Error("an entry whose destination changed survived Advance")
	}
	if _, ok := c.Get(key(2)); !ok {
		t.Error("the unaffected entry was dropped by the second Advance")
	}
	// Not newer: nothing happens.
	c.Advance(5, func(netip.Addr) bool { return true })
	if _, ok := c.Get(key(2)); !ok {
		t.Error("Advance to the current generation dropped entries")
	}
}

// at returns k with another destination port.
func at(k Key, port uint16) Key {
	k.DstPort = port
	return k
}

func TestRanges(t *testing.T) {
	clk := &clock{}
	c := New(Options{Size: 64, Shards: 4, TTL: time.Minute, Now: clk.now})
	k := at(key(1), 15000)
	c.PutRange(k, 10000, 20000, true, 0)
	for _, p := range []uint16{10000, 15000, 17777, 20000} {
		if allow, ok := c.Get(at(k, p)); !ok || !allow {
			t.Errorf("port %d in the range: %v %v, want an allow hit", p, allow, ok)
		}
	}
	for _, p := range []uint16{9999, 20001, 80} {
		if _, ok := c.Get(at(k, p)); ok {
			t.Errorf("port %d outside the range hit", p)
		}
	}
	// Another pair, protocol or via_service does not share the range.
	for _, other := range []Key{at(key(2), 15000), {Src: k.Src, Dst: k.Dst, Proto: 17, DstPort: 15000},
		{Src: k.Src, Dst: k.Dst, Proto: 6, DstPort: 15000, ViaService: true}} {
		if _, ok := c.Get(other); ok {
			t.Errorf("%+v hit the range of %+v", other, k)
		}
	}
	// A port's own answer comes first.
	c.Put(at(k, 12345), false, 0)
	if allow, ok := c.Get(at(k, 12345)); !ok || allow {
		t.Errorf("port with an answer of its own: %v %v, want a deny hit", allow, ok)
	}
	// A range that overlaps replaces the old one.
	c.PutRange(at(k, 19000), 18000, 25000, false, 0)
	if allow, ok := c.Get(at(k, 24000)); !ok || allow {
		t.Errorf("new range: %v %v, want a deny hit", allow, ok)
	}
	if _, ok := c.Get(at(k, 15000)); ok {
		t.Error("the range that the new one overlapped still answers")
	}
	// Up to rangesPerEntry disjoint ranges stay; one more replaces the
	// oldest.
	for i := range uint16(rangesPerEntry) {
		lo := 30000 + 100*i
		c.PutRange(at(k, lo), lo, lo+9, true, 0)
	}
	if _, ok := c.Get(at(k, 24000)); ok {
		t.Error("the oldest range survived one range too many")
	}
	for i := range uint16(rangesPerEntry) {
		if _, ok := c.Get(at(k, 30005+100*i)); !ok {
			t.Errorf("range %d of %d was dropped", i+1, rangesPerEntry)
		}
	}
	// A range without the port stores the port alone.
	c.PutRange(at(k, 50000), 1, 10, true, 0)
	if _, ok := c.Get(at(k, 5)); ok {
		t.Error("a range that does not contain its port was stored")
	}
	if _, ok := c.Get(at(k, 50000)); !ok {
		t.Error("the port of a range that does not contain it was not stored")
	}
	// Generations and the TTL apply per range.
	c.Invalidate(1)
	if _, ok := c.Get(at(k, 30005)); ok {
		t.Error("a range of an older generation answered")
	}
	c.PutRange(at(k, 30005), 30000, 30009, true, 0)
	if _, ok := c.Get(at(k, 30005)); ok || c.Stats().StalePuts != 1 {
		t.Errorf("a range of an older generation was stored (stale puts %d)", c.Stats().StalePuts)
	}
	c.PutRange(at(k, 30005), 30000, 30009, true, 1)
	if _, ok := c.Get(at(k, 30009)); !ok {
		t.Error("a range of the current generation does not answer")
	}
	clk.advance(2 * time.Minute)
	if _, ok := c.Get(at(k, 30009)); ok {
		t.Error("an expired range answered")
	}
}

func TestAdvanceRanges(t *testing.T) {
	c := New(Options{Size: 64})
	c.PutRange(at(key(1), 100), 1, 1000, true, 0)     // src 10.0.0.1: changed below
	c.PutRange(at(key(2), 100), 1, 1000, false, 0)    // unchanged
	c.PutRange(at(key(2), 2000), 1001, 3000, true, 0) // unchanged, a second range
	changed := netip.MustParseAddr("10.0.0.1")
	c.Advance(1, func(a netip.Addr) bool { return a == changed })
	if _, ok := c.Get(at(key(1), 500)); ok {
		t.Error("the ranges of a changed address survived Advance")
	}
	if allow, ok := c.Get(at(key(2), 500)); !ok || allow {
		t.Errorf("an unaffected range: %v %v, want the cached deny", allow, ok)
	}
	if allow, ok := c.Get(at(key(2), 2500)); !ok || !allow {
		t.Errorf("an unaffected second range: %v %v, want the cached allow", allow, ok)
	}
}

func TestGetRangeDoesNotAllocate(t *testing.T) {
	c := New(Options{Size: 64})
	c.PutRange(key(1), 1, 1000, true, 0)
	if n := testing.AllocsPerRun(100, func() { c.Get(at(key(1), 500)); c.Get(at(key(1), 5000)) }); n != 0 {
		t.Errorf("Get allocates %v times", n)
	}
}
