package dns

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// answer builds a response to a question for name (type A), with records:
// "A name 1.2.3.4 ttl", "AAAA name ::1 ttl" or "CNAME name target ttl".
type record struct {
	typ, name, value string
	ttl              uint32
}

func answer(t testing.TB, rcode dnsmessage.RCode, questions []string, records ...record) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: true, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	for _, q := range questions {
		if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(q), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.StartAnswers(); err != nil {
		t.Fatal(err)
	}
	for _, r := range records {
		h := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(r.name), Class: dnsmessage.ClassINET, TTL: r.ttl}
		var err error
		switch r.typ {
		case "A":
			err = b.AResource(h, dnsmessage.AResource{A: netip.MustParseAddr(r.value).As4()})
		case "AAAA":
			err = b.AAAAResource(h, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(r.value).As16()})
		case "CNAME":
			err = b.CNAMEResource(h, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(r.value)})
		case "TXT":
			err = b.TXTResource(h, dnsmessage.TXTResource{TXT: []string{r.value}})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestParseAnswer(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
		want []Resolution
	}{
		{"A records", answer(t, 0, []string{"Allowed.Example.Test."},
			record{"A", "allowed.example.test.", "10.99.1.2", 300}, record{"A", "allowed.example.test.", "10.99.1.3", 60}),
			[]Resolution{{Names: []string{"allowed.example.test"}, Addrs: addrs("10.99.1.2", "10.99.1.3"), TTL: 60}}},
		{"AAAA", answer(t, 0, []string{"v6.test."}, record{"AAAA", "v6.test.", "fd00::1", 30}),
			[]Resolution{{Names: []string{"v6.test"}, Addrs: addrs("fd00::1"), TTL: 30}}},
		{"a CNAME chain", answer(t, 0, []string{"www.example.test."},
			record{"CNAME", "www.example.test.", "edge.cdn.test.", 600},
			record{"CNAME", "edge.cdn.test.", "node7.cdn.test.", 20},
			record{"A", "node7.cdn.test.", "192.0.2.7", 120}),
			[]Resolution{{Names: []string{"www.example.test", "edge.cdn.test", "node7.cdn.test"}, Addrs: addrs("192.0.2.7"), TTL: 20}}},
		{"a CNAME loop ends", answer(t, 0, []string{"a.test."},
			record{"CNAME", "a.test.", "b.test.", 5}, record{"CNAME", "b.test.", "a.test.", 5}, record{"A", "b.test.", "192.0.2.1", 5}),
			[]Resolution{{Names: []string{"a.test", "b.test"}, Addrs: addrs("192.0.2.1"), TTL: 5}}},
		{"no address", answer(t, 0, []string{"txt.test."}, record{"TXT", "txt.test.", "hello", 5}), nil},
		{"NXDOMAIN", answer(t, dnsmessage.RCodeNameError, []string{"gone.test."}), nil},
		{"records of other names are not the question's", answer(t, 0, []string{"q.test."}, record{"A", "other.test.", "192.0.2.9", 5}), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAnswer(tc.msg)
			if tc.name == "NXDOMAIN" {
				if err == nil {
					t.Errorf("NXDOMAIN parsed as an answer: %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tc.want, func(a, b Resolution) bool {
				return slices.Equal(a.Names, b.Names) && slices.Equal(a.Addrs, b.Addrs) && a.TTL == b.TTL
			}) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	// A query (not a response) and garbage are refused.
	q := answer(t, 0, []string{"a.test."})
	q[2] &^= 0x80 // clear QR
	for _, bad := range [][]byte{q, {1, 2, 3}, nil} {
		if _, err := ParseAnswer(bad); err == nil {
			t.Errorf("ParseAnswer(%x) accepted", bad)
		}
	}
}

// FuzzParseAnswer: never a panic, and every address returned is one of the
// message's A or AAAA records.
func FuzzParseAnswer(f *testing.F) {
	f.Add(answer(f, 0, []string{"www.example.test."}, record{"CNAME", "www.example.test.", "edge.cdn.test.", 600},
		record{"A", "edge.cdn.test.", "192.0.2.7", 120}, record{"AAAA", "edge.cdn.test.", "2001:db8::7", 120}))
	f.Add(answer(f, 0, []string{"a.test.", "b.test."}, record{"A", "a.test.", "192.0.2.1", 5}))
	f.Fuzz(func(t *testing.T, msg []byte) {
		res, err := ParseAnswer(msg)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		if _, err := p.Start(msg); err != nil {
			t.Fatalf("parsed a message the parser cannot start: %v", err)
		}
		_ = p.SkipAllQuestions()
		// The A and AAAA records of the answer section, read record by
		// record: the body of a record of another type is skipped, not
		// parsed (Parser.Answer would stop at a malformed TXT body, which
		// ParseAnswer rightly skips; the seed 720cb12271b79e8b has one
		// before an AAAA record).
		var records []netip.Addr
		for {
			h, err := p.AnswerHeader()
			if err != nil {
				break
			}
			switch h.Type {
			case dnsmessage.TypeA:
				var r dnsmessage.AResource
				if r, err = p.AResource(); err == nil {
					records = append(records, netip.AddrFrom4(r.A))
				}
			case dnsmessage.TypeAAAA:
				var r dnsmessage.AAAAResource
				if r, err = p.AAAAResource(); err == nil {
					records = append(records, netip.AddrFrom16(r.AAAA).Unmap())
				}
			default:
				err = p.SkipAnswer()
			}
			if err != nil {
				break // the parser does not move past a record it could not read
			}
		}
		for _, r := range res {
			if len(r.Names) == 0 || len(r.Names) > maxChain+1 || len(r.Addrs) == 0 {
				t.Fatalf("resolution %+v", r)
			}
			for _, a := range r.Addrs {
				if !slices.Contains(records, a) {
					t.Fatalf("address %s is in no record", a)
				}
			}
		}
	})
}

func framed(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = binary.BigEndian.AppendUint16(out, uint16(len(m)))
		out = append(out, m...)
	}
	return out
}

func TestStreams(t *testing.T) {
	one := answer(t, 0, []string{"a.test."}, record{"A", "a.test.", "192.0.2.1", 5})
	two := answer(t, 0, []string{"b.test."}, record{"A", "b.test.", "192.0.2.2", 5})
	f := Flow{Server: netip.MustParseAddr("10.0.0.53"), Client: netip.MustParseAddr("10.0.0.1"), ServerPort: 53, ClientPort: 40000}
	s := NewStreams(2)
	stream := framed(one, two)
	// Three segments, the first message split across the first two.
	if got, _ := s.Segment(f, 1000, stream[:10], false); len(got) != 0 {
		t.Errorf("a partial message came out: %x", got)
	}
	got, _ := s.Segment(f, 1010, stream[10:len(one)+5], false)
	if len(got) != 1 || !slices.Equal(got[0], one) {
		t.Fatalf("second segment gave %d messages", len(got))
	}
	// A retransmission of the second segment changes nothing.
	if got, _ := s.Segment(f, 1010, stream[10:len(one)+5], false); len(got) != 0 {
		t.Errorf("a retransmission gave %d messages", len(got))
	}
	got, _ = s.Segment(f, 1000+uint32(len(one))+5, stream[len(one)+5:], true)
	if len(got) != 1 || !slices.Equal(got[0], two) || s.Len() != 0 {
		t.Fatalf("last segment gave %d messages, %d flows kept after FIN", len(got), s.Len())
	}
	// A gap loses the partial message; the next whole one is read.
	s.Segment(f, 5000, stream[:10], false)
	if got, lost := s.Segment(f, 6000, framed(two), false); len(got) != 1 || !lost || s.Lost() != 1 {
		t.Errorf("after a gap: %d messages, %d lost", len(got), s.Lost())
	}
	// Sequence numbers wrap.
	g := f
	g.ClientPort = 40001
	start := uint32(0xfffffff0)
	s.Segment(g, start, stream[:20], false)
	if got, _ := s.Segment(g, start+20, stream[20:len(one)+2], false); len(got) != 1 {
		t.Errorf("across the wrap: %d messages", len(got))
	}
	// At most two connections: the least recently used goes.
	for port := range uint16(3) {
		h := f
		h.ClientPort = 50000 + port
		s.Segment(h, 1, []byte{0}, false)
	}
	if s.Len() != 2 {
		t.Errorf("%d connections kept, want 2", s.Len())
	}
}
