// Package conntrack reads and deletes the kernel's connection-tracking
// entries over netlink, and cuts established flows that a policy change now
// denies.
//
// The dataplane accepts every packet of an established connection before
// looking at policy (`ct state established,related accept`), so a connection
// accepted once is never judged again. When a new policy generation denies
// such a connection, the Cutter deletes its conntrack entry; the next packet
// then starts a new entry and is judged like a new connection. That holds
// only if the ruleset judges invalid packets too and the reverse orientation
// is denied as well: TestKernelNextPacketAfterCut shows, on the real kernel,
// which packets get through otherwise.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	ct "github.com/ti-mo/conntrack"
)

// ErrNotFound is returned (wrapped) by Delete when the kernel has no such
// entry any more: the connection ended or was deleted by someone else.
var ErrNotFound = errors.New("conntrack entry not found")

// Flow is one conntrack entry as policy sees it: the source the connection
// came from and the destination it really reaches after DNAT.
type Flow struct {
	// Src and SrcPort are the original direction's source, before any SNAT:
	// the peer that opened the connection.
	Src     netip.Addr
	SrcPort uint16
	// Dst and DstPort are the real destination after DNAT: the source of the
	// entry's reply tuple. For a connection to a Service this is the backend,
	// which is what policy is written against.
	Dst     netip.Addr
	DstPort uint16
	// Proto is the IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, ...).
	Proto uint8
	// ViaService reports that the connection was addressed to another
	// destination (OrigDst, OrigDstPort), typically a Service VIP, and DNATed
	// to Dst.
	ViaService bool
	// OrigDst and OrigDstPort are the destination as the client addressed it
	// (the original tuple's destination). They equal Dst and DstPort unless
	// ViaService.
	OrigDst     netip.Addr
	OrigDstPort uint16

	// Kernel identity of the entry, filled in by List and used by Delete so
	// that a different, newer entry with the same tuple is not deleted.
	id       uint32
	zone     uint16
	icmpID   uint16
	icmpType uint8
	icmpCode uint8
}

// String returns the flow as "proto src:port -> dst:port", with the
// addressed destination appended for Service flows.
func (f Flow) String() string {
	s := fmt.Sprintf("proto %d %s -> %s", f.Proto,
		netip.AddrPortFrom(f.Src, f.SrcPort), netip.AddrPortFrom(f.Dst, f.DstPort))
	if f.ViaService {
		s += fmt.Sprintf(" (via %s)", netip.AddrPortFrom(f.OrigDst, f.OrigDstPort))
	}
	return s
}

// Client talks to the conntrack subsystem of one network namespace over
// netlink. It is safe for concurrent use.
type Client struct {
	conn *ct.Conn
}

// Dial opens a conntrack netlink socket. The socket belongs to the network
// namespace of the calling OS thread; to work on another namespace, lock the
// goroutine to its thread, setns into the namespace, Dial, and switch back.
// The Client keeps working on that namespace from any thread.
func Dial() (*Client, error) {
	conn, err := ct.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open netlink socket: %w", err)
	}
	return &Client{conn: conn}, nil
}

// Close closes the netlink socket.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("conntrack: close netlink socket: %w", err)
	}
	return nil
}

// List returns every IPv4 and IPv6 conntrack entry of the namespace. The
// kernel answers a dump synchronously; ctx is checked before it starts.
func (c *Client) List(ctx context.Context) ([]Flow, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("conntrack: list: %w", err)
	}
	entries, err := c.conn.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack: dump entries: %w", err)
	}
	flows := make([]Flow, 0, len(entries))
	for _, e := range entries {
		if f, ok := flowFromEntry(e); ok {
			flows = append(flows, f)
		}
	}
	return flows, nil
}

// Delete removes the entry of f, looked up by its original tuple (and, for a
// Flow that came from List, its kernel ID). A Flow built by hand needs Src,
// SrcPort, Proto and either OrigDst/OrigDstPort or, without a Service,
// Dst/DstPort; it cannot name an ICMP entry. An entry that no longer exists
// gives an error wrapping ErrNotFound.
func (c *Client) Delete(ctx context.Context, f Flow) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("conntrack: delete %s: %w", f, err)
	}
	e, err := entryFromFlow(f)
	if err != nil {
		return err
	}
	if err := c.conn.Delete(e); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("conntrack: delete %s: %w", f, ErrNotFound)
		}
		return fmt.Errorf("conntrack: delete %s: %w", f, err)
	}
	return nil
}

// flowFromEntry converts a kernel entry; ok is false for entries without
// usable addresses in both directions.
func flowFromEntry(e ct.Flow) (Flow, bool) {
	orig, reply := e.TupleOrig, e.TupleReply
	src := orig.IP.SourceAddress.Unmap()
	origDst := orig.IP.DestinationAddress.Unmap()
	dst := reply.IP.SourceAddress.Unmap()
	if !src.IsValid() || !origDst.IsValid() || !dst.IsValid() {
		return Flow{}, false
	}
	f := Flow{
		Src:         src,
		SrcPort:     orig.Proto.SourcePort,
		Dst:         dst,
		DstPort:     reply.Proto.SourcePort,
		Proto:       orig.Proto.Protocol,
		OrigDst:     origDst,
		OrigDstPort: orig.Proto.DestinationPort,
		id:          e.ID,
		zone:        e.Zone,
		icmpID:      orig.Proto.ICMPID,
		icmpType:    orig.Proto.ICMPType,
		icmpCode:    orig.Proto.ICMPCode,
	}
	f.ViaService = f.OrigDst != f.Dst || f.OrigDstPort != f.DstPort
	return f, true
}

// entryFromFlow builds the kernel request that names f's entry.
func entryFromFlow(f Flow) (ct.Flow, error) {
	dst, dport := f.OrigDst, f.OrigDstPort
	if !dst.IsValid() {
		dst, dport = f.Dst, f.DstPort
	}
	src := f.Src.Unmap()
	dst = dst.Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() || f.Proto == 0 {
		return ct.Flow{}, fmt.Errorf("conntrack: delete %s: incomplete or mixed-family tuple", f)
	}
	var e ct.Flow
	e.ID = f.id
	e.Zone = f.zone
	e.TupleOrig = ct.Tuple{
		IP: ct.IPTuple{SourceAddress: src, DestinationAddress: dst},
		Proto: ct.ProtoTuple{
			Protocol:        f.Proto,
			SourcePort:      f.SrcPort,
			DestinationPort: dport,
			ICMPID:          f.icmpID,
			ICMPType:        f.icmpType,
			ICMPCode:        f.icmpCode,
		},
	}
	return e, nil
}
