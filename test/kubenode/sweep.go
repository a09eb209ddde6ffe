package kubenode

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tollgate/tollgate/test/netsim"
)

// containerLogLinks is where every kubelet links its containers' logs,
// whatever its podLogsDir.
const containerLogLinks = "/var/log/containers"

// Sweep removes everything the node cfg left behind, whether it was stopped
// in order or its processes were killed: every process whose command line
// names the node's directory (containerd, kubelet, kube-proxy, the shims
// started with the node's containerd socket) and every process below them
// (pause and pod containers); the pods' cni-* network namespaces (found by
// the namespace those processes were in); every mount under the node's
// directory (the kubelet bind-mounts its root dir onto itself; volumes,
// rootfs and shm mounts); the node's namespace and host veth; the log links
// in /var/log/containers into the node's directory; the node's cgroups.
// Running it again finds nothing to do.
func Sweep(cfg Config) error {
	var errs []error
	procs, err := nodeProcesses(cfg.Dir)
	if err != nil {
		errs = append(errs, err)
	}
	netns := map[fileID]bool{}
	for _, pid := range procs {
		if id, err := statID(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			netns[id] = true
		}
	}
	for _, pid := range procs {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	if err := waitGone(procs, 20*time.Second); err != nil {
		errs = append(errs, fmt.Errorf("node %s: %w", cfg.Name, err))
	}
	if err := deletePodNetns(netns); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := netsim.DeleteNetns(cfg.Netns); err != nil {
		errs = append(errs, fmt.Errorf("node %s: delete namespace: %w", cfg.Name, err))
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", cfg.HostVeth)); err == nil {
		if err := netsim.IPBatch("", "link del "+cfg.HostVeth); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeLogLinks(cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(cfg.CgroupRoot()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// nodeProcesses lists the processes whose command line mentions dir, and
// all their descendants, never this process or its ancestors.
func nodeProcesses(dir string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	parent := map[int]int{}
	var matched []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, ok := parentOf(pid)
		if !ok {
			continue
		}
		parent[pid] = ppid
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(cmdline, []byte(dir)) {
			matched = append(matched, pid)
		}
	}
	exclude := map[int]bool{}
	for pid := os.Getpid(); pid > 1; pid = parent[pid] {
		exclude[pid] = true
		if _, ok := parent[pid]; !ok {
			break
		}
	}
	ours := map[int]bool{}
	for _, pid := range matched {
		if !exclude[pid] {
			ours[pid] = true
		}
	}
	// Descendants: repeat until no process is added (the tree is shallow).
	for changed := true; changed; {
		changed = false
		for pid, ppid := range parent {
			if ours[ppid] && !ours[pid] && !exclude[pid] {
				ours[pid] = true
				changed = true
			}
		}
	}
	var out []int
	for pid := range ours {
		out = append(out, pid)
	}
	slices.Sort(out)
	return out, nil
}

// parentOf reads a process's parent id from /proc/PID/status.
func parentOf(pid int) (int, bool) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			ppid, err := strconv.Atoi(strings.TrimSpace(v))
			return ppid, err == nil
		}
	}
	return 0, false
}

// waitGone waits until none of pids exists any more (zombies count as
// gone: their parent may be this process).
func waitGone(pids []int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var left []int
		for _, pid := range pids {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err == nil && !bytes.Contains(status, []byte(") Z ")) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still running after SIGKILL", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fileID identifies a file (here: a network namespace) by device and inode.
type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// deletePodNetns deletes the cni-* namespaces (containerd's, one per pod)
// whose identity is in ids.
func deletePodNetns(ids map[fileID]bool) error {
	matches, _ := filepath.Glob("/var/run/netns/cni-*")
	var errs []error
	for _, path := range matches {
		id, err := statID(path)
		if err != nil || !ids[id] {
			continue
		}
		if err := netsim.DeleteNetns(filepath.Base(path)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount point at or below dir, deepest first,
// lazily (a mount still busy goes once unused).
func unmountUnder(dir string) error {
	var errs []error
	for range 10 { // stacked mounts reappear one layer at a time
		points, err := mountPointsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	return fmt.Errorf("mounts under %s keep reappearing", dir)
}

// mountPointsUnder lists the mount points at or below dir, deepest first.
func mountPointsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return mountPointsIn(string(data), dir), nil
}

// mountPointsIn lists the mount points of a mountinfo text at or below
// dir, deepest first.
func mountPointsIn(mountinfo, dir string) []string {
	var out []string
	for line := range strings.SplitSeq(mountinfo, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountPath(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeLogLinks removes the links in /var/log/containers that point into
// dir.
func removeLogLinks(dir string) error {
	entries, err := os.ReadDir(containerLogLinks)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", containerLogLinks, err)
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(containerLogLinks, e.Name())
		target, err := os.Readlink(path)
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// forEachCgroupHierarchy calls fn with the mount point of every cgroup
// hierarchy (v1 controllers, the named systemd one, the unified one).
func forEachCgroupHierarchy(fn func(root string) error) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	var errs []error
	for line := range strings.SplitSeq(string(data), "\n") {
		_, post, ok := strings.Cut(line, " - ")
		fields := strings.Fields(line)
		if !ok || len(fields) < 5 {
			continue
		}
		if fstype := strings.Fields(post); len(fstype) > 0 && (fstype[0] == "cgroup" || fstype[0] == "cgroup2") {
			if err := fn(unescapeMountPath(fields[4])); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the cgroup root of a node and everything below it
// in every hierarchy, deepest first (only empty cgroups can go; the
// processes are gone by now).
func removeCgroups(root string) error {
	return forEachCgroupHierarchy(func(hier string) error {
		top := filepath.Join(hier, root)
		var dirs []string
		err := filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("walk %s: %w", top, err)
		}
		var errs []error
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
		return errors.Join(errs...)
	})
}
