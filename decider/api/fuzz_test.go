package api

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// requestOracle is an independent reading of the DecideRequest contract:
// it says whether a request is valid, which message prefixes may report it
// when it is not, and the tuple it stands for when it is. It parses with
// package net rather than netip so that it does not share the code it
// checks.
func requestOracle(req *tollgatev1.DecideRequest) (tup engine.Tuple, prefixes []string) {
	parse := func(s string) (netip.Addr, bool) {
		ip := net.ParseIP(s) // rejects zones, as the contract does
		if ip == nil {
			return netip.Addr{}, false
		}
		if v4 := ip.To4(); v4 != nil { // also unmaps ::ffff:a.b.c.d
			return netip.AddrFrom4([4]byte(v4)), true
		}
		return netip.AddrFrom16([16]byte(ip)), true
	}
	src, srcOK := parse(req.GetSrcIp())
	dst, dstOK := parse(req.GetDstIp())
	if !srcOK {
		prefixes = append(prefixes, "src_ip: ", "src_ip, dst_ip: ")
	}
	if !dstOK {
		prefixes = append(prefixes, "dst_ip: ", "src_ip, dst_ip: ")
	}
	if srcOK && dstOK && src.Is4() != dst.Is4() {
		prefixes = append(prefixes, "src_ip: ", "dst_ip: ")
	}
	if req.GetSrcPort() > 65535 {
		prefixes = append(prefixes, "src_port: ")
	}
	if req.GetDstPort() > 65535 {
		prefixes = append(prefixes, "dst_port: ")
	}
	protos := map[tollgatev1.Protocol]engine.Protocol{
		tollgatev1.Protocol_PROTOCOL_TCP: engine.ProtocolTCP, tollgatev1.Protocol_PROTOCOL_UDP: engine.ProtocolUDP,
		tollgatev1.Protocol_PROTOCOL_SCTP: engine.ProtocolSCTP, tollgatev1.Protocol_PROTOCOL_ICMP: engine.ProtocolICMP,
	}
	proto, ok := protos[req.GetProtocol()]
	if !ok {
		prefixes = append(prefixes, "protocol: ")
	}
	return engine.Tuple{Src: src, Dst: dst, Proto: proto, DstPort: uint16(req.GetDstPort()), ViaService: req.GetViaService()}, prefixes
}

