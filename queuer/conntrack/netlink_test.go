package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// create inserts a conntrack entry for f (no NAT: the reply tuple is the
// original one reversed) with the given timeout, as `conntrack -I` would.
func (c *Client) create(ctx context.Context, f Flow, timeout time.Duration) error {
	src, dst := f.Src, f.Dst
	a := origTupleAttr(f, src, dst, f.DstPort)
	rev := f
	rev.SrcPort, rev.DstPort = f.DstPort, f.SrcPort
	reply := origTupleAttr(rev, dst, src, rev.DstPort)
	// origTupleAttr wraps its tuple as CTA_TUPLE_ORIG; rename it.
	binary.NativeEndian.PutUint16(reply[2:4], nlaFNested|ctaTupleReply)
	a = append(a, reply...)
	a = attr(a, ctaTimeout, binary.BigEndian.AppendUint32(nil, uint32(timeout/time.Second)))
	c.sock.mu.Lock()
	defer c.sock.mu.Unlock()
	req := c.sock.request(ctMsgNew, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, family(src), a)
	if err := c.sock.exchange(ctx, req, func(uint16, []byte) error { return nil }); err != nil {
		return fmt.Errorf("create %s: %w", f, err)
	}
	return nil
}

// TestKernelDeleteEveryFamilyAndProtocol lists and deletes entries of TCP,
// UDP and SCTP over IPv4 and IPv6: deleting an IPv6 entry once failed with
// EINVAL because the request named the IPv4 family.
func TestKernelDeleteEveryFamilyAndProtocol(t *testing.T) {
	needRoot(t, "ip")
	ns := newNetNS(t, randomPrefix(t), "n")
	c := dialIn(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var want []Flow
	for _, pair := range [][2]string{{"10.1.0.1", "10.1.0.2"}, {"fd00:250::4", "fd00:250::3"}} {
		for i, proto := range []uint8{6, 17, 132} {
			f := Flow{Src: netip.MustParseAddr(pair[0]), SrcPort: uint16(40000 + i), Dst: netip.MustParseAddr(pair[1]),
				DstPort: 81, Proto: proto}
			f.OrigDst, f.OrigDstPort = f.Dst, f.DstPort
			if err := c.create(ctx, f, time.Minute); err != nil {
				t.Fatal(err)
			}
			want = append(want, f)
		}
	}
	flows, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		got, ok := findFlow(flows, w.Src, w.SrcPort)
		if !ok || public(got) != w {
			t.Errorf("listed %+v (found %v), want %+v", public(got), ok, w)
			continue
		}
		if err := c.Delete(ctx, got); err != nil {
			t.Errorf("delete %s: %v", got, err)
		}
		if err := c.Delete(ctx, got); !errors.Is(err, ErrNotFound) {
			t.Errorf("second delete of %s = %v, want ErrNotFound", got, err)
		}
	}
	if flows, err := c.List(ctx); err != nil || len(flows) != 0 {
		t.Errorf("after deleting everything: %d entries, %v", len(flows), err)
	}
}

// BenchmarkKernelWalk walks a table of 200,000 entries, the size the
// queuer must handle within its 128Mi memory limit, and reports the heap the
// walk itself allocates (which must not grow with the table).
func BenchmarkKernelWalk(b *testing.B) {
	if testing.Short() {
		b.Skip("fills a conntrack table")
	}
	needRoot(b, "ip")
	benchmarkWalk(b, 200_000)
}

