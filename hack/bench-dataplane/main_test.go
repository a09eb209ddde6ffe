package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		err    string
		shapes []shape
	}{
		{name: "defaults", shapes: []shape{{1, 1, 0}, {1, 4, 1}, {4, 16, 2}}},
		{name: "smoke", args: []string{"--smoke"}, shapes: []shape{{1, 2, 0}}},
		{name: "too many clients", args: []string{"--shapes", "4x1,5x1"}, err: "at most"},
		{name: "bad shape", args: []string{"--shapes", "4"}, err: "bad load"},
		{name: "unknown variant", args: []string{"--variants", "none,cilium"}, err: "unknown variant"},
		{name: "no baseline", args: []string{"--variants", "tollgate"}, err: "must include none"},
		{name: "no policy", args: []string{"--policies", "0"}, err: "at least one policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.shapes) != len(tc.shapes) {
				t.Fatalf("shapes %v, want %v", c.shapes, tc.shapes)
			}
			for i := range c.shapes {
				if c.shapes[i] != tc.shapes[i] {
					t.Errorf("shape %d = %+v, want %+v", i, c.shapes[i], tc.shapes[i])
				}
			}
		})
	}
}

// TestRatiosPairRounds checks that a ratio is taken within each round and
// that rounds without a partner are left out.
func TestRatiosPairRounds(t *testing.T) {
	mk := func(round int, variant string, rate float64, p99 time.Duration) cell {
		return cell{Policies: 10, Round: round, Variant: variant, Workload: fresh, Shape: "1×1", ConnPerSec: rate, Conns: 1, P99: p99}
	}
	tb := index([]cell{
		mk(0, "none", 1000, time.Millisecond), mk(0, "tollgate", 500, 3*time.Millisecond),
		mk(1, "none", 4000, time.Millisecond), mk(1, "tollgate", 1000, 2*time.Millisecond),
		mk(2, "tollgate", 9000, time.Millisecond),
	})
	k := key{policies: 10, variant: "tollgate", workload: fresh, shape: "1×1"}
	got := tb.over(3, k, tb.ratioTo("none"))
	if got.N != 2 || got.Min != 0.25 || got.Max != 0.5 {
		t.Errorf("ratios %+v, want 0.25 and 0.5 from rounds 1 and 2", got)
	}
	if rate := tb.over(3, k, connPerSec); rate.N != 3 || rate.Median != 1000 {
		t.Errorf("rates %+v", rate)
	}
}