// queryOracle is requestOracle for a DecideStream Query.
func queryOracle(q *tollgatev1.Query) (tup engine.Tuple, prefixes []string) {
	addr := func(b []byte) (netip.Addr, bool) {
		switch len(b) {
		case 4:
			return netip.AddrFrom4([4]byte(b)), true
		case 16:
			if ip := net.IP(b).To4(); ip != nil {
				return netip.AddrFrom4([4]byte(ip)), true
			}
			return netip.AddrFrom16([16]byte(b)), true
		}
		return netip.Addr{}, false
	}
	src, srcOK := addr(q.GetSrcAddr())
	dst, dstOK := addr(q.GetDstAddr())
	if !srcOK {
		prefixes = append(prefixes, "src_addr: ")
	}
	if !dstOK {
		prefixes = append(prefixes, "dst_addr: ")
	}
	if srcOK && dstOK && src.Is4() != dst.Is4() {
		prefixes = append(prefixes, "src_addr: ", "dst_addr: ")
	}
	if q.GetDstPort() > 65535 {
		prefixes = append(prefixes, "dst_port: ")
	}
	req := &tollgatev1.DecideRequest{SrcIp: "0.0.0.0", DstIp: "0.0.0.0", Protocol: q.GetProtocol()}
	base, p := requestOracle(req)
	prefixes = append(prefixes, p...)
	return engine.Tuple{Src: src, Dst: dst, Proto: base.Proto, DstPort: uint16(q.GetDstPort()), ViaService: q.GetViaService()}, prefixes
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// oneShotStream is a DecideStream server stream that delivers one request
// and then the end of the stream, and keeps what the handler sends.
type oneShotStream struct {
	grpc.ServerStream
	req  *tollgatev1.DecideStreamRequest
	sent []*tollgatev1.DecideStreamResponse
}

func (s *oneShotStream) Context() context.Context { return context.Background() }

func (s *oneShotStream) Recv() (*tollgatev1.DecideStreamRequest, error) {
	if s.req == nil {
		return nil, io.EOF
	}
	req := s.req
	s.req = nil
	return req, nil
}

func (s *oneShotStream) Send(resp *tollgatev1.DecideStreamResponse) error {
	s.sent = append(s.sent, resp)
	return nil
}

// FuzzDecideRequest checks Decide and DecideStream against an independent
// reading of the contract: no panic; a request is refused exactly when the
// oracle finds a bad field, with InvalidArgument (or a per-query error)
// whose message starts with a field that is in fact bad; an accepted
// request gets the verdict the snapshot gives for the tuple the oracle
// derived, at the published generation.
func FuzzDecideRequest(f *testing.F) {
	mapped := append(make([]byte, 10), 0xff, 0xff, 10, 0, 0, 1)
	v6 := netip.MustParseAddr("fd00::1").As16()
	for _, c := range []struct {
		src, dst     string
		proto        int32
		sport, dport uint32
		via          bool
		sa, da       []byte
	}{
		{"10.0.0.1", "10.0.0.2", 1, 40000, 80, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"10.0.0.2", "10.0.0.1", 2, 53, 53, true, []byte{10, 0, 0, 2}, mapped},
		{"::ffff:10.0.0.1", "10.0.0.2", 3, 0, 0, false, mapped, []byte{10, 0, 0, 2}},
		{"fd00::1", "::ffff:10.0.0.2", 4, 0, 0, false, v6[:], []byte{10, 0, 0, 2}},
		{"fe80::1%eth0", "fd00::1", 1, 1, 1, false, v6[:], v6[:]},
		{"fd00::1", "fe80::1%25eth0", 1, 1, 1, false, nil, v6[:]},
		{"10.0.0.1%eth0", "10.0.0.2", 1, 1, 1, false, []byte{1, 2, 3, 4, 5}, nil},
		{"10.0.0.1", "10.0.0.2", 1, 65535, 65535, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"10.0.0.1", "10.0.0.2", 1, 65536, 80, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"10.0.0.1", "10.0.0.2", 1, 80, 65536, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"10.0.0.1", "10.0.0.2", 0, 1, 80, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"10.0.0.1", "10.0.0.2", 99, 1, 80, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"10.0.0.1", "10.0.0.2", -1, 1, 80, false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}},
		{"", "", 1, 0, 0, false, nil, nil},
		{"010.0.0.1", "1.2.3", 1, 0, 0, false, []byte{}, []byte{0}},
		{"::", "0.0.0.0", 1, 0, 0, false, make([]byte, 16), make([]byte, 4)},
		{" 10.0.0.1", "10.0.0.2 ", 1, 0, 0, false, nil, nil},
	} {
		f.Add(c.src, c.dst, c.proto, c.sport, c.dport, c.via, c.sa, c.da)
	}
	st := state.New()
	st.Publish(cluster(true))
	view := st.Current()
	srv := New(st, Options{})
	f.Fuzz(func(t *testing.T, src, dst string, proto int32, sport, dport uint32, via bool, sa, da []byte) {
		req := &tollgatev1.DecideRequest{SrcIp: src, DstIp: dst, Protocol: tollgatev1.Protocol(proto), SrcPort: sport, DstPort: dport, ViaService: via}
		tup, bad := requestOracle(req)
		resp, err := srv.Decide(context.Background(), req)
		switch {
		case err != nil && len(bad) == 0:
			t.Fatalf("%v: refused a valid request: %v", req, err)
		case err != nil:
			if msg := status.Convert(err).Message(); status.Code(err) != codes.InvalidArgument || !hasAnyPrefix(msg, bad) {
				t.Fatalf("%v: error %v, want InvalidArgument starting with one of %q", req, err, bad)
			}
		case len(bad) > 0:
			t.Fatalf("%v: accepted, but %q are bad", req, bad)
		default:
			want := verdict(view.Snapshot.Decide(tup).Allowed)
			if resp.GetVerdict() != want || resp.GetGeneration() != view.Generation {
				t.Fatalf("%v: verdict %v generation %d, want %v generation %d", req, resp.GetVerdict(), resp.GetGeneration(), want, view.Generation)
			}
		}

		q := &tollgatev1.Query{Id: uint64(sport), SrcAddr: sa, DstAddr: da, Protocol: tollgatev1.Protocol(proto), DstPort: dport, ViaService: via}
		qtup, qbad := queryOracle(q)
		stream := &oneShotStream{req: &tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{q}}}
		if err := srv.DecideStream(stream); err != nil {
			t.Fatalf("DecideStream: %v", err)
		}
		if len(stream.sent) != 1 || len(stream.sent[0].GetResults()) != 1 {
			t.Fatalf("DecideStream sent %v, want one response with one result", stream.sent)
		}
		r := stream.sent[0].GetResults()[0]
		switch {
		case r.GetId() != q.GetId():
			t.Fatalf("%v: result id %d", q, r.GetId())
		case r.GetError() != "" && len(qbad) == 0:
			t.Fatalf("%v: refused a valid query: %s", q, r.GetError())
		case r.GetError() != "":
			if !hasAnyPrefix(r.GetError(), qbad) || r.GetVerdict() != tollgatev1.Verdict_VERDICT_UNSPECIFIED {
				t.Fatalf("%v: error %q verdict %v, want no verdict and an error starting with one of %q", q, r.GetError(), r.GetVerdict(), qbad)
			}
		case len(qbad) > 0:
			t.Fatalf("%v: accepted, but %q are bad", q, qbad)
		default:
			if want := verdict(view.Snapshot.Decide(qtup).Allowed); r.GetVerdict() != want || r.GetGeneration() != view.Generation {
				t.Fatalf("%v: verdict %v generation %d, want %v generation %d", q, r.GetVerdict(), r.GetGeneration(), want, view.Generation)
			}
		}
	})
}