func benchmarkWalk(b *testing.B, n int) {
	ns := newNetNS(b, randomPrefix(b), "n")
	// The default table size depends on memory; make room for n entries.
	sh(b, "ip", "netns", "exec", ns, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_max=%d", 2*n))
	c := dialIn(b, ns)
	ctx := context.Background()
	base := netip.MustParseAddr("10.200.0.0").As4()
	for i := range n {
		src := base
		src[2], src[3] = byte(i>>8), byte(i)
		f := Flow{Src: netip.AddrFrom4(src), SrcPort: uint16(1024 + i%60000), Dst: netip.MustParseAddr("10.201.0.1"),
			DstPort: uint16(80 + i>>16), Proto: 6}
		if err := c.create(ctx, f, 10*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for range b.N {
		count := 0
		if err := c.Walk(ctx, Filter{}, func(Flow) error { count++; return nil }); err != nil {
			b.Fatal(err)
		}
		if count != n {
			b.Fatalf("walked %d entries, want %d", count, n)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N), "heap-B/walk")
	b.ReportMetric(float64(n), "entries")
}

// TestKernelWalkFilters checks the filters the kernel applies to a dump:
// a mark set with SetMark, and an address as source or real destination.
func TestKernelWalkFilters(t *testing.T) {
	needRoot(t, "ip")
	ns := newNetNS(t, randomPrefix(t), "n")
	c := dialIn(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mk := func(src string, sport uint16, dst string) Flow {
		f := Flow{Src: netip.MustParseAddr(src), SrcPort: sport, Dst: netip.MustParseAddr(dst), DstPort: 80, Proto: 6}
		f.OrigDst, f.OrigDstPort = f.Dst, f.DstPort
		if err := c.create(ctx, f, time.Minute); err != nil {
			t.Fatal(err)
		}
		return f
	}
	a := mk("10.9.0.1", 1, "10.9.0.2")
	mk("10.9.0.3", 2, "10.9.0.1")
	mk("10.9.0.3", 3, "10.9.0.4")
	mk("fd00::1", 4, "fd00::2")
	const mark = 0x00100000
	flows, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := findFlow(flows, a.Src, a.SrcPort)
	if err := c.SetMark(ctx, got, mark); err != nil {
		t.Fatal(err)
	}
	ports := func(f Filter) []uint16 {
		var out []uint16
		if err := c.Walk(ctx, f, func(fl Flow) error { out = append(out, fl.SrcPort); return nil }); err != nil {
			t.Fatal(err)
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want []uint16
	}{
		{"all", Filter{}, []uint16{1, 2, 3, 4}},
		{"marked", Filter{Mark: mark}, []uint16{1}},
		{"address at either end", Filter{Addr: netip.MustParseAddr("10.9.0.1")}, []uint16{1, 2}},
		{"IPv6 address", Filter{Addr: netip.MustParseAddr("fd00::2")}, []uint16{4}},
		{"address and mark", Filter{Addr: netip.MustParseAddr("10.9.0.1"), Mark: mark}, []uint16{1}},
	} {
		if got := ports(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: walked %v, want %v", tc.name, got, tc.want)
		}
	}
	flows, _ = c.List(ctx)
	if got, _ := findFlow(flows, a.Src, a.SrcPort); got.Mark != mark {
		t.Errorf("mark after SetMark = %#x, want %#x", got.Mark, mark)
	}
}

// BenchmarkKernelCut: one Cut after a change of one remote address, on a
// table of 200,000 entries of which 2,000 belong to selected pods: with the
// dataplane's mark (the kernel sends only the marked entries) and without
// (the whole table is read).
func BenchmarkKernelCut(b *testing.B) {
	needRoot(b, "ip")
	ns := newNetNS(b, randomPrefix(b), "n")
	const n = 200_000
	sh(b, "ip", "netns", "exec", ns, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_max=%d", 2*n))
	c := dialIn(b, ns)
	ctx := context.Background()
	const mark = 0x00100000
	selected := netip.MustParseAddr("10.202.0.1")
	changed := netip.MustParseAddr("10.203.0.1")
	base := netip.MustParseAddr("10.200.0.0").As4()
	for i := range n {
		src := base
		src[2], src[3] = byte(i>>8), byte(i)
		f := Flow{Src: netip.AddrFrom4(src), SrcPort: uint16(1024 + i%60000), Dst: netip.MustParseAddr("10.201.0.1"),
			DstPort: uint16(80 + i>>16), Proto: 6}
		if i%100 == 0 { // a selected pod's flow to the changed peer
			f.Src, f.Dst, f.SrcPort = selected, changed, uint16(1024+i/100)
		}
		if err := c.create(ctx, f, 10*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	var mine []Flow
	if err := c.Walk(ctx, Filter{Addr: selected}, func(f Flow) error { mine = append(mine, f); return nil }); err != nil {
		b.Fatal(err)
	}
	for _, f := range mine {
		if err := c.SetMark(ctx, f, mark); err != nil {
			b.Fatal(err)
		}
	}
	allow := func(context.Context, Flow) (bool, error) { return true, nil }
	for _, tc := range []struct {
		name string
		mark uint32
	}{{"marked", mark}, {"whole-table", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			r := Request{Selected: []netip.Addr{selected}, Changed: map[netip.Addr]struct{}{changed: {}}, Mark: tc.mark}
			cutter := NewCutter(c)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for range b.N {
				if _, err := cutter.Cut(ctx, r, allow); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			if got := cutter.Stats().Examined / uint64(b.N); got != n/100 {
				b.Fatalf("examined %d flows per run, want %d", got, n/100)
			}
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N), "heap-B/cut")
		})
	}
}
