package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tollgate/tollgate/test/netsim"
)

// The tests of this file each close a way past policy or a way for the
// node agent to degrade that an outside review found (issue 10). Each was
// seen to fail before its fix.

// extHeader returns an IPv6 Destination Options or Hop-by-Hop header body
// of n bytes (a multiple of 8, at most 2,048): experimental options (type
// 0x1e, "skip if unknown") of up to 255 bytes each, then padding. Linux
// refuses padding of 8 bytes or more and more than 8 options per header.
func extHeader(n int) []byte {
	b := make([]byte, n)
	// b[0] (next header) is filled in by the kernel for sticky options;
	// b[1] is the length in 8-byte units beyond the first 8.
	b[1] = byte(n/8 - 1)
	off := 2
	for n-off >= 8 {
		l := min(n-off-2, 255)
		if rest := n - off - 2 - l; rest > 0 && rest < 2 {
			l-- // leave room for a Pad1 rather than a lone byte
		}
		b[off], b[off+1] = 0x1e, byte(l)
		off += 2 + l
	}
	switch rest := n - off; {
	case rest == 1:
		b[off] = 0 // Pad1
	case rest >= 2:
		b[off], b[off+1] = 1, byte(rest-2) // PadN
	}
	return b
}

// dialWithExtHeader opens a TCP connection from host to addr:port whose
// packets carry an IPv6 extension header of size bytes (opt is
// IPV6_DSTOPTS or IPV6_HOPOPTS), and reports whether the server's greeting
// arrived.
func dialWithExtHeader(t *testing.T, host netsim.Host, addr netip.Addr, port uint16, opt, size int) bool {
	t.Helper()
	var reached bool
	err := netsim.RunInNS(host.Netns(), func() error {
		d := net.Dialer{Timeout: time.Second, Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, opt, string(extHeader(size)))
			})
			if err != nil {
				return err
			}
			return serr
		}}
		conn, err := d.Dial("tcp6", netip.AddrPortFrom(addr, port).String())
		if err != nil {
			return nil // not reached
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 16)
		nr, _ := conn.Read(buf)
		reached = nr > 0
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return reached
}

// TestExtensionHeaders: a SYN whose extension headers push the TCP header
// far into the packet is judged like any other, in the default fail-open
// mode: the denied connection stays denied and the allowed one works.
// Before the fix only 256 bytes were copied to the queuer, the parse
// failed, and fail-open accepted the denied connection.
func TestExtensionHeaders(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true)
	b := n.pods["b"].IPv6
	for _, tc := range []struct {
		name string
		opt  int
		size int
	}{
		{"destination options, 304 bytes", unix.IPV6_DSTOPTS, 304},
		{"hop-by-hop options, 512 bytes", unix.IPV6_HOPOPTS, 512},
		{"destination options, 1200 bytes", unix.IPV6_DSTOPTS, 1200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if dialWithExtHeader(t, n.pods["c"], b, 80, tc.opt, tc.size) {
				t.Error("z/c -> y/b (denied) got through with a long extension-header chain")
			}
			if !dialWithExtHeader(t, n.pods["a"], b, 80, tc.opt, tc.size) {
				t.Error("x/a -> y/b (allowed) failed with an extension header")
			}
		})
	}
	if got := n.metric("tollgate_fail_mode_verdicts_total"); got != 0 {
		t.Errorf("%v packets got the fail mode; none should", got)
	}
}

