package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"
)

// errNotSetUp is returned by set updates before Setup succeeded.
var errNotSetUp = errors.New("dataplane: Setup has not run")

// SyncSelected makes selected4 and selected6 hold exactly v4 and v6, the
// local pods that some policy selects. It adds and deletes only the
// difference from what it last programmed, in one transaction. If that
// transaction fails (someone changed the set behind our back), it replaces
// the sets' whole contents in one transaction instead.
func (d *Dataplane) SyncSelected(ctx context.Context, v4, v6 []netip.Addr) error {
	want, err := selectedSet(v4, v6)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.setUp {
		return errNotSetUp
	}

	if d.selectedKnown {
		tx := d.nft.NewTransaction()
		var adds, dels []netip.Addr
		for a := range want {
			if _, ok := d.selected[a]; !ok {
				adds = append(adds, a)
			}
		}
		for a := range d.selected {
			if _, ok := want[a]; !ok {
				dels = append(dels, a)
			}
		}
		if len(adds) == 0 && len(dels) == 0 {
			return nil
		}
		// Sorted for a deterministic transaction text.
		slices.SortFunc(adds, netip.Addr.Compare)
		slices.SortFunc(dels, netip.Addr.Compare)
		for _, a := range dels {
			tx.Delete(selectedElement(a))
		}
		for _, a := range adds {
			tx.Add(selectedElement(a))
		}
		err := d.nft.Run(ctx, tx)
		if err == nil {
			d.selected = want
			return nil
		}
		slog.Warn("dataplane: incremental update of selected pods failed, replacing the sets", "err", err)
		d.selectedKnown = false
	}

	tx := d.nft.NewTransaction()
	tx.Flush(&knftables.Set{Name: setSelected4})
	tx.Flush(&knftables.Set{Name: setSelected6})
	all := make([]netip.Addr, 0, len(want))
	for a := range want {
		all = append(all, a)
	}
	slices.SortFunc(all, netip.Addr.Compare)
	for _, a := range all {
		tx.Add(selectedElement(a))
	}
	if err := d.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("dataplane: replace selected pod sets: %w", err)
	}
	d.selected = want
	d.selectedKnown = true
	return nil
}

// selectedSet checks the families of v4 and v6 and returns their union.
func selectedSet(v4, v6 []netip.Addr) (map[netip.Addr]struct{}, error) {
	want := make(map[netip.Addr]struct{}, len(v4)+len(v6))
	for _, a := range v4 {
		a = a.Unmap()
		if !a.Is4() {
			return nil, fmt.Errorf("dataplane: %s in the IPv4 list is not an IPv4 address", a)
		}
		want[a] = struct{}{}
	}
	for _, a := range v6 {
		if !a.Is6() || a.Is4In6() {
			return nil, fmt.Errorf("dataplane: %s in the IPv6 list is not an IPv6 address", a)
		}
		want[a.WithZone("")] = struct{}{}
	}
	return want, nil
}

func selectedElement(a netip.Addr) *knftables.Element {
	set := setSelected4
	if a.Is6() {
		set = setSelected6
	}
	return &knftables.Element{Set: set, Key: []string{a.String()}}
}

// cachedProtos names the protocols whose verdicts the kernel caches: those
// with ports. Other protocols (ICMP) always reach the queue.
var cachedProtos = map[uint8]string{6: "tcp", 17: "udp", 132: "sctp"}

