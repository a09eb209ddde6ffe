package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// ipv4 builds an IPv4 header with the given options (a multiple of 4 bytes),
// protocol, fragment field and payload.
func ipv4(src, dst string, proto uint8, frag uint16, options []byte, payload []byte) []byte {
	ihl := 20 + len(options)
	b := make([]byte, ihl, ihl+len(payload))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(ihl+len(payload)))
	binary.BigEndian.PutUint16(b[6:8], frag)
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[20:], options)
	return append(b, payload...)
}

// ipv6 builds an IPv6 header with next header next, followed by rest
// (extension headers and the transport header).
func ipv6(src, dst string, next uint8, rest []byte) []byte {
	b := make([]byte, 40, 40+len(rest))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(rest)))
	b[6] = next
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return append(b, rest...)
}

// ext builds an IPv6 extension header of the hop-by-hop/routing/destination
// options shape: next, length in 8-byte units minus one, padding.
func ext(next uint8, units int) []byte {
	b := make([]byte, (units+1)*8)
	b[0] = next
	b[1] = byte(units)
	return b
}

// ah builds an authentication header of n 4-byte words (n >= 3).
func ah(next uint8, words int) []byte {
	b := make([]byte, words*4)
	b[0] = next
	b[1] = byte(words - 2)
	return b
}

// frag6 builds an IPv6 fragment header with the offset in 8-byte units.
func frag6(next uint8, offset uint16, more bool) []byte {
	b := make([]byte, 8)
	b[0] = next
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:4], v)
	return b
}

func tcp(sport, dport uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	b[12] = 5 << 4
	b[13] = 0x02 // SYN
	return b
}

func udp(sport, dport uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint16(b[4:6], 8)
	return b
}

func sctp(sport, dport uint16) []byte {
	b := make([]byte, 12+20) // common header + INIT chunk
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	b[12] = 1 // INIT
	return b
}

