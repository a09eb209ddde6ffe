package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/netsim"
)

// Node is the simulated node the enforcers run on.
type Node struct {
	// NS is its network namespace; Name its Kubernetes node name.
	NS, Name string
	// Kubeconfig is an admin kubeconfig of the apiserver, for processes in
	// the host namespace; NSKubeconfig one that works from inside the node
	// namespace (through a Forwarder).
	Kubeconfig, NSKubeconfig string
	// WorkDir receives logs and sockets.
	WorkDir string
}

// Enforcer is one variant under test on a node.
type Enforcer interface {
	// Name is the variant's name in reports.
	Name() string
	// Start starts it and returns once it is enforcing (or queueing).
	Start(ctx context.Context) error
	// Stop stops its processes and removes what it put in the kernel.
	Stop()
	// Pids names its processes.
	Pids() map[string]int
}

// None enforces nothing: the baseline.
type None struct{}

// Name implements Enforcer.
func (None) Name() string { return "none" }

// Start implements Enforcer.
func (None) Start(context.Context) error { return nil }

// Stop implements Enforcer.
func (None) Stop() {}

// Pids implements Enforcer.
func (None) Pids() map[string]int { return nil }

// ResetNode removes every nftables (and iptables-nft) rule of the node's
// namespace and forgets its connections, so that each variant starts alike.
// The node namespace belongs to the benchmark alone.
func ResetNode(ns string) error {
	if out, err := netsim.Exec(ns, "nft", "flush", "ruleset"); err != nil {
		return fmt.Errorf("reset node: %w: %s", err, out)
	}
	if out, err := netsim.Exec(ns, "conntrack", "-F"); err != nil && !strings.Contains(out, "0 flow entries") {
		return fmt.Errorf("reset node: %w: %s", err, out)
	}
	return nil
}

// ApplyNFT loads an nft script into ns (the file is written to dir).
func ApplyNFT(ns, dir, name, script string) error {
	file := filepath.Join(dir, name+".nft")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		return err
	}
	if out, err := netsim.Exec(ns, "nft", "-f", file); err != nil {
		return fmt.Errorf("load %s: %w: %s", name, err, out)
	}
	return nil
}

