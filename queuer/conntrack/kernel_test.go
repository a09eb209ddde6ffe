package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"
)

// The root tests build three namespaces: a client pod (A), a routing node
// (N) and a server pod (B). N forwards between them, DNATs a Service VIP to
// B, and holds the conntrack entries the tests list and cut.
const (
	clientIP = "10.77.1.2"
	serverIP = "10.77.2.2"
	vipIP    = "10.77.9.9"
)

type topology struct {
	a, n, b string
}

func newTopology(t *testing.T) topology {
	t.Helper()
	prefix := randomPrefix(t)
	tp := topology{a: newNetNS(t, prefix, "a"), n: newNetNS(t, prefix, "n"), b: newNetNS(t, prefix, "b")}
	sh(t, "ip", "-n", tp.a, "link", "add", "eth0", "type", "veth", "peer", "name", "toa", "netns", tp.n)
	sh(t, "ip", "-n", tp.b, "link", "add", "eth0", "type", "veth", "peer", "name", "tob", "netns", tp.n)
	for _, c := range [][]string{
		{"-n", tp.a, "addr", "add", clientIP + "/24", "dev", "eth0"},
		{"-n", tp.a, "link", "set", "eth0", "up"},
		{"-n", tp.a, "route", "add", "default", "via", "10.77.1.1"},
		{"-n", tp.b, "addr", "add", serverIP + "/24", "dev", "eth0"},
		{"-n", tp.b, "link", "set", "eth0", "up"},
		{"-n", tp.b, "route", "add", "default", "via", "10.77.2.1"},
		{"-n", tp.n, "addr", "add", "10.77.1.1/24", "dev", "toa"},
		{"-n", tp.n, "addr", "add", "10.77.2.1/24", "dev", "tob"},
		{"-n", tp.n, "link", "set", "toa", "up"},
		{"-n", tp.n, "link", "set", "tob", "up"},
	} {
		sh(t, "ip", c...)
	}
	sh(t, "ip", "netns", "exec", tp.n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// The Service: VIP:80 -> B:8080, as kube-proxy would program it.
	nftIn(t, tp.n, fmt.Sprintf(`table ip svc {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport 80 dnat to %s:8080
	}
}`, vipIP, serverIP))
	return tp
}

// public returns f with the kernel identity cleared, for comparisons.
func public(f Flow) Flow {
	return Flow{Src: f.Src, SrcPort: f.SrcPort, Dst: f.Dst, DstPort: f.DstPort, Proto: f.Proto,
		ViaService: f.ViaService, OrigDst: f.OrigDst, OrigDstPort: f.OrigDstPort}
}

func localPort(c net.Conn) uint16 {
	return uint16(c.LocalAddr().(*net.TCPAddr).Port)
}

func findFlow(flows []Flow, src netip.Addr, sport uint16) (Flow, bool) {
	for _, f := range flows {
		if f.Src == src && f.SrcPort == sport {
			return f, true
		}
	}
	return Flow{}, false
}

func TestKernelListAndCut(t *testing.T) {
	needRoot(t, "ip", "nft")
	tp := newTopology(t)
	accepted := listenIn(t, tp.b, serverIP+":8080")
	viaSvc := connectIn(t, tp.a, vipIP+":80", accepted)
	direct := connectIn(t, tp.a, serverIP+":8080", accepted)
	if !delivers(viaSvc.client, viaSvc.server, time.Second) || !delivers(direct.client, direct.server, time.Second) {
		t.Fatal("connections do not work before the cut")
	}

	c := dialIn(t, tp.n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	flows, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client, server, vip := netip.MustParseAddr(clientIP), netip.MustParseAddr(serverIP), netip.MustParseAddr(vipIP)
	for _, tc := range []struct {
		name string
		conn tcpPair
		want Flow
	}{
		{"via service", viaSvc, Flow{Src: client, SrcPort: localPort(viaSvc.client), Dst: server, DstPort: 8080,
			Proto: 6, ViaService: true, OrigDst: vip, OrigDstPort: 80}},
		{"direct", direct, Flow{Src: client, SrcPort: localPort(direct.client), Dst: server, DstPort: 8080,
			Proto: 6, OrigDst: server, OrigDstPort: 8080}},
	} {
		got, ok := findFlow(flows, client, tc.want.SrcPort)
		if !ok {
			t.Fatalf("%s: no entry for %s in %v", tc.name, tc.want, flows)
		}
		if public(got) != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, public(got), tc.want)
		}
	}

	cutter := NewCutter(c)
	var hooked []Flow
	cutter.BeforeDelete = func(_ context.Context, f Flow) error {
		hooked = append(hooked, public(f))
		return nil
	}
	denyPort := localPort(viaSvc.client)
	n, err := cutter.Cut(ctx, Request{Selected: []netip.Addr{server}}, func(_ context.Context, f Flow) (bool, error) {
		return f.SrcPort != denyPort, nil
	})
	if err != nil || n != 1 {
		t.Fatalf("Cut = %d, %v; want 1, nil", n, err)
	}
	if st := cutter.Stats(); st.Examined != 2 || st.Cut != 1 || st.Runs != 1 {
		t.Errorf("stats %+v, want 2 examined and 1 cut in 1 run", st)
	}
	if len(hooked) != 1 || hooked[0].SrcPort != denyPort {
		t.Errorf("BeforeDelete saw %v, want only the denied flow", hooked)
	}
	flows, err = c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := findFlow(flows, client, denyPort); ok {
		t.Errorf("denied entry still present: %s", f)
	}
	if _, ok := findFlow(flows, client, localPort(direct.client)); !ok {
		t.Error("allowed entry was deleted")
	}

	// Deleting it again names an entry that no longer exists.
	err = c.Delete(ctx, Flow{Src: client, SrcPort: denyPort, Dst: server, DstPort: 8080, Proto: 6,
		ViaService: true, OrigDst: vip, OrigDstPort: 80})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	// The unaffected connection keeps working.
	if !delivers(direct.client, direct.server, time.Second) {
		t.Error("unaffected connection broke")
	}
}

