package bench

import (
	"testing"
	"time"
)

func TestGovernedAndSteady(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int, ok bool) Attempt {
		s := t0.Add(time.Duration(ms) * time.Millisecond)
		return Attempt{Start: s, Done: s.Add(time.Millisecond), OK: ok}
	}
	// Allowed until 10 ms, denied from 12 ms, one late allowed at 16 ms.
	as := []Attempt{at(0, true), at(2, true), at(4, true), at(6, true), at(8, true), at(10, true),
		at(12, false), at(14, false), at(16, true), at(18, false), at(20, false)}
	for _, tc := range []struct {
		name    string
		from    int
		until   int
		want    bool
		firstMS int
		flaps   int
		found   bool
	}{
		{name: "first denied after the change, one flap", from: 5, until: 100, want: false, firstMS: 12, flaps: 1, found: true},
		{name: "flaps counted only until the bound", from: 5, until: 15, want: false, firstMS: 12, flaps: 0, found: true},
		{name: "already governed at from", from: 0, until: 100, want: true, firstMS: 0, flaps: 4, found: true},
		{name: "never", from: 21, until: 100, want: false, found: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, flaps, ok := Governed(as, t0.Add(time.Duration(tc.from)*time.Millisecond), t0.Add(time.Duration(tc.until)*time.Millisecond), tc.want)
			if ok != tc.found {
				t.Fatalf("found = %v, want %v", ok, tc.found)
			}
			if !ok {
				return
			}
			if got := int(first.Start.Sub(t0) / time.Millisecond); got != tc.firstMS || flaps != tc.flaps {
				t.Errorf("first at %d ms with %d flaps, want %d ms with %d", got, flaps, tc.firstMS, tc.flaps)
			}
		})
	}
	if !Steady(as, 2, false) || Steady(as, 3, false) || !Steady(as[:6], 6, true) || Steady(as, 100, false) {
		t.Error("Steady")
	}
}