// TestFloodDoesNotOpen: one pod floods the selected pod with new tuples
// (UDP to random ports) so that the queue overflows. Another pod's denied
// connection must stay denied all along, in the default fail-open mode, and
// allowed connections work again once the flood stops. Before the fix the
// kernel's fail-open flag accepted packets for a full queue.
func TestFloodDoesNotOpen(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true, "--queues", "1", "--queue-maxlen", "8", "--queue-workers", "1")
	n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.TCP, false, false})
	droppedBefore := n.metric("nfqueue_queue_dropped")
	bypassedBefore := n.metric("tollgate_queue_bypassed_total")

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = netsim.RunInNS(n.pods["a"].Netns(), func() error {
			conn, err := net.ListenPacket("udp4", ":0")
			if err != nil {
				return err
			}
			defer conn.Close()
			r := rand.New(rand.NewPCG(1, 2))
			payload := []byte("flood")
			for ctx.Err() == nil {
				to := &net.UDPAddr{IP: n.pods["b"].IPv4.AsSlice(), Port: 1024 + r.IntN(60000)}
				if _, err := conn.WriteTo(payload, to); err == nil {
					sent.Add(1)
				}
			}
			return nil
		})
	})
	var leaked, tries atomic.Int64
	wg.Go(func() {
		// New tuples each time (the kernel's verdict cache cannot answer
		// them; the queuer's can, from the port range of its first
		// answer, but they still go through the full queue), all denied:
		// a SYN that gets through is answered, by the server or with a
		// reset.
		for port := uint16(2000); ctx.Err() == nil; port++ {
			tries.Add(1)
			r, _ := netsim.ProbeDetail(n.pods["c"], n.pods["b"].IPv4, port, netsim.TCP, 200*time.Millisecond)
			if r.Reachable || strings.HasSuffix(r.Reason, "connection refused") {
				leaked.Add(1)
			}
		}
	})
	wg.Wait()
	dropped := n.metric("nfqueue_queue_dropped") - droppedBefore
	bypassed := n.metric("tollgate_queue_bypassed_total") - bypassedBefore
	t.Logf("flood: %d datagrams to random ports; for a full queue the kernel dropped %v and let %v through; %d denied attempts from z/c",
		sent.Load(), dropped, bypassed, tries.Load())
	if leaked.Load() > 0 {
		t.Errorf("%d of %d denied connections got through while the queue was full", leaked.Load(), tries.Load())
	}
	if bypassed != 0 {
		t.Errorf("the kernel let %v packets past the listening queuer", bypassed)
	}
	if dropped+bypassed == 0 {
		t.Fatal("the queue never overflowed: the test proves nothing")
	}
	n.eventually("x/a -> y/b allowed after the flood", 5*time.Second, func() bool {
		ok, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 80, netsim.TCP, 500*time.Millisecond)
		return ok
	})
	n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "b", netsim.UDP, false, true})
}

// TestUntrackedPacketsJudged: traffic the node's raw table exempts from
// connection tracking (NodeLocal DNSCache does that for DNS) is judged too.
// Before the fix `ct state untracked accept` let it through unjudged.
func TestUntrackedPacketsJudged(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true)
	rules := `table inet notrack-test {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		ip daddr 10.99.1.2 udp dport 80 notrack
	}
}`
	if out, err := execStdin(n.node.Netns(), rules, "nft", "-f", "-"); err != nil {
		t.Fatalf("notrack rules: %v: %s", err, out)
	}
	n.check(probe{"c", "b", netsim.UDP, false, false}, probe{"a", "b", netsim.UDP, false, true})
}

// execStdin runs cmd in namespace ns with input on its standard input.
func execStdin(ns, input string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, cmd...)...)
	c.Stdin = strings.NewReader(input)
	out, err := c.CombinedOutput()
	return string(out), err
}

// readyz asks the queuer's /readyz inside the node namespace.
func (n *node) readyz() int {
	n.t.Helper()
	code := 0
	_ = netsim.RunInNS(n.node.Netns(), func() error {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:9080", time.Second)
		if err != nil {
			return nil
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(conn, "GET /readyz HTTP/1.0\r\n\r\n")
		var proto string
		_, _ = fmt.Fscan(conn, &proto, &code)
		return nil
	})
	return code
}

// TestRulesetHeals: `nft flush ruleset` (Debian's nftables.service does one)
// takes the table and the iptables rules away; /readyz fails at once and
// the queuer restores everything within 5 s, selected pods and all.
// Before the fix nothing noticed until the queuer restarted.
func TestRulesetHeals(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true, "--check-interval", "2s")
	n.check(probe{"c", "b", netsim.TCP, false, false})
	n.eventually("ready", 5*time.Second, func() bool { return n.readyz() == 200 })
	time.Sleep(600 * time.Millisecond) // past the half second /readyz caches a look at the ruleset

	flushed := time.Now()
	if out, err := netsim.Exec(n.node.Netns(), "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v: %s", err, out)
	}
	if code := n.readyz(); code != 503 && n.metric("tollgate_ruleset_repairs_total") == 0 {
		t.Errorf("/readyz = %d right after the table was removed, want 503", code)
	}
	var healed time.Duration
	for time.Since(flushed) < 5*time.Second {
		if n.selected("10.99.1.2") {
			if _, err := netsim.Exec(n.node.Netns(), "iptables", "-t", "mangle", "-S", "TOLLGATE"); err == nil {
				healed = time.Since(flushed)
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if healed == 0 {
		t.Fatal("the table, its selected pods and the iptables rules were not back within 5s")
	}
	t.Logf("ruleset restored %v after nft flush ruleset", healed.Round(time.Millisecond))
	if got := n.metric("tollgate_ruleset_repairs_total"); got < 1 {
		t.Errorf("tollgate_ruleset_repairs_total = %v, want at least 1", got)
	}
	n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "b", netsim.TCP, false, true},
		probe{"c", "b", netsim.UDP, true, false})
	n.eventually("ready again", 5*time.Second, func() bool { return n.readyz() == 200 })
}

