package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The ctnetlink protocol, as far as the queuer speaks it
// (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h). A dump is read in
// place from one fixed buffer, one datagram at a time, so that listing a
// table of hundreds of thousands of entries costs the queuer a few kilobytes
// plus whatever the caller keeps, never a copy of the whole table.
const (
	nfnlSubsysCTNetlink = 1
	ctMsgNew            = 0
	ctMsgGet            = 1
	ctMsgDelete         = 2

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaTimeout    = 7
	ctaMark       = 8
	ctaID         = 12
	ctaZone       = 18
	ctaMarkMask   = 21
	ctaFilter     = 25

	ctaFilterOrigFlags  = 1
	ctaFilterReplyFlags = 2
	ctaFilterFIPSrc     = 1 << 0

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaTupleZone  = 3

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum        = 1
	ctaProtoSrcPort    = 2
	ctaProtoDstPort    = 3
	ctaProtoICMPID     = 4
	ctaProtoICMPType   = 5
	ctaProtoICMPCode   = 6
	ctaProtoICMPv6ID   = 7
	ctaProtoICMPv6Type = 8
	ctaProtoICMPv6Code = 9

	nlaFNested  = 1 << 15
	nlaTypeMask = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

	protoICMP   = 1
	protoICMPv6 = 58

	// recvBufSize holds the largest datagram the kernel sends for a dump
	// (it sizes dump messages to at most 32 KiB, or a page more).
	recvBufSize = 64 << 10
	// recvTimeout bounds each receive, so that a cancelled context is seen.
	recvTimeout = time.Second
)

// socket is one ctnetlink socket. Requests on it are serialised.
type socket struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

func openSocket() (*socket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind: %w", err)
	}
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set receive timeout: %w", err)
	}
	// A dump of a large table arrives faster than a busy process reads it.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	return &socket{fd: fd, buf: make([]byte, recvBufSize)}, nil
}

func (s *socket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// request builds a netlink message of ctnetlink type msg with flags for the
// address family, followed by attrs.
func (s *socket) request(msg uint16, flags uint16, family uint8, attrs []byte) []byte {
	s.seq++
	b := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], nfnlSubsysCTNetlink<<8|msg)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], s.seq)
	// nfgenmsg: family, version 0, resource id 0.
	b[unix.NLMSG_HDRLEN] = family
	return b
}

// errDone ends a receive loop without an error.
var errDone = errors.New("done")

// exchange sends req and passes each netlink message answering it to fn
// until the kernel says it is done (NLMSG_DONE, or the acknowledgement of a
// request), fn returns errDone, or ctx ends. A netlink error message is
// returned as a unix.Errno. s.mu is held.
func (s *socket) exchange(ctx context.Context, req []byte, fn func(typ uint16, payload []byte) error) error {
	if s.fd < 0 {
		return errors.New("socket closed")
	}
	seq := binary.NativeEndian.Uint32(req[8:12])
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	for {
		if err := ctx.Err(); err != nil {
			// The rest of a dump would be read by the next request as
			// stale messages; they are skipped by sequence number.
			return err
		}
		n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		b := s.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fmt.Errorf("receive: malformed message of %d bytes in %d", l, len(b))
			}
			typ := binary.NativeEndian.Uint16(b[4:6])
			mseq := binary.NativeEndian.Uint32(b[8:12])
			payload := b[unix.NLMSG_HDRLEN:l]
			b = b[min(nlAlign(l), len(b)):]
			if mseq != seq {
				continue // left over from an abandoned request
			}
			switch typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(payload) < 4 {
					return errors.New("receive: short error message")
				}
				if code := int32(binary.NativeEndian.Uint32(payload[0:4])); code != 0 {
					return unix.Errno(-code)
				}
				return nil // the acknowledgement
			}
			if err := fn(typ, payload); err != nil {
				if errors.Is(err, errDone) {
					return nil
				}
				return err
			}
		}
	}
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// attrs walks the netlink attributes of b, calling fn with each one's type
// (flags stripped) and payload. It stops at the first malformed attribute.
func attrs(b []byte, fn func(typ uint16, v []byte)) bool {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			return false
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[4:l])
		b = b[min(nlAlign(l), len(b)):]
	}
	return true
}

// tuple is one direction of a kernel entry.
type tuple struct {
	src, dst         netip.Addr
	proto            uint8
	srcPort, dstPort uint16
	icmpID           uint16
	icmpType         uint8
	icmpCode         uint8
	zone             uint16
}

func parseTuple(b []byte) (tuple, bool) {
	var t tuple
	ok := attrs(b, func(typ uint16, v []byte) {
		switch typ {
		case ctaTupleIP:
			attrs(v, func(typ uint16, v []byte) {
				switch {
				case (typ == ctaIPv4Src || typ == ctaIPv4Dst) && len(v) == 4:
					a := netip.AddrFrom4([4]byte(v))
					if typ == ctaIPv4Src {
						t.src = a
					} else {
						t.dst = a
					}
				case (typ == ctaIPv6Src || typ == ctaIPv6Dst) && len(v) == 16:
					a := netip.AddrFrom16([16]byte(v))
					if typ == ctaIPv6Src {
						t.src = a
					} else {
						t.dst = a
					}
				}
			})
		case ctaTupleProto:
			attrs(v, func(typ uint16, v []byte) {
				switch {
				case typ == ctaProtoNum && len(v) == 1:
					t.proto = v[0]
				case typ == ctaProtoSrcPort && len(v) == 2:
					t.srcPort = binary.BigEndian.Uint16(v)
				case typ == ctaProtoDstPort && len(v) == 2:
					t.dstPort = binary.BigEndian.Uint16(v)
				case (typ == ctaProtoICMPID || typ == ctaProtoICMPv6ID) && len(v) == 2:
					t.icmpID = binary.BigEndian.Uint16(v)
				case (typ == ctaProtoICMPType || typ == ctaProtoICMPv6Type) && len(v) == 1:
					t.icmpType = v[0]
				case (typ == ctaProtoICMPCode || typ == ctaProtoICMPv6Code) && len(v) == 1:
					t.icmpCode = v[0]
				}
			})
		case ctaTupleZone:
			if len(v) == 2 {
				t.zone = binary.BigEndian.Uint16(v)
			}
		}
	})
	return t, ok
}

