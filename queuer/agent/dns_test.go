package agent

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// dnsAnswer is a DNS response resolving name to addr (TTL 30).
func dnsAnswer(t *testing.T, name, addr string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	_ = b.StartAnswers()
	_ = b.AResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: 30},
		dnsmessage.AResource{A: netip.MustParseAddr(addr).As4()})
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// ip4 wraps a transport header and payload in an IPv4 header.
func ip4(src, dst string, proto uint8, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0], b[9] = 0x45, proto
	binary.BigEndian.PutUint16(b[2:4], uint16(20+len(l4)))
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, l4...)
}

func udpFrom53(dport uint16, payload []byte) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], 53)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

func tcpFrom53(dport uint16, seq uint32, flags byte, payload []byte) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], 53)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint32(h[4:], seq)
	h[12], h[13] = 5<<4, flags
	return append(h, payload...)
}

// TestHandleDNS: an answer is reported for the pod it goes to, and let on
// only once the generation that takes it into account is in force.
func TestHandleDNS(t *testing.T) {
	dec := &fakeDecider{allow: true, gen: 1, learnGen: 2}
	a := newTestAgent(t, dec, Config{FailOpen: true}, nil)
	if err := a.watch(t, client.WatchUpdate{Generation: 1, Instance: "a", First: true, ChangedAll: true}); err != nil {
		t.Fatal(err)
	}
	p := nfq.Packet{Payload: ip4("10.0.0.53", "10.0.0.1", 17, udpFrom53(40000, dnsAnswer(t, "www.allowed.test.", "203.0.113.5")))}
	done := make(chan nfq.Verdict, 1)
	go func() { done <- a.HandleDNS(p) }()
	select {
	case <-done:
		t.Fatal("the answer went on before the generation that learned it was in force")
	case <-time.After(50 * time.Millisecond):
	}
	if err := a.watch(t, client.WatchUpdate{Generation: 2, Instance: "a", Changed: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if v := <-done; !v.Accept {
		t.Fatal("a DNS answer was dropped")
	}
	dec.mu.Lock()
	calls := slices.Clone(dec.learned)
	dec.mu.Unlock()
	if len(calls) != 1 || calls[0].pod != netip.MustParseAddr("10.0.0.1") || calls[0].rs[0].Names[0] != "www.allowed.test" ||
		calls[0].rs[0].Addrs[0] != netip.MustParseAddr("203.0.113.5") || calls[0].rs[0].TTL != 30 {
		t.Errorf("Learn calls %+v", calls)
	}
	if n := value(t, a.metrics.dnsAnswers.WithLabelValues(dnsLearned)); n != 1 {
		t.Errorf("learned answers = %v", n)
	}

	// Over TCP, the message split over two segments is learned at the
	// second; garbage goes on unlearned.
	msg := dnsAnswer(t, "tcp.allowed.test.", "203.0.113.6")
	framed := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	framed = append(framed, msg...)
	dec.set(func(d *fakeDecider) { d.learnGen = 2 })
	first := nfq.Packet{Payload: ip4("10.0.0.53", "10.0.0.1", 6, tcpFrom53(40001, 100, 0x18, framed[:7]))}
	second := nfq.Packet{Payload: ip4("10.0.0.53", "10.0.0.1", 6, tcpFrom53(40001, 107, 0x19, framed[7:]))}
	a.HandleDNS(first)
	if len(dec.learned) != 1 {
		t.Error("a partial TCP message was learned")
	}
	a.HandleDNS(second)
	if len(dec.learned) != 2 || dec.learned[1].rs[0].Names[0] != "tcp.allowed.test" {
		t.Errorf("the TCP answer was not learned: %+v", dec.learned)
	}
	if v := a.HandleDNS(nfq.Packet{Payload: ip4("10.0.0.53", "10.0.0.1", 17, udpFrom53(40002, []byte("junk")))}); !v.Accept {
		t.Error("garbage from port 53 was dropped")
	}
	if n := value(t, a.metrics.dnsAnswers.WithLabelValues(dnsUnparsable)); n != 1 {
		t.Errorf("unparsable answers = %v", n)
	}
}
