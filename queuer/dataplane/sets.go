package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"

	"sigs.k8s.io/knftables"
)

// errNotSetUp is returned by set updates before Setup succeeded.
var errNotSetUp = errors.New("dataplane: Setup has not run")

// addrSets is a pair of address sets (IPv4 and IPv6) the dataplane keeps
// in step with the decider: the selected pods, and the pods whose DNS
// answers are learned. have mirrors the elements as programmed, valid only
// while known is true.
type addrSets struct {
	v4, v6 string
	what   string // for errors and logs
	have   map[netip.Addr]struct{}
	known  bool
}

// SyncSelected makes selected4 and selected6 hold exactly v4 and v6, the
// local pods that some policy selects. It adds and deletes only the
// difference from what it last programmed, in one transaction. If that
// transaction fails (someone changed the set behind our back), it replaces
// the sets' whole contents in one transaction instead.
func (d *Dataplane) SyncSelected(ctx context.Context, v4, v6 []netip.Addr) error {
	return d.syncAddrs(ctx, &d.selected, v4, v6)
}

// SyncDNSPods makes dns4 and dns6 hold exactly v4 and v6, the local pods
// whose DNS answers go to the DNS queue, the way SyncSelected does.
func (d *Dataplane) SyncDNSPods(ctx context.Context, v4, v6 []netip.Addr) error {
	return d.syncAddrs(ctx, &d.dnsPods, v4, v6)
}

func (d *Dataplane) syncAddrs(ctx context.Context, sets *addrSets, v4, v6 []netip.Addr) error {
	want, err := addrUnion(v4, v6)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.setUp {
		return errNotSetUp
	}
	elem := func(a netip.Addr) *knftables.Element {
		if a.Is6() {
			return &knftables.Element{Set: sets.v6, Key: []string{a.String()}}
		}
		return &knftables.Element{Set: sets.v4, Key: []string{a.String()}}
	}

	if sets.known {
		tx := d.nft.NewTransaction()
		var adds, dels []netip.Addr
		for a := range want {
			if _, ok := sets.have[a]; !ok {
				adds = append(adds, a)
			}
		}
		for a := range sets.have {
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
		if d.elems != nil {
			changes := make([]elemChange, 0, len(adds)+len(dels))
			for _, a := range dels {
				changes = append(changes, elemChange{set: elem(a).Set, key: addrKey(a), remove: true})
			}
			for _, a := range adds {
				changes = append(changes, elemChange{set: elem(a).Set, key: addrKey(a)})
			}
			if d.writeElementsLocked(changes, sets.what) {
				sets.have = want
				return nil
			}
		}
		for _, a := range dels {
			tx.Delete(elem(a))
		}
		for _, a := range adds {
			tx.Add(elem(a))
		}
		err := d.nft.Run(ctx, tx)
		if err == nil {
			sets.have = want
			return nil
		}
		slog.Warn("dataplane: incremental update failed, replacing the sets", "sets", sets.what, "err", err)
		sets.known = false
	}

	tx := d.nft.NewTransaction()
	tx.Flush(&knftables.Set{Name: sets.v4})
	tx.Flush(&knftables.Set{Name: sets.v6})
	all := make([]netip.Addr, 0, len(want))
	for a := range want {
		all = append(all, a)
	}
	slices.SortFunc(all, netip.Addr.Compare)
	for _, a := range all {
		tx.Add(elem(a))
	}
	if err := d.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("dataplane: replace the sets of %s: %w", sets.what, err)
	}
	sets.have = want
	sets.known = true
	return nil
}