// rulesetFor returns a ruleset shaped like the queuer's `inet tollgate` for
// namespace N. selected4 holds the server; policydeny4 stands in for the
// decider: a new connection from the first to the second address of a pair
// is denied, everything else allowed. top is put first into classify and
// notNew replaces the rule `ct state != new accept`.
func rulesetFor(top, notNew string) string {
	return fmt.Sprintf(`table inet tgtest {
	set selected4 { type ipv4_addr; elements = { %[1]s } }
	set deny4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags timeout; timeout 1m; }
	set policydeny4 { type ipv4_addr . ipv4_addr; }
	chain forward {
		type filter hook forward priority mangle - 10; policy accept;
		jump classify
	}
	chain classify {
		%[2]s
		ct state established,related accept
		%[3]s
		ip saddr @selected4 goto decide4
		ip daddr @selected4 goto decide4
	}
	chain decide4 {
		ip saddr . ip daddr . meta l4proto . th dport @deny4 counter drop
		ip saddr . ip daddr @policydeny4 counter drop
		counter accept
	}
}`, serverIP, top, notNew)
}

const (
	// notNewAccept is the queuer's current rule: invalid packets pass.
	notNewAccept = "ct state != new accept"
	// notNewJudge lets invalid packets of selected pods be judged like new
	// ones (only untracked packets pass unjudged).
	notNewJudge = "ct state untracked accept"
	// labelBit is the conntrack label the label variant uses to doom a flow.
	labelBit = 127
)

