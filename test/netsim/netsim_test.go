package netsim

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

const probeTimeout = 2 * time.Second

// twoNodes builds node-1 and node-2 with pods a1, b1 and a2, b2, each
// serving TCP, UDP and SCTP on port 80.
func twoNodes(t *testing.T) (*Topology, map[string]*Pod) {
	t.Helper()
	topo := NewForTest(t, "nstest")
	n1, err := topo.AddNode("node-1", netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64"))
	if err != nil {
		t.Fatal(err)
	}
	n2, err := topo.AddNode("node-2", netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64"))
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.ConnectNodes(n1, n2); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*Pod{}
	for i, spec := range []struct {
		node *Node
		name string
	}{{n1, "a1"}, {n1, "b1"}, {n2, "a2"}, {n2, "b2"}} {
		nodeNum := i/2 + 1
		host := 10 + i%2
		v4 := netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", nodeNum, host))
		v6 := netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::%x", nodeNum, host))
		p, err := topo.AddPod(spec.node, spec.name, v4, v6)
		if err != nil {
			t.Fatal(err)
		}
		for _, serve := range []func(Host, uint16) error{topo.ServeTCP, topo.ServeUDP, topo.ServeSCTP} {
			if err := serve(p, 80); err != nil {
				t.Fatal(err)
			}
		}
		pods[spec.name] = p
	}
	return topo, pods
}

func TestTopology(t *testing.T) {
	start := time.Now()
	topo, pods := twoNodes(t)
	t.Logf("built 2 nodes and 4 pods in %s", time.Since(start).Round(time.Millisecond))
	n1, n2 := topo.Node("node-1"), topo.Node("node-2")
	for _, h := range []*Node{n1, n2} {
		if err := topo.ServeTCP(h, 10250); err != nil {
			t.Fatal(err)
		}
	}

	type probe struct {
		name       string
		from       Host
		to         netip.Addr
		port       uint16
		proto      Proto
		wantServer string // "" means unreachable
		wantReason string // substring, for unreachable probes
	}
	var probes []probe
	for _, proto := range []Proto{TCP, UDP, SCTP} {
		for _, pair := range [][2]string{{"a1", "b1"}, {"a1", "a2"}, {"b2", "a1"}, {"a2", "b2"}} {
			from, to := pods[pair[0]], pods[pair[1]]
			server := to.Name
			if proto == SCTP {
				server = "" // SCTP carries no greeting; checked via Reachable below
			}
			for _, ip := range []netip.Addr{to.IPv4, to.IPv6} {
				probes = append(probes, probe{
					name: fmt.Sprintf("%s/%s->%s/%s", proto, from.Name, to.Name, ip),
					from: from, to: ip, port: 80, proto: proto, wantServer: server,
				})
			}
		}
		// A closed port is refused quickly: TCP reset, ICMP port unreachable,
		// SCTP ABORT.
		for _, ip := range []netip.Addr{pods["a2"].IPv4, pods["a2"].IPv6} {
			probes = append(probes, probe{
				name: fmt.Sprintf("%s/a1->a2/%s closed", proto, ip),
				from: pods["a1"], to: ip, port: 81, proto: proto, wantReason: "refused",
			})
		}
	}
	for _, p := range []probe{
		{name: "pod to own node v4", from: pods["a1"], to: n1.IPv4, port: 10250, proto: TCP, wantServer: "node-1"},
		{name: "pod to own node v6", from: pods["a1"], to: n1.IPv6, port: 10250, proto: TCP, wantServer: "node-1"},
		{name: "pod to other node v4", from: pods["a1"], to: n2.IPv4, port: 10250, proto: TCP, wantServer: "node-2"},
		{name: "pod to other node v6", from: pods["a1"], to: n2.IPv6, port: 10250, proto: TCP, wantServer: "node-2"},
		{name: "node to own pod v4", from: n1, to: pods["b1"].IPv4, port: 80, proto: TCP, wantServer: "b1"},
		{name: "node to own pod v6", from: n1, to: pods["b1"].IPv6, port: 80, proto: UDP, wantServer: "b1"},
		{name: "node to other pod v6", from: n2, to: pods["a1"].IPv6, port: 80, proto: TCP, wantServer: "a1"},
		{name: "unrouted address", from: pods["a1"], to: netip.MustParseAddr("10.99.0.1"), port: 80, proto: TCP, wantReason: "unreachable"},
	} {
		probes = append(probes, p)
	}

	// Probes are independent: run them in parallel, bounded.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, p := range probes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			begin := time.Now()
			got, err := ProbeDetail(p.from, p.to, p.port, p.proto, probeTimeout)
			took := time.Since(begin)
			if err != nil {
				t.Errorf("%s: %v", p.name, err)
				return
			}
			wantReachable := p.wantReason == ""
			switch {
			case got.Reachable != wantReachable:
				t.Errorf("%s: reachable = %v (%s), want %v", p.name, got.Reachable, got.Reason, wantReachable)
			case wantReachable && got.Server != p.wantServer:
				t.Errorf("%s: answered by %q, want %q", p.name, got.Server, p.wantServer)
			case !wantReachable && !strings.Contains(got.Reason, p.wantReason):
				t.Errorf("%s: reason %q, want it to mention %q", p.name, got.Reason, p.wantReason)
			case !wantReachable && took > time.Second:
				t.Errorf("%s: failing took %s, want it fast", p.name, took)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d probes in %s", len(probes), time.Since(start).Round(time.Millisecond))
}

func TestDNAT(t *testing.T) {
	topo, pods := twoNodes(t)
	n1 := topo.Node("node-1")
	vip4, vip6 := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")
	for _, proto := range []Proto{TCP, UDP, SCTP} {
		if err := topo.AddDNAT(n1, proto, vip4, 8080, pods["b2"].IPv4, 80); err != nil {
			t.Fatal(err)
		}
		if err := topo.AddDNAT(n1, proto, vip6, 8080, pods["b2"].IPv6, 80); err != nil {
			t.Fatal(err)
		}
	}
	if err := topo.AddDNAT(n1, TCP, vip4, 8080, pods["b2"].IPv6, 80); err == nil {
		t.Error("DNAT across address families: want an error")
	}
	for _, proto := range []Proto{TCP, UDP, SCTP} {
		for _, from := range []Host{pods["a1"], n1} {
			for _, vip := range []netip.Addr{vip4, vip6} {
				got, err := ProbeDetail(from, vip, 8080, proto, probeTimeout)
				if err != nil {
					t.Fatal(err)
				}
				want := "b2"
				if proto == SCTP {
					want = ""
				}
				if !got.Reachable || got.Server != want {
					t.Errorf("%s from %s to %s:8080: %+v, want answered by b2", proto, from.HostName(), vip, got)
				}
			}
		}
		// The VIP only translates the port it was given.
		if ok, err := Probe(pods["a1"], vip4, 8081, proto, 500*time.Millisecond); err != nil || ok {
			t.Errorf("%s to %s:8081 (no DNAT) = %v, %v; want unreachable", proto, vip4, ok, err)
		}
	}
	// Pods on node-2 have no DNAT rule: the VIP goes nowhere from there.
	if ok, err := Probe(pods["a2"], vip4, 8080, TCP, 500*time.Millisecond); err != nil || ok {
		t.Errorf("TCP from a2 (node without DNAT) = %v, %v; want unreachable", ok, err)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	topo, pods := twoNodes(t)
	namespaces := topo.Namespaces()
	if len(namespaces) != 6 {
		t.Fatalf("created %d namespaces, want 6: %v", len(namespaces), namespaces)
	}
	// A stray process left inside a pod namespace must not survive Close.
	sleeper := exec.Command("ip", "netns", "exec", pods["a1"].NS, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	time.Sleep(100 * time.Millisecond)

	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), topo.Name()) {
		t.Errorf("namespaces left after Close:\n%s", out)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Error("process inside a pod namespace survived Close")
		sleeper.Process.Kill()
	}
	if ok, err := Probe(pods["a1"], pods["b1"].IPv4, 80, TCP, 200*time.Millisecond); err == nil || ok {
		t.Errorf("probe from a deleted namespace = %v, %v; want an error", ok, err)
	}
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNamesAreUnique(t *testing.T) {
	a, err := New("x")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New("x")
	if err != nil {
		t.Fatal(err)
	}
	if a.Name() == b.Name() {
		t.Errorf("two topologies share the name %s", a.Name())
	}
	for _, bad := range []string{"", "UPPER", "has space", "waytoolongprefix"} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%q): want an error", bad)
		}
	}
}
