// Package affinity confines a whole Go process to a set of CPUs, for the
// --cpus flag of the queuer and the decider.
//
// Why: a verdict the kernel cache cannot give costs a round trip between
// the two processes, and each leg wakes a thread that slept. On virtual
// machines an idle vCPU halts, and waking it costs tens of microseconds
// (about 80 µs on the 2-vCPU machines docs/performance.md was measured
// on, against under 10 µs for a switch on one CPU). Confining both
// processes to one CPU turns those wake-ups into switches on a CPU that is
// already awake. The price is that the two processes share that CPU.
package affinity

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FlagUsage describes --cpus.
const FlagUsage = "confine the process to these CPUs, a list such as 1 or 0-1,4 (empty: leave it as started). " +
	"The queuer and the decider on one CPU answer first packets that need the decider faster on VMs, where waking an idle vCPU is slow"

// Set is a set of CPUs. The zero Set is empty.
type Set struct{ cpus unix.CPUSet }

// Empty reports whether s holds no CPU.
func (s Set) Empty() bool { return s.cpus.Count() == 0 }

// Count is the number of CPUs in s.
func (s Set) Count() int { return s.cpus.Count() }

// String formats s as a CPU list ("0-1,4").
func (s Set) String() string { return listOf(s.cpus) }

// Parse reads a CPU list ("", "1", "0-3,8"). The empty string is the empty
// set: leave the process alone.
func Parse(s string) (Set, error) {
	var set Set
	s = strings.TrimSpace(s)
	if s == "" {
		return set, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		first, err := cpuNumber(lo)
		if err != nil {
			return set, err
		}
		last := first
		if isRange {
			if last, err = cpuNumber(hi); err != nil {
				return set, err
			}
			if last < first {
				return set, fmt.Errorf("CPU range %q runs backwards", part)
			}
		}
		for c := first; c <= last; c++ {
			set.cpus.Set(c)
		}
	}
	return set, nil
}

// cpuNumber reads one CPU number of a list.
func cpuNumber(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a CPU number", s)
	}
	// unix.CPUSet holds 1024 CPUs, the kernel's usual maximum.
	if n >= len(unix.CPUSet{})*64 {
		return 0, fmt.Errorf("CPU %d is beyond the %d this build supports", n, len(unix.CPUSet{})*64)
	}
	return n, nil
}

// listOf formats set as a CPU list ("0-1,4").
func listOf(set unix.CPUSet) string {
	var parts []string
	max := len(set) * 64
	for c := 0; c < max; c++ {
		if !set.IsSet(c) {
			continue
		}
		end := c
		for end+1 < max && set.IsSet(end+1) {
			end++
		}
		if end == c {
			parts = append(parts, strconv.Itoa(c))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c, end))
		}
		c = end
	}
	return strings.Join(parts, ",")
}

// Confine moves every thread of the process onto set, which must be a
// subset of the CPUs the process may use now (its cgroup's cpuset and the
// affinity it was started with). Threads the Go runtime starts later
// inherit the mask of the thread that starts them, so after Confine they
// stay on set. Unless the GOMAXPROCS environment variable sets it, Confine
// also lowers GOMAXPROCS to the number of CPUs in set, as Go does for a
// process started with that affinity. Call it early, before the process
// does real work. An empty set leaves the process alone.
func Confine(s Set) error {
	if s.Empty() {
		return nil
	}
	set := s.cpus
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return fmt.Errorf("read CPU affinity: %w", err)
	}
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) && !allowed.IsSet(c) {
			return fmt.Errorf("CPU %d is not available to this process (it may use %s)", c, listOf(allowed))
		}
	}
	// A thread started while the others are moved could copy the old mask:
	// go over the threads until a pass finds none it has not moved.
	var done []int
	for range 10 {
		tids, err := threads()
		if err != nil {
			return err
		}
		moved := false
		for _, tid := range tids {
			if slices.Contains(done, tid) {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("confine thread %d to CPUs %s: %w", tid, listOf(set), err)
			}
			done = append(done, tid)
			moved = true
		}
		if !moved {
			if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) > s.Count() {
				runtime.GOMAXPROCS(s.Count())
			}
			return nil
		}
	}
	return fmt.Errorf("confine to CPUs %s: the process kept starting threads", listOf(set))
}

// threads lists the process's thread ids.
func threads() ([]int, error) {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
