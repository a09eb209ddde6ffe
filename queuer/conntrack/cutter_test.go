package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeTable is an in-memory Table. Deleting a flow in gone gives
// ErrNotFound; one in broken gives another error.
type fakeTable struct {
	flows   []Flow
	listErr error
	gone    map[uint16]bool // by SrcPort
	broken  map[uint16]bool // by SrcPort
	deleted []uint16        // SrcPorts, in order
	marked  []uint16        // SrcPorts given a mark, in order
	walks   []Filter
}

func (f *fakeTable) Walk(_ context.Context, filter Filter, fn func(Flow) error) error {
	f.walks = append(f.walks, filter)
	if f.listErr != nil {
		return f.listErr
	}
	for _, fl := range f.flows {
		if filter.Mark != 0 && fl.Mark&filter.Mark != filter.Mark {
			continue
		}
		if filter.Addr.IsValid() && fl.Src != filter.Addr && fl.Dst != filter.Addr {
			continue
		}
		if err := fn(fl); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeTable) SetMark(_ context.Context, fl Flow, mark uint32) error {
	f.marked = append(f.marked, fl.SrcPort)
	return nil
}

func (f *fakeTable) Delete(_ context.Context, fl Flow) error {
	switch {
	case f.gone[fl.SrcPort]:
		return fmt.Errorf("fake: %w", ErrNotFound)
	case f.broken[fl.SrcPort]:
		return errors.New("fake: netlink exploded")
	}
	f.deleted = append(f.deleted, fl.SrcPort)
	return nil
}

func flow(src string, sport uint16, dst string) Flow {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	return Flow{Src: s, SrcPort: sport, Dst: d, DstPort: 80, Proto: 6, OrigDst: d, OrigDstPort: 80}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// denyPorts decides by source port and records what it was asked. The
// Cutter decides concurrently, so asked is in no particular order.
type denyPorts struct {
	mu         sync.Mutex
	deny, fail map[uint16]bool
	asked      []uint16
}

func (d *denyPorts) decide(_ context.Context, f Flow) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, f.SrcPort)
	if d.fail[f.SrcPort] {
		return false, errors.New("decider unavailable")
	}
	return !d.deny[f.SrcPort], nil
}

func set(ports ...uint16) map[uint16]bool {
	m := map[uint16]bool{}
	for _, p := range ports {
		m[p] = true
	}
	return m
}

