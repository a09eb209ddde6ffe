package resolved

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	pod  = netip.MustParseAddr("10.0.1.1")
	pod2 = netip.MustParseAddr("10.0.1.2")
	web  = netip.MustParseAddr("203.0.113.5")
	web2 = netip.MustParseAddr("203.0.113.6")
	t0   = time.Unix(1_000_000, 0)
)

func all(netip.Addr) bool { return true }

func TestLearnAndView(t *testing.T) {
	s := New(Options{})
	if !s.Learn(pod, []Answer{{Names: []string{"WWW.Allowed.Test.", "cdn.provider.test"}, Addrs: []netip.Addr{web}, TTL: time.Minute}}, t0) {
		t.Fatal("a new name was not a change")
	}
	v := s.View(all, nil)
	if got := v.Names(pod, web); !slices.Equal(got, []string{"cdn.provider.test", "www.allowed.test"}) {
		t.Errorf("names of %s for %s = %v", pod, web, got)
	}
	if v.Names(pod2, web) != nil || v.Names(pod, web2) != nil {
		t.Error("another pod or address has names")
	}
	// The same answer again only renews: no change.
	if s.Learn(pod, []Answer{{Names: []string{"www.allowed.test"}, Addrs: []netip.Addr{web}, TTL: time.Hour}}, t0.Add(time.Second)) {
		t.Error("a renewal was reported as a change")
	}
	// A view does not move when the store does.
	s.Learn(pod, []Answer{{Names: []string{"other.test"}, Addrs: []netip.Addr{web2}, TTL: time.Minute}}, t0)
	if v.Names(pod, web2) != nil {
		t.Error("an old view sees a later answer")
	}
	if got := s.View(all, nil).Names(pod, web2); !slices.Equal(got, []string{"other.test"}) {
		t.Errorf("new view: %v", got)
	}
	if !s.View(func(a netip.Addr) bool { return a == pod }, nil).Local(pod) || s.View(nil, nil).Local(pod) {
		t.Error("Local does not follow the function given")
	}
	// Another address of the same pod sees the same names.
	pod6 := netip.MustParseAddr("fd00::1:1")
	byPod := s.View(all, func(a netip.Addr) netip.Addr {
		if a == pod6 {
			return pod
		}
		return a
	})
	if got := byPod.Names(pod6, web2); !slices.Equal(got, []string{"other.test"}) {
		t.Errorf("names through the pod's other address: %v", got)
	}
}

func TestTTLFloorAndCap(t *testing.T) {
	s := New(Options{MinTTL: 30 * time.Second, MaxTTL: time.Hour})
	s.Learn(pod, []Answer{{Names: []string{"short.test"}, Addrs: []netip.Addr{web}, TTL: time.Second}}, t0)
	s.Learn(pod, []Answer{{Names: []string{"long.test"}, Addrs: []netip.Addr{web2}, TTL: 48 * time.Hour}}, t0)
	if got := s.Expire(t0.Add(29 * time.Second)); got != nil {
		t.Errorf("expired before the floor: %v", got)
	}
	if got := s.Expire(t0.Add(30 * time.Second)); !slices.Equal(got, []netip.Addr{pod}) {
		t.Errorf("at the floor, changed %v", got)
	}
	if s.View(all, nil).Names(pod, web) != nil || s.View(all, nil).Names(pod, web2) == nil {
		t.Error("the short answer should be gone, the long one kept")
	}
	s.Expire(t0.Add(time.Hour))
	if s.View(all, nil).Names(pod, web2) != nil || s.Stats().Entries != 0 {
		t.Errorf("the long answer outlived the cap: %+v", s.Stats())
	}
}

func TestBounds(t *testing.T) {
	s := New(Options{MaxPerPod: 3, MaxTotal: 4})
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
	for i := range 5 {
		s.Learn(pod, []Answer{{Names: []string{"n.test"}, Addrs: []netip.Addr{addr(i)}, TTL: time.Duration(i+1) * time.Minute}}, t0)
	}
	if st := s.Stats(); st.Entries != 3 || st.Evicted != 2 {
		t.Errorf("per pod: %+v, want 3 entries and 2 evicted", st)
	}
	// The soonest to expire went first.
	v := s.View(all, nil)
	for i := range 5 {
		if (v.Names(pod, addr(i)) != nil) != (i >= 2) {
			t.Errorf("entry %d kept=%v", i, i < 2)
		}
	}
	s.Learn(pod2, []Answer{{Names: []string{"m.test", "o.test"}, Addrs: []netip.Addr{web}, TTL: time.Hour}}, t0)
	if st := s.Stats(); st.Entries != 4 || st.Evicted != 3 || st.Pods != 2 {
		t.Errorf("total: %+v, want 4 entries over 2 pods and 3 evicted", st)
	}
}

func TestRetain(t *testing.T) {
	s := New(Options{})
	s.Learn(pod, []Answer{{Names: []string{"a.test"}, Addrs: []netip.Addr{web}}}, t0)
	s.Learn(pod2, []Answer{{Names: []string{"a.test"}, Addrs: []netip.Addr{web}}}, t0)
	if gone := s.Retain(func(a netip.Addr) bool { return a == pod }); !slices.Equal(gone, []netip.Addr{pod2}) {
		t.Errorf("Retain dropped %v", gone)
	}
	if v := s.View(all, nil); v.Names(pod2, web) != nil || v.Names(pod, web) == nil {
		t.Error("Retain kept the wrong pod")
	}
}
