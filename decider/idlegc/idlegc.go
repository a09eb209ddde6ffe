// Package idlegc collects garbage in the decider's quiet moments, so that
// a collection seldom runs during a snapshot build.
//
// Why: the decider's heap is mostly long-lived state, and each build adds
// a few megabytes of garbage. Go starts a collection when the heap reaches
// its goal, which is during an allocation, and that is most often a
// build's: at 10k pods / 10k policies bench-scale saw the builds that
// overlapped a collection take 20–35 ms against 6–12 ms for the others
// (GODEBUG=gctrace=1), every cycle of changes at the same steps. Changes
// come in bursts with quiet spells between them; collecting early in a
// quiet spell, once most of the allowance to the goal is used, moves that
// work off the path from a policy change to its enforcement.
package idlegc

import (
	"context"
	"runtime"
	"runtime/metrics"
	"time"
)

// Heap is what Collector reads about the heap, in bytes: in use now
// (objects, garbage not yet swept included), live after the last
// collection, and the goal at which the runtime will start the next one.
type Heap struct {
	InUse, Live, Goal uint64
}

// Used is the share of the allowance between the live heap and the goal
// that is in use (0 when there is no allowance to speak of).
func (h Heap) Used() float64 {
	if h.Goal <= h.Live || h.InUse <= h.Live {
		return 0
	}
	return float64(h.InUse-h.Live) / float64(h.Goal-h.Live)
}

// Collector collects once the process has been quiet for Delay after a
// Kick, when more than Threshold of the heap's allowance is in use.
type Collector struct {
	// Delay is how long after the last Kick it waits; Threshold the share
	// of the allowance (0–1) above which it collects.
	Delay     time.Duration
	Threshold float64
	// ReadHeap and Collect default to the runtime's (ReadHeap, runtime.GC);
	// tests replace them.
	ReadHeap func() Heap
	Collect  func()

	kick chan struct{}
}

// New returns a Collector with the runtime's heap and collector.
func New(delay time.Duration, threshold float64) *Collector {
	return &Collector{Delay: delay, Threshold: threshold, ReadHeap: ReadHeap, Collect: runtime.GC, kick: make(chan struct{}, 1)}
}

// Kick says that work just ended; it never blocks.
func (c *Collector) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run waits for kicks until ctx ends; Delay after the last kick of a burst
// it collects if the heap's allowance is used past Threshold. A kick that
// comes while it waits restarts the wait.
func (c *Collector) Run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-c.kick:
			t.Reset(c.Delay)
		case <-t.C:
			if c.ReadHeap().Used() > c.Threshold {
				c.Collect()
			}
		}
	}
}

// samples are the runtime metrics ReadHeap reads.
var samples = []string{"/memory/classes/heap/objects:bytes", "/gc/heap/live:bytes", "/gc/heap/goal:bytes"}

// ReadHeap reads the Go runtime's heap figures.
func ReadHeap() Heap {
	s := make([]metrics.Sample, len(samples))
	for i, name := range samples {
		s[i].Name = name
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return Heap{InUse: v(0), Live: v(1), Goal: v(2)}
}
