package netsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// commandTimeout bounds every command netsim runs.
const commandTimeout = 30 * time.Second

// netnsDir is where `ip netns` keeps named namespaces.
const netnsDir = "/run/netns"

// RunInNS runs fn on an OS thread switched into the named network namespace.
// Sockets fn opens stay in that namespace after it returns. fn runs on its
// own goroutine; goroutines fn starts do not inherit the namespace. If the
// thread cannot be switched back it is discarded, never reused. The empty
// name is the process's own namespace: fn just runs.
func RunInNS(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	target, err := os.Open(filepath.Join(netnsDir, ns))
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked when restoring fails, so the runtime kills the
		// thread when this goroutine exits instead of reusing it.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave network namespace %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// Exec runs a command inside the named network namespace (through
// `ip netns exec`) and returns its combined output.
func Exec(ns string, cmd ...string) (string, error) {
	return execInput(ns, "", cmd...)
}

// execInput is Exec with stdin.
func execInput(ns, input string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	args := append([]string{"netns", "exec", ns}, cmd...)
	return run(ctx, input, "ip", args...)
}

// run runs a command with stdin input and returns its combined output.
func run(ctx context.Context, input, name string, args ...string) (string, error) {
	c := exec.CommandContext(ctx, name, args...)
	if input != "" {
		c.Stdin = strings.NewReader(input)
	}
	var out bytes.Buffer
	c.Stdout = &out
	c.Stderr = &out
	if err := c.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// IPBatch runs `ip` commands (one per line, without the leading "ip") in the
// named network namespace (the process's own for "") in a single process.
func IPBatch(ns string, cmds ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	_, err := run(ctx, strings.Join(cmds, "\n")+"\n", "ip", args...)
	return err
}

// AddNetns creates a named network namespace with IPv6 duplicate address
// detection off, so addresses are usable at once, and reverse-path
// filtering off. Its loopback is down until the caller brings it up.
func AddNetns(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if _, err := run(ctx, "", "ip", "netns", "add", ns); err != nil {
		return err
	}
	return SetSysctls(ns, map[string]string{
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
		"net/ipv4/conf/all/rp_filter":      "0",
		"net/ipv4/conf/default/rp_filter":  "0",
	})
}

// DeleteNetns kills the processes left in a namespace and deletes it.
func DeleteNetns(ns string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if out, err := run(ctx, "", "ip", "netns", "pids", ns); err == nil {
		for _, pid := range strings.Fields(out) {
			var n int
			if _, err := fmt.Sscan(pid, &n); err == nil && n > 1 && n != os.Getpid() {
				_ = unix.Kill(n, unix.SIGKILL)
			}
		}
	}
	_, err := run(ctx, "", "ip", "netns", "delete", ns)
	return err
}

// SetSysctls writes /proc/sys keys (paths relative to /proc/sys) inside ns.
func SetSysctls(ns string, values map[string]string) error {
	return RunInNS(ns, func() error {
		for key, value := range values {
			if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
				return fmt.Errorf("set sysctl %s in %s: %w", key, ns, err)
			}
		}
		return nil
	})
}