// parseEntry reads one IPCTNL_MSG_CT_NEW message of a dump (nfgenmsg and
// attributes) into a Flow; ok is false for entries without usable
// addresses.
func parseEntry(payload []byte) (Flow, bool) {
	if len(payload) < 4 {
		return Flow{}, false
	}
	var orig, reply tuple
	var haveOrig, haveReply bool
	var f Flow
	ok := attrs(payload[4:], func(typ uint16, v []byte) {
		switch typ {
		case ctaTupleOrig:
			orig, haveOrig = parseTuple(v)
		case ctaTupleReply:
			reply, haveReply = parseTuple(v)
		case ctaID:
			if len(v) == 4 {
				f.id = binary.BigEndian.Uint32(v)
			}
		case ctaZone:
			if len(v) == 2 {
				f.zone = binary.BigEndian.Uint16(v)
			}
		case ctaMark:
			if len(v) == 4 {
				f.Mark = binary.BigEndian.Uint32(v)
			}
		}
	})
	if !ok || !haveOrig || !haveReply || !orig.src.IsValid() || !orig.dst.IsValid() || !reply.src.IsValid() {
		return Flow{}, false
	}
	f.Src, f.SrcPort = orig.src, orig.srcPort
	f.Dst, f.DstPort = reply.src, reply.srcPort
	f.Proto = orig.proto
	f.OrigDst, f.OrigDstPort = orig.dst, orig.dstPort
	f.ViaService = f.OrigDst != f.Dst || f.OrigDstPort != f.DstPort
	f.icmpID, f.icmpType, f.icmpCode = orig.icmpID, orig.icmpType, orig.icmpCode
	if f.zone == 0 {
		f.zone = orig.zone
	}
	return f, true
}

// attr appends one netlink attribute.
func attr(b []byte, typ uint16, v []byte) []byte {
	l := 4 + len(v)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for range nlAlign(l) - l {
		b = append(b, 0)
	}
	return b
}

// origTupleAttr encodes f's original tuple as CTA_TUPLE_ORIG.
func origTupleAttr(f Flow, src, dst netip.Addr, dport uint16) []byte {
	var ip []byte
	if src.Is4() {
		ip = attr(ip, ctaIPv4Src, src.AsSlice())
		ip = attr(ip, ctaIPv4Dst, dst.AsSlice())
	} else {
		ip = attr(ip, ctaIPv6Src, src.AsSlice())
		ip = attr(ip, ctaIPv6Dst, dst.AsSlice())
	}
	var proto []byte
	proto = attr(proto, ctaProtoNum, []byte{f.Proto})
	switch f.Proto {
	case protoICMP:
		proto = attr(proto, ctaProtoICMPID, binary.BigEndian.AppendUint16(nil, f.icmpID))
		proto = attr(proto, ctaProtoICMPType, []byte{f.icmpType})
		proto = attr(proto, ctaProtoICMPCode, []byte{f.icmpCode})
	case protoICMPv6:
		proto = attr(proto, ctaProtoICMPv6ID, binary.BigEndian.AppendUint16(nil, f.icmpID))
		proto = attr(proto, ctaProtoICMPv6Type, []byte{f.icmpType})
		proto = attr(proto, ctaProtoICMPv6Code, []byte{f.icmpCode})
	default:
		proto = attr(proto, ctaProtoSrcPort, binary.BigEndian.AppendUint16(nil, f.SrcPort))
		proto = attr(proto, ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, dport))
	}
	var t []byte
	t = attr(t, nlaFNested|ctaTupleIP, ip)
	t = attr(t, nlaFNested|ctaTupleProto, proto)
	return attr(nil, nlaFNested|ctaTupleOrig, t)
}

// family is the nfgenmsg address family of a.
func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// addrFilterAttrs asks a dump for the entries whose tuple which
// (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY) has source a, and, with a non-zero
// mark, whose conntrack mark has those bits (CTA_FILTER, Linux 5.8).
func addrFilterAttrs(a netip.Addr, which uint16, mark uint32) []byte {
	var ip []byte
	if a.Is4() {
		ip = attr(ip, ctaIPv4Src, a.AsSlice())
	} else {
		ip = attr(ip, ctaIPv6Src, a.AsSlice())
	}
	out := attr(nil, nlaFNested|which, attr(nil, nlaFNested|ctaTupleIP, ip))
	flagsType := uint16(ctaFilterOrigFlags)
	if which == ctaTupleReply {
		flagsType = ctaFilterReplyFlags
	}
	out = attr(out, nlaFNested|ctaFilter, attr(nil, flagsType, binary.NativeEndian.AppendUint32(nil, ctaFilterFIPSrc)))
	if mark != 0 {
		out = attr(out, ctaMark, binary.BigEndian.AppendUint32(nil, mark))
		out = attr(out, ctaMarkMask, binary.BigEndian.AppendUint32(nil, mark))
	}
	return out
}
