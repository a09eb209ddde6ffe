package dataplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testenv"
)

// systemPath is PATH for commands the test itself runs inside namespaces.
const systemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// netnsEnv is a network namespace made for one test. Commands the
// dataplane runs (nft, iptables-nft, ...) are redirected into it through
// wrapper scripts, the only entries of PATH during the test.
type netnsEnv struct {
	t    *testing.T
	name string
	ip   string
}

// newNetnsEnv creates the namespace (removed in t.Cleanup) and points PATH at
// wrappers that run nft and the iptables-nft binaries inside it.
func newNetnsEnv(t *testing.T) *netnsEnv {
	t.Helper()
	testenv.NeedRoot(t, "to create network namespaces")
	tools := map[string]string{}
	for _, name := range []string{"ip", "nft", "iptables-nft", "ip6tables-nft",
		"iptables-nft-restore", "ip6tables-nft-restore", "iptables-nft-save", "ip6tables-nft-save"} {
		tools[name] = testenv.LookPath(t, name)
	}
	e := &netnsEnv{t: t, name: fmt.Sprintf("tg-dp-%x", rand.Uint32()), ip: tools["ip"]}
	e.host("netns", "add", e.name)
	t.Cleanup(func() {
		if out, err := exec.Command(e.ip, "netns", "del", e.name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", e.name, err, out)
		}
	})

	dir := t.TempDir()
	for name, path := range tools {
		if name == "ip" {
			continue
		}
		script := fmt.Sprintf("#!/bin/sh\nexec %s netns exec %s %s \"$@\"\n", e.ip, e.name, path)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return e
}

// host runs ip with args in the host namespace (for netns management).
func (e *netnsEnv) host(args ...string) {
	e.t.Helper()
	if out, err := exec.Command(e.ip, args...).CombinedOutput(); err != nil {
		e.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// in runs a command inside namespace ns and returns its output.
func (e *netnsEnv) in(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ip, append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = []string{"PATH=" + systemPath}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustIn is in for commands that must succeed.
func (e *netnsEnv) mustIn(ns string, args ...string) string {
	e.t.Helper()
	out, err := e.in(ns, args...)
	if err != nil {
		e.t.Fatalf("%s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return out
}

// kernelHasNFTQueue probes the kernel directly (independently of DetectMode)
// by committing a queue rule in a throwaway table inside the namespace.
func (e *netnsEnv) kernelHasNFTQueue() bool {
	e.t.Helper()
	rules := "add table inet tg-probe\nadd chain inet tg-probe c\nadd rule inet tg-probe c queue num 1 bypass\n"
	cmd := exec.Command(e.ip, "netns", "exec", e.name, "sh", "-c", "nft -f - && nft delete table inet tg-probe")
	cmd.Env = []string{"PATH=" + systemPath}
	cmd.Stdin = strings.NewReader(rules)
	return cmd.Run() == nil
}

func TestKernelSetupSyncShutdown(t *testing.T) {
	e := newNetnsEnv(t)
	ctx := context.Background()
	wantMode := ModeXT
	if e.kernelHasNFTQueue() {
		wantMode = ModeNFT
	}

	if wantMode == ModeXT {
		// Forcing native mode on a kernel without nft_queue fails, and the
		// failed transaction leaves nothing behind.
		forced, err := New(Config{QueueMode: "nft", FirstQueue: 100, QueueCount: 2})
		if err != nil {
			t.Fatalf("New(nft): %v", err)
		}
		if err := forced.Setup(ctx); err == nil {
			t.Error("native Setup succeeded on a kernel without nft queue")
		}
		if out, err := e.in(e.name, "nft", "list", "ruleset"); err != nil || strings.Contains(out, "tollgate") {
			t.Errorf("failed native Setup left a ruleset (err %v):\n%s", err, out)
		}
	}

	d, err := New(Config{QueueMode: "auto", FirstQueue: 100, QueueCount: 2, FailOpen: false, VerdictTTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if d.Mode() != wantMode {
		t.Fatalf("auto mode = %q, but the kernel probe says %q", d.Mode(), wantMode)
	}
	if err := d.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	// Setup is repeatable on the live table.
	if err := d.Setup(ctx); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	table := e.mustIn(e.name, "nft", "list", "table", "inet", TableName)
	for _, want := range []string{
		"type filter hook forward priority mangle - 10; policy accept;",
		"type filter hook input priority mangle - 10; policy accept;",
		"ip saddr . ip daddr . meta l4proto . th dport @allow4 accept",
		"ip6 saddr . ip6 daddr . meta l4proto . th dport @deny6 drop",
		"type ipv4_addr . ipv4_addr . inet_proto . inet_service",
		"timeout 30s",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("kernel table lacks %q:\n%s", want, table)
		}
	}
	save := e.mustIn(e.name, "iptables-nft-save", "-t", "mangle")
	hasXT := strings.Contains(save, "-A FORWARD -j TOLLGATE") &&
		strings.Contains(save, "-A TOLLGATE -m mark --mark 0x2000/0x2000 -j NFQUEUE --queue-balance 100:101")
	if hasXT != (wantMode == ModeXT) {
		t.Errorf("mode %s, iptables rules present %t:\n%s", wantMode, hasXT, save)
	}

	if err := d.SyncSelected(ctx, addrs("10.1.0.1", "10.1.0.2"), addrs("fd00::1")); err != nil {
		t.Fatalf("SyncSelected: %v", err)
	}
	if err := d.SyncSelected(ctx, addrs("10.1.0.2", "10.1.0.3"), nil); err != nil {
		t.Fatalf("second SyncSelected: %v", err)
	}
	sel4 := e.mustIn(e.name, "nft", "list", "set", "inet", TableName, setSelected4)
	sel6 := e.mustIn(e.name, "nft", "list", "set", "inet", TableName, setSelected6)
	if !strings.Contains(sel4, "10.1.0.2, 10.1.0.3") || strings.Contains(sel4, "10.1.0.1") || strings.Contains(sel6, "fd00::1") {
		t.Errorf("selected sets after two syncs:\n%s%s", sel4, sel6)
	}
	a := netip.MustParseAddr
	if err := d.AddVerdicts(ctx, []Verdict{
		{Src: a("10.1.0.9"), Dst: a("10.1.0.2"), Proto: 6, DstPort: 80, Allow: true},
		{Src: a("fd00::9"), Dst: a("fd00::2"), Proto: 132, DstPort: 5000, Allow: false},
	}); err != nil {
		t.Fatalf("AddVerdicts: %v", err)
	}
	if out := e.mustIn(e.name, "nft", "list", "set", "inet", TableName, setAllow4); !strings.Contains(out, "10.1.0.9 . 10.1.0.2 . tcp . 80 expires") {
		t.Errorf("allow4 lacks the verdict:\n%s", out)
	}
	if out := e.mustIn(e.name, "nft", "list", "set", "inet", TableName, setDeny6); !strings.Contains(out, "fd00::9 . fd00::2 . sctp . 5000 expires") {
		t.Errorf("deny6 lacks the verdict:\n%s", out)
	}
	if err := d.FlushVerdicts(ctx); err != nil {
		t.Fatalf("FlushVerdicts: %v", err)
	}
	if out := e.mustIn(e.name, "nft", "list", "set", "inet", TableName, setAllow4); strings.Contains(out, "elements") {
		t.Errorf("allow4 not flushed:\n%s", out)
	}

	// Fail-closed shutdown leaves everything.
	if err := d.Shutdown(ctx); err != nil {
		t.Fatalf("fail-closed Shutdown: %v", err)
	}
	if out := e.mustIn(e.name, "nft", "list", "table", "inet", TableName); !strings.Contains(out, "hook forward") || !strings.Contains(out, "10.1.0.2") {
		t.Errorf("fail-closed Shutdown lost the table or its selected pods:\n%s", out)
	}
	if got := e.mustIn(e.name, "iptables-nft-save", "-t", "mangle"); strings.Contains(got, "TOLLGATE") != (wantMode == ModeXT) {
		t.Errorf("fail-closed Shutdown changed iptables:\n%s", got)
	}

	// A fail-open run adopts the table; Shutdown keeps it, Remove (the
	// cleanup command) takes everything away.
	d2, err := New(Config{QueueMode: "auto", FirstQueue: 100, QueueCount: 2, FailOpen: true})
	if err != nil {
		t.Fatalf("New fail-open: %v", err)
	}
	if err := d2.Setup(ctx); err != nil {
		t.Fatalf("fail-open Setup over the old table: %v", err)
	}
	if out := e.mustIn(e.name, "nft", "list", "set", "inet", TableName, setSelected4); !strings.Contains(out, "10.1.0.2, 10.1.0.3") {
		t.Errorf("Setup did not keep the selected pods:\n%s", out)
	}
	if err := d2.Shutdown(ctx); err != nil {
		t.Fatalf("fail-open Shutdown: %v", err)
	}
	if out := e.mustIn(e.name, "nft", "list", "table", "inet", TableName); !strings.Contains(out, "10.1.0.2") {
		t.Errorf("fail-open Shutdown lost the table or its selected pods:\n%s", out)
	}
	if err := d2.Check(ctx); err != nil {
		t.Errorf("Check after Shutdown: %v", err)
	}
	if err := d2.Remove(ctx); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if out, err := e.in(e.name, "nft", "list", "table", "inet", TableName); err == nil {
		t.Errorf("Remove left the table:\n%s", out)
	}
	if got := e.mustIn(e.name, "iptables-nft-save", "-t", "mangle"); strings.Contains(got, "TOLLGATE") {
		t.Errorf("Remove left iptables rules:\n%s", got)
	}
	if got := e.mustIn(e.name, "ip6tables-nft-save", "-t", "mangle"); strings.Contains(got, "TOLLGATE") {
		t.Errorf("Remove left ip6tables rules:\n%s", got)
	}
	if err := d2.Check(ctx); !errors.Is(err, ErrDamaged) {
		t.Errorf("Check after Remove = %v, want ErrDamaged", err)
	}
}

// nodeIP is the address of the node namespace in the packet test.
const nodeIP = "10.77.0.1"

// topology is a routed "node" namespace (the netnsEnv's) between two "pod"
// namespaces with /32 routes, TCP servers on ports 8080 and 8081 in pod b
// and on port 9090 in the node namespace.
type topology struct {
	e          *netnsEnv
	podA, podB string
	ipA, ipB   string
	socat      string
}

func newTopology(t *testing.T, e *netnsEnv) *topology {
	t.Helper()
	socat, err := exec.LookPath("socat")
	if err != nil {
		// PATH holds only the wrappers now; look in the system directories.
		for _, dir := range filepath.SplitList(systemPath) {
			if _, err := os.Stat(filepath.Join(dir, "socat")); err == nil {
				socat = filepath.Join(dir, "socat")
				break
			}
		}
	}
	if socat == "" {
		testenv.Skip(t, "socat is not installed (make e2e-deps): needed for the packet test")
	}
	tp := &topology{e: e, podA: e.name + "-a", podB: e.name + "-b", ipA: "10.77.1.2", ipB: "10.77.2.2"}
	for _, pod := range []struct{ ns, ip, veth string }{{tp.podA, tp.ipA, "tga"}, {tp.podB, tp.ipB, "tgb"}} {
		e.host("netns", "add", pod.ns)
		t.Cleanup(func() {
			if out, err := exec.Command(e.ip, "netns", "del", pod.ns).CombinedOutput(); err != nil {
				t.Errorf("delete netns %s: %v: %s", pod.ns, err, out)
			}
		})
		e.host("link", "add", pod.veth, "netns", e.name, "type", "veth", "peer", "name", "eth0", "netns", pod.ns)
		e.host("-n", e.name, "addr", "add", nodeIP+"/32", "dev", pod.veth)
		e.host("-n", e.name, "link", "set", pod.veth, "up")
		e.host("-n", e.name, "route", "add", pod.ip+"/32", "dev", pod.veth)
		e.host("-n", pod.ns, "addr", "add", pod.ip+"/32", "dev", "eth0")
		e.host("-n", pod.ns, "link", "set", "eth0", "up")
		e.host("-n", pod.ns, "route", "add", nodeIP, "dev", "eth0")
		e.host("-n", pod.ns, "route", "add", "default", "via", nodeIP)
	}
	e.mustIn(e.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	tp.socat = socat
	servers := []struct{ ns, ip, port string }{
		{tp.podB, tp.ipB, "8080"}, {tp.podB, tp.ipB, "8081"}, {e.name, nodeIP, "9090"},
	}
	for _, srv := range servers {
		cmd := exec.Command(e.ip, "netns", "exec", srv.ns, socat,
			"TCP-LISTEN:"+srv.port+",reuseaddr,fork", "/dev/null")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start server: %v", err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	// Wait (bounded) until every server answers.
	deadline := time.Now().Add(3 * time.Second)
	for _, srv := range servers {
		for !tp.connects(srv.ip, srv.port) {
			if time.Now().After(deadline) {
				t.Fatalf("server %s:%s never answered", srv.ip, srv.port)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return tp
}

// connects reports whether a TCP connection from pod a to ip:port gets
// through within half a second (a dropped SYN is retried only after 1 s).
func (tp *topology) connects(ip, port string) bool {
	_, err := tp.e.in(tp.podA, tp.socat, "/dev/null", "TCP:"+ip+":"+port+",connect-timeout=0.5")
	return err == nil
}

// TestKernelFailModesWithPackets sends real connections through the node
// namespace: a queue nobody reads drops them in fail-closed and lets them
// pass in fail-open, and the kernel verdict sets answer without the queue.
func TestKernelFailModesWithPackets(t *testing.T) {
	e := newNetnsEnv(t)
	tp := newTopology(t, e)
	ctx := context.Background()
	expectTo := func(step, ip, port string, want bool) {
		t.Helper()
		if got := tp.connects(ip, port); got != want {
			t.Errorf("%s: connection a -> %s:%s got through %t, want %t", step, ip, port, got, want)
		}
	}
	expect := func(step, port string, want bool) {
		t.Helper()
		expectTo(step, tp.ipB, port, want)
	}
	a := netip.MustParseAddr
	allow8080 := Verdict{Src: a(tp.ipA), Dst: a(tp.ipB), Proto: 6, DstPort: 8080, Allow: true}
	deny8080 := allow8080
	deny8080.Allow = false

	closed, err := New(Config{FirstQueue: 200, QueueCount: 2, FailOpen: false, ElementsByNetlink: true, NetlinkNetNS: "/var/run/netns/" + e.name})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("queue mode %s", closed.Mode())
	if err := closed.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	expect("nothing selected", "8080", true)
	if err := closed.SyncSelected(ctx, addrs(tp.ipB), nil); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, b selected, no queue reader", "8080", false)
	if n, err := closed.QueuedPackets(ctx); err != nil || n < 1 {
		t.Errorf("fail-closed QueuedPackets = %d, %v; want at least 1", n, err)
	}
	if err := closed.AddVerdicts(ctx, []Verdict{allow8080}); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, allow verdict cached in the kernel", "8080", true)
	expect("fail-closed, other port not cached", "8081", false)
	// A change makes a's cached verdicts stale: its packets go to the
	// queue at once, before the element is deleted.
	if err := closed.InvalidateVerdicts(ctx, func(x netip.Addr) bool { return x == a(tp.ipA) }); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, a's verdicts stale", "8080", false)
	if err := closed.SweepStale(ctx); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, a's stale verdicts deleted", "8080", false)
	if err := closed.AddVerdicts(ctx, []Verdict{allow8080}); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, allow verdict cached again after the sweep", "8080", true)
	if err := closed.FlushVerdicts(ctx); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, verdicts flushed", "8080", false)
	expectTo("fail-closed, a not selected, to the node", nodeIP, "9090", true)
	if err := closed.SyncSelected(ctx, addrs(tp.ipA, tp.ipB), nil); err != nil {
		t.Fatal(err)
	}
	expectTo("fail-closed, a selected, to the node (input hook)", nodeIP, "9090", false)
	if err := closed.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	expect("fail-closed, queuer shut down", "8080", false)

	open, err := New(Config{FirstQueue: 200, QueueCount: 2, FailOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := open.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	expect("fail-open, b still selected, queue bypassed", "8080", true)
	expectTo("fail-open, a still selected, to the node, queue bypassed", nodeIP, "9090", true)
	if err := open.AddVerdicts(ctx, []Verdict{deny8080}); err != nil {
		t.Fatal(err)
	}
	expect("fail-open, deny verdict cached in the kernel", "8080", false)
	expect("fail-open, other port bypassed", "8081", true)
	// Three connections went to a queue nobody reads and were let through
	// (8080, the node's 9090, 8081): the counter in front of the queue saw
	// at least their SYNs; the cached deny never reached it.
	if n, err := open.QueuedPackets(ctx); err != nil || n < 3 {
		t.Errorf("fail-open QueuedPackets = %d, %v; want at least 3", n, err)
	}
	if err := open.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// The ruleset and its caches outlive the queuer: the cached deny still
	// drops, other new connections pass through the bypass.
	expect("fail-open, queuer shut down, cached deny", "8080", false)
	expect("fail-open, queuer shut down, not cached", "8081", true)
	if err := open.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	expect("ruleset removed (queuer cleanup)", "8080", true)
}

// TestKernelElementsByNetlink: with ElementsByNetlink, pod set syncs,
// precise invalidations (stale addresses first, the elements at the sweep)
// and flushes are written over netlink (the writer
// is still in use afterwards, so none fell back to nft), and the kernel
// holds what nft would have written; a netlink write that fails (a
// namespace without the table) is made through nft, which keeps them from
// then on.
func TestKernelElementsByNetlink(t *testing.T) {
	e := newNetnsEnv(t)
	ctx := context.Background()
	d, err := New(Config{FirstQueue: 100, QueueCount: 1, ElementsByNetlink: true, NetlinkNetNS: "/var/run/netns/" + e.name})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := d.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	list := func(set string) string { return e.mustIn(e.name, "nft", "list", "set", "inet", TableName, set) }
	stillNetlink := func(step string) {
		t.Helper()
		if d.elems == nil {
			t.Fatalf("%s fell back to nft", step)
		}
	}

	if err := d.SyncSelected(ctx, addrs("10.1.0.1", "10.1.0.2"), addrs("fd00::1", "fd00::2")); err != nil {
		t.Fatalf("SyncSelected: %v", err)
	}
	// The first sync replaces the sets through nft; the next ones are
	// incremental.
	if err := d.SyncSelected(ctx, addrs("10.1.0.2", "10.1.0.3"), addrs("fd00::2")); err != nil {
		t.Fatalf("second SyncSelected: %v", err)
	}
	stillNetlink("SyncSelected")
	if sel4, sel6 := list(setSelected4), list(setSelected6); !strings.Contains(sel4, "10.1.0.2, 10.1.0.3 }") ||
		strings.Contains(sel4, "10.1.0.1,") || !strings.Contains(sel6, "elements = { fd00::2 }") {
		t.Errorf("selected sets after an incremental sync over netlink:\n%s%s", sel4, sel6)
	}
	if err := d.SyncDNSPods(ctx, addrs("10.1.0.5"), nil); err != nil {
		t.Fatalf("SyncDNSPods: %v", err)
	}
	if err := d.SyncDNSPods(ctx, addrs("10.1.0.6"), addrs("fd00::6")); err != nil {
		t.Fatalf("second SyncDNSPods: %v", err)
	}
	stillNetlink("SyncDNSPods")
	if dns4, dns6 := list(setDNS4), list(setDNS6); !strings.Contains(dns4, "elements = { 10.1.0.6 }") || !strings.Contains(dns6, "elements = { fd00::6 }") {
		t.Errorf("DNS pod sets:\n%s%s", dns4, dns6)
	}

	a := netip.MustParseAddr
	vs := []Verdict{
		{Src: a("10.1.0.9"), Dst: a("10.1.0.2"), Proto: 6, DstPort: 80, Allow: true},
		{Src: a("10.1.0.8"), Dst: a("10.1.0.9"), Proto: 17, DstPort: 53, Allow: false},
		{Src: a("10.1.0.7"), Dst: a("10.1.0.2"), Proto: 6, DstPort: 65535, Allow: true},
		{Src: a("fd00::9"), Dst: a("fd00::2"), Proto: 132, DstPort: 5000, Allow: false},
		{Src: a("fd00::7"), Dst: a("fd00::2"), Proto: 6, DstPort: 443, Allow: true},
	}
	if err := d.AddVerdicts(ctx, vs); err != nil {
		t.Fatalf("AddVerdicts: %v", err)
	}
	// One of the verdicts to invalidate is gone already (expired, say):
	// removing it must not fail the batch.
	e.mustIn(e.name, "nft", "delete", "element", "inet", TableName, setAllow4, "{ 10.1.0.9 . 10.1.0.2 . tcp . 80 }")
	changed := map[netip.Addr]bool{a("10.1.0.9"): true, a("fd00::9"): true}
	if err := d.InvalidateVerdicts(ctx, func(x netip.Addr) bool { return changed[x] }); err != nil {
		t.Fatalf("InvalidateVerdicts: %v", err)
	}
	stillNetlink("InvalidateVerdicts")
	// The changed addresses are stale at once; their elements stay until
	// the sweep.
	if stale4, stale6 := list(setStale4), list(setStale6); !strings.Contains(stale4, "elements = { 10.1.0.9 expires") ||
		!strings.Contains(stale6, "elements = { fd00::9 expires") {
		t.Errorf("stale sets after the invalidation:\n%s%s", stale4, stale6)
	}
	if deny4 := list(setDeny4); !strings.Contains(deny4, "10.1.0.8 . 10.1.0.9 . udp . 53") {
		t.Errorf("a stale verdict was deleted before the sweep:\n%s", deny4)
	}
	if err := d.SweepStale(ctx); err != nil {
		t.Fatalf("SweepStale: %v", err)
	}
	stillNetlink("SweepStale")
	for _, set := range []string{setStale4, setStale6} {
		if out := list(set); strings.Contains(out, "elements") {
			t.Errorf("%s not emptied by the sweep:\n%s", set, out)
		}
	}
	allow4, deny4, allow6, deny6 := list(setAllow4), list(setDeny4), list(setAllow6), list(setDeny6)
	if strings.Contains(allow4, "10.1.0.9") || strings.Contains(deny4, "10.1.0.9") || strings.Contains(deny6, "fd00::9") {
		t.Errorf("invalidated verdicts still cached:\n%s%s%s", allow4, deny4, deny6)
	}
	if !strings.Contains(allow4, "10.1.0.7 . 10.1.0.2 . tcp . 65535 expires") || !strings.Contains(allow6, "fd00::7 . fd00::2 . tcp . 443 expires") {
		t.Errorf("verdicts the change did not touch were removed:\n%s%s", allow4, allow6)
	}
	if err := d.FlushVerdicts(ctx); err != nil {
		t.Fatalf("FlushVerdicts: %v", err)
	}
	stillNetlink("FlushVerdicts")
	for _, set := range []string{setAllow4, setDeny4, setAllow6, setDeny6} {
		if out := list(set); strings.Contains(out, "elements") {
			t.Errorf("%s not flushed:\n%s", set, out)
		}
	}

	// A writer pointed at a namespace without the table fails; nft makes
	// the change instead and keeps the writes.
	other := e.name + "-other"
	e.host("netns", "add", other)
	t.Cleanup(func() {
		if out, err := exec.Command(e.ip, "netns", "del", other).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", other, err, out)
		}
	})
	d.elems = newElementWriter("/var/run/netns/" + other)
	if err := d.SyncSelected(ctx, addrs("10.1.0.4"), nil); err != nil {
		t.Fatalf("SyncSelected after a failed netlink write: %v", err)
	}
	if d.elems != nil {
		t.Error("the writer stayed in use after a failed write")
	}
	if sel4 := list(setSelected4); !strings.Contains(sel4, "elements = { 10.1.0.4 }") {
		t.Errorf("selected4 after the fallback:\n%s", sel4)
	}
}