// TestKernelNextPacketAfterCut answers, on the running kernel, what happens
// to an established TCP connection through a ruleset shaped like ours when
// the Cutter removes its conntrack entry after policy starts denying it
// (the client may no longer reach the server; policy does not restrict the
// reverse orientation, server to client). Each case runs a direct
// connection and one through the Service VIP side by side.
func TestKernelNextPacketAfterCut(t *testing.T) {
	needRoot(t, "ip", "nft", "sysctl")
	type step struct {
		fromServer bool // else from the client
		// direct and service: whether the data arrives on the direct
		// connection and on the one through the Service.
		direct, service bool
	}
	client, server := func(direct, service bool) step { return step{false, direct, service} },
		func(direct, service bool) step { return step{true, direct, service} }
	for _, tc := range []struct {
		name     string
		loose    bool   // net.netfilter.nf_conntrack_tcp_loose
		top      string // first rules of classify
		notNew   string
		denyBoth bool // BeforeDelete puts both orientations into deny4
		label    bool // label the entry with labelBit instead of deleting it
		late     bool // load the ruleset only after the connections are open
		steps    []step
	}{
		{
			// The client's next packet makes a new entry (picked up
			// mid-stream, re-DNATed for the Service), is judged and dropped.
			// But the server's next packet on the direct connection also makes
			// a new entry, in the reverse orientation, which policy allows; the
			// client's packets are then replies and pass: the cut is undone.
			// Through the Service the reverse entry has no NAT, the client
			// answers the unknown source with a reset, and the connection dies.
			name: "loose", loose: true, notNew: notNewAccept,
			steps: []step{client(false, false), server(true, false)},
		},
		{
			name: "loose, server first", loose: true, notNew: notNewAccept,
			steps: []step{server(true, false), client(true, false)},
		},
		{
			// Deny entries for both orientations stop either side, for as long
			// as the entries live (the set's timeout).
			name: "loose, both orientations denied", loose: true, notNew: notNewAccept, denyBoth: true,
			steps: []step{server(false, false), client(false, false)},
		},
		{
			// Without loose pickup the next packet is INVALID, and the
			// queuer's `ct state != new accept` lets it through: the direct
			// connection is not cut at all. Through the Service the client's
			// packet is not DNATed any more (invalid packets are not NATed)
			// and goes nowhere.
			name: "strict, invalid accepted", loose: false, notNew: notNewAccept,
			steps: []step{client(true, false), server(true, false)},
		},
		{
			// Judging invalid packets of selected pods drops the client's; the
			// server's still pass as policy allows that orientation, but no
			// entry is created, so the client stays cut off.
			name: "strict, invalid judged", loose: false, notNew: notNewJudge,
			steps: []step{client(false, false), server(true, false), client(false, false)},
		},
		{
			name: "strict, invalid judged, both orientations denied", loose: false, notNew: notNewJudge, denyBoth: true,
			steps: []step{server(false, false), client(false, false)},
		},
		{
			// A conntrack label on the entry and a rule dropping labelled
			// packets ahead of the established check: the entry stays, both
			// directions stop, whatever the sysctl.
			name: "label instead of delete", loose: true, top: fmt.Sprintf("ct label %d drop", labelBit),
			notNew: notNewAccept, label: true,
			steps: []step{server(false, false), client(false, false)},
		},
		{
			// Entries created before any ruleset used labels have no room for
			// them: the kernel refuses to label them (ENOSPC).
			name: "label, ruleset loaded after connect", loose: true, top: fmt.Sprintf("ct label %d drop", labelBit),
			notNew: notNewAccept, label: true, late: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tp := newTopology(t)
			loose := "0"
			if tc.loose {
				loose = "1"
			}
			sh(t, "ip", "netns", "exec", tp.n, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose="+loose)
			if !tc.late {
				nftIn(t, tp.n, rulesetFor(tc.top, tc.notNew))
			}

			accepted := listenIn(t, tp.b, serverIP+":8080")
			pairs := []tcpPair{
				connectIn(t, tp.a, serverIP+":8080", accepted),
				connectIn(t, tp.a, vipIP+":80", accepted),
			}
			for _, p := range pairs {
				if !delivers(p.client, p.server, time.Second) || !delivers(p.server, p.client, time.Second) {
					t.Fatal("connection does not work before the policy change")
				}
			}
			if tc.late {
				nftIn(t, tp.n, rulesetFor(tc.top, tc.notNew))
			}
			// Let delayed ACKs go out so that no packet is in flight at the cut.
			time.Sleep(200 * time.Millisecond)

			// The policy change: the client may no longer reach the server.
			sh(t, "ip", "netns", "exec", tp.n, "nft", "add", "element", "inet", "tgtest", "policydeny4",
				fmt.Sprintf("{ %s . %s }", clientIP, serverIP))
			c := dialIn(t, tp.n)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			deny := func(_ context.Context, f Flow) (bool, error) {
				return f.Src.String() != clientIP || f.Dst.String() != serverIP, nil
			}
			var cut int
			var err error
			if tc.label {
				cut, err = labelDenied(ctx, t, tp.n, deny)
			} else {
				cutter := NewCutter(c)
				if tc.denyBoth {
					cutter.BeforeDelete = func(_ context.Context, f Flow) error {
						_, err := shErr("ip", "netns", "exec", tp.n, "nft", "add", "element", "inet", "tgtest", "deny4",
							fmt.Sprintf("{ %s . %s . tcp . %d, %s . %s . tcp . %d }",
								f.Src, f.Dst, f.DstPort, f.Dst, f.Src, f.SrcPort))
						return err
					}
				}
				cut, err = cutter.Cut(ctx, Request{Selected: []netip.Addr{netip.MustParseAddr(serverIP)}}, deny)
			}
			if tc.late {
				if !errors.Is(err, syscall.ENOSPC) || cut != 0 {
					t.Fatalf("labelling old entries: %d, %v; want 0, ENOSPC", cut, err)
				}
				return
			}
			if err != nil || cut != 2 {
				t.Fatalf("cut = %d, %v; want 2", cut, err)
			}

			for i, s := range tc.steps {
				who := "client"
				if s.fromServer {
					who = "server"
				}
				var got [2]bool
				done := make(chan struct{})
				for j, p := range pairs {
					from, to := p.client, p.server
					if s.fromServer {
						from, to = p.server, p.client
					}
					go func() {
						defer func() { done <- struct{}{} }()
						got[j] = delivers(from, to, 600*time.Millisecond)
					}()
				}
				<-done
				<-done
				t.Logf("step %d: %s sends, arrives direct=%v service=%v; conntrack in N: %s",
					i+1, who, got[0], got[1], conntrackEntries(ctx, t, c))
				if got != [2]bool{s.direct, s.service} {
					t.Errorf("step %d: data from the %s arrived direct=%v service=%v, want %v %v",
						i+1, who, got[0], got[1], s.direct, s.service)
				}
			}
			out, _ := shErr("ip", "netns", "exec", tp.n, "nft", "list", "chain", "inet", "tgtest", "decide4")
			t.Logf("decide4 counters:\n%s", out)
		})
	}
}

