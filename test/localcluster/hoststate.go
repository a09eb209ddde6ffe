package localcluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// KernelTunables are the machine-wide sysctls a kubelet sets at start
// (protectKernelDefaults: false; with true it refuses to start unless they
// already have its values). Up saves them and Down restores them.
var KernelTunables = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// hostSysctls are the host namespace's own sysctls that the cluster must
// leave alone, next to KernelTunables.
var hostSysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
}

// hostCommands dump the host's netfilter rules (every backend), links,
// addresses, routes and policy routing rules.
var hostCommands = [][]string{
	{"iptables-nft-save"}, {"ip6tables-nft-save"},
	{"iptables-legacy-save"}, {"ip6tables-legacy-save"},
	{"nft", "list", "ruleset"},
	{"ip", "-o", "link", "show"},
	{"ip", "-o", "addr", "show"},
	{"ip", "route", "show", "table", "all"},
	{"ip", "-6", "route", "show", "table", "all"},
	{"ip", "rule", "show"},
	{"ip", "-6", "rule", "show"},
}

// volatile matches what changes with no one changing the rules: packet and
// byte counters, comments with timestamps, timers of set elements.
var volatile = []*regexp.Regexp{
	regexp.MustCompile(`\[\d+:\d+\]`),
	regexp.MustCompile(`packets \d+ bytes \d+`),
	regexp.MustCompile(`expires [0-9hms.]+`),
	regexp.MustCompile(`(?m)^#.*$`),
}

// HostState dumps what the cluster must leave exactly as it was on the
// host: netfilter rules of every backend, links, addresses, routes, rules
// and a few sysctls. Counters and timestamps are blanked. Sections whose
// command is missing or fails say so.
func HostState() string {
	var b strings.Builder
	for _, cmd := range hostCommands {
		fmt.Fprintf(&b, "== %s\n", strings.Join(cmd, " "))
		if _, err := exec.LookPath(cmd[0]); err != nil {
			b.WriteString("(not installed)\n")
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).Output()
		cancel()
		if err != nil {
			// Stable too: a backend this kernel lacks fails the same way
			// before and after.
			fmt.Fprintf(&b, "(failed: %v)\n", err)
		}
		for _, re := range volatile {
			out = re.ReplaceAll(out, nil)
		}
		b.Write(bytes.TrimSpace(out))
		b.WriteString("\n")
	}
	b.WriteString("== paths\n")
	for _, p := range HostPaths {
		_, err := os.Lstat(p)
		fmt.Fprintf(&b, "%s exists: %v\n", p, err == nil)
	}
	b.WriteString("== sysctl\n")
	for _, key := range append(append([]string{}, KernelTunables...), hostSysctls...) {
		v, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			fmt.Fprintf(&b, "%s: (%v)\n", key, err)
			continue
		}
		fmt.Fprintf(&b, "%s = %s\n", key, strings.TrimSpace(string(v)))
	}
	return b.String()
}

// Netfilter returns the netfilter sections of a HostState dump: what must
// not change even while the cluster runs.
func Netfilter(state string) string {
	var b strings.Builder
	keep := false
	for line := range strings.SplitSeq(state, "\n") {
		if strings.HasPrefix(line, "== ") {
			keep = strings.Contains(line, "tables") || strings.HasPrefix(line, "== nft")
		}
		if keep {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// SaveKernelTunables writes KernelTunables' values to path, unless path
// exists (a run that never restored them: its file has the values from
// before it).
func SaveKernelTunables(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	var b strings.Builder
	for _, key := range KernelTunables {
		v, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			return fmt.Errorf("save sysctl %s: %w", key, err)
		}
		fmt.Fprintf(&b, "%s=%s\n", key, strings.TrimSpace(string(v)))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("save kernel tunables: %w", err)
	}
	return nil
}

// RestoreKernelTunables writes back the values SaveKernelTunables saved in
// path, then removes it. A missing file means nothing to restore.
func RestoreKernelTunables(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore kernel tunables: %w", err)
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
			return fmt.Errorf("restore sysctl %s: %w", key, err)
		}
	}
	return os.Remove(path)
}

// HostPaths are the host paths a node's components create outside the
// node's directory whatever they are told: containerd's shim sockets
// (/run/containerd/s), the kubelet's log links (/var/log/containers) and
// device plugin socket (/var/lib/kubelet/device-plugins), libcni's result
// cache (/var/lib/cni) and the iptables lock (/run/xtables.lock, also the
// DaemonSet's hostPath). The ones that did not exist before Up are removed
// by Down.
var HostPaths = []string{"/run/containerd", "/var/log/containers", "/var/lib/kubelet", "/var/lib/cni", "/run/xtables.lock"}

// RecordHostPaths writes to file which of HostPaths exist, unless file
// exists already (a run that never cleaned up: its record is the older
// one).
func RecordHostPaths(file string) error {
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	var b strings.Builder
	for _, p := range HostPaths {
		if _, err := os.Lstat(p); err == nil {
			b.WriteString(p + "\n")
		}
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("record host paths: %w", err)
	}
	return nil
}

// RemoveNewHostPaths removes the HostPaths that RecordHostPaths found
// missing, then file. Call it once nothing of the cluster runs. A missing
// file means nothing was recorded: nothing is removed.
func RemoveNewHostPaths(file string) error {
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read host paths: %w", err)
	}
	existed := map[string]bool{}
	for line := range strings.SplitSeq(string(data), "\n") {
		existed[line] = true
	}
	for _, p := range HostPaths {
		if !existed[p] {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("remove %s: %w", p, err)
			}
		}
	}
	return os.Remove(file)
}