func TestCut(t *testing.T) {
	flows := []Flow{
		flow("10.0.0.1", 1, "10.0.0.2"),     // selected source
		flow("10.0.0.3", 2, "10.0.0.1"),     // selected destination
		flow("10.0.0.3", 3, "10.0.0.4"),     // neither end selected
		flow("192.168.0.10", 4, "10.0.0.1"), // sent by the host
		flow("2001:db8::1", 5, "2001:db8::2"),
		flow("10.0.0.5", 6, "10.0.0.6"),
	}
	// A flow through a Service: only its post-DNAT destination is selected.
	svc := flow("10.0.0.7", 7, "10.0.0.8")
	svc.ViaService, svc.OrigDst = true, netip.MustParseAddr("10.96.0.1")
	flows = append(flows, svc)

	for _, tc := range []struct {
		name      string
		selected  []netip.Addr
		changed   []netip.Addr // with onlyChanged: the changed addresses
		only      bool         // pass changed (else nil: everything changed)
		fromHost  bool
		deny      map[uint16]bool
		failDec   map[uint16]bool
		gone      map[uint16]bool
		broken    map[uint16]bool
		wantAsked []uint16
		wantDel   []uint16
		wantCut   int
		wantErr   bool
		wantStats Stats
	}{
		{
			name: "nothing selected", selected: nil, deny: set(1, 2, 3),
			wantStats: Stats{Runs: 1},
		},
		{
			name: "selected at either end, denied ones cut", selected: addrs("10.0.0.1"), deny: set(1, 4),
			wantAsked: []uint16{1, 2, 4}, wantDel: []uint16{1, 4}, wantCut: 2,
			wantStats: Stats{Runs: 1, Examined: 3, Cut: 2},
		},
		{
			name: "host-sent flows kept", selected: addrs("10.0.0.1"), fromHost: true, deny: set(1, 2, 4),
			wantAsked: []uint16{1, 2}, wantDel: []uint16{1, 2}, wantCut: 2,
			wantStats: Stats{Runs: 1, Examined: 2, Cut: 2},
		},
		{
			name: "IPv6 and the post-DNAT destination match", selected: addrs("2001:db8::2", "10.0.0.8"),
			deny: set(5, 7), wantAsked: []uint16{5, 7}, wantDel: []uint16{5, 7}, wantCut: 2,
			wantStats: Stats{Runs: 1, Examined: 2, Cut: 2},
		},
		{
			name: "only flows with a changed end", selected: addrs("10.0.0.1"), changed: addrs("10.0.0.2", "10.0.0.4"),
			only: true, deny: set(1, 2, 4), wantAsked: []uint16{1}, wantDel: []uint16{1}, wantCut: 1,
			wantStats: Stats{Runs: 1, Examined: 1, Skipped: 2, Cut: 1},
		},
		{
			name: "a changed selected address takes all its flows", selected: addrs("10.0.0.1"), changed: addrs("10.0.0.1"),
			only: true, deny: set(1, 2), wantAsked: []uint16{1, 2, 4}, wantDel: []uint16{1, 2}, wantCut: 2,
			wantStats: Stats{Runs: 1, Examined: 3, Cut: 2},
		},
		{
			name: "nothing changed", selected: addrs("10.0.0.1"), only: true, deny: set(1, 2, 4),
			wantStats: Stats{Runs: 1},
		},
		{
			name: "a Service VIP does not select", selected: addrs("10.96.0.1"), deny: set(7),
			wantStats: Stats{Runs: 1},
		},
		{
			name: "IPv4-mapped selected address", selected: addrs("::ffff:10.0.0.6"), deny: set(6),
			wantAsked: []uint16{6}, wantDel: []uint16{6}, wantCut: 1,
			wantStats: Stats{Runs: 1, Examined: 1, Cut: 1},
		},
		{
			name: "already gone is not an error", selected: addrs("10.0.0.1"), deny: set(1, 2), gone: set(1),
			wantAsked: []uint16{1, 2, 4}, wantDel: []uint16{2}, wantCut: 1,
			wantStats: Stats{Runs: 1, Examined: 3, Cut: 1, Gone: 1},
		},
		{
			name: "failed decision keeps the flow, others still cut", selected: addrs("10.0.0.1"),
			deny: set(1, 2), failDec: set(1), wantAsked: []uint16{1, 2, 4}, wantDel: []uint16{2}, wantCut: 1,
			wantErr: true, wantStats: Stats{Runs: 1, Examined: 3, Cut: 1, DecideErrors: 1},
		},
		{
			name: "failed delete reported, others still cut", selected: addrs("10.0.0.1"),
			deny: set(1, 2), broken: set(1), wantAsked: []uint16{1, 2, 4}, wantDel: []uint16{2}, wantCut: 1,
			wantErr: true, wantStats: Stats{Runs: 1, Examined: 3, Cut: 1, DeleteErrors: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table := &fakeTable{flows: flows, gone: tc.gone, broken: tc.broken}
			d := &denyPorts{deny: tc.deny, fail: tc.failDec}
			c := NewCutter(table)
			var hooked []uint16
			c.BeforeDelete = func(_ context.Context, f Flow) error {
				hooked = append(hooked, f.SrcPort)
				return errors.New("hook failures do not stop the delete")
			}
			if tc.fromHost {
				host := netip.MustParseAddr("192.168.0.10")
				c.FromHost = func(a netip.Addr) bool { return a == host }
			}
			var changed map[netip.Addr]struct{}
			if tc.only {
				changed = map[netip.Addr]struct{}{}
				for _, a := range tc.changed {
					changed[a] = struct{}{}
				}
			}
			got, err := c.Cut(context.Background(), Request{Selected: tc.selected, Changed: changed}, d.decide)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Cut error = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.wantCut {
				t.Errorf("cut %d, want %d", got, tc.wantCut)
			}
			slices.Sort(d.asked)
			if !slices.Equal(d.asked, tc.wantAsked) {
				t.Errorf("decided %v, want %v", d.asked, tc.wantAsked)
			}
			if !slices.Equal(table.deleted, tc.wantDel) {
				t.Errorf("deleted %v, want %v", table.deleted, tc.wantDel)
			}
			// The hook runs for every denied flow, deleted or not.
			var wantHooked []uint16
			for _, p := range tc.wantAsked {
				if tc.deny[p] && !tc.failDec[p] {
					wantHooked = append(wantHooked, p)
				}
			}
			if !slices.Equal(hooked, wantHooked) {
				t.Errorf("BeforeDelete saw %v, want %v", hooked, wantHooked)
			}
			if st := c.Stats(); st != tc.wantStats {
				t.Errorf("stats %+v, want %+v", st, tc.wantStats)
			}
		})
	}
}