// denyAOnly lets y/b accept UDP 80 from namespace z only: x/a is denied.
const denyAOnly = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{port: 80, protocol: UDP}]
`

// udpSession is a UDP socket of one pod bound to a fixed port: every
// datagram it sends has the same 5-tuple (as QUIC, WireGuard or SIP do).
type udpSession struct {
	conn net.PacketConn
	to   net.Addr
}

func udpFixed(t *testing.T, from netsim.Host, sport int, to netip.AddrPort) *udpSession {
	t.Helper()
	var c net.PacketConn
	if err := netsim.RunInNS(from.Netns(), func() (err error) {
		c, err = net.ListenPacket("udp", fmt.Sprintf(":%d", sport))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpSession{conn: c, to: net.UDPAddrFromAddrPort(to)}
}

// ping sends a datagram and reports whether an answer came within 300ms.
func (s *udpSession) ping() bool {
	if _, err := s.conn.WriteTo([]byte("ping"), s.to); err != nil {
		return false
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 64)
	_, _, err := s.conn.ReadFrom(buf)
	return err == nil
}

// TestCutLiftedWhenAllowedAgain: a UDP flow with a fixed 5-tuple is cut when
// policy denies it, and works again within about a second once the deny is
// reverted. Before the fix the cut lasted 20 minutes whatever the policy.
func TestCutLiftedWhenAllowedAgain(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			n := newNode(t)
			n.start(policyYAML, true)
			dst := n.pods["b"].IPv4
			if v6 {
				dst = n.pods["b"].IPv6
			}
			s := udpFixed(t, n.pods["a"], 40053, netip.AddrPortFrom(dst, 80))
			if !s.ping() {
				t.Fatal("the UDP flow does not work before the policy change")
			}
			n.write("policy.yaml", denyAOnly)
			cutSet := "cut4"
			if v6 {
				cutSet = "cut6"
			}
			n.eventually("the flow in the cut set", 5*time.Second, func() bool {
				out, _ := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", cutSet)
				return strings.Contains(out, "udp . 40053 . 80")
			})
			if s.ping() {
				t.Fatal("the cut flow still works")
			}
			n.write("policy.yaml", policyYAML)
			reverted := time.Now()
			var back time.Duration
			for time.Since(reverted) < 5*time.Second {
				if s.ping() {
					back = time.Since(reverted)
					break
				}
			}
			if back == 0 {
				t.Fatal("the same 5-tuple is still blackholed 5s after policy allowed it again")
			}
			t.Logf("the flow works again %v after the deny was reverted", back.Round(time.Millisecond))
			if got := n.metric("tollgate_conntrack_cuts_lifted_total"); got < 1 {
				t.Errorf("tollgate_conntrack_cuts_lifted_total = %v", got)
			}
		})
	}
}

// TestIPv6FlowsCut: established IPv6 flows of TCP, UDP and SCTP are cut
// when policy starts to deny them, like IPv4 ones. Before the fix deleting
// an IPv6 conntrack entry failed with EINVAL and the flows lived on.
func TestIPv6FlowsCut(t *testing.T) {
	n := newNode(t)
	n.start(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: 82, protocol: TCP}, {port: 80, protocol: UDP}, {port: 80, protocol: SCTP}]
`, true)
	b := n.pods["b"].IPv6
	echoServer(t, n.pods["b"], "[fd00:99:1::2]:82")
	tcp := dial(t, n.pods["a"], netip.AddrPortFrom(b, 82).String())
	udp := udpFixed(t, n.pods["a"], 40082, netip.AddrPortFrom(b, 80))
	sctp, err := netsim.OpenSCTPFlow(n.pods["a"], b, 80, 40083)
	if err != nil {
		t.Fatal(err)
	}
	defer sctp.Close()
	if !tcp.ping() || !udp.ping() || !sctp.Ping(time.Second) {
		t.Fatalf("flows before the change: tcp %v udp %v sctp %v", tcp.ping(), udp.ping(), sctp.Ping(time.Second))
	}
	errorsBefore := n.metric("tollgate_conntrack_cut_errors_total")
	n.write("policy.yaml", denyAll)
	changed := time.Now()
	n.eventually("all three flows cut", 5*time.Second, func() bool {
		return !tcp.ping() && !udp.ping() && !sctp.Ping(300*time.Millisecond)
	})
	t.Logf("TCP, UDP and SCTP over IPv6 cut %v after the change", time.Since(changed).Round(time.Millisecond))
	if got := n.metric("tollgate_conntrack_cut_errors_total") - errorsBefore; got != 0 {
		t.Errorf("%v cut errors", got)
	}
	if got := n.metric("tollgate_conntrack_flows_cut_total"); got < 3 {
		t.Errorf("tollgate_conntrack_flows_cut_total = %v, want at least 3", got)
	}
}

