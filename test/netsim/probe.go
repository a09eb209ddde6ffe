package netsim

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Result is the outcome of one probe.
type Result struct {
	// Reachable is true when the server answered.
	Reachable bool
	// Server is the name of the pod that answered (TCP and UDP only; empty
	// for SCTP, whose handshake carries no data).
	Server string
	// Reason says why an unreachable probe failed, e.g. "connection
	// refused" (a reset or ICMP error came back) or "timeout" (nothing did).
	Reason string
}

// Probe connects from host (a Pod or a Node) to to:port and reports whether the server answered within timeout. TCP: the
// connection opens and the server's greeting arrives. UDP: a datagram is
// answered. SCTP: an INIT is answered by an INIT-ACK. The error is only for
// failures of the harness itself, not of the network.
func Probe(from Host, to netip.Addr, port uint16, proto Proto, timeout time.Duration) (bool, error) {
	r, err := ProbeDetail(from, to, port, proto, timeout)
	return r.Reachable, err
}

// ProbeDetail is Probe with the answering server's name and the reason of a
// failure.
func ProbeDetail(from Host, to netip.Addr, port uint16, proto Proto, timeout time.Duration) (Result, error) {
	deadline := time.Now().Add(timeout)
	ns := from.Netns()
	switch proto {
	case TCP:
		return probeTCP(ns, to, port, deadline)
	case UDP:
		return probeUDP(ns, to, port, deadline)
	case SCTP:
		return probeSCTP(ns, to, port, deadline)
	}
	return Result{}, fmt.Errorf("unknown protocol %q", proto)
}

// probeTCP connects and reads the server's greeting.
func probeTCP(ns string, to netip.Addr, port uint16, deadline time.Time) (Result, error) {
	addr := netip.AddrPortFrom(to, port).String()
	var conn net.Conn
	var dialErr error
	err := RunInNS(ns, func() error {
		conn, dialErr = (&net.Dialer{Deadline: deadline}).Dial("tcp", addr)
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	if dialErr != nil {
		return Result{Reason: networkReason(dialErr)}, nil
	}
	defer conn.Close()
	return readGreeting(conn, deadline), nil
}

// probeUDP sends datagrams until one is answered or the deadline passes.
func probeUDP(ns string, to netip.Addr, port uint16, deadline time.Time) (Result, error) {
	var conn *net.UDPConn
	var dialErr error
	err := RunInNS(ns, func() error {
		conn, dialErr = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, port)))
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	if dialErr != nil {
		return Result{Reason: networkReason(dialErr)}, nil
	}
	defer conn.Close()
	buf := make([]byte, 256)
	for time.Now().Before(deadline) {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return Result{Reason: networkReason(err)}, nil
		}
		_ = conn.SetReadDeadline(retryDeadline(deadline))
		n, err := conn.Read(buf)
		if err == nil {
			return Result{Reachable: true, Server: strings.TrimSpace(string(buf[:n]))}, nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return Result{Reason: networkReason(err)}, nil
		}
	}
	return Result{Reason: "timeout"}, nil
}

// readGreeting reads the line a TCP server sends.
func readGreeting(conn net.Conn, deadline time.Time) Result {
	_ = conn.SetReadDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return Result{Reason: "connected but no greeting: " + networkReason(err)}
	}
	return Result{Reachable: true, Server: strings.TrimSpace(line)}
}

// networkReason shortens a network error to its cause.
func networkReason(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// retryInterval is how long a UDP or SCTP probe waits before resending.
const retryInterval = 300 * time.Millisecond

// retryDeadline is the read deadline before the next resend.
func retryDeadline(deadline time.Time) time.Time {
	if next := time.Now().Add(retryInterval); next.Before(deadline) {
		return next
	}
	return deadline
}
