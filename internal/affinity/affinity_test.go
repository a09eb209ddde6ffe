package affinity

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: String of the set, or "error"
	}{
		{"", ""},
		{" ", ""},
		{"1", "1"},
		{"0-3", "0-3"},
		{"3,1,2", "1-3"},
		{"0-1, 4", "0-1,4"},
		{"5-5", "5"},
		{"1023", "1023"},
		{"1024", "error"},
		{"-1", "error"},
		{"3-1", "error"},
		{"a", "error"},
		{"1,", "error"},
		{"0--2", "error"},
	} {
		set, err := Parse(tc.in)
		got := set.String()
		if err != nil {
			got = "error"
		}
		if got != tc.want {
			t.Errorf("Parse(%q) = %q (err %v), want %q", tc.in, got, err, tc.want)
		}
	}
}

// confineChild is set in the environment of the test binary that
// TestConfine runs: the CPU list to confine itself to.
const confineChild = "TOLLGATE_AFFINITY_TEST_CPUS"

// TestConfine runs the test binary again, confined to one CPU the test may
// use: every thread it has then, and every one it starts after, must be on
// that CPU alone.
func TestConfine(t *testing.T) {
	if cpus := os.Getenv(confineChild); cpus != "" {
		confineAndCheck(t, cpus)
		return
	}
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatal(err)
	}
	last := -1
	for c := range len(allowed) * 64 {
		if allowed.IsSet(c) {
			last = c
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestConfine$", "-test.v")
	cmd.Env = append(os.Environ(), confineChild+"="+cpuSet(last).String())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "threads on CPU") {
		t.Fatalf("confined child: %v\n%s", err, out)
	}
	t.Logf("child: %s", strings.TrimSpace(string(out)))
}

func confineAndCheck(t *testing.T, cpus string) {
	set, err := Parse(cpus)
	if err != nil {
		t.Fatal(err)
	}
	// Threads exist before: the runtime's, and some locked goroutines'.
	release := make(chan struct{})
	var wg sync.WaitGroup
	startLocked := func(n int) {
		for range n {
			wg.Add(1)
			ready := make(chan struct{})
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				close(ready)
				<-release
			}()
			<-ready
		}
	}
	startLocked(4)
	if err := Confine(set); err != nil {
		t.Fatal(err)
	}
	startLocked(4) // and after
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		status, err := os.ReadFile(filepath.Join("/proc/self/task", e.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		for line := range strings.SplitSeq(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok && strings.TrimSpace(v) != cpus {
				t.Errorf("thread %s may run on CPUs %s, want %s", e.Name(), strings.TrimSpace(v), cpus)
			}
		}
	}
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) != set.Count() {
		t.Errorf("GOMAXPROCS is %d after confining to %d CPU(s)", runtime.GOMAXPROCS(0), set.Count())
	}
	close(release)
	wg.Wait()
	t.Logf("%d threads on CPU %s", len(entries), cpus)
}

func TestConfineRefusesUnavailableCPU(t *testing.T) {
	err := Confine(cpuSet(1023))
	if err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("Confine(1023) = %v, want an error naming the CPU as not available", err)
	}
	if err := Confine(Set{}); err != nil {
		t.Fatalf("Confine(empty) = %v, want nil", err)
	}
}

func cpuSet(cpus ...int) Set {
	var s Set
	for _, c := range cpus {
		s.cpus.Set(c)
	}
	return s
}
