package state

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/decider/engine"
)

// cluster has one pod per label value, pod i at 10.0.0.i.
func cluster(labels ...string) engine.Input {
	var in engine.Input
	for i, l := range labels {
		ip := fmt.Sprintf("10.0.0.%d", i+1)
		in.Pods = append(in.Pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p%d", i+1), Labels: map[string]string{"app": l}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
		})
	}
	return in
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestPublishGenerationsAndChanges(t *testing.T) {
	s := New()
	if s.Current() != nil {
		t.Fatal("Current before the first Publish")
	}
	woke := s.Changed()
	v1 := s.Publish(cluster("a", "b", "c"))
	select {
	case <-woke:
	default:
		t.Fatal("Changed was not closed by Publish")
	}
	if v1.Generation != 1 || v1.Changed != nil || s.Current() != v1 {
		t.Fatalf("first view: generation %d, changed %v", v1.Generation, v1.Changed)
	}
	v2 := s.Publish(cluster("a", "x", "c")) // p2 relabelled
	v3 := s.Publish(cluster("a", "x", "c")) // nothing
	v4 := s.Publish(cluster("y", "x", "c")) // p1 relabelled
	if v2.Generation != 2 || v4.Generation != 4 {
		t.Fatalf("generations %d, %d", v2.Generation, v4.Generation)
	}
	if !slices.Equal(v2.Changed, addrs("10.0.0.2")) || len(v3.Changed) != 0 || !slices.Equal(v4.Changed, addrs("10.0.0.1")) {
		t.Fatalf("changes %v, %v, %v", v2.Changed, v3.Changed, v4.Changed)
	}
	for _, tc := range []struct {
		from, to uint64
		want     []netip.Addr
		all      bool
	}{
		{0, 4, nil, true}, // a watcher that has seen nothing
		{1, 2, addrs("10.0.0.2"), false},
		{2, 3, nil, false},
		{1, 4, addrs("10.0.0.1", "10.0.0.2"), false},
		{3, 3, nil, false},
		{4, 3, nil, true}, // backwards: cannot tell
	} {
		got, all := s.ChangedBetween(tc.from, tc.to)
		if all != tc.all || !slices.Equal(got, tc.want) {
			t.Errorf("ChangedBetween(%d, %d) = %v, all=%v; want %v, all=%v", tc.from, tc.to, got, all, tc.want, tc.all)
		}
	}
	// A watcher further behind than the history is told everything changed.
	for range historySize {
		s.Publish(cluster("y", "x", "c"))
	}
	if _, all := s.ChangedBetween(2, s.Current().Generation); !all {
		t.Error("ChangedBetween across more than the history did not say all")
	}
}

func TestRunCoalescesBursts(t *testing.T) {
	s := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var inputs, published atomic.Int32
	var firstAt atomic.Int64 // nanoseconds from the first trigger to the first publication
	done := make(chan struct{})
	const settle = 2 * time.Second
	begin := time.Now()
	go func() {
		defer close(done)
		s.Run(ctx, settle, nil, func() engine.Input {
			inputs.Add(1)
			return cluster("a")
		}, func(*View) {
			if published.Add(1) == 1 {
				firstAt.Store(int64(time.Since(begin)))
			}
		})
	}()
	// A trigger after a quiet spell is built at once.
	s.Trigger()
	deadline := time.Now().Add(5 * time.Second)
	for published.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Duration(firstAt.Load()); published.Load() != 1 || d >= settle {
		t.Fatalf("first trigger: %d publications, after %v; want one, before the %v settle", published.Load(), d, settle)
	}
	// A burst right after it is gathered into one more rebuild, after the
	// settle.
	burst := time.Now()
	for range 10 {
		s.Trigger()
	}
	deadline = time.Now().Add(3 * settle)
	for published.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(burst); d < settle-100*time.Millisecond {
		t.Errorf("the burst was built %v after it, before the settle", d)
	}
	// Nothing is left pending: no third compile follows.
	time.Sleep(settle / 4)
	cancel()
	<-done
	if got := inputs.Load(); got != 2 {
		t.Errorf("one trigger and then a burst of 10 compiled %d times, want 2", got)
	}
}
