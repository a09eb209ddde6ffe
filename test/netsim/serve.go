package netsim

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// ioTimeout bounds a server's exchange with one client.
const ioTimeout = 2 * time.Second

// ServeTCP listens on port (IPv4 and IPv6) inside host's namespace. Each
// connection receives the host's name and a newline, then is closed. The
// server stops on Close.
func (t *Topology) ServeTCP(host Host, port uint16) error {
	var l net.Listener
	err := RunInNS(host.Netns(), func() error {
		var err error
		l, err = net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		return err
	})
	if err != nil {
		return fmt.Errorf("serve tcp/%d in %s: %w", port, host.HostName(), err)
	}
	t.addCloser(l)
	reply := []byte(host.HostName() + "\n")
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					slog.Warn("netsim tcp accept", "host", host.HostName(), "port", port, "err", err)
				}
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(ioTimeout))
				_, _ = conn.Write(reply)
			}()
		}
	}()
	return nil
}

// ServeUDP listens on port (IPv4 and IPv6) inside host's namespace and
// answers every datagram with the host's name and a newline. The server stops
// on Close.
func (t *Topology) ServeUDP(host Host, port uint16) error {
	var conn net.PacketConn
	err := RunInNS(host.Netns(), func() error {
		var err error
		conn, err = net.ListenPacket("udp", ":"+strconv.Itoa(int(port)))
		return err
	})
	if err != nil {
		return fmt.Errorf("serve udp/%d in %s: %w", port, host.HostName(), err)
	}
	t.addCloser(conn)
	reply := []byte(host.HostName() + "\n")
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := conn.ReadFrom(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					slog.Warn("netsim udp read", "host", host.HostName(), "port", port, "err", err)
				}
				return
			}
			_, _ = conn.WriteTo(reply, from)
		}
	}()
	return nil
}
