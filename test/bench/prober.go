package bench

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Attempt is one probe connection.
type Attempt struct {
	// Start is when its SYN left; Done when it was answered or given up.
	Start, Done time.Time
	// OK is true when the connection opened; false when nothing answered
	// within the prober's timeout (the SYN was dropped).
	OK bool
}

// Prober opens a connection from a pod to one address every interval,
// each from one of a pool of threads in the pod's namespace, and records
// when each started and whether it was answered. A connection to a port
// nobody listens on (refused) is a harness error and is counted apart.
type Prober struct {
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}

	mu       sync.Mutex
	attempts []Attempt
	errors   int
	skipped  int
}

// maxAttempts bounds the attempts a Prober keeps (the oldest go first).
const maxAttempts = 1 << 21

// StartProber starts probing dst from network namespace ns: one attempt
// every interval, at most workers at a time, each given up after timeout.
// Close stops it.
func StartProber(ns string, dst netip.AddrPort, interval, timeout time.Duration, workers int) *Prober {
	p := &Prober{interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	ticks := make(chan struct{}, workers)
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = InNamespace(ns, workers, func(int) error {
			for range ticks {
				start := time.Now()
				_, err := DialTCP4(dst, timeout, false)
				p.record(start, err)
			}
			return nil
		})
	})
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				close(ticks)
				wg.Wait()
				close(p.done)
				return
			case <-t.C:
				select {
				case ticks <- struct{}{}:
				default:
					p.mu.Lock()
					p.skipped++
					p.mu.Unlock()
				}
			}
		}
	}()
	return p
}

func (p *Prober) record(start time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil && !errors.Is(err, ErrTimeout) {
		p.errors++
		return
	}
	if len(p.attempts) >= maxAttempts {
		p.attempts = slices.Delete(p.attempts, 0, maxAttempts/2)
	}
	p.attempts = append(p.attempts, Attempt{Start: start, Done: time.Now(), OK: err == nil})
}

// Since returns the attempts that started at or after t and have finished,
// ordered by start.
func (p *Prober) Since(t time.Time) []Attempt {
	p.mu.Lock()
	var out []Attempt
	for _, a := range p.attempts {
		if !a.Start.Before(t) {
			out = append(out, a)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Attempt) int { return a.Start.Compare(b.Start) })
	return out
}

// Counts returns the harness errors (refused or failed connections) and
// the ticks dropped because every worker was busy.
func (p *Prober) Counts() (errors, skipped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errors, p.skipped
}

// Close stops probing and waits for the attempts in flight.
func (p *Prober) Close() {
	close(p.stop)
	<-p.done
}

// Governed finds, among attempts ordered by start, the first that started
// at or after from and shows want (true: answered). It also counts the
// attempts after it, up to until, that show the opposite (flaps). ok is
// false when there is no such attempt or when an earlier attempt since from
// might still finish with want (one in flight that started before the last
// finished one cannot be excluded by the caller; Governed only looks at
// finished attempts, so the caller waits out the timeout first).
func Governed(attempts []Attempt, from, until time.Time, want bool) (first Attempt, flaps int, ok bool) {
	for _, a := range attempts {
		if a.Start.Before(from) {
			continue
		}
		if !ok {
			if a.OK == want {
				first, ok = a, true
			}
			continue
		}
		if a.Start.After(until) {
			break
		}
		if a.OK != want {
			flaps++
		}
	}
	return first, flaps, ok
}

// Steady reports whether the last n attempts all show want.
func Steady(attempts []Attempt, n int, want bool) bool {
	if len(attempts) < n {
		return false
	}
	for _, a := range attempts[len(attempts)-n:] {
		if a.OK != want {
			return false
		}
	}
	return true
}
