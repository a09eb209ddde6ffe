package memlimit

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
	"testing/fstest"
)

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }

func TestCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fs        fstest.MapFS
		want      int64
		wantFile  string
		wantError string
	}{{
		name: "v2, own path visible",
		fs: fstest.MapFS{
			"proc/self/cgroup": file("0::/kubepods/burstable/pod1/c1\n"),
			"sys/fs/cgroup/kubepods/burstable/pod1/c1/memory.max": file("268435456\n"),
			"sys/fs/cgroup/memory.max":                            file("max\n"),
		},
		want: 268435456, wantFile: "/sys/fs/cgroup/kubepods/burstable/pod1/c1/memory.max",
	}, {
		name: "v2 in a cgroup namespace: the container's cgroup is the root",
		fs: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("134217728\n"),
		},
		want: 134217728, wantFile: "/sys/fs/cgroup/memory.max",
	}, {
		name: "v2 unlimited",
		fs: fstest.MapFS{
			"proc/self/cgroup":         file("0::/user.slice\n"),
			"sys/fs/cgroup/memory.max": file("max\n"),
		},
		wantFile: "/sys/fs/cgroup/memory.max",
	}, {
		name: "v1, path mounted at the root as runc does",
		fs: fstest.MapFS{
			"proc/self/cgroup":                           file("12:cpu,cpuacct:/kubepods/pod1/c1\n11:memory:/kubepods/pod1/c1\n1:name=systemd:/kubepods/pod1/c1\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": file("268435456\n"),
		},
		want: 268435456, wantFile: "/sys/fs/cgroup/memory/memory.limit_in_bytes",
	}, {
		name: "v1 on the host, unlimited",
		fs: fstest.MapFS{
			"proc/self/cgroup": file("4:memory:/user.slice\n0::/user.slice\n"),
			"sys/fs/cgroup/memory/user.slice/memory.limit_in_bytes": file("9223372036854771712\n"),
		},
		wantFile: "/sys/fs/cgroup/memory/user.slice/memory.limit_in_bytes",
	}, {
		name: "no cgroup files: no limit",
		fs:   fstest.MapFS{"proc/self/cgroup": file("0::/\n")},
	}, {
		name: "garbage in the limit file",
		fs: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("lots\n"),
		},
		wantError: "lots",
	}, {
		name:      "no /proc",
		fs:        fstest.MapFS{},
		wantError: "/proc/self/cgroup",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, where, err := CgroupLimit(tc.fs)
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantError)
				}
				return
			}
			if err != nil || got != tc.want || where != tc.wantFile {
				t.Errorf("got %d from %q (%v), want %d from %q", got, where, err, tc.want, tc.wantFile)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]Setting{
		"auto":  {Auto: true},
		"none":  {},
		"0":     {},
		"900Mi": {Bytes: 900 << 20},
		"1G":    {Bytes: 1e9},
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1Gi", "1.5.5"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) accepted", in)
		}
	}
}

func TestApply(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	t.Setenv("GOMEMLIMIT", "")
	limited := fstest.MapFS{
		"proc/self/cgroup":         file("0::/\n"),
		"sys/fs/cgroup/memory.max": file("1000000000\n"),
	}

	got, source, err := Apply(Setting{Auto: true}, limited)
	if err != nil || got != 900000000 || debug.SetMemoryLimit(-1) != 900000000 || !strings.Contains(source, "90% of the cgroup limit 1000000000") {
		t.Errorf("auto: %d %q %v; runtime limit %d", got, source, err, debug.SetMemoryLimit(-1))
	}
	debug.SetMemoryLimit(math.MaxInt64)
	got, _, err = Apply(Setting{Auto: true}, fstest.MapFS{"proc/self/cgroup": file("0::/\n")})
	if err != nil || got != 0 || debug.SetMemoryLimit(-1) != math.MaxInt64 {
		t.Errorf("auto without a cgroup limit: %d %v; runtime limit %d", got, err, debug.SetMemoryLimit(-1))
	}
	got, _, err = Apply(Setting{Bytes: 123 << 20}, limited)
	if err != nil || got != 123<<20 || debug.SetMemoryLimit(-1) != 123<<20 {
		t.Errorf("explicit: %d %v; runtime limit %d", got, err, debug.SetMemoryLimit(-1))
	}
	// GOMEMLIMIT set: the runtime's value stays.
	debug.SetMemoryLimit(77 << 20)
	t.Setenv("GOMEMLIMIT", "77MiB")
	got, source, err = Apply(Setting{Auto: true}, limited)
	if err != nil || got != 77<<20 || source != "GOMEMLIMIT=77MiB" || debug.SetMemoryLimit(-1) != 77<<20 {
		t.Errorf("GOMEMLIMIT: %d %q %v", got, source, err)
	}
}
