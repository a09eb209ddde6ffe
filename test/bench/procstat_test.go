package bench

import (
	"os"
	"testing"
)

func TestParseStatTimes(t *testing.T) {
	// Fields 14-17 are 11, 12, 13, 14; the name holds spaces and a ')'.
	stat := "42 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18"
	u, s, cu, cs, err := parseStatTimes(stat)
	if err != nil {
		t.Fatal(err)
	}
	if u != 11 || s != 12 || cu != 13 || cs != 14 {
		t.Errorf("got %d %d %d %d, want 11 12 13 14", u, s, cu, cs)
	}
	if _, _, _, _, err := parseStatTimes("42 (x) S 1 2"); err == nil {
		t.Error("short stat parsed")
	}
}

func TestReadProcStatSelf(t *testing.T) {
	s, err := ReadProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.HWM < s.RSS {
		t.Errorf("RSS %d, HWM %d", s.RSS, s.HWM)
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP go_memstats_heap_inuse_bytes x
go_memstats_heap_inuse_bytes 1.5e+07
go_memstats_heap_inuse_bytes_total 3
process_resident_memory_bytes{a="b"} 42
`
	for _, tc := range []struct {
		name string
		want float64
		ok   bool
	}{
		{"go_memstats_heap_inuse_bytes", 1.5e7, true},
		{"process_resident_memory_bytes", 42, true},
		{"go_memstats_heap", 0, false},
		{"missing", 0, false},
	} {
		got, ok := MetricValue(text, tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("MetricValue(%q) = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseCPULine(t *testing.T) {
	got, err := parseCPULine("cpu  10 1 5 80 4 0 0 0 7 0")
	if err != nil {
		t.Fatal(err)
	}
	if got.Busy != 16 || got.Total != 100 {
		t.Errorf("got %+v, want busy 16 of 100", got)
	}
	if BusyBetween(CPUTimes{Busy: 10, Total: 100}, CPUTimes{Busy: 60, Total: 200}) != 0.5 {
		t.Error("BusyBetween")
	}
	if _, err := parseCPULine("intr 1 2"); err == nil {
		t.Error("parsed a line that is not cpu")
	}
}
