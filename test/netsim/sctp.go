package netsim

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// kernelHasSCTP reports whether the kernel offers SCTP sockets. Without them
// (CONFIG_IP_SCTP unset, as on our CI kernels) netsim answers INITs itself.
var kernelHasSCTP = sync.OnceValue(func() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
})

// KernelHasSCTP reports whether the kernel offers SCTP sockets.
func KernelHasSCTP() bool { return kernelHasSCTP() }

// Raw SCTP sockets by protocol number (132): Go resolves protocol names
// through /etc/protocols, which a FROM-scratch pod image does not have.
const (
	rawSCTP4 = "ip4:132"
	rawSCTP6 = "ip6:132"
)

// sctpResponder answers SCTP INITs in one namespace on raw sockets: INIT-ACK for
// served ports, ABORT for the others (as a real stack does), so probes see a
// handshake start and netfilter sees genuine SCTP packets.
type sctpResponder struct {
	mu      sync.Mutex
	ports   map[uint16]bool
	started bool
}

// ServeSCTP accepts SCTP associations on port (IPv4 and IPv6) inside host's
// namespace. With kernel SCTP it is a real listening socket; without, a raw
// socket responder answers the INIT with an INIT-ACK (and INITs to ports not
// served there with an ABORT). Stops on Close.
func (t *Topology) ServeSCTP(host Host, port uint16) error {
	if kernelHasSCTP() {
		return t.serveKernelSCTP(host, port)
	}
	t.mu.Lock()
	r := t.sctp[host.Netns()]
	if r == nil {
		r = &sctpResponder{ports: map[uint16]bool{}}
		t.sctp[host.Netns()] = r
	}
	r.mu.Lock()
	started := r.started
	r.started = true
	r.ports[port] = true
	r.mu.Unlock()
	t.mu.Unlock()
	if started {
		return nil
	}
	var conns []net.PacketConn
	err := RunInNS(host.Netns(), func() error {
		for _, network := range []string{rawSCTP4, rawSCTP6} {
			conn, err := net.ListenPacket(network, "")
			if err != nil {
				return fmt.Errorf("open raw %s socket: %w", network, err)
			}
			conns = append(conns, conn)
		}
		return nil
	})
	for _, conn := range conns {
		t.addCloser(conn)
	}
	if err != nil {
		return fmt.Errorf("serve sctp/%d in %s: %w", port, host.HostName(), err)
	}
	for _, conn := range conns {
		go r.answer(host.HostName(), conn)
	}
	return nil
}

// answer replies to the INITs arriving on conn until it is closed.
func (r *sctpResponder) answer(hostName string, conn net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("netsim sctp read", "host", hostName, "err", err)
			}
			return
		}
		in, err := parseSCTP(buf[:n])
		if err != nil || in.chunkType != chunkInit || in.vtag != 0 || in.initiateTag == 0 {
			continue
		}
		r.mu.Lock()
		served := r.ports[in.dstPort]
		r.mu.Unlock()
		chunk := abortChunk()
		if served {
			chunk = initChunk(chunkInitAck, randomTag(), randomTag())
		}
		out := marshalSCTP(in.dstPort, in.srcPort, in.initiateTag, chunk)
		if _, err := conn.WriteTo(out, from); err != nil {
			slog.Warn("netsim sctp reply", "host", hostName, "to", from, "err", err)
		}
	}
}

