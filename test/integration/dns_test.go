package integration

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tollgate/tollgate/test/netsim"
)

// zone is what the test's DNS server answers: per name, CNAME targets and
// addresses, with one TTL.
type zone struct {
	cname map[string]string
	addrs map[string][]netip.Addr
	ttl   uint32
}

// answer builds the response to query from z, following CNAMEs.
func (z zone) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	name := strings.ToLower(q.Name.String())
	for range 8 {
		target, ok := z.cname[name]
		if !ok {
			break
		}
		_ = b.CNAMEResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: z.ttl},
			dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(target)})
		name = target
	}
	for _, a := range z.addrs[name] {
		rh := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: z.ttl}
		switch {
		case a.Is4() && q.Type == dnsmessage.TypeA:
			_ = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		case a.Is6() && q.Type == dnsmessage.TypeAAAA:
			_ = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	return b.Finish()
}

// serveDNS runs z on UDP and TCP port 53 in host's namespace until the
// test ends.
func serveDNS(t *testing.T, host netsim.Host, z zone) {
	t.Helper()
	var udp net.PacketConn
	var tcp net.Listener
	if err := netsim.RunInNS(host.Netns(), func() (err error) {
		if udp, err = net.ListenPacket("udp", ":53"); err != nil {
			return err
		}
		tcp, err = net.Listen("tcp", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close(); tcp.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp, err := z.answer(buf[:n]); err == nil {
				_, _ = udp.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp, err := z.answer(q)
				if err != nil {
					return
				}
				// Two writes: the length and the message reach the pod in
				// separate segments, as they may from a real server.
				_, _ = c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(resp))))
				time.Sleep(20 * time.Millisecond)
				_, _ = c.Write(resp)
			}()
		}
	}()
}

// lookup asks server for name (type A, or AAAA when v6) from host, over
// UDP or TCP, and returns the addresses of the answer.
func lookup(t *testing.T, host netsim.Host, server netip.Addr, network, name string, v6 bool) []netip.Addr {
	t.Helper()
	qtype := dnsmessage.TypeA
	if v6 {
		qtype = dnsmessage.TypeAAAA
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 4242, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: qtype, Class: dnsmessage.ClassINET})
	query, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	var resp []byte
	err = netsim.RunInNS(host.Netns(), func() error {
		c, err := net.DialTimeout(network, netip.AddrPortFrom(server, 53).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if network == "tcp" {
			if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...)); err != nil {
				return err
			}
			var l [2]byte
			if _, err := io.ReadFull(c, l[:]); err != nil {
				return err
			}
			resp = make([]byte, binary.BigEndian.Uint16(l[:]))
			_, err = io.ReadFull(c, resp)
			return err
		}
		if _, err := c.Write(query); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		resp = buf[:n]
		return err
	})
	if err != nil {
		t.Fatalf("lookup %s over %s: %v", name, network, err)
	}
	var p dnsmessage.Parser
	if _, err := p.Start(resp); err != nil {
		t.Fatal(err)
	}
	_ = p.SkipAllQuestions()
	var out []netip.Addr
	for {
		r, err := p.Answer()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch body := r.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(body.A))
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(body.AAAA))
		}
	}
	return out
}

// dnsPolicy lets x/a reach the DNS pod, names of allowed.example.test and
// *.ok.example.test, and nothing else.
const dnsPolicy = `
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: z, labels: {pod: dns}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.99.1.9}, {ip: "fd00:99:1::9"}], podIP: 10.99.1.9}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: dns-allowlist}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}
  egress:
  - name: dns
    action: Accept
    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: dns}}}}]
  - name: allowlist
    action: Accept
    to: [{domainNames: ["allowed.example.test", "*.ok.example.test"]}]
  - name: rest
    action: Deny
    to: [{networks: ["0.0.0.0/0", "::/0"]}]
`

// TestDomainNames: x/a may reach what allowed.example.test and
// *.ok.example.test resolve to, from the first connection after the lookup,
// over UDP and TCP, through a CNAME chain, until the answer expires; a
// name the policy does not list gives nothing, though it resolves to a pod.
func TestDomainNames(t *testing.T) {
	n := newNode(t)
	dnsPod, err := n.topo.AddPod(n.node, "dns", netip.MustParseAddr("10.99.1.9"), netip.MustParseAddr("fd00:99:1::9"))
	if err != nil {
		t.Fatal(err)
	}
	b, c := n.pods["b"], n.pods["c"]
	serveDNS(t, dnsPod, zone{
		ttl: 1,
		addrs: map[string][]netip.Addr{
			"allowed.example.test.": {b.IPv4},
			"denied.example.test.":  {c.IPv4},
			"b.ok.example.test.":    {b.IPv6},
		},
		cname: map[string]string{"alias.other.test.": "b.ok.example.test."},
	})
	n.write("policy.yaml", dnsPolicy)
	n.startDecider("--dns-min-ttl", "3s", "--dns-max-ttl", "4s")
	n.startQueuer(true)
	n.eventually("x/a's DNS answers learned", 20*time.Second, func() bool {
		out, err := netsim.Exec(n.node.Netns(), "nft", "list", "set", "inet", "tollgate", "dns4")
		return err == nil && strings.Contains(out, "10.99.1.1")
	})
	reach := func(to netip.Addr) bool {
		ok, err := netsim.Probe(n.pods["a"], to, 80, netsim.TCP, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if reach(b.IPv4) || reach(c.IPv4) || reach(b.IPv6) {
		t.Fatal("x/a reaches y/b or z/c before any lookup")
	}

	// UDP: the first connection after the answer arrives already passes.
	if got := lookup(t, n.pods["a"], dnsPod.IPv4, "udp", "allowed.example.test.", false); len(got) != 1 || got[0] != b.IPv4 {
		t.Fatalf("allowed.example.test resolved to %v", got)
	}
	if !reach(b.IPv4) {
		t.Error("x/a -> y/b denied right after allowed.example.test resolved to it")
	}
	// A name the policy does not list: its address stays denied.
	lookup(t, n.pods["a"], dnsPod.IPv4, "udp", "denied.example.test.", false)
	if reach(c.IPv4) {
		t.Error("x/a -> z/c allowed after denied.example.test resolved to it")
	}
	// TCP, and a CNAME chain ending in a name the wildcard matches.
	if got := lookup(t, n.pods["a"], dnsPod.IPv4, "tcp", "alias.other.test.", true); len(got) != 1 || got[0] != b.IPv6 {
		t.Fatalf("alias.other.test resolved to %v", got)
	}
	if !reach(b.IPv6) {
		t.Error("x/a -> y/b over IPv6 denied right after a CNAME to b.ok.example.test resolved to it over TCP")
	}
	if got := n.metric("tollgate_dns_answers_total"); got < 3 {
		t.Errorf("tollgate_dns_answers_total = %v, want at least the 3 answers", got)
	}

	// The answers expire (TTL 1 s raised to the 3 s floor): new connections
	// are denied again, though the kernel cache held their verdicts.
	learned := time.Now()
	n.eventually("the answers to expire", 10*time.Second, func() bool { return !reach(b.IPv4) && !reach(b.IPv6) })
	t.Logf("denied again %v after the lookups (floor 3 s)", time.Since(learned).Round(100*time.Millisecond))
	if time.Since(learned) < 2*time.Second {
		t.Error("the answers expired before the TTL floor")
	}
	// Another lookup allows again.
	lookup(t, n.pods["a"], dnsPod.IPv4, "udp", "allowed.example.test.", false)
	if !reach(b.IPv4) {
		t.Error("x/a -> y/b denied after a fresh lookup")
	}
}