// AddVerdicts adds the tuples to the kernel verdict cache (allow4/deny4 or
// allow6/deny6) with the sets' timeout, in one transaction. Verdicts for
// protocols without ports (anything but TCP, UDP and SCTP) are skipped.
func (d *Dataplane) AddVerdicts(ctx context.Context, vs []Verdict) error {
	tx := d.nft.NewTransaction()
	added := make([]mirrored, 0, len(vs))
	for _, v := range vs {
		e, ok, err := verdictElement(v)
		if err != nil {
			return err
		}
		if ok {
			tx.Add(e)
			added = append(added, mirrored{src: v.Src.Unmap().WithZone(""), dst: v.Dst.Unmap().WithZone(""), elem: e})
		}
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.runLocked(ctx, tx, "add verdicts"); err != nil {
		return err
	}
	// Remember what the kernel holds until when. Adding an element that is
	// already there does not renew its timeout, so a live entry keeps its
	// expiry; the time is taken after the transaction, so it is never
	// earlier than the kernel's.
	now := d.now()
	expires := now.Add(d.cfg.VerdictTTL / time.Second * time.Second)
	for _, m := range added {
		k := mirrorKey(m.elem)
		if old, found := d.verdicts[k]; !found || !old.expires.After(now) {
			m.expires = expires
			d.verdicts[k] = m
		}
	}
	if len(d.verdicts) > d.pruneAt {
		d.pruneVerdicts(now)
	}
	return nil
}

// mirrored is a verdict-set element the dataplane added, as it remembers it.
type mirrored struct {
	src, dst netip.Addr
	elem     *knftables.Element
	expires  time.Time
}

func mirrorKey(e *knftables.Element) string { return e.Set + " " + strings.Join(e.Key, " . ") }

// pruneVerdicts forgets elements the kernel has expired. d.mu is held.
func (d *Dataplane) pruneVerdicts(now time.Time) {
	for k, m := range d.verdicts {
		if !m.expires.After(now) {
			delete(d.verdicts, k)
		}
	}
	d.pruneAt = max(4096, 2*len(d.verdicts))
}

// InvalidateVerdicts removes from the kernel verdict cache, in one
// transaction, every element whose source or destination changed reports,
// and keeps the rest: the decider said their verdicts stand. If that
// transaction fails (an element expired between the two looks), it
// flushes the verdict sets instead, which is always safe.
func (d *Dataplane) InvalidateVerdicts(ctx context.Context, changed func(netip.Addr) bool) error {
	d.mu.Lock()
	if !d.setUp {
		d.mu.Unlock()
		return errNotSetUp
	}
	now := d.now()
	d.pruneVerdicts(now)
	tx := d.nft.NewTransaction()
	var gone []string
	for k, m := range d.verdicts {
		if changed(m.src) || changed(m.dst) {
			tx.Delete(m.elem)
			gone = append(gone, k)
		}
	}
	if len(gone) == 0 {
		d.mu.Unlock()
		return nil
	}
	err := d.nft.Run(ctx, tx)
	if err == nil {
		for _, k := range gone {
			delete(d.verdicts, k)
		}
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()
	slog.Info("dataplane: precise verdict invalidation failed, flushing the verdict sets", "elements", len(gone), "err", err)
	return d.FlushVerdicts(ctx)
}

// verdictElement returns the set element for v; ok is false when v's
// protocol is not cached in the kernel.
func verdictElement(v Verdict) (e *knftables.Element, ok bool, err error) {
	proto, ok := cachedProtos[v.Proto]
	if !ok {
		return nil, false, nil
	}
	src, dst := v.Src.Unmap(), v.Dst.Unmap()
	var set string
	switch {
	case src.Is4() && dst.Is4():
		set = setDeny4
		if v.Allow {
			set = setAllow4
		}
	case src.Is6() && dst.Is6():
		set = setDeny6
		if v.Allow {
			set = setAllow6
		}
		src, dst = src.WithZone(""), dst.WithZone("")
	default:
		return nil, false, fmt.Errorf("dataplane: verdict %s -> %s: addresses invalid or of different families", v.Src, v.Dst)
	}
	return &knftables.Element{
		Set: set,
		Key: []string{src.String(), dst.String(), proto, strconv.Itoa(int(v.DstPort))},
	}, true, nil
}

// Flow is one direction of a connection as the cut sets key it.
type Flow struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
}

// AddCuts puts flows into the cut sets (cut4/cut6) for CutTTL, in one
// transaction. Packets of a cut flow are dropped even after conntrack
// forgot it, except a TCP SYN, and FlushVerdicts leaves the cut sets alone.
// Flows of protocols without ports are skipped.
func (d *Dataplane) AddCuts(ctx context.Context, flows []Flow) error {
	tx := d.nft.NewTransaction()
	for _, f := range flows {
		proto, ok := cachedProtos[f.Proto]
		if !ok {
			continue
		}
		src, dst := f.Src.Unmap().WithZone(""), f.Dst.Unmap().WithZone("")
		var set string
		switch {
		case src.Is4() && dst.Is4():
			set = setCut4
		case src.Is6() && dst.Is6():
			set = setCut6
		default:
			return fmt.Errorf("dataplane: cut %s -> %s: addresses invalid or of different families", f.Src, f.Dst)
		}
		tx.Add(&knftables.Element{Set: set, Key: []string{src.String(), dst.String(), proto,
			strconv.Itoa(int(f.SrcPort)), strconv.Itoa(int(f.DstPort))}})
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.runLocked(ctx, tx, "add cut flows")
}

// runLocked runs tx if the dataplane is set up; d.mu is held. what names
// the change in the error.
func (d *Dataplane) runLocked(ctx context.Context, tx *knftables.Transaction, what string) error {
	if !d.setUp {
		return errNotSetUp
	}
	if err := d.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("dataplane: %s (%d operations): %w", what, tx.NumOperations(), err)
	}
	return nil
}

// FlushVerdicts empties the kernel verdict cache, in one transaction.
func (d *Dataplane) FlushVerdicts(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.setUp {
		return errNotSetUp
	}
	tx := d.nft.NewTransaction()
	for _, name := range []string{setAllow4, setDeny4, setAllow6, setDeny6} {
		tx.Flush(&knftables.Set{Name: name})
	}
	if err := d.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("dataplane: flush verdict sets: %w", err)
	}
	clear(d.verdicts)
	return nil
}
