// Command cluster runs the local two-node Kubernetes cluster (package
// test/localcluster) behind `make cluster-up` and `make cluster-down`:
//
//	cluster up   -dir DIR ...   start it in the background, return once Ready
//	cluster down -dir DIR       stop it and sweep whatever it left; then check
//	                            that the host is as `up` found it
//	cluster run  -dir DIR ...   run it in the foreground until SIGTERM/SIGINT
//
// `up` starts `run` as a detached process (its log is DIR/cluster.log, its
// pid DIR/cluster.pid). Before anything else, `up` dumps the host's state
// (netfilter rules of every backend, links, addresses, routes, sysctls) to
// DIR/host-before.txt; `down`, after the teardown, dumps it again and fails
// with the difference if there is one. Both are idempotent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/test/localcluster"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var opts localcluster.Options
	fs.StringVar(&opts.Dir, "dir", "", "the cluster's directory (required)")
	fs.StringVar(&opts.Binaries.APIServer, "kube-apiserver", "", "kube-apiserver binary")
	fs.StringVar(&opts.Binaries.ControllerManager, "kube-controller-manager", "", "kube-controller-manager binary")
	fs.StringVar(&opts.Binaries.Scheduler, "kube-scheduler", "", "kube-scheduler binary")
	fs.StringVar(&opts.Binaries.Kubelet, "kubelet", "", "kubelet binary")
	fs.StringVar(&opts.Binaries.KubeProxy, "kube-proxy", "", "kube-proxy binary")
	fs.StringVar(&opts.SandboxImage, "sandbox-image", "registry.k8s.io/pause:3.10.1", "the nodes' pause image")
	fs.IntVar(&opts.Nodes, "nodes", 2, "number of nodes (1 or 2)")
	_ = fs.Parse(os.Args[2:])
	if opts.Dir == "" {
		usage()
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		fail(err)
	}
	opts.Dir = dir
	switch cmd {
	case "up":
		err = up(opts)
	case "down":
		err = down(opts)
	case "run":
		err = run(opts)
	default:
		usage()
	}
	if err != nil {
		fail(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cluster up|down|run -dir DIR [-kube-apiserver BIN -kube-controller-manager BIN -kube-scheduler BIN -kubelet BIN -kube-proxy BIN]")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cluster:", err)
	os.Exit(1)
}

// Files in the cluster directory.
func pidFile(dir string) string      { return filepath.Join(dir, "cluster.pid") }
func readyFile(dir string) string    { return filepath.Join(dir, "ready") }
func logFile(dir string) string      { return filepath.Join(dir, "cluster.log") }
func beforeFile(dir string) string   { return filepath.Join(dir, "host-before.txt") }
func tunablesFile(dir string) string { return filepath.Join(dir, "kernel-tunables.saved") }
func pathsFile(dir string) string    { return filepath.Join(dir, "host-paths.before") }

// ownerFile records which directory's cluster owns the machine-wide names
// (node namespaces, veths, addresses): there is one local cluster per
// machine.
const ownerFile = "/run/tollgate-local-cluster"

// claim makes dir the owner of the local cluster, unless another
// directory's cluster is running; release gives it up.
func claim(dir string) error {
	if data, err := os.ReadFile(ownerFile); err == nil {
		if owner := strings.TrimSpace(string(data)); owner != dir {
			if _, ok := running(owner); ok {
				return fmt.Errorf("the local cluster of %s runs on this machine; stop it first (make cluster-down CLUSTER_DIR=%s)", owner, owner)
			}
		}
	}
	return os.WriteFile(ownerFile, []byte(dir+"\n"), 0o644)
}

// owned reports whether dir may tear down the machine-wide names: it owns
// them, or nobody does.
func owned(dir string) error {
	data, err := os.ReadFile(ownerFile)
	if err != nil {
		return nil
	}
	if owner := strings.TrimSpace(string(data)); owner != dir {
		return fmt.Errorf("the local cluster of this machine belongs to %s, not %s", owner, dir)
	}
	return nil
}

// up starts `run` detached and waits until it reports ready or exits.
func up(opts localcluster.Options) error {
	if pid, ok := running(opts.Dir); ok {
		if _, err := os.Stat(readyFile(opts.Dir)); err == nil {
			fmt.Printf("cluster already up (pid %d); kubeconfig: %s\n", pid, localcluster.AdminKubeconfig(opts.Dir))
			return nil
		}
		return fmt.Errorf("a cluster process (pid %d) runs but is not ready; make cluster-down first", pid)
	}
	if err := claim(opts.Dir); err != nil {
		return err
	}
	// Leftovers of a crashed run first, so that the dump is the host's own.
	if err := localcluster.Sweep(opts); err != nil {
		return fmt.Errorf("sweep leftovers of an earlier run: %w", err)
	}
	if err := localcluster.RestoreKernelTunables(tunablesFile(opts.Dir)); err != nil {
		return err
	}
	if err := localcluster.RemoveNewHostPaths(pathsFile(opts.Dir)); err != nil {
		return err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(beforeFile(opts.Dir), []byte(localcluster.HostState()), 0o644); err != nil {
		return err
	}
	if err := localcluster.RecordHostPaths(pathsFile(opts.Dir)); err != nil {
		return err
	}
	_ = os.Remove(readyFile(opts.Dir))
	log, err := os.Create(logFile(opts.Dir))
	if err != nil {
		return err
	}
	defer log.Close()
	// The absolute directory last: `running` recognises the process by it.
	args := append(append([]string{"run"}, os.Args[2:]...), "-dir", opts.Dir)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own session: it outlives make and is not hit by a terminal's ^C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start cluster process: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	start := time.Now()
	deadline := time.After(6 * time.Minute)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("cluster process exited (%v):\n%s", err, logTail(opts.Dir))
		case <-deadline:
			return fmt.Errorf("cluster not ready after 6 minutes (make cluster-down cleans up):\n%s", logTail(opts.Dir))
		case <-time.After(250 * time.Millisecond):
		}
		if _, err := os.Stat(readyFile(opts.Dir)); err == nil {
			fmt.Printf("cluster up in %v (pid %d, log %s)\nkubeconfig: %s\n", time.Since(start).Round(time.Second),
				cmd.Process.Pid, logFile(opts.Dir), localcluster.AdminKubeconfig(opts.Dir))
			return nil
		}
	}
}

