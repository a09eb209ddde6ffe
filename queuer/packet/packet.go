// Package packet reads the few header fields a verdict needs from a raw IP
// packet as NFQUEUE delivers it (starting at the IP header): addresses,
// transport protocol, ports, ICMP type and code.
//
// Parse never panics, never allocates and rejects truncated headers with an
// error, because its input comes from the network.
package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// IP protocol numbers the parser knows.
const (
	ProtoHopByHop  = 0   // IPv6 hop-by-hop options
	ProtoICMP      = 1   // ICMP for IPv4
	ProtoTCP       = 6   // TCP
	ProtoUDP       = 17  // UDP
	ProtoRouting   = 43  // IPv6 routing header
	ProtoFragment  = 44  // IPv6 fragment header
	ProtoESP       = 50  // IPsec encapsulating security payload
	ProtoAH        = 51  // IPsec authentication header
	ProtoICMPv6    = 58  // ICMPv6
	ProtoNoNext    = 59  // IPv6 no next header
	ProtoDestOpts  = 60  // IPv6 destination options
	ProtoSCTP      = 132 // SCTP
	ProtoUDPLite   = 136 // UDP-Lite (ports like UDP)
	maxExtHeaders  = 16  // more extension headers than this is an attack, not traffic
	ipv4HeaderLen  = 20
	ipv6HeaderLen  = 40
	ipv6FragHdrLen = 8
)

// Errors returned by Parse. They are sentinel values so that the error path
// does not allocate either.
var (
	// ErrTruncated means a header ends beyond the captured bytes.
	ErrTruncated = errors.New("packet: truncated header")
	// ErrVersion means the IP version nibble is neither 4 nor 6.
	ErrVersion = errors.New("packet: not an IPv4 or IPv6 packet")
	// ErrHeader means a header field holds an impossible value.
	ErrHeader = errors.New("packet: malformed header")
	// ErrTooManyExtHeaders means an IPv6 extension-header chain is longer than
	// any legitimate packet needs.
	ErrTooManyExtHeaders = errors.New("packet: too many IPv6 extension headers")
)

// Info holds the fields of a packet that decide its verdict.
type Info struct {
	// Src and Dst are the IP addresses (IPv4 addresses are never 4-in-6).
	Src, Dst netip.Addr
	// Proto is the IP protocol number of the transport header (after IPv6
	// extension headers): 6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...
	// For a packet protected by ESP it is 50, and 59 when no header follows.
	Proto uint8
	// SrcPort and DstPort are set for TCP, UDP, UDP-Lite and SCTP.
	SrcPort, DstPort uint16
	// ICMPType and ICMPCode are set for ICMP and ICMPv6.
	ICMPType, ICMPCode uint8
	// Fragment marks a non-first fragment: it carries no transport header, so
	// ports and ICMP fields are zero.
	Fragment bool
	// Transport is the offset of the transport header in the packet (0 for
	// a non-first fragment).
	Transport int
}

// Is4 reports whether the packet is IPv4.
func (i Info) Is4() bool { return i.Src.Is4() }

// Parse reads the IP and transport headers of b.
func Parse(b []byte) (Info, error) {
	if len(b) < 1 {
		return Info{}, ErrTruncated
	}
	switch b[0] >> 4 {
	case 4:
		return parse4(b)
	case 6:
		return parse6(b)
	default:
		return Info{}, ErrVersion
	}
}

func parse4(b []byte) (Info, error) {
	if len(b) < ipv4HeaderLen {
		return Info{}, ErrTruncated
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4HeaderLen {
		return Info{}, ErrHeader
	}
	if len(b) < ihl {
		return Info{}, ErrTruncated
	}
	info := Info{
		Src:   netip.AddrFrom4([4]byte(b[12:16])),
		Dst:   netip.AddrFrom4([4]byte(b[16:20])),
		Proto: b[9],
	}
	// The low 13 bits of bytes 6-7 are the fragment offset; only the first
	// fragment (offset 0) carries the transport header.
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		info.Fragment = true
		return info, nil
	}
	// Ignore link-layer padding or trailing garbage beyond the total length,
	// but tolerate a capture shorter than the total length.
	if total := int(binary.BigEndian.Uint16(b[2:4])); total >= ihl && total < len(b) {
		b = b[:total]
	}
	info.Transport = ihl
	return info, parseL4(&info, b[ihl:])
}

func parse6(b []byte) (Info, error) {
	if len(b) < ipv6HeaderLen {
		return Info{}, ErrTruncated
	}
	info := Info{
		Src: netip.AddrFrom16([16]byte(b[8:24])),
		Dst: netip.AddrFrom16([16]byte(b[24:40])),
	}
	if payload := int(binary.BigEndian.Uint16(b[4:6])); payload > 0 && ipv6HeaderLen+payload < len(b) {
		b = b[:ipv6HeaderLen+payload]
	}
	next := b[6]
	rest := b[ipv6HeaderLen:]
	for range maxExtHeaders {
		switch next {
		case ProtoHopByHop, ProtoRouting, ProtoDestOpts:
			if len(rest) < 2 {
				return Info{}, ErrTruncated
			}
			n := (int(rest[1]) + 1) * 8
			if len(rest) < n {
				return Info{}, ErrTruncated
			}
			next, rest = rest[0], rest[n:]
		case ProtoAH:
			if len(rest) < 2 {
				return Info{}, ErrTruncated
			}
			n := (int(rest[1]) + 2) * 4
			if len(rest) < n {
				return Info{}, ErrTruncated
			}
			next, rest = rest[0], rest[n:]
		case ProtoFragment:
			if len(rest) < ipv6FragHdrLen {
				return Info{}, ErrTruncated
			}
			// Bytes 2-3 hold the offset in 8-byte units in the top 13 bits.
			if binary.BigEndian.Uint16(rest[2:4])>>3 != 0 {
				info.Proto = rest[0]
				info.Fragment = true
				return info, nil
			}
			next, rest = rest[0], rest[ipv6FragHdrLen:]
		default:
			// ESP, no-next-header and every transport protocol end the chain.
			info.Proto = next
			info.Transport = len(b) - len(rest)
			return info, parseL4(&info, rest)
		}
	}
	return Info{}, ErrTooManyExtHeaders
}

// parseL4 fills the transport fields of info from the transport header l4.
func parseL4(info *Info, l4 []byte) error {
	switch info.Proto {
	case ProtoTCP, ProtoUDP, ProtoUDPLite, ProtoSCTP:
		// Minimum fixed header lengths: TCP 20, UDP 8, SCTP common header 12.
		need := 8
		switch info.Proto {
		case ProtoTCP:
			need = 20
		case ProtoSCTP:
			need = 12
		}
		if len(l4) < need {
			return ErrTruncated
		}
		info.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		info.DstPort = binary.BigEndian.Uint16(l4[2:4])
	case ProtoICMP, ProtoICMPv6:
		// Type, code and checksum are common to every ICMP message.
		if len(l4) < 4 {
			return ErrTruncated
		}
		info.ICMPType, info.ICMPCode = l4[0], l4[1]
	}
	return nil
}
