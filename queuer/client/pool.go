package client

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// Pool spreads decisions over several streams to one decider, each its own
// Client with its own receiving goroutine. DecideFunc's callbacks run on
// the goroutine that received the answer, so with one stream every verdict
// of the node would be set one after another; a stream per queue sets them
// in parallel. Decide, Watch and Learn use the first stream.
type Pool struct {
	lanes []*Client
	seed  maphash.Seed
}

// NewPool creates n clients (at least one) for the decider listening on path.
// It does not connect; Run does.
func NewPool(path string, opts Options, n int) (*Pool, error) {
	p := &Pool{seed: maphash.MakeSeed()}
	for range max(n, 1) {
		c, err := New(path, opts)
		if err != nil {
			_ = p.Close()
			return nil, err
		}
		p.lanes = append(p.lanes, c)
	}
	return p, nil
}

// Streams is the number of streams.
func (p *Pool) Streams() int { return len(p.lanes) }

// Run keeps every stream open until ctx ends.
func (p *Pool) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, c := range p.lanes {
		wg.Go(func() { c.Run(ctx) })
	}
	wg.Wait()
}

// Close releases every stream's connection.
func (p *Pool) Close() error {
	var errs []error
	for _, c := range p.lanes {
		errs = append(errs, c.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("client: close pool: %w", err)
	}
	return nil
}

// Connected reports whether every stream is open.
func (p *Pool) Connected() bool {
	for _, c := range p.lanes {
		if !c.Connected() {
			return false
		}
	}
	return true
}

// DecideFunc is Client.DecideFunc on the stream that q's addresses pick: a
// pair of pods always uses the same one.
func (p *Pool) DecideFunc(q Query, timeout time.Duration, fn func(Result, error)) {
	c := p.lanes[0]
	if len(p.lanes) > 1 {
		h := maphash.Comparable(p.seed, [2]netip.Addr{q.Src, q.Dst})
		c = p.lanes[h%uint64(len(p.lanes))]
	}
	c.DecideFunc(q, timeout, fn)
}

// Decide is Client.Decide on the first stream.
func (p *Pool) Decide(ctx context.Context, q Query) (Result, error) {
	return p.lanes[0].Decide(ctx, q)
}

// Watch is Client.Watch on the first stream's connection.
func (p *Pool) Watch(ctx context.Context, node string, fn func(WatchUpdate)) error {
	return p.lanes[0].Watch(ctx, node, fn)
}

// Learn is Client.Learn on the first stream's connection.
func (p *Pool) Learn(ctx context.Context, pod netip.Addr, rs []Resolution) (uint64, error) {
	return p.lanes[0].Learn(ctx, pod, rs)
}