// serveKernelSCTP listens with a real SCTP socket; the kernel completes
// handshakes into the backlog, which is all a probe needs.
func (t *Topology) serveKernelSCTP(host Host, port uint16) error {
	var fd int
	err := RunInNS(host.Netns(), func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		if err != nil {
			return fmt.Errorf("open sctp socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			unix.Close(fd)
			return fmt.Errorf("make sctp socket dual-stack: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(port)}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind sctp socket: %w", err)
		}
		if err := unix.Listen(fd, 128); err != nil {
			unix.Close(fd)
			return fmt.Errorf("listen on sctp socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("serve sctp/%d in %s: %w", port, host.HostName(), err)
	}
	t.addCloser(fdCloser(fd))
	return nil
}

// fdCloser closes a raw file descriptor.
type fdCloser int

// Close closes the file descriptor.
func (f fdCloser) Close() error { return unix.Close(int(f)) }

// probeSCTP sends INITs from ns to to:port until an INIT-ACK (reachable) or
// an ABORT (refused) answers, or the deadline passes. It then aborts the
// half-open association so conntrack forgets it.
func probeSCTP(ns string, to netip.Addr, port uint16, deadline time.Time) (Result, error) {
	network := rawSCTP4
	if to.Is6() {
		network = rawSCTP6
	}
	var conn net.PacketConn
	err := RunInNS(ns, func() error {
		var err error
		conn, err = net.ListenPacket(network, "")
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("open raw sctp socket in %s: %w", ns, err)
	}
	defer conn.Close()

	srcPort := uint16(32768 + randomTag()%28000)
	tag := randomTag()
	init := marshalSCTP(srcPort, port, 0, initChunk(chunkInit, tag, randomTag()))
	dst := &net.IPAddr{IP: to.AsSlice()}
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		if _, err := conn.WriteTo(init, dst); err != nil {
			return Result{Reason: err.Error()}, nil
		}
		// Retransmit like SCTP's T1-init timer, only faster.
		_ = conn.SetReadDeadline(retryDeadline(deadline))
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return Result{Reason: err.Error()}, nil
			}
			got, err := parseSCTP(buf[:n])
			if err != nil || got.srcPort != port || got.dstPort != srcPort || got.vtag != tag {
				continue
			}
			if fromIP, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP); !ok || fromIP.Unmap() != to.Unmap() {
				continue
			}
			switch got.chunkType {
			case chunkInitAck:
				abort := marshalSCTP(srcPort, port, got.initiateTag, abortChunk())
				_, _ = conn.WriteTo(abort, dst)
				return Result{Reachable: true}, nil
			case chunkAbort:
				return Result{Reason: "connection refused (SCTP ABORT)"}, nil
			}
		}
	}
	return Result{Reason: "timeout"}, nil
}

// randomTag returns a random non-zero 32-bit value.
func randomTag() uint32 {
	var b [4]byte
	for {
		_, _ = rand.Read(b[:])
		if v := binary.BigEndian.Uint32(b[:]); v != 0 {
			return v
		}
	}
}

// SCTPFlow sends SCTP INITs from one fixed source port of a host to one
// destination: every ping has the same 5-tuple, and so the same conntrack
// entry while it lives, like the packets of one association.
type SCTPFlow struct {
	conn          net.PacketConn
	to            netip.Addr
	srcPort, port uint16
	tag           uint32
}

// OpenSCTPFlow opens a flow from host's namespace to to:port from srcPort.
func OpenSCTPFlow(from Host, to netip.Addr, port, srcPort uint16) (*SCTPFlow, error) {
	network := "ip4:sctp"
	if to.Is6() {
		network = "ip6:sctp"
	}
	var conn net.PacketConn
	if err := RunInNS(from.Netns(), func() (err error) {
		conn, err = net.ListenPacket(network, "")
		return err
	}); err != nil {
		return nil, fmt.Errorf("open raw sctp socket in %s: %w", from.HostName(), err)
	}
	return &SCTPFlow{conn: conn, to: to, srcPort: srcPort, port: port, tag: randomTag()}, nil
}

// Ping sends an INIT and reports whether the INIT-ACK came back in time.
func (f *SCTPFlow) Ping(timeout time.Duration) bool {
	init := marshalSCTP(f.srcPort, f.port, 0, initChunk(chunkInit, f.tag, randomTag()))
	if _, err := f.conn.WriteTo(init, &net.IPAddr{IP: f.to.AsSlice()}); err != nil {
		return false
	}
	_ = f.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2048)
	for {
		n, _, err := f.conn.ReadFrom(buf)
		if err != nil {
			return false
		}
		got, err := parseSCTP(buf[:n])
		if err == nil && got.srcPort == f.port && got.dstPort == f.srcPort && got.vtag == f.tag {
			return got.chunkType == chunkInitAck
		}
	}
}

// Close closes the flow's socket.
func (f *SCTPFlow) Close() error { return f.conn.Close() }
