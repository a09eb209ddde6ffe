package packet

import "testing"

// FuzzParse checks that Parse never panics and that what it returns is
// self-consistent: a family that matches the version nibble, and transport
// fields only where the protocol has them.
func FuzzParse(f *testing.F) {
	f.Add(ipv4(src, dst, ProtoTCP, 0x4000, nil, tcp(40000, 80)))
	f.Add(ipv4(src, dst, ProtoUDP, 0, []byte{1, 1, 1, 0}, udp(5353, 53)))
	f.Add(ipv4(src, dst, ProtoSCTP, 0, nil, sctp(1000, 9999)))
	f.Add(ipv4(src, dst, ProtoICMP, 0, nil, icmp(8, 0)))
	f.Add(ipv4(src, dst, ProtoUDP, 0x2000|185, nil, []byte{1, 2}))
	f.Add(ipv6(s6, d6, ProtoTCP, tcp(50000, 8080)))
	f.Add(ipv6(s6, d6, ProtoICMPv6, cat(icmp(135, 0), make([]byte, 16))))
	f.Add(ipv6(s6, d6, ProtoHopByHop, cat(ext(ProtoRouting, 0), ext(ProtoDestOpts, 2), ext(ProtoTCP, 1), tcp(3, 4))))
	f.Add(ipv6(s6, d6, ProtoAH, cat(ah(ProtoFragment, 6), frag6(ProtoUDP, 0, true), udp(11, 12))))
	f.Add(ipv6(s6, d6, ProtoFragment, cat(frag6(ProtoSCTP, 100, false), []byte{1, 2, 3})))
	f.Add(ipv6(s6, d6, ProtoDestOpts, cat(ext(ProtoESP, 0), []byte{1, 2, 3, 4})))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := Parse(b)
		if err != nil {
			return
		}
		switch b[0] >> 4 {
		case 4:
			if !info.Src.Is4() || !info.Dst.Is4() {
				t.Fatalf("IPv4 packet gave addresses %v %v", info.Src, info.Dst)
			}
		case 6:
			if !info.Src.Is6() || !info.Dst.Is6() {
				t.Fatalf("IPv6 packet gave addresses %v %v", info.Src, info.Dst)
			}
		default:
			t.Fatalf("version %d accepted", b[0]>>4)
		}
		hasPorts := info.Proto == ProtoTCP || info.Proto == ProtoUDP || info.Proto == ProtoUDPLite || info.Proto == ProtoSCTP
		hasICMP := info.Proto == ProtoICMP || info.Proto == ProtoICMPv6
		if (info.Fragment || !hasPorts) && (info.SrcPort != 0 || info.DstPort != 0) {
			t.Fatalf("ports set for protocol %d fragment=%v: %+v", info.Proto, info.Fragment, info)
		}
		if (info.Fragment || !hasICMP) && (info.ICMPType != 0 || info.ICMPCode != 0) {
			t.Fatalf("ICMP fields set for protocol %d fragment=%v: %+v", info.Proto, info.Fragment, info)
		}
		if !info.Fragment && (info.Transport < 20 || info.Transport > len(b)) {
			t.Fatalf("Transport %d outside the packet of %d bytes", info.Transport, len(b))
		}
		if hasPorts && !info.Fragment && (int(info.SrcPort) != int(b[info.Transport])<<8|int(b[info.Transport+1])) {
			t.Fatalf("Transport %d does not point at the source port %d", info.Transport, info.SrcPort)
		}
		// Parsing is a pure function of the bytes.
		again, err := Parse(b)
		if err != nil || again != info {
			t.Fatalf("second Parse differs: %+v, %v", again, err)
		}
	})
}
