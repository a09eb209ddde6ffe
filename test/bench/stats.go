package bench

import (
	"fmt"
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0..100) of xs by the nearest-rank
// method, or 0 for an empty slice. xs is not modified.
func Percentile[T int64 | float64 | time.Duration](xs []T, p float64) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return nearestRank(s, p)
}

// nearestRank is Percentile on an already sorted slice.
func nearestRank[T int64 | float64 | time.Duration](sorted []T, p float64) T {
	rank := int(p/100*float64(len(sorted)) + 0.999999999)
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// Spread summarises repeated measurements of one figure: the median and the
// range.
type Spread struct {
	Median, Min, Max float64
	// N is how many measurements there were.
	N int
}

// SpreadOf summarises xs; the median of an even count is the lower middle
// value, so that it is always one of the measurements.
func SpreadOf(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return Spread{Median: s[(len(s)-1)/2], Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Format prints the median and, with more than one measurement, the range,
// each with format f (e.g. "%.0f").
func (s Spread) Format(f string) string {
	if s.N == 0 {
		return "–"
	}
	med := fmt.Sprintf(f, s.Median)
	if s.N == 1 {
		return med
	}
	return fmt.Sprintf("%s ("+f+"–"+f+")", med, s.Min, s.Max)
}

// Millis converts a duration to fractional milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
