package idlegc

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestUsed(t *testing.T) {
	for _, tc := range []struct {
		h    Heap
		want float64
	}{
		{Heap{InUse: 150, Live: 100, Goal: 200}, 0.5},
		{Heap{InUse: 90, Live: 100, Goal: 200}, 0},
		{Heap{InUse: 150, Live: 100, Goal: 100}, 0},
		{Heap{InUse: 250, Live: 100, Goal: 200}, 1.5},
	} {
		if got := tc.h.Used(); got != tc.want {
			t.Errorf("%+v.Used() = %v, want %v", tc.h, got, tc.want)
		}
	}
}

// TestCollectsOnceQuiet: a burst of kicks gives one collection, after the
// last kick and not before; below the threshold there is none. The delay
// is long beside the kicks' spacing, so that a slow machine does not make
// a gap between two kicks look like a quiet spell.
func TestCollectsOnceQuiet(t *testing.T) {
	const delay = 400 * time.Millisecond
	var collections atomic.Int32
	var heap atomic.Value
	heap.Store(Heap{InUse: 180, Live: 100, Goal: 200})
	c := New(delay, 0.6)
	c.ReadHeap = func() Heap { return heap.Load().(Heap) }
	c.Collect = func() { collections.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// Kicks every 5 ms for 100 ms keep restarting the wait.
	for range 20 {
		c.Kick()
		time.Sleep(5 * time.Millisecond)
	}
	if n := collections.Load(); n != 0 {
		t.Fatalf("%d collections while kicks kept coming, want 0", n)
	}
	waitFor(t, func() bool { return collections.Load() == 1 })
	time.Sleep(delay + 200*time.Millisecond)
	if n := collections.Load(); n != 1 {
		t.Fatalf("%d collections after one burst, want 1", n)
	}

	heap.Store(Heap{InUse: 120, Live: 100, Goal: 200}) // 20% used
	c.Kick()
	time.Sleep(delay + 200*time.Millisecond)
	if n := collections.Load(); n != 1 {
		t.Fatalf("%d collections, want still 1: the heap was below the threshold", n)
	}
}

func TestReadHeap(t *testing.T) {
	h := ReadHeap()
	if h.InUse == 0 || h.Goal == 0 {
		t.Fatalf("ReadHeap() = %+v: the runtime's metrics were not read", h)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