// denyAll isolates y/b for ingress.
const denyAll = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x, namespace: "y"}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

// TestQueuerRestartKeepsEnforcement: the default fail-open queuer stopped
// (SIGTERM, as in a rolling update) leaves its ruleset and kernel caches:
// a cached deny stays a drop while it is away, and the next queuer adopts
// everything. Before the fix fail-open SIGTERM deleted the table, so the
// node was unenforced until the new pod was ready.
func TestQueuerRestartKeepsEnforcement(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true)
	n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "b", netsim.TCP, false, true})
	n.eventually("the deny in the kernel cache", 5*time.Second, func() bool {
		out, _ := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "deny4")
		return strings.Contains(out, "10.99.1.3 . 10.99.1.2 . tcp . 80")
	})
	n.queuer.Stop()
	if _, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate"); err != nil {
		t.Fatalf("the queuer removed its table on SIGTERM: %v", err)
	}
	// While it is away: the cached deny holds, the cached allow too.
	n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "b", netsim.TCP, false, true})
	n.startQueuer(true)
	n.eventually("y/b selected", 10*time.Second, func() bool { return n.selected("10.99.1.2") })
	n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "b", netsim.TCP, false, true},
		probe{"c", "b", netsim.UDP, false, false})
	// `queuer cleanup` is how an uninstall removes it all, once the
	// DaemonSet is gone.
	n.queuer.Stop()
	if out, err := netsim.Exec(n.node.Netns(), filepath.Join(binDir, "queuer"), "cleanup"); err != nil {
		t.Fatalf("queuer cleanup: %v: %s", err, out)
	}
	if _, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate"); err == nil {
		t.Error("queuer cleanup left the table")
	}
}

// TestRefusesIPVS: beside kube-proxy in IPVS mode (its kube-ipvs0
// interface exists) the queuer refuses to start, with a reason, and
// installs nothing. Before the fix it ran and judged connections to
// ClusterIPs against the wrong addresses.
func TestRefusesIPVS(t *testing.T) {
	n := newNode(t)
	// kube-proxy makes it a dummy interface; the name is what counts (this
	// kernel has no dummy driver).
	if out, err := netsim.Exec(n.node.Netns(), "ip", "link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kube-ipvs0-p"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.node.Netns(), filepath.Join(binDir, "queuer"),
		"--decider-socket", n.socket, "--node-name", "node-1", "--metrics-bind-address", "").CombinedOutput()
	if err == nil {
		t.Fatalf("the queuer ran beside IPVS:\n%s", out)
	}
	if !strings.Contains(string(out), "IPVS") {
		t.Errorf("the queuer's error does not say why:\n%s", out)
	}
	if _, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate"); err == nil {
		t.Error("the queuer installed its table beside IPVS")
	}
}