// addrUnion checks the families of v4 and v6 and returns their union.
func addrUnion(v4, v6 []netip.Addr) (map[netip.Addr]struct{}, error) {
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

// cachedProtos names the protocols whose verdicts the kernel caches: those
// with ports. Other protocols (ICMP) always reach the queue.
var cachedProtos = map[uint8]string{6: "tcp", 17: "udp", 132: "sctp"}

// protoNumbers is cachedProtos reversed, for reading elements back.
var protoNumbers = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

// Cacheable reports whether the kernel verdict cache can hold verdicts for
// protocol proto.
func Cacheable(proto uint8) bool {
	_, ok := cachedProtos[proto]
	return ok
}

// Learned tells the dataplane that the kernel learned v from a queue
// verdict (see MarkLearnAllow): it remembers the element so that a later
// policy change can remove it. It is cheap and safe on the packet path.
func (d *Dataplane) Learned(v Verdict) {
	if Cacheable(v.Proto) {
		d.verdicts.note(v)
	}
}

// AddVerdicts adds the tuples to the kernel verdict cache (allow4/deny4 or
// allow6/deny6) with the sets' timeout, in one transaction. Verdicts for
// protocols without ports (anything but TCP, UDP and SCTP) are skipped.
func (d *Dataplane) AddVerdicts(ctx context.Context, vs []Verdict) error {
	tx := d.nft.NewTransaction()
	var added []Verdict
	for _, v := range vs {
		e, ok, err := verdictElement(v)
		if err != nil {
			return err
		}
		if ok {
			tx.Add(e)
			added = append(added, v)
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
	for _, v := range added {
		d.verdicts.note(v)
	}
	return nil
}

// ForgetVerdicts removes the tuples from the kernel verdict cache, in one
// transaction; tuples the kernel does not hold (expired, never learned) are
// not errors.
func (d *Dataplane) ForgetVerdicts(ctx context.Context, vs []Verdict) error {
	tx := d.nft.NewTransaction()
	for _, v := range vs {
		e, ok, err := verdictElement(v)
		if err != nil {
			return err
		}
		if ok {
			removeElement(tx, e)
		}
		d.verdicts.forget(v)
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.runLocked(ctx, tx, "forget verdicts")
}

// removeElement deletes e whether or not the set holds it: adding an
// element that exists changes nothing, and a delete of a missing element
// would fail the whole transaction.
func removeElement(tx *knftables.Transaction, e *knftables.Element) {
	tx.Add(e)
	tx.Delete(e)
}

// InvalidateVerdicts makes the kernel verdict cache stop answering for
// every element whose source or destination changed reports, and keeps the
// rest: the decider said their verdicts stand.
//
// With netlink element writes, it adds the addresses of those elements to
// the stale sets, which send their packets to the queue from then on, and
// leaves the elements for SweepStale to delete: an addition is in force at
// once, a deletion waits for the kernel's RCU grace period (milliseconds)
// and would hold up the change. Otherwise it deletes the elements in one
// transaction. When the dataplane does not know every element (its mirror
// overflowed) or a write fails, it flushes the verdict sets instead, which
// is always safe.
func (d *Dataplane) InvalidateVerdicts(ctx context.Context, changed func(netip.Addr) bool) error {
	keys, all := d.verdicts.take(changed)
	if all {
		return d.FlushVerdicts(ctx)
	}
	if len(keys) == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.elems != nil && d.setUp {
		var changes []elemChange
		added := map[netip.Addr]bool{}
		for _, k := range keys {
			for _, a := range []netip.Addr{k.src, k.dst} {
				if changed(a) && !added[a] {
					added[a] = true
					changes = append(changes, elemChange{set: staleSet(a), key: addrKey(a)})
				}
			}
		}
		if d.writeElementsLocked(changes, "stale addresses") {
			d.stale.keys = append(d.stale.keys, keys...)
			for a := range added {
				d.stale.addrs[a] = struct{}{}
			}
			return nil
		}
	}
	tx := d.nft.NewTransaction()
	for _, k := range keys {
		if e, ok, err := verdictElement(k.verdict()); err == nil && ok {
			removeElement(tx, e)
		}
	}
	err := d.runLocked(ctx, tx, "invalidate verdicts")
	if err == nil {
		return nil
	}
	slog.Info("dataplane: precise verdict invalidation failed, flushing the verdict sets", "elements", len(keys), "err", err)
	return d.flushVerdictsLocked(ctx)
}

// staleSet is the stale set for a's family.
func staleSet(a netip.Addr) string {
	if a.Is4() {
		return setStale4
	}
	return setStale6
}

// staleState is what InvalidateVerdicts left for SweepStale: the verdict
// elements to delete and the addresses to take out of the stale sets
// after them.
type staleState struct {
	keys  []verdictKey
	addrs map[netip.Addr]struct{}
}

// SweepStale deletes the verdict elements InvalidateVerdicts left behind
// and then takes their addresses out of the stale sets, in one batch, so
// that the kernel cache answers for them again. Until it has run, their
// packets are answered by the queuer, and the stale sets' timeout, the
// verdict sets' own, bounds how long that lasts if it never does. If the
// batch fails it flushes the verdict and stale sets instead.
func (d *Dataplane) SweepStale(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.stale.addrs) == 0 || !d.setUp {
		return nil
	}
	changes := make([]elemChange, 0, len(d.stale.keys)+len(d.stale.addrs))
	for _, k := range d.stale.keys {
		if set, key, ok := verdictSetKey(k.verdict()); ok {
			changes = append(changes, elemChange{set: set, key: key, remove: true})
		}
	}
	for a := range d.stale.addrs {
		changes = append(changes, elemChange{set: staleSet(a), key: addrKey(a), remove: true})
	}
	if d.elems != nil && d.writeElementsLocked(changes, "stale sweep") {
		d.stale = staleState{addrs: map[netip.Addr]struct{}{}}
		return nil
	}
	slog.Info("dataplane: deleting stale verdicts failed, flushing the verdict sets", "elements", len(d.stale.keys))
	return d.flushVerdictsLocked(ctx)
}

// writeElementsLocked writes changes over netlink and reports whether they
// are in force. After a failure it leaves element writes to nft for good,
// and the caller makes the same change through nft. d.mu is held.
func (d *Dataplane) writeElementsLocked(changes []elemChange, what string) bool {
	err := d.elems.write(changes)
	if err == nil {
		return true
	}
	slog.Warn("dataplane: writing set elements over netlink failed; nft writes them from now on", "what", what, "err", err)
	d.elems = nil
	return false
}

// CachedVerdicts reports how many verdicts the dataplane believes the
// kernel holds.
func (d *Dataplane) CachedVerdicts() int { return d.verdicts.size() }

// listVerdicts reads the elements of the four verdict sets; ok is false if
// any could not be read or understood.
func (d *Dataplane) listVerdicts(ctx context.Context) (vs []Verdict, ok bool) {
	for _, set := range []struct {
		name  string
		allow bool
	}{{setAllow4, true}, {setDeny4, false}, {setAllow6, true}, {setDeny6, false}} {
		elems, err := d.nft.ListElements(ctx, "set", set.name)
		if err != nil {
			slog.Warn("dataplane: could not read the adopted verdict cache; it is flushed at the next change", "set", set.name, "err", err)
			return nil, false
		}
		for _, e := range elems {
			v, good := parseVerdictKey(e.Key)
			if !good {
				return nil, false
			}
			v.Allow = set.allow
			vs = append(vs, v)
		}
	}
	return vs, true
}

// parseVerdictKey reads "src . dst . proto . port" back.
func parseVerdictKey(key []string) (Verdict, bool) {
	if len(key) != 4 {
		return Verdict{}, false
	}
	src, err1 := netip.ParseAddr(key[0])
	dst, err2 := netip.ParseAddr(key[1])
	port, err3 := strconv.ParseUint(key[3], 10, 16)
	proto, ok := protoNumbers[key[2]]
	if !ok {
		n, err := strconv.ParseUint(key[2], 10, 8)
		proto, ok = uint8(n), err == nil
	}
	if err1 != nil || err2 != nil || err3 != nil || !ok {
		return Verdict{}, false
	}
	return Verdict{Src: src, Dst: dst, Proto: proto, DstPort: uint16(port)}, true
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

// Comments that tell the two directions of a cut flow apart in the cut
// sets, so that a new process can tell which direction policy judges.
const (
	cutForward = "forward"
	cutReverse = "reverse"
)

// cutElements returns the cut-set elements of both directions of f; ok is
// false for protocols without ports.
func cutElements(f Flow) (fwd, rev *knftables.Element, ok bool, err error) {
	proto, ok := cachedProtos[f.Proto]
	if !ok {
		return nil, nil, false, nil
	}
	src, dst := f.Src.Unmap().WithZone(""), f.Dst.Unmap().WithZone("")
	var set string
	switch {
	case src.Is4() && dst.Is4():
		set = setCut4
	case src.Is6() && dst.Is6():
		set = setCut6
	default:
		return nil, nil, false, fmt.Errorf("dataplane: cut %s -> %s: addresses invalid or of different families", f.Src, f.Dst)
	}
	sport, dport := strconv.Itoa(int(f.SrcPort)), strconv.Itoa(int(f.DstPort))
	fwd = &knftables.Element{Set: set, Key: []string{src.String(), dst.String(), proto, sport, dport},
		Comment: knftables.PtrTo(cutForward)}
	rev = &knftables.Element{Set: set, Key: []string{dst.String(), src.String(), proto, dport, sport},
		Comment: knftables.PtrTo(cutReverse)}
	return fwd, rev, true, nil
}

// AddCuts puts flows, each in both directions, into the cut sets
// (cut4/cut6) for at most CutTTL, in one transaction. Each flow is given in
// the direction its connection was opened. Packets of a cut flow are
// dropped even after conntrack forgot it, except a TCP SYN, and
// FlushVerdicts leaves the cut sets alone. Flows of protocols without ports
// are skipped.
func (d *Dataplane) AddCuts(ctx context.Context, flows []Flow) error {
	return d.changeCuts(ctx, flows, "add cut flows", func(tx *knftables.Transaction, e *knftables.Element) { tx.Add(e) })
}

// RemoveCuts takes flows, both directions of each, out of the cut sets, in
// one transaction: policy allows them again. Flows the sets do not hold are
// not errors.
func (d *Dataplane) RemoveCuts(ctx context.Context, flows []Flow) error {
	return d.changeCuts(ctx, flows, "remove cut flows", removeElement)
}

// changeCuts applies op to the cut-set elements of both directions of each
// flow, in one transaction; what names the change in errors.
func (d *Dataplane) changeCuts(ctx context.Context, flows []Flow, what string, op func(*knftables.Transaction, *knftables.Element)) error {
	tx := d.nft.NewTransaction()
	for _, f := range flows {
		fwd, rev, ok, err := cutElements(f)
		if err != nil {
			return err
		}
		if ok {
			op(tx, fwd)
			op(tx, rev)
		}
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.runLocked(ctx, tx, what)
}

// ListCuts returns the flows the cut sets hold, each in the direction its
// connection was opened, for a new process to adopt. Elements without a
// direction (written by an older version) are left to expire.
func (d *Dataplane) ListCuts(ctx context.Context) ([]Flow, error) {
	var out []Flow
	for _, name := range []string{setCut4, setCut6} {
		elems, err := d.nft.ListElements(ctx, "set", name)
		if knftables.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dataplane: list set %s: %w", name, err)
		}
		for _, e := range elems {
			if e.Comment == nil || *e.Comment != cutForward {
				continue
			}
			bad := fmt.Errorf("dataplane: set %s has element %v, want a 5-tuple", name, e.Key)
			if len(e.Key) != 5 {
				return nil, bad
			}
			v, ok := parseVerdictKey(e.Key[:4])
			sport, err := strconv.ParseUint(e.Key[3], 10, 16)
			dport, err2 := strconv.ParseUint(e.Key[4], 10, 16)
			if !ok || err != nil || err2 != nil {
				return nil, bad
			}
			out = append(out, Flow{Src: v.Src, Dst: v.Dst, Proto: v.Proto, SrcPort: uint16(sport), DstPort: uint16(dport)})
		}
	}
	return out, nil
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
	return d.flushVerdictsLocked(ctx)
}

// flushVerdictsLocked is FlushVerdicts with d.mu held.
func (d *Dataplane) flushVerdictsLocked(ctx context.Context) error {
	if !d.setUp {
		return errNotSetUp
	}
	// The stale sets go too: no verdict is left for them to hide.
	sets := []string{setAllow4, setDeny4, setAllow6, setDeny6, setStale4, setStale6}
	if d.elems != nil {
		changes := make([]elemChange, 0, len(sets))
		for _, name := range sets {
			changes = append(changes, elemChange{set: name, flush: true})
		}
		if d.writeElementsLocked(changes, "flushed verdict sets") {
			d.verdicts.reset()
			d.stale = staleState{addrs: map[netip.Addr]struct{}{}}
			return nil
		}
	}
	tx := d.nft.NewTransaction()
	for _, name := range sets {
		tx.Flush(&knftables.Set{Name: name})
	}
	if err := d.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("dataplane: flush verdict sets: %w", err)
	}
	d.stale = staleState{addrs: map[netip.Addr]struct{}{}}
	// Verdicts learned while the flush ran may be in the sets and not in
	// the mirror, or the other way round; both are harmless once the
	// mirror is reset, as the caller moved to a new generation first.
	d.verdicts.reset()
	return nil
}
