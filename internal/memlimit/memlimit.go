// Package memlimit gives a Go process a soft memory limit (runtime/debug.
// SetMemoryLimit) below its container's memory limit, so that the garbage
// collector works harder as the heap nears the limit instead of the kernel
// killing the container. Go's default (GOGC=100) lets the heap grow to
// twice what was live at the last collection: a decider with 600 MB of
// policy state may reach 1.2 GB before collecting, and be OOM-killed under
// a limit it would fit in.
package memlimit

import (
	"bufio"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Fraction of the container's limit given to the Go heap by Auto: the rest
// covers stacks, the runtime's own memory and what the kernel charges for
// (page cache of files read).
const Fraction = 0.9

// Setting is what the --memory-limit flag asks for.
type Setting struct {
	// Auto: Fraction of the cgroup's memory limit, none if there is none.
	Auto bool
	// Bytes is an explicit limit when not Auto; 0 means no limit.
	Bytes int64
}

// FlagUsage documents --memory-limit for the binaries that take it.
const FlagUsage = "soft limit for the Go heap, so the garbage collector works harder before the container's limit is reached: " +
	"auto (90% of the cgroup's memory limit, none without one), none, or a quantity such as 900Mi; GOMEMLIMIT, when set, wins"

// ApplyAndLog applies s to this process and logs the outcome; a cgroup
// that cannot be read is a warning, not a reason to stop.
func ApplyAndLog(s Setting) {
	limit, source, err := Apply(s, os.DirFS("/"))
	if err != nil {
		slog.Warn("no soft memory limit: cannot read the cgroup's limit", "err", err)
		return
	}
	slog.Info("soft memory limit", "bytes", limit, "from", source)
}

// Parse reads a --memory-limit value: "auto", "none", or a quantity such
// as "900Mi" or "1G".
func Parse(s string) (Setting, error) {
	switch s {
	case "auto":
		return Setting{Auto: true}, nil
	case "none", "0":
		return Setting{}, nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return Setting{}, fmt.Errorf("memory limit %q: want auto, none or a quantity like 900Mi: %w", s, err)
	}
	if q.Sign() <= 0 {
		return Setting{}, fmt.Errorf("memory limit %q must be positive", s)
	}
	return Setting{Bytes: q.Value()}, nil
}

// Apply sets the soft memory limit s asks for, reading the cgroup limit
// from fsys (the root file system: os.DirFS("/")) when s is Auto. The
// GOMEMLIMIT environment variable, when set, wins: the runtime has applied
// it already. It returns the limit in force (0: none) and where it came
// from, for the start-up log.
func Apply(s Setting, fsys fs.FS) (int64, string, error) {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT=" + v, nil
	}
	limit, source := s.Bytes, "--memory-limit"
	if s.Auto {
		cg, where, err := CgroupLimit(fsys)
		if err != nil {
			return 0, "", err
		}
		if cg == 0 {
			return 0, "none (no cgroup memory limit)", nil
		}
		limit, source = int64(float64(cg)*Fraction), fmt.Sprintf("%.0f%% of the cgroup limit %d (%s)", Fraction*100, cg, where)
	}
	if limit == 0 {
		return 0, "none", nil
	}
	debug.SetMemoryLimit(limit)
	return limit, source, nil
}

// CgroupLimit returns the memory limit of the cgroup this process is in
// (cgroup v2 memory.max, else v1 memory.limit_in_bytes), 0 when there is
// none, and the file it read. Paths come from /proc/self/cgroup; inside a
// container whose cgroup is mounted as the root of /sys/fs/cgroup, the
// file at the root is used.
func CgroupLimit(fsys fs.FS) (int64, string, error) {
	v2, v1, err := selfCgroups(fsys)
	if err != nil {
		return 0, "", err
	}
	var candidates []string
	if v2 != "" {
		candidates = append(candidates, path.Join("sys/fs/cgroup", v2, "memory.max"), "sys/fs/cgroup/memory.max")
	}
	if v1 != "" {
		candidates = append(candidates, path.Join("sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"), "sys/fs/cgroup/memory/memory.limit_in_bytes")
	}
	for _, name := range candidates {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			continue
		}
		n, err := parseLimit(strings.TrimSpace(string(b)))
		if err != nil {
			return 0, "", fmt.Errorf("/%s: %w", name, err)
		}
		return n, "/" + name, nil
	}
	return 0, "", nil
}

// selfCgroups reads /proc/self/cgroup: the unified (v2) path and the v1
// memory controller's path.
func selfCgroups(fsys fs.FS) (v2, v1 string, err error) {
	f, err := fsys.Open("proc/self/cgroup")
	if err != nil {
		return "", "", fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case hasController(parts[1], "memory"):
			v1 = parts[2]
		}
	}
	return v2, v1, sc.Err()
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// parseLimit reads a cgroup memory limit: "max" (v2) and v1's "unlimited"
// (a page-rounded MaxInt64) are no limit.
func parseLimit(s string) (int64, error) {
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory limit %q: %w", s, err)
	}
	if n >= math.MaxInt64/2 {
		return 0, nil
	}
	return int64(n), nil
}