// nftWrapper puts an `nft` first on the queuer's PATH that fails any
// transaction mentioning a selected-pod set while flag exists, and counts
// its runs in count (a line each) and the failures it injected in
// count+".failed".
func nftWrapper(t *testing.T) (dir, flag, count string) {
	t.Helper()
	dir = t.TempDir()
	flag, count = filepath.Join(dir, "fail"), filepath.Join(dir, "runs")
	real, err := exec.LookPath("nft")
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
echo x >> %[2]s
case " $* " in
*" -f - "*|*" --file - "*)
	input=$(cat)
	if [ -e %[1]s ] && printf '%%s' "$input" | grep -q selected; then
		echo "injected failure" >&2
		echo x >> %[2]s.failed
		exit 1
	fi
	printf '%%s\n' "$input" | %[3]s "$@"
	exit $? ;;
esac
exec %[3]s "$@"
`, flag, count, real)
	if err := os.WriteFile(filepath.Join(dir, "nft"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, flag, count
}

// lines counts the lines of a file (0 if missing).
func lines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "\n")
}

// TestFailedApplicationStillInvalidates: when a new generation cannot be put
// in force (the selected-pod sets cannot be written), the kernel's cached
// verdicts of the old one are dropped anyway, and the flows the change
// denies are cut once it can be. Before the fix the queuer returned before
// touching the caches and never re-ran the cutter for that generation.
func TestFailedApplicationStillInvalidates(t *testing.T) {
	n := newNode(t)
	dir, flag, runs := nftWrapper(t)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	// The failures come from nft: set elements go through it too here
	// (nft is also where netlink writes fall back to).
	n.start(allowBoth, true, "--netlink-sets=false")
	echoServer(t, n.pods["b"], "10.99.1.2:82")
	s := dial(t, n.pods["a"], "10.99.1.2:82")
	if !s.ping() {
		t.Fatal("echo session does not work")
	}
	n.eventually("a -> b:82 in the kernel cache", 5*time.Second, func() bool {
		out, _ := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "allow4")
		return strings.Contains(out, "10.99.1.1 . 10.99.1.2 . tcp . 82")
	})
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Deny x/a and select z/c too: the selected set must change, and
	// cannot.
	n.write("policy.yaml", allowZOnly)
	n.write("only-c.yaml", selectsZC)
	n.eventually("a failed application", 10*time.Second, func() bool { return lines(runs+".failed") >= 1 })
	time.Sleep(200 * time.Millisecond)
	if ok, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 82, netsim.TCP, 500*time.Millisecond); ok {
		t.Error("a new x/a -> y/b:82 connection passed on the old generation's cached verdict")
	}
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	n.eventually("the established session cut after the retry", 5*time.Second, func() bool { return !s.ping() })
	n.eventually("z/c selected", 5*time.Second, func() bool { return n.selected("10.99.1.3") })
}

// TestKernelLearnsVerdicts: verdicts reach the kernel cache without an
// `nft` process per batch (the kernel learns them from the queuer's mark),
// and the cache stays within its size: past it, connections are answered
// by the queuer. Before the fix every 5 ms batch of verdicts started an
// `nft` process, and the sets had no size.
func TestKernelLearnsVerdicts(t *testing.T) {
	n := newNode(t)
	dir, _, runs := nftWrapper(t)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	n.start(policyYAML, true, "--kernel-cache-size", "8", "--check-interval", "0")
	n.check(probe{"a", "b", netsim.TCP, false, true})
	time.Sleep(300 * time.Millisecond)
	before := lines(runs)
	// 40 new tuples: the client pod x/a to 40 ports of y/b (81 is allowed
	// by no rule; the decider denies, the kernel learns the deny).
	denied := 0
	for port := range uint16(40) {
		if ok, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 1000+port, netsim.UDP, 200*time.Millisecond); !ok {
			denied++
		}
	}
	if denied != 40 {
		t.Errorf("%d of 40 denied tuples were denied", denied)
	}
	if got := lines(runs) - before; got != 0 {
		t.Errorf("deciding 40 new tuples ran nft %d times, want 0", got)
	}
	out, err := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "deny4")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out, " . udp . "); got == 0 || got > 8 {
		t.Errorf("deny4 holds %d learned tuples, want 1..8 (its size):\n%s", got, out)
	}
	// Past the size the queuer still answers correctly.
	n.check(probe{"a", "b", netsim.UDP, false, true}, probe{"c", "b", netsim.UDP, false, false})
}

// TestForeignMarkBits: packets that reach Tollgate already carrying its mark
// bits (set by another agent on the node, or by the kernel: MLD reports go
// out with a stray mark) are neither queued nor taken for verdicts, and the
// bits that are not Tollgate's stay as the other agent set them.
func TestForeignMarkBits(t *testing.T) {
	n := newNode(t)
	n.startDecider()
	n.startQueuer(true)
	n.eventually("ready", 10*time.Second, func() bool { return n.readyz() == 200 })
	// Another agent marks every forwarded packet before Tollgate looks; a
	// table after Tollgate counts the packets whose mark is the agent's own
	// bit alone.
	for _, mark := range []string{"0x00011000", "0x00012040", "0x00013000"} {
		t.Run(mark, func(t *testing.T) {
			rules := fmt.Sprintf(`table ip foreign {
	chain early { type filter hook forward priority -300; meta mark set %s; }
	chain late { type filter hook forward priority 300; meta mark 0x00010000 counter; }
}
`, mark)
			if out, err := execStdin(n.node.Netns(), rules, "nft", "-f", "-"); err != nil {
				t.Fatalf("nft: %v: %s", err, out)
			}
			defer netsim.Exec(n.node.Netns(), "nft", "delete", "table", "ip", "foreign")
			before := n.queued()
			n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.UDP, false, true})
			if q := n.queued(); q != before {
				t.Errorf("%d packets of unselected pods queued, want 0", q-before)
			}
			for _, set := range []string{"allow4", "deny4"} {
				out, _ := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", set)
				if strings.Contains(out, "10.99.1.") {
					t.Errorf("the foreign mark taught the kernel cache a verdict:\n%s", out)
				}
			}
			out, _ := netsim.Exec(n.node.Netns(), "nft", "list", "chain", "ip", "foreign", "late")
			if strings.Contains(out, "packets 0 ") {
				t.Errorf("no packet left with the agent's own bit alone:\n%s", out)
			}
		})
	}
	// With a policy the agent's bits change nothing either: a is allowed to
	// b, c is denied.
	n.write("policy.yaml", policyYAML)
	n.eventually("y/b selected", 20*time.Second, func() bool { return n.selected("10.99.1.2") })
	if out, err := execStdin(n.node.Netns(), "table ip foreign {\n\tchain early { type filter hook forward priority -300; meta mark set 0x00011000; }\n}\n", "nft", "-f", "-"); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.TCP, false, false},
		probe{"a", "b", netsim.UDP, false, true}, probe{"c", "b", netsim.UDP, false, false})
}

// portRangePolicy admits x to y on TCP ports 1000-1999.
const portRangePolicy = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: 1000, endPort: 1999, protocol: TCP}]
`

