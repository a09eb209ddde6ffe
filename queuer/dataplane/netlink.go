package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
)

// elementWriter changes set elements of the Tollgate table over an
// nf_tables netlink socket, in one batch per call, without starting an nft
// process. A change of policy waits for these writes (the addresses whose
// cached verdicts it makes stale, the pods it selects), and an nft process
// costs milliseconds to start on a busy node; the ruleset itself, written
// rarely, stays with knftables.
type elementWriter struct {
	table *nftables.Table
	netns string // a network namespace file; empty: the process's own
}

// newElementWriter returns a writer whose sockets are opened in the
// network namespace at netnsPath, or in the process's own when it is empty.
func newElementWriter(netnsPath string) *elementWriter {
	return &elementWriter{table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}, netns: netnsPath}
}

// elemChange is one change to one set: key added, or removed (removing a
// key that is not there is not an error), or, with flush, every element
// of the set removed.
type elemChange struct {
	set    string
	key    []byte
	remove bool
	flush  bool
}

// write applies changes in one netlink batch, which the kernel applies
// whole or not at all.
func (w *elementWriter) write(changes []elemChange) error {
	if len(changes) == 0 {
		return nil
	}
	var opts []nftables.ConnOption
	if w.netns != "" {
		f, err := os.Open(w.netns)
		if err != nil {
			return fmt.Errorf("dataplane: open network namespace for netlink: %w", err)
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("dataplane: netlink: %w", err)
	}
	for _, c := range changes {
		set := &nftables.Set{Table: w.table, Name: c.set}
		elems := []nftables.SetElement{{Key: c.key}}
		switch {
		case c.flush:
			conn.FlushSet(set)
		case c.remove:
			// Added first, so that the removal cannot fail on an
			// element the kernel already let expire.
			err = errors.Join(conn.SetAddElements(set, elems), conn.SetDeleteElements(set, elems))
		default:
			err = conn.SetAddElements(set, elems)
		}
		if err != nil {
			return fmt.Errorf("dataplane: netlink %s: %w", c.set, err)
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("dataplane: netlink batch of %d set changes: %w", len(changes), err)
	}
	return nil
}

// addrKey is an address as a key of an ipv4_addr or ipv6_addr set.
func addrKey(a netip.Addr) []byte {
	return a.WithZone("").AsSlice()
}

// verdictSetKey returns the verdict set that holds v and v's key in it,
// encoded the way the kernel stores a concatenation of
// address . address . inet_proto . inet_service: each field in network
// byte order, padded with zeros to a multiple of four bytes. ok is false
// for verdicts the kernel cache does not hold.
func verdictSetKey(v Verdict) (set string, key []byte, ok bool) {
	e, ok, err := verdictElement(v)
	if err != nil || !ok {
		return "", nil, false
	}
	src, dst := v.Src.Unmap().WithZone(""), v.Dst.Unmap().WithZone("")
	key = make([]byte, 0, 40)
	key = append(key, src.AsSlice()...)
	key = append(key, dst.AsSlice()...)
	key = append(key, v.Proto, 0, 0, 0)
	key = binary.BigEndian.AppendUint16(key, v.DstPort)
	key = append(key, 0, 0)
	return e.Set, key, true
}
