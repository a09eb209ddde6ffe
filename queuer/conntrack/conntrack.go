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
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
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

	// Mark is the entry's conntrack mark (as listed).
	Mark uint32

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
// netlink. It is safe for concurrent use; requests are serialised.
type Client struct {
	sock *socket
}

// Dial opens a conntrack netlink socket. The socket belongs to the network
// namespace of the calling OS thread; to work on another namespace, lock the
// goroutine to its thread, setns into the namespace, Dial, and switch back.
// The Client keeps working on that namespace from any thread.
func Dial() (*Client, error) {
	s, err := openSocket()
	if err != nil {
		return nil, fmt.Errorf("conntrack: open netlink socket: %w", err)
	}
	return &Client{sock: s}, nil
}

// Close closes the netlink socket.
func (c *Client) Close() error {
	if err := c.sock.close(); err != nil {
		return fmt.Errorf("conntrack: close netlink socket: %w", err)
	}
	return nil
}

// Filter narrows a Walk in the kernel, which then sends only the entries
// that match. The zero Filter keeps every entry.
type Filter struct {
	// Mark, when non-zero, keeps the entries whose conntrack mark has all
	// these bits set.
	Mark uint32
	// Addr, when valid, keeps the entries whose original source or real
	// (post-DNAT) destination is Addr. An entry where both are Addr is
	// passed twice.
	Addr netip.Addr
}

// Walk dumps the IPv4 and IPv6 conntrack entries of the namespace that f
// keeps and calls fn with each while the dump is read: memory stays bounded
// whatever the size of the table. fn must not call the Client (its socket
// is busy with the dump). An error from fn ends the walk and is returned;
// so does ctx ending.
func (c *Client) Walk(ctx context.Context, f Filter, fn func(Flow) error) error {
	c.sock.mu.Lock()
	defer c.sock.mu.Unlock()
	each := func(typ uint16, payload []byte) error {
		if typ&0xff != ctMsgNew {
			return nil
		}
		e, ok := parseEntry(payload)
		if !ok {
			return nil
		}
		return fn(e)
	}
	if !f.Addr.IsValid() {
		var a []byte
		if f.Mark != 0 {
			a = attr(a, ctaMark, binary.BigEndian.AppendUint32(nil, f.Mark))
			a = attr(a, ctaMarkMask, binary.BigEndian.AppendUint32(nil, f.Mark))
		}
		req := c.sock.request(ctMsgGet, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, unix.AF_UNSPEC, a)
		if err := c.sock.exchange(ctx, req, each); err != nil {
			return fmt.Errorf("conntrack: dump entries: %w", err)
		}
		return nil
	}
	// Two dumps: the address as the original source, and as the source of
	// the reply (the real destination).
	addr := f.Addr.Unmap().WithZone("")
	for _, which := range []uint16{ctaTupleOrig, ctaTupleReply} {
		req := c.sock.request(ctMsgGet, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family(addr), addrFilterAttrs(addr, which, f.Mark))
		if err := c.sock.exchange(ctx, req, each); err != nil {
			return fmt.Errorf("conntrack: dump entries of %s: %w", addr, err)
		}
	}
	return nil
}

// List returns every IPv4 and IPv6 conntrack entry of the namespace.
func (c *Client) List(ctx context.Context) ([]Flow, error) {
	var flows []Flow
	err := c.Walk(ctx, Filter{}, func(f Flow) error {
		flows = append(flows, f)
		return nil
	})
	return flows, err
}

// Delete removes the entry of f, looked up by its original tuple (and, for a
// Flow that came from List or Walk, its kernel ID and zone). A Flow built by
// hand needs Src, SrcPort, Proto and either OrigDst/OrigDstPort or, without
// a Service, Dst/DstPort; it cannot name an ICMP entry. An entry that no
// longer exists gives an error wrapping ErrNotFound.
func (c *Client) Delete(ctx context.Context, f Flow) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("conntrack: delete %s: %w", f, err)
	}
	a, fam, err := deleteAttrs(f)
	if err != nil {
		return err
	}
	c.sock.mu.Lock()
	defer c.sock.mu.Unlock()
	// The address family must match the tuple's: the kernel reads the
	// addresses as the family the message names.
	req := c.sock.request(ctMsgDelete, unix.NLM_F_REQUEST|unix.NLM_F_ACK, fam, a)
	err = c.sock.exchange(ctx, req, func(uint16, []byte) error { return nil })
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("conntrack: delete %s: %w", f, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("conntrack: delete %s: %w", f, err)
	}
	return nil
}

// SetMark sets the bits of mark in the conntrack mark of f's entry, leaving
// its other bits alone. An entry that no longer exists gives an error
// wrapping ErrNotFound.
func (c *Client) SetMark(ctx context.Context, f Flow, mark uint32) error {
	a, fam, err := deleteAttrs(f)
	if err != nil {
		return err
	}
	// The kernel computes (old &^ mask) ^ mark.
	a = attr(a, ctaMark, binary.BigEndian.AppendUint32(nil, mark))
	a = attr(a, ctaMarkMask, binary.BigEndian.AppendUint32(nil, mark))
	c.sock.mu.Lock()
	defer c.sock.mu.Unlock()
	req := c.sock.request(ctMsgNew, unix.NLM_F_REQUEST|unix.NLM_F_ACK, fam, a)
	err = c.sock.exchange(ctx, req, func(uint16, []byte) error { return nil })
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("conntrack: mark %s: %w", f, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("conntrack: mark %s: %w", f, err)
	}
	return nil
}

// deleteAttrs builds the attributes that name f's entry, and the address
// family of the request.
func deleteAttrs(f Flow) ([]byte, uint8, error) {
	dst, dport := f.OrigDst, f.OrigDstPort
	if !dst.IsValid() {
		dst, dport = f.Dst, f.DstPort
	}
	src := f.Src.Unmap()
	dst = dst.Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() || f.Proto == 0 {
		return nil, 0, fmt.Errorf("conntrack: delete %s: incomplete or mixed-family tuple", f)
	}
	a := origTupleAttr(f, src.WithZone(""), dst.WithZone(""), dport)
	if f.zone != 0 {
		a = attr(a, ctaZone, binary.BigEndian.AppendUint16(nil, f.zone))
	}
	if f.id != 0 {
		a = attr(a, ctaID, binary.BigEndian.AppendUint32(nil, f.id))
	}
	return a, family(src), nil
}