func TestCutListError(t *testing.T) {
	c := NewCutter(&fakeTable{listErr: errors.New("netlink down")})
	n, err := c.Cut(context.Background(), Request{Selected: addrs("10.0.0.1")}, func(context.Context, Flow) (bool, error) {
		t.Error("decide called without a listing")
		return true, nil
	})
	if err == nil || n != 0 {
		t.Fatalf("Cut = %d, %v; want 0 and an error", n, err)
	}
}

func TestCutStopsWhenContextEnds(t *testing.T) {
	var flows []Flow
	for port := range uint16(3) {
		f := flow("10.0.0.1", port+1, "10.0.0.2")
		f.DstPort = 80 + port // three verdict keys
		flows = append(flows, f)
	}
	table := &fakeTable{flows: flows}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := NewCutter(table).Cut(ctx, Request{Selected: addrs("10.0.0.1")}, func(context.Context, Flow) (bool, error) {
		cancel()
		return false, context.Canceled
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Cut error = %v, want context.Canceled", err)
	}
	if n != 0 || len(table.deleted) != 0 {
		t.Errorf("cut %d (deleted %v) after the context ended, want none", n, table.deleted)
	}
}

// TestCutDecidesEachKeyOnce: flows that share source, destination,
// protocol and destination port share a verdict, asked once.
func TestCutDecidesEachKeyOnce(t *testing.T) {
	var flows []Flow
	for port := range uint16(50) {
		flows = append(flows, flow("10.0.0.1", 1000+port, "10.0.0.2"))
	}
	table := &fakeTable{flows: flows}
	var asked atomic.Int32
	n, err := NewCutter(table).Cut(context.Background(), Request{Selected: addrs("10.0.0.2")}, func(context.Context, Flow) (bool, error) {
		asked.Add(1)
		return false, nil
	})
	if err != nil || n != 50 || asked.Load() != 1 {
		t.Errorf("cut %d, %v after %d decisions; want 50 after 1", n, err, asked.Load())
	}
}

// TestCutMarkedAndNewly: with a mark, a run lists only marked entries and
// the entries of newly selected addresses, and gives the mark to the
// allowed entries it found without it.
func TestCutMarkedAndNewly(t *testing.T) {
	const mark = 0x100000
	marked := flow("10.0.0.1", 1, "10.0.0.2")
	marked.Mark = mark | 0x3
	unmarkedOld := flow("10.0.0.1", 2, "10.0.0.9") // selected before, opened unjudged: not listed
	newAllowed := flow("10.0.0.5", 3, "10.0.0.2")  // 10.0.0.5 newly selected
	newDenied := flow("10.0.0.5", 4, "10.0.0.7")
	table := &fakeTable{flows: []Flow{marked, unmarkedOld, newAllowed, newDenied}}
	d := &denyPorts{deny: set(1, 4)}
	r := Request{
		Selected: addrs("10.0.0.1", "10.0.0.5"),
		Changed:  map[netip.Addr]struct{}{netip.MustParseAddr("10.0.0.2"): {}},
		Mark:     mark,
		Newly:    addrs("10.0.0.5"),
	}
	c := NewCutter(table)
	n, err := c.Cut(context.Background(), r, d.decide)
	if err != nil || n != 2 {
		t.Fatalf("Cut = %d, %v; want 2", n, err)
	}
	slices.Sort(d.asked)
	if want := []uint16{1, 3, 4}; !slices.Equal(d.asked, want) {
		t.Errorf("decided %v, want %v", d.asked, want)
	}
	if want := []uint16{1, 4}; !slices.Equal(table.deleted, want) {
		t.Errorf("deleted %v, want %v", table.deleted, want)
	}
	if want := []uint16{3}; !slices.Equal(table.marked, want) {
		t.Errorf("marked %v, want %v", table.marked, want)
	}
	if want := []Filter{{Mark: mark}, {Addr: netip.MustParseAddr("10.0.0.5")}}; !slices.Equal(table.walks, want) {
		t.Errorf("walks %v, want %v", table.walks, want)
	}
	if st := c.Stats(); st.Adopted != 1 || st.Cut != 2 || st.Examined != 3 {
		t.Errorf("stats %+v, want 1 adopted, 2 cut, 3 examined", st)
	}

	// Many newly selected addresses: one walk of the whole table instead.
	table.walks = nil
	r.Newly = addrs("10.0.0.5", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4")
	if _, err := NewCutter(table).Cut(context.Background(), r, d.decide); err != nil {
		t.Fatal(err)
	}
	if want := []Filter{{}}; !slices.Equal(table.walks, want) {
		t.Errorf("walks %v, want %v", table.walks, want)
	}
}

func TestDeleteRequest(t *testing.T) {
	// A Flow built by hand names the original tuple: the addressed
	// destination when it went through a Service, else the destination.
	for _, tc := range []struct {
		name    string
		f       Flow
		wantDst string
		wantErr bool
	}{
		{"service", Flow{Src: netip.MustParseAddr("10.0.0.1"), SrcPort: 5, Dst: netip.MustParseAddr("10.0.0.2"),
			DstPort: 8080, Proto: 6, ViaService: true, OrigDst: netip.MustParseAddr("10.96.0.1"), OrigDstPort: 80},
			"10.96.0.1:80", false},
		{"direct without OrigDst", Flow{Src: netip.MustParseAddr("fd00::1"), SrcPort: 5,
			Dst: netip.MustParseAddr("fd00::2"), DstPort: 53, Proto: 17}, "[fd00::2]:53", false},
		{"mixed families", Flow{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("fd00::2"), Proto: 6},
			"", true},
		{"no protocol", Flow{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2")}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, fam, err := deleteAttrs(tc.f)
			if (err != nil) != tc.wantErr {
				t.Fatalf("deleteAttrs error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			var orig tuple
			attrs(a, func(typ uint16, v []byte) {
				if typ == ctaTupleOrig {
					orig, _ = parseTuple(v)
				}
			})
			got := netip.AddrPortFrom(orig.dst, orig.dstPort).String()
			if got != tc.wantDst || orig.src != tc.f.Src || orig.srcPort != tc.f.SrcPort || orig.proto != tc.f.Proto {
				t.Errorf("original tuple %+v, want %s -> %s", orig, tc.f.Src, tc.wantDst)
			}
			if want := family(tc.f.Src); fam != want {
				t.Errorf("family %d, want %d: the kernel reads the addresses as the family the message names", fam, want)
			}
		})
	}
}