// conntrackEntries describes N's TCP entries for the log.
func conntrackEntries(ctx context.Context, t *testing.T, c *Client) string {
	flows, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, f := range flows {
		if f.Proto == 6 {
			parts = append(parts, f.String())
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

// labelDenied sets labelBit on the entries in namespace ns that decide
// denies, through a raw ti-mo connection (the experiment for the
// label-instead-of-delete variant).
func labelDenied(ctx context.Context, t *testing.T, ns string, decide DecideFunc) (int, error) {
	t.Helper()
	var conn *ct.Conn
	var err error
	inNetNS(t, ns, func() { conn, err = ct.Dial(nil) })
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	entries, err := conn.Dump(nil)
	if err != nil {
		return 0, err
	}
	labelled := 0
	for _, e := range entries {
		f := Flow{Src: e.TupleOrig.IP.SourceAddress.Unmap(), SrcPort: e.TupleOrig.Proto.SourcePort,
			Dst: e.TupleReply.IP.SourceAddress.Unmap(), DstPort: e.TupleReply.Proto.SourcePort, Proto: e.TupleOrig.Proto.Protocol}
		if f.Dst.String() != serverIP || f.Proto != 6 {
			continue
		}
		allow, err := decide(ctx, f)
		if err != nil || allow {
			continue
		}
		upd := ct.Flow{TupleOrig: e.TupleOrig, TupleReply: e.TupleReply, ID: e.ID}
		upd.Labels = make([]byte, 16)
		upd.LabelsMask = make([]byte, 16)
		// Label bit n is bit n%8 of byte n/8 (the kernel's bitmap of longs,
		// little endian here).
		upd.Labels[labelBit/8] = 1 << (labelBit % 8)
		upd.LabelsMask[labelBit/8] = 1 << (labelBit % 8)
		if err := conn.Update(upd); err != nil {
			return labelled, fmt.Errorf("label %s: %w", f, err)
		}
		labelled++
	}
	return labelled, nil
}