// TestPortRangeAnswers: the decider says over which ports its verdict
// holds, and the queuer answers new connections of the same pair of pods
// to other ports of that range from its cache: ten new tuples, allowed or
// denied, take one decider round trip each way, unless the range answers
// are turned off.
func TestPortRangeAnswers(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache-port-ranges=%v", on), func(t *testing.T) {
			n := newNode(t)
			for port := range uint16(10) {
				if err := n.topo.ServeTCP(n.pods["b"], 1000+port); err != nil {
					t.Fatal(err)
				}
			}
			n.start(portRangePolicy, false, fmt.Sprintf("--cache-port-ranges=%v", on))
			n.eventually("ready", 10*time.Second, func() bool { return n.readyz() == 200 })
			for _, tc := range []struct {
				proto netsim.Proto
				first uint16
				want  bool
			}{{netsim.TCP, 1000, true}, {netsim.UDP, 3000, false}} {
				before := n.metric("tollgate_decider_rtt_seconds_count")
				for port := range uint16(10) {
					ok, err := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, tc.first+port, tc.proto, time.Second)
					if err != nil {
						t.Fatal(err)
					}
					if ok != tc.want {
						t.Errorf("x/a -> y/b:%d/%s reachable=%v, want %v", tc.first+port, tc.proto, ok, tc.want)
					}
				}
				want := 1.0
				if !on {
					want = 10
				}
				if got := n.metric("tollgate_decider_rtt_seconds_count") - before; got != want {
					t.Errorf("%s: 10 new tuples took %v decider round trips, want %v", tc.proto, got, want)
				}
			}
		})
	}
}
