package bench

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	xs := []int64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tc := range []struct {
		p    float64
		want int64
	}{
		{0, 1}, {10, 1}, {50, 5}, {90, 9}, {99, 10}, {100, 10},
	} {
		if got := Percentile(xs, tc.p); got != tc.want {
			t.Errorf("Percentile(%v) = %d, want %d", tc.p, got, tc.want)
		}
	}
	if xs[0] != 5 {
		t.Error("Percentile sorted its input")
	}
	if got := Percentile([]time.Duration(nil), 50); got != 0 {
		t.Errorf("Percentile(empty) = %v", got)
	}
	if got := Percentile([]float64{7}, 99); got != 7 {
		t.Errorf("Percentile(one) = %v", got)
	}
}

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want Spread
		text string
	}{
		{nil, Spread{}, "–"},
		{[]float64{3}, Spread{3, 3, 3, 1}, "3"},
		{[]float64{4, 1, 3, 2}, Spread{2, 1, 4, 4}, "2 (1–4)"},
		{[]float64{9, 1, 5}, Spread{5, 1, 9, 3}, "5 (1–9)"},
	} {
		got := SpreadOf(tc.xs)
		if got != tc.want {
			t.Errorf("SpreadOf(%v) = %+v, want %+v", tc.xs, got, tc.want)
		}
		if s := got.Format("%.0f"); s != tc.text {
			t.Errorf("Format = %q, want %q", s, tc.text)
		}
	}
}