func icmp(typ, code uint8) []byte { return []byte{typ, code, 0, 0, 0, 1, 0, 1} }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var (
	a4  = netip.MustParseAddr("10.0.1.2")
	b4  = netip.MustParseAddr("10.0.2.3")
	a6  = netip.MustParseAddr("fd00::1:2")
	b6  = netip.MustParseAddr("fd00::2:3")
	src = "10.0.1.2"
	dst = "10.0.2.3"
	s6  = "fd00::1:2"
	d6  = "fd00::2:3"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Info
	}{
		{"ipv4 tcp", ipv4(src, dst, ProtoTCP, 0x4000, nil, tcp(40000, 80)),
			Info{Src: a4, Dst: b4, Proto: ProtoTCP, SrcPort: 40000, DstPort: 80}},
		{"ipv4 udp", ipv4(src, dst, ProtoUDP, 0, nil, udp(5353, 53)),
			Info{Src: a4, Dst: b4, Proto: ProtoUDP, SrcPort: 5353, DstPort: 53}},
		{"ipv4 sctp", ipv4(src, dst, ProtoSCTP, 0, nil, sctp(1000, 9999)),
			Info{Src: a4, Dst: b4, Proto: ProtoSCTP, SrcPort: 1000, DstPort: 9999}},
		{"ipv4 icmp echo", ipv4(src, dst, ProtoICMP, 0, nil, icmp(8, 0)),
			Info{Src: a4, Dst: b4, Proto: ProtoICMP, ICMPType: 8}},
		{"ipv4 options", ipv4(src, dst, ProtoTCP, 0, []byte{0x94, 4, 0, 0, 1, 1, 1, 0}, tcp(1, 443)),
			Info{Src: a4, Dst: b4, Proto: ProtoTCP, SrcPort: 1, DstPort: 443}},
		{"ipv4 first fragment", ipv4(src, dst, ProtoUDP, 0x2000, nil, udp(1, 2)),
			Info{Src: a4, Dst: b4, Proto: ProtoUDP, SrcPort: 1, DstPort: 2}},
		{"ipv4 later fragment", ipv4(src, dst, ProtoUDP, 0x2000|185, nil, []byte{1, 2}),
			Info{Src: a4, Dst: b4, Proto: ProtoUDP, Fragment: true}},
		{"ipv4 trailing padding", append(ipv4(src, dst, ProtoUDP, 0, nil, udp(7, 8)), 0, 0, 0, 0, 0, 0),
			Info{Src: a4, Dst: b4, Proto: ProtoUDP, SrcPort: 7, DstPort: 8}},
		{"ipv4 capture shorter than total length", ipv4(src, dst, ProtoTCP, 0, nil, cat(tcp(9, 10), make([]byte, 100)))[:60],
			Info{Src: a4, Dst: b4, Proto: ProtoTCP, SrcPort: 9, DstPort: 10}},
		{"ipv4 other protocol", ipv4(src, dst, 47, 0, nil, []byte{0, 0, 8, 0}),
			Info{Src: a4, Dst: b4, Proto: 47}},
		{"ipv6 tcp", ipv6(s6, d6, ProtoTCP, tcp(50000, 8080)),
			Info{Src: a6, Dst: b6, Proto: ProtoTCP, SrcPort: 50000, DstPort: 8080}},
		{"ipv6 udp", ipv6(s6, d6, ProtoUDP, udp(1234, 53)),
			Info{Src: a6, Dst: b6, Proto: ProtoUDP, SrcPort: 1234, DstPort: 53}},
		{"ipv6 sctp", ipv6(s6, d6, ProtoSCTP, sctp(5, 6)),
			Info{Src: a6, Dst: b6, Proto: ProtoSCTP, SrcPort: 5, DstPort: 6}},
		{"ipv6 icmpv6 neighbour solicitation", ipv6(s6, d6, ProtoICMPv6, cat(icmp(135, 0), make([]byte, 16))),
			Info{Src: a6, Dst: b6, Proto: ProtoICMPv6, ICMPType: 135}},
		{"ipv6 hop-by-hop then udp", ipv6(s6, d6, ProtoHopByHop, cat(ext(ProtoUDP, 0), udp(1, 2))),
			Info{Src: a6, Dst: b6, Proto: ProtoUDP, SrcPort: 1, DstPort: 2}},
		{"ipv6 hop-by-hop, routing, destination options, tcp",
			ipv6(s6, d6, ProtoHopByHop, cat(ext(ProtoRouting, 0), ext(ProtoDestOpts, 2), ext(ProtoTCP, 1), tcp(3, 4))),
			Info{Src: a6, Dst: b6, Proto: ProtoTCP, SrcPort: 3, DstPort: 4}},
		{"ipv6 authentication header", ipv6(s6, d6, ProtoAH, cat(ah(ProtoTCP, 6), tcp(11, 12))),
			Info{Src: a6, Dst: b6, Proto: ProtoTCP, SrcPort: 11, DstPort: 12}},
		{"ipv6 first fragment", ipv6(s6, d6, ProtoFragment, cat(frag6(ProtoUDP, 0, true), udp(13, 14))),
			Info{Src: a6, Dst: b6, Proto: ProtoUDP, SrcPort: 13, DstPort: 14}},
		{"ipv6 later fragment", ipv6(s6, d6, ProtoFragment, cat(frag6(ProtoUDP, 100, false), []byte{1, 2, 3})),
			Info{Src: a6, Dst: b6, Proto: ProtoUDP, Fragment: true}},
		{"ipv6 esp stops the chain", ipv6(s6, d6, ProtoDestOpts, cat(ext(ProtoESP, 0), []byte{1, 2, 3, 4})),
			Info{Src: a6, Dst: b6, Proto: ProtoESP}},
		{"ipv6 no next header", ipv6(s6, d6, ProtoNoNext, nil),
			Info{Src: a6, Dst: b6, Proto: ProtoNoNext}},
		{"ipv6 v4-mapped addresses stay 16 bytes", ipv6("::ffff:10.0.0.1", "::ffff:10.0.0.2", ProtoUDP, udp(1, 2)),
			Info{Src: netip.MustParseAddr("::ffff:10.0.0.1"), Dst: netip.MustParseAddr("::ffff:10.0.0.2"), Proto: ProtoUDP, SrcPort: 1, DstPort: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			// Transport points at the transport header: its first bytes
			// are the ports (or the ICMP type and code).
			switch {
			case got.Fragment:
				if got.Transport != 0 {
					t.Errorf("Transport = %d for a later fragment", got.Transport)
				}
			case got.SrcPort != 0 && binary.BigEndian.Uint16(tt.in[got.Transport:]) != got.SrcPort:
				t.Errorf("Transport = %d does not point at the source port", got.Transport)
			case got.ICMPType != 0 && tt.in[got.Transport] != got.ICMPType:
				t.Errorf("Transport = %d does not point at the ICMP type", got.Transport)
			}
			got.Transport = 0
			if got != tt.want {
				t.Errorf("Parse =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	badIHL := ipv4(src, dst, ProtoTCP, 0, nil, tcp(1, 2))
	badIHL[0] = 0x44
	longExt := ext(ProtoTCP, 3)
	chain := []byte{}
	for range maxExtHeaders + 1 {
		chain = append(chain, ext(ProtoDestOpts, 0)...)
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"version 5", []byte{0x50, 0, 0, 0}, ErrVersion},
		{"ipv4 short", ipv4(src, dst, ProtoTCP, 0, nil, nil)[:19], ErrTruncated},
		{"ipv4 ihl below 5", badIHL, ErrHeader},
		{"ipv4 options cut", ipv4(src, dst, ProtoTCP, 0, make([]byte, 8), nil)[:24], ErrTruncated},
		{"ipv4 tcp cut", ipv4(src, dst, ProtoTCP, 0, nil, tcp(1, 2))[:30], ErrTruncated},
		{"ipv4 udp cut", ipv4(src, dst, ProtoUDP, 0, nil, udp(1, 2))[:27], ErrTruncated},
		{"ipv4 sctp cut", ipv4(src, dst, ProtoSCTP, 0, nil, sctp(1, 2))[:31], ErrTruncated},
		{"ipv4 icmp cut", ipv4(src, dst, ProtoICMP, 0, nil, icmp(8, 0))[:22], ErrTruncated},
		{"ipv6 short", ipv6(s6, d6, ProtoTCP, nil)[:39], ErrTruncated},
		{"ipv6 tcp cut", ipv6(s6, d6, ProtoTCP, tcp(1, 2))[:50], ErrTruncated},
		{"ipv6 ext header cut", ipv6(s6, d6, ProtoHopByHop, cat(longExt, tcp(1, 2)))[:60], ErrTruncated},
		{"ipv6 ext header length byte missing", ipv6(s6, d6, ProtoRouting, []byte{6}), ErrTruncated},
		{"ipv6 fragment header cut", ipv6(s6, d6, ProtoFragment, []byte{6, 0, 0, 0}), ErrTruncated},
		{"ipv6 ah cut", ipv6(s6, d6, ProtoAH, ah(ProtoTCP, 6)[:12]), ErrTruncated},
		{"ipv6 endless chain", ipv6(s6, d6, ProtoDestOpts, cat(chain, tcp(1, 2))), ErrTooManyExtHeaders},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			if !errors.Is(err, tt.want) {
				t.Errorf("Parse error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	pkts := [][]byte{
		ipv4(src, dst, ProtoTCP, 0, nil, tcp(1, 80)),
		ipv6(s6, d6, ProtoHopByHop, cat(ext(ProtoTCP, 0), tcp(1, 80))),
		ipv6(s6, d6, ProtoTCP, nil), // error path
	}
	for _, p := range pkts {
		if n := testing.AllocsPerRun(100, func() { _, _ = Parse(p) }); n != 0 {
			t.Errorf("Parse allocates %v times per packet", n)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"ipv4-tcp", ipv4(src, dst, ProtoTCP, 0, nil, tcp(40000, 80))},
		{"ipv6-ext-udp", ipv6(s6, d6, ProtoHopByHop, cat(ext(ProtoDestOpts, 0), ext(ProtoUDP, 1), udp(1, 53)))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(bc.pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
