package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
}

func (f *fakeTable) List(context.Context) ([]Flow, error) {
	return slices.Clone(f.flows), f.listErr
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

// denyPorts decides by source port and records what it was asked.
type denyPorts struct {
	deny, fail map[uint16]bool
	asked      []uint16
}

func (d *denyPorts) decide(_ context.Context, f Flow) (bool, error) {
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
			got, err := c.Cut(context.Background(), tc.selected, changed, d.decide)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Cut error = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.wantCut {
				t.Errorf("cut %d, want %d", got, tc.wantCut)
			}
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
	n, err := c.Cut(context.Background(), addrs("10.0.0.1"), nil, func(context.Context, Flow) (bool, error) {
		t.Error("decide called without a listing")
		return true, nil
	})
	if err == nil || n != 0 {
		t.Fatalf("Cut = %d, %v; want 0 and an error", n, err)
	}
}

func TestCutStopsWhenContextEnds(t *testing.T) {
	table := &fakeTable{flows: []Flow{flow("10.0.0.1", 1, "10.0.0.2"), flow("10.0.0.1", 2, "10.0.0.2"),
		flow("10.0.0.1", 3, "10.0.0.2")}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	asked := 0
	n, err := NewCutter(table).Cut(ctx, addrs("10.0.0.1"), nil, func(context.Context, Flow) (bool, error) {
		asked++
		if asked == 2 {
			cancel()
			return false, context.Canceled
		}
		return false, nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Cut error = %v, want context.Canceled", err)
	}
	if n != 1 || asked != 2 || !slices.Equal(table.deleted, []uint16{1}) {
		t.Errorf("cut %d after %d decisions (deleted %v), want 1 after 2", n, asked, table.deleted)
	}
}

func TestEntryRoundTrip(t *testing.T) {
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
			e, err := entryFromFlow(tc.f)
			if (err != nil) != tc.wantErr {
				t.Fatalf("entryFromFlow error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			got := netip.AddrPortFrom(e.TupleOrig.IP.DestinationAddress, e.TupleOrig.Proto.DestinationPort).String()
			if got != tc.wantDst || e.TupleOrig.IP.SourceAddress != tc.f.Src ||
				e.TupleOrig.Proto.SourcePort != tc.f.SrcPort || e.TupleOrig.Proto.Protocol != tc.f.Proto {
				t.Errorf("original tuple %v, want %s -> %s", e.TupleOrig, tc.f.Src, tc.wantDst)
			}
		})
	}
}