// run starts the cluster and keeps it until SIGTERM or SIGINT, then stops it.
func run(opts localcluster.Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := os.WriteFile(pidFile(opts.Dir), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidFile(opts.Dir))
	if err := localcluster.SaveKernelTunables(tunablesFile(opts.Dir)); err != nil {
		return err
	}
	c, err := localcluster.Start(ctx, opts)
	if err == nil {
		err = os.WriteFile(readyFile(opts.Dir), []byte(localcluster.AdminKubeconfig(opts.Dir)+"\n"), 0o644)
	}
	if err == nil {
		fmt.Println("ready")
		tick := time.NewTicker(10 * time.Second)
		reported := false
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-tick.C:
				// Say once that a component died; the tests see the effects.
				if e := c.Exited(); e != nil && !reported {
					fmt.Println("a component exited:", e)
					reported = true
				}
			}
		}
		tick.Stop()
		fmt.Println("stopping")
	}
	_ = os.Remove(readyFile(opts.Dir))
	var stopErr error
	if c != nil {
		stopErr = c.Stop()
	}
	restoreErr := localcluster.RestoreKernelTunables(tunablesFile(opts.Dir))
	return errors.Join(err, stopErr, restoreErr)
}

// down stops the cluster process, sweeps, and compares the host with the
// dump `up` took.
func down(opts localcluster.Options) error {
	if err := owned(opts.Dir); err != nil {
		return err
	}
	if pid, ok := running(opts.Dir); ok {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(3 * time.Minute)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(pidFile(opts.Dir))
	_ = os.Remove(readyFile(opts.Dir))
	errs := []error{localcluster.Sweep(opts), localcluster.RestoreKernelTunables(tunablesFile(opts.Dir)),
		localcluster.RemoveNewHostPaths(pathsFile(opts.Dir))}
	// The nodes' state (images, containers, kubelet dirs) goes; the logs
	// and configuration files stay for whoever debugs the last run.
	for _, cfg := range localcluster.NodeConfigs(opts) {
		for _, sub := range []string{"containerd", "containerd-state", "runc", "kubelet", "cni/ipam"} {
			errs = append(errs, os.RemoveAll(filepath.Join(cfg.Dir, sub)))
		}
	}
	_ = os.Remove(ownerFile)
	if before, err := os.ReadFile(beforeFile(opts.Dir)); err == nil {
		if diff := difference(string(before), localcluster.HostState()); diff != "" {
			errs = append(errs, fmt.Errorf("the host is not as `up` found it (%s):\n%s", beforeFile(opts.Dir), diff))
		} else {
			fmt.Println("cluster down; host netfilter rules, links, routes and sysctls as before")
		}
	}
	return errors.Join(errs...)
}

// running returns the pid of the cluster process of dir, if it runs.
func running(dir string) (int, bool) {
	data, err := os.ReadFile(pidFile(dir))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || !alive(pid) {
		return 0, false
	}
	// The pid may have been reused: it must be this program running `run`.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "run\x00") || !strings.Contains(string(cmdline), dir) {
		return 0, false
	}
	return pid, true
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(stat), ") Z ")
}

// difference lists the lines only in a ("-") or only in b ("+"), per
// section, in order; empty when they are equal.
func difference(a, b string) string {
	if a == b {
		return ""
	}
	count := map[string]int{}
	for line := range strings.SplitSeq(a, "\n") {
		count[line]++
	}
	var plus []string
	for line := range strings.SplitSeq(b, "\n") {
		if count[line] > 0 {
			count[line]--
			continue
		}
		plus = append(plus, "+ "+line)
	}
	var minus []string
	for line := range strings.SplitSeq(a, "\n") {
		if count[line] > 0 {
			count[line]--
			minus = append(minus, "- "+line)
		}
	}
	return strings.Join(append(minus, plus...), "\n")
}

// logTail is the end of the cluster process's log.
func logTail(dir string) string {
	data, err := os.ReadFile(logFile(dir))
	if err != nil {
		return err.Error()
	}
	if len(data) > 6000 {
		data = data[len(data)-6000:]
	}
	return string(data)
}