// start runs cmd with its output in dir/name.log.
func start(dir, name string, cmd *exec.Cmd) (*proc.Proc, error) {
	p, err := proc.Start(cmd, filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// waitFor polls cond every interval until it holds, p exits, or limit
// passes.
func waitFor(ctx context.Context, what string, limit, interval time.Duration, p *proc.Proc, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s: process exited; log tail:\n%s", what, tail(p.Log(), 3000))
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%s: not within %v", what, limit)
			if p != nil {
				msg += "; log tail:\n" + tail(p.Log(), 3000)
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// freeLoopbackPort returns a loopback TCP port of the host namespace that
// was free a moment ago.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// QueuerMetricsAddr is where the queuer (and the other agents) serve their
// metrics, inside the node namespace.
const QueuerMetricsAddr = "127.0.0.1:9080"

// Tollgate is the decider (host namespace, watching the apiserver) and the
// queuer (node namespace).
type Tollgate struct {
	Node Node
	Bin  Binaries
	// Queues is the queuer's --queues (0: its default, one per CPU).
	Queues int
	// Label, when set, is the variant's name instead of "tollgate";
	// QueuerArgs are flags added to the queuer's.
	Label      string
	QueuerArgs []string
	// SyncTimeout bounds the decider's first sync (large clusters).
	SyncTimeout time.Duration
	// Pprof, when set, are host and node-namespace addresses for the
	// decider's and queuer's pprof (profiling builds only).
	DeciderPprof, QueuerPprof string
	// CPUs, when set, is the --cpus of both the decider and the queuer.
	CPUs string

	decider, queuer *proc.Proc
	// Socket is the decider's socket; DeciderMetrics its metrics address.
	Socket, DeciderMetrics string
}

// Name implements Enforcer.
func (t *Tollgate) Name() string {
	if t.Label != "" {
		return t.Label
	}
	return "tollgate"
}

// Start implements Enforcer: the decider, once SERVING, then the queuer,
// once ready (table installed, decider state applied).
func (t *Tollgate) Start(ctx context.Context) error {
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	t.Socket = filepath.Join(t.Node.WorkDir, "decider.sock")
	t.DeciderMetrics = "127.0.0.1:" + strconv.Itoa(port)
	dargs := []string{t.Bin.Decider, "--kubeconfig", t.Node.Kubeconfig, "--socket", t.Socket,
		"--node-name", t.Node.Name, "--metrics-bind-address", t.DeciderMetrics}
	if t.CPUs != "" {
		dargs = append(dargs, "--cpus", t.CPUs)
	}
	dec := exec.Command(dargs[0], dargs[1:]...)
	if t.DeciderPprof != "" {
		dec.Env = append(os.Environ(), EnvPprof+"="+t.DeciderPprof)
	}
	if t.decider, err = start(t.Node.WorkDir, "decider", dec); err != nil {
		return err
	}
	limit := t.SyncTimeout
	if limit == 0 {
		limit = 2 * time.Minute
	}
	if err := waitFor(ctx, "decider SERVING", limit, 100*time.Millisecond, t.decider, func() bool {
		return exec.Command(t.Bin.Decider, "healthcheck", "--socket", t.Socket).Run() == nil
	}); err != nil {
		t.Stop()
		return err
	}
	args := []string{"netns", "exec", t.Node.NS, t.Bin.Queuer, "--decider-socket", t.Socket,
		"--node-name", t.Node.Name, "--metrics-bind-address", QueuerMetricsAddr}
	if t.CPUs != "" {
		args = append(args, "--cpus", t.CPUs)
	}
	if t.Queues > 0 {
		args = append(args, "--queues", strconv.Itoa(t.Queues))
	}
	args = append(args, t.QueuerArgs...)
	q := exec.Command("ip", args...)
	if t.QueuerPprof != "" {
		q.Env = append(os.Environ(), EnvPprof+"="+t.QueuerPprof)
	}
	if t.queuer, err = start(t.Node.WorkDir, "queuer", q); err != nil {
		t.Stop()
		return err
	}
	if err := waitFor(ctx, "queuer ready", time.Minute, 100*time.Millisecond, t.queuer, func() bool {
		_, err := HTTPGet(t.Node.NS, QueuerMetricsAddr, "/readyz", 2*time.Second)
		return err == nil
	}); err != nil {
		t.Stop()
		return err
	}
	return nil
}

// Stop implements Enforcer. The queuer (fail-open) removes its table on
// SIGTERM.
func (t *Tollgate) Stop() {
	for _, p := range []*proc.Proc{t.queuer, t.decider} {
		if p != nil {
			p.Stop()
		}
	}
	t.queuer, t.decider = nil, nil
}

// Pids implements Enforcer.
func (t *Tollgate) Pids() map[string]int {
	m := map[string]int{}
	if t.decider != nil {
		m["decider"] = t.decider.Pid()
	}
	if t.queuer != nil {
		m["queuer"] = t.queuer.Pid()
	}
	return m
}

// XTQueueMark is the packet-mark bit Tollgate's ruleset sets in xt mode
// (queuer/dataplane.XTMark); the accept-all variant uses the same.
const XTQueueMark = 0x00002000

// AcceptAll steers the same packets as Tollgate (new connections from or to
// Selected, at the same hooks and priority, marked in nftables and queued by
// the iptables NFQUEUE target across Queues queues, fail-open) to a program
// that accepts every packet: the cost of queueing itself.
type AcceptAll struct {
	Node     Node
	Bin      Binaries
	Selected []netip.Addr
	Queues   int
	p        *proc.Proc
}

// Name implements Enforcer.
func (a *AcceptAll) Name() string { return "accept-all" }

// Start implements Enforcer.
func (a *AcceptAll) Start(ctx context.Context) error {
	var elems []string
	for _, ip := range a.Selected {
		elems = append(elems, ip.String())
	}
	script := fmt.Sprintf(`table inet bench-accept-all {
	set selected4 { type ipv4_addr; elements = { %s } }
	chain forward {
		type filter hook forward priority mangle - 10; policy accept;
		ct state established,related accept
		ct state untracked accept
		ip saddr @selected4 counter meta mark set meta mark | 0x%08x accept
		ip daddr @selected4 counter meta mark set meta mark | 0x%08x accept
	}
}
`, strings.Join(elems, ", "), XTQueueMark, XTQueueMark)
	if err := ApplyNFT(a.Node.NS, a.Node.WorkDir, "accept-all", script); err != nil {
		return err
	}
	last := 100 + a.Queues - 1
	rule := []string{"iptables", "-w", "-t", "mangle", "-I", "FORWARD", "1", "-m", "mark", "--mark",
		fmt.Sprintf("0x%x/0x%x", XTQueueMark, XTQueueMark), "-j", "NFQUEUE", "--queue-bypass"}
	if a.Queues > 1 {
		rule = append(rule, "--queue-balance", fmt.Sprintf("100:%d", last), "--queue-cpu-fanout")
	} else {
		rule = append(rule, "--queue-num", "100")
	}
	if out, err := netsim.Exec(a.Node.NS, rule...); err != nil {
		return fmt.Errorf("accept-all iptables rule: %w: %s", err, out)
	}
	var err error
	a.p, err = start(a.Node.WorkDir, "nfqaccept", exec.Command("ip", "netns", "exec", a.Node.NS, a.Bin.AcceptAll,
		"--first", "100", "--count", strconv.Itoa(a.Queues)))
	if err != nil {
		return err
	}
	return waitFor(ctx, "nfqaccept bound", 20*time.Second, 50*time.Millisecond, a.p, func() bool {
		return queuesBound(a.Node.NS, 100, a.Queues)
	})
}

// queuesBound reports whether queues first..first+n-1 have a listener in ns.
func queuesBound(ns string, first, n int) bool {
	stats, err := QueueStats(ns)
	if err != nil {
		return false
	}
	for q := first; q < first+n; q++ {
		if _, ok := stats[q]; !ok {
			return false
		}
	}
	return true
}

// QueueStat is one line of /proc/net/netfilter/nfnetlink_queue.
type QueueStat struct {
	// Waiting is how many packets wait for a verdict; Dropped how many the
	// queue dropped (full) and UserDropped how many the socket dropped;
	// IDSequence counts the packets queued so far.
	Waiting, Dropped, UserDropped, IDSequence uint64
}

// QueueStats reads the bound queues of ns, by queue number.
func QueueStats(ns string) (map[int]QueueStat, error) {
	out, err := netsim.Exec(ns, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return nil, err
	}
	m := map[int]QueueStat{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		// queue, peer port id, waiting, copy mode, copy range, queue
		// dropped, user dropped, id sequence, 1
		if len(f) < 8 {
			continue
		}
		num := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
		q, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		m[q] = QueueStat{Waiting: num(2), Dropped: num(5), UserDropped: num(6), IDSequence: num(7)}
	}
	return m, nil
}

// Stop implements Enforcer.
func (a *AcceptAll) Stop() {
	if a.p != nil {
		a.p.Stop()
		a.p = nil
	}
}

// Pids implements Enforcer.
func (a *AcceptAll) Pids() map[string]int {
	if a.p == nil {
		return nil
	}
	return map[string]int{"nfqaccept": a.p.Pid()}
}

// KNPMark is the packet-mark bit with which the xt shim of
// kube-network-policies' agent (hack/bench-knp/testdata/xt_shim.go) asks
// for a packet to be queued.
const KNPMark = 0x00040000

// knpAcceptLabel is the conntrack label bit, in nft's numbering, that the
// agent's rules read as "accepted" (its --ct-label-accept default 100, laid
// out by its generateLabelMask).
const knpAcceptLabel = 28

// KNP is kube-network-policies' agent (the standard or the npa-v1alpha2
// command) in the node namespace, watching the same apiserver, with the xt
// shim around it: iptables rules that queue the packets its ruleset marks,
// and an nftables chain that gives an accepted packet's connection the
// agent's "accepted" conntrack label, which the agent sets itself through
// the verdict on kernels with CONFIG_NETFILTER_NETLINK_GLUE_CT (this one has
// none; without the label every packet of every connection would be queued).
type KNP struct {
	Node Node
	// Command is "standard" or "npa-v1alpha2"; Bin the binary.
	Command, Bin string
	// SyncTimeout bounds the wait for its ruleset (large clusters).
	SyncTimeout time.Duration
	p           *proc.Proc
}

// Name implements Enforcer.
func (k *KNP) Name() string { return "knp-" + k.Command }

// KNPMetricsAddr is where the agent serves /metrics inside the node
// namespace.
const KNPMetricsAddr = "127.0.0.1:9090"

// Start implements Enforcer: the shim, then the agent; it returns once the
// agent has written its table (its informers have synced).
func (k *KNP) Start(ctx context.Context) error {
	script := fmt.Sprintf(`table inet bench-knp-shim {
	chain postrouting {
		type filter hook postrouting priority mangle + 10; policy accept;
		meta mark & 0x%08x == 0x%08x ct label set %d meta mark set meta mark & 0x%08x
	}
	chain input {
		type filter hook input priority mangle + 10; policy accept;
		meta mark & 0x%08x == 0x%08x ct label set %d meta mark set meta mark & 0x%08x
	}
}
`, KNPMark, KNPMark, knpAcceptLabel, ^uint32(KNPMark), KNPMark, KNPMark, knpAcceptLabel, ^uint32(KNPMark))
	if err := ApplyNFT(k.Node.NS, k.Node.WorkDir, "knp-shim", script); err != nil {
		return err
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, hook := range []string{"POSTROUTING", "INPUT"} {
			out, err := netsim.Exec(k.Node.NS, ipt, "-w", "-t", "mangle", "-A", hook, "-m", "mark", "--mark",
				fmt.Sprintf("0x%x/0x%x", KNPMark, KNPMark), "-j", "NFQUEUE", "--queue-num", "100", "--queue-bypass")
			if err != nil {
				return fmt.Errorf("knp shim: %s %s: %w: %s", ipt, hook, err, out)
			}
		}
	}
	var err error
	k.p, err = start(k.Node.WorkDir, k.Name(), exec.Command("ip", "netns", "exec", k.Node.NS, k.Bin,
		"--kubeconfig", k.Node.NSKubeconfig, "--hostname-override", k.Node.Name, "--disable-nri",
		"--netfilter-bug-1766-fix=false", "--nfqueue-id", "100", "--metrics-bind-address", KNPMetricsAddr))
	if err != nil {
		return err
	}
	limit := k.SyncTimeout
	if limit == 0 {
		limit = 2 * time.Minute
	}
	return waitFor(ctx, k.Name()+" ruleset", limit, 100*time.Millisecond, k.p, func() bool {
		out, err := netsim.Exec(k.Node.NS, "nft", "list", "chain", "inet", "kube-network-policies", "postrouting")
		return err == nil && strings.Contains(out, "accept") && queuesBound(k.Node.NS, 100, 1)
	})
}

// Stop implements Enforcer. The agent is killed: on SIGTERM it waits five
// seconds and, fail-open, leaves its ruleset anyway; ResetNode removes it.
func (k *KNP) Stop() {
	if k.p != nil {
		k.p.Kill()
		k.p = nil
	}
}

// Pids implements Enforcer.
func (k *KNP) Pids() map[string]int {
	if k.p == nil {
		return nil
	}
	return map[string]int{"agent": k.p.Pid()}
}
