package dataplane

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"
)

// newFake returns a set-up Dataplane on fresh fakes.
func newFake(t *testing.T, mode Mode, cfg Config) (*Dataplane, *knftables.Fake, *FakeIPTables) {
	t.Helper()
	nft := knftables.NewFake(knftables.InetFamily, TableName)
	ipt := NewFakeIPTables()
	d, err := NewWithBackends(cfg, mode, nft, ipt)
	if err != nil {
		t.Fatalf("NewWithBackends: %v", err)
	}
	if err := d.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return d, nft, ipt
}

// update rewrites the golden files with what the code produces:
// go test ./queuer/dataplane/ -run TestSetupRuleset -update, then review the diff.
var update = flag.Bool("update", false, "rewrite the testdata golden files")

// golden returns the golden file's content, first rewriting it with got
// under -update.
func golden(t *testing.T, name, got string) string {
	t.Helper()
	if *update {
		if err := os.WriteFile(filepath.Join("testdata", name), []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return readGolden(t, name)
}

func readGolden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSetupRuleset(t *testing.T) {
	for _, tc := range []struct {
		golden   string
		mode     Mode
		failOpen bool
	}{
		{"nft-failopen", ModeNFT, true},
		{"nft-failclosed", ModeNFT, false},
		{"xt-failopen", ModeXT, true},
		{"xt-failclosed", ModeXT, false},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			cfg := Config{FirstQueue: 100, QueueCount: 2, FailOpen: tc.failOpen, VerdictTTL: 90 * time.Second}
			d, nft, ipt := newFake(t, tc.mode, cfg)
			if d.Mode() != tc.mode {
				t.Errorf("Mode() = %q, want %q", d.Mode(), tc.mode)
			}
			if got, want := nft.Dump(), golden(t, tc.golden+".nft", nft.Dump()); got != want {
				t.Errorf("nft ruleset:\n%s\nwant:\n%s", got, want)
			}
			if got, want := ipt.Dump(), golden(t, tc.golden+".iptables", ipt.Dump()); got != want {
				t.Errorf("iptables rules:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestQueueStatements(t *testing.T) {
	for _, tc := range []struct {
		name     string
		first    uint16
		count    uint16
		failOpen bool
		nft      string
		xt       string
	}{
		{"one queue fail-open", 7, 1, true, "queue num 7 bypass",
			"-m mark --mark 0x2000/0x2000 -j NFQUEUE --queue-num 7 --queue-bypass"},
		{"one queue fail-closed", 7, 1, false, "queue num 7",
			"-m mark --mark 0x2000/0x2000 -j NFQUEUE --queue-num 7"},
		{"four queues fail-open", 100, 4, true, "queue num 100-103 fanout,bypass",
			"-m mark --mark 0x2000/0x2000 -j NFQUEUE --queue-balance 100:103 --queue-cpu-fanout --queue-bypass"},
		{"top of range", 65534, 2, false, "queue num 65534-65535 fanout",
			"-m mark --mark 0x2000/0x2000 -j NFQUEUE --queue-balance 65534:65535 --queue-cpu-fanout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{FirstQueue: tc.first, QueueCount: tc.count, FailOpen: tc.failOpen, DNSQueue: 1}
			_, nft, _ := newFake(t, ModeNFT, cfg)
			if got := nft.Table.Chains[chainToQueue].Rules[0].Rule; got != "counter name queued meta mark set meta mark | 0x00002000 "+tc.nft {
				t.Errorf("nft queue rule = %q, want %q", got, tc.nft)
			}
			_, nft, ipt := newFake(t, ModeXT, cfg)
			if got := nft.Table.Chains[chainToQueue].Rules[0].Rule; got != "counter name queued meta mark set meta mark | 0x00002000" {
				t.Errorf("xt mark rule = %q", got)
			}
			want := "-A TOLLGATE " + tc.xt + "\n"
			if got := ipt.Dump(); strings.Count(got, want) != 2 {
				t.Errorf("iptables rules:\n%s\nwant twice (v4, v6): %s", got, want)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr bool
		wantTTL time.Duration
	}{
		{"defaults", Config{QueueCount: 1}, false, DefaultVerdictTTL},
		{"ttl truncated to seconds", Config{QueueCount: 1, VerdictTTL: 2500 * time.Millisecond}, false, 2 * time.Second},
		{"ttl below a second", Config{QueueCount: 1, VerdictTTL: time.Millisecond}, true, 0},
		{"no queues", Config{QueueCount: 0}, true, 0},
		{"queues past 65535", Config{FirstQueue: 65535, QueueCount: 2}, true, 0},
		{"bad mode", Config{QueueMode: "ebpf", QueueCount: 1}, true, 0},
		{"explicit xt", Config{QueueMode: "xt", QueueCount: 1}, false, DefaultVerdictTTL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.withDefaults()
			if (err != nil) != tc.wantErr {
				t.Fatalf("withDefaults() error = %v, want error %t", err, tc.wantErr)
			}
			if err == nil && got.VerdictTTL != tc.wantTTL {
				t.Errorf("VerdictTTL = %s, want %s", got.VerdictTTL, tc.wantTTL)
			}
		})
	}
	if _, err := NewWithBackends(Config{QueueCount: 1}, ModeXT, knftables.NewFake(knftables.InetFamily, TableName), nil); err == nil {
		t.Error("NewWithBackends(ModeXT, no iptables) succeeded")
	}
	if _, err := NewWithBackends(Config{QueueCount: 1}, "auto", knftables.NewFake(knftables.InetFamily, TableName), nil); err == nil {
		t.Error("NewWithBackends(mode auto) succeeded; tests must pick a mode")
	}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// elements lists the keys of a set of the fake, joined with " . ".
func elements(t *testing.T, nft *knftables.Fake, set string) []string {
	t.Helper()
	s := nft.Table.Sets[set]
	if s == nil {
		t.Fatalf("no set %s", set)
	}
	var out []string
	for _, e := range s.Elements {
		out = append(out, strings.Join(e.Key, " . "))
	}
	return out
}

func TestSyncSelectedIncremental(t *testing.T) {
	ctx := context.Background()
	d, nft, _ := newFake(t, ModeNFT, Config{FirstQueue: 100, QueueCount: 1, FailOpen: true})

	steps := []struct {
		name   string
		v4, v6 []netip.Addr
		// wantTx is the transaction text, "" when no transaction may run.
		wantTx   string
		want4    []string
		want6    []string
		prevLast *knftables.Transaction
	}{
		{
			name: "first sync adds all",
			v4:   addrs("10.0.0.2", "10.0.0.1"), v6: addrs("fd00::1"),
			wantTx: "add element inet tollgate selected4 { 10.0.0.1 }\n" +
				"add element inet tollgate selected4 { 10.0.0.2 }\n" +
				"add element inet tollgate selected6 { fd00::1 }\n",
			want4: []string{"10.0.0.1", "10.0.0.2"}, want6: []string{"fd00::1"},
		},
		{
			name: "unchanged sync runs nothing",
			v4:   addrs("10.0.0.1", "10.0.0.2"), v6: addrs("fd00::1"),
			want4: []string{"10.0.0.1", "10.0.0.2"}, want6: []string{"fd00::1"},
		},
		{
			name: "one added one removed",
			v4:   addrs("10.0.0.1", "10.0.0.3"), v6: addrs("fd00::1"),
			wantTx: "delete element inet tollgate selected4 { 10.0.0.2 }\n" +
				"add element inet tollgate selected4 { 10.0.0.3 }\n",
			want4: []string{"10.0.0.1", "10.0.0.3"}, want6: []string{"fd00::1"},
		},
		{
			name: "all removed",
			wantTx: "delete element inet tollgate selected4 { 10.0.0.1 }\n" +
				"delete element inet tollgate selected4 { 10.0.0.3 }\n" +
				"delete element inet tollgate selected6 { fd00::1 }\n",
		},
	}
	for _, st := range steps {
		before := nft.LastTransaction
		if err := d.SyncSelected(ctx, st.v4, st.v6); err != nil {
			t.Fatalf("%s: SyncSelected: %v", st.name, err)
		}
		if st.wantTx == "" {
			if nft.LastTransaction != before {
				t.Errorf("%s: ran a transaction:\n%s", st.name, nft.LastTransaction)
			}
		} else if got := nft.LastTransaction.String(); got != st.wantTx {
			t.Errorf("%s: transaction:\n%s\nwant:\n%s", st.name, got, st.wantTx)
		}
		if got := elements(t, nft, setSelected4); strings.Join(got, ",") != strings.Join(st.want4, ",") {
			t.Errorf("%s: selected4 = %v, want %v", st.name, got, st.want4)
		}
		if got := elements(t, nft, setSelected6); strings.Join(got, ",") != strings.Join(st.want6, ",") {
			t.Errorf("%s: selected6 = %v, want %v", st.name, got, st.want6)
		}
	}
}

func TestSyncSelectedRecoversFromDrift(t *testing.T) {
	ctx := context.Background()
	d, nft, _ := newFake(t, ModeNFT, Config{FirstQueue: 100, QueueCount: 1})
	if err := d.SyncSelected(ctx, addrs("10.0.0.1", "10.0.0.2"), nil); err != nil {
		t.Fatal(err)
	}
	// Someone deletes an element behind our back: the incremental delete of
	// it fails, and the whole set is replaced instead.
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Element{Set: setSelected4, Key: []string{"10.0.0.2"}})
	tx.Add(&knftables.Element{Set: setSelected4, Key: []string{"10.9.9.9"}})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := d.SyncSelected(ctx, addrs("10.0.0.1"), nil); err != nil {
		t.Fatalf("SyncSelected: %v", err)
	}
	if got := elements(t, nft, setSelected4); strings.Join(got, ",") != "10.0.0.1" {
		t.Errorf("selected4 = %v, want [10.0.0.1]", got)
	}
	wantTx := "flush set inet tollgate selected4\nflush set inet tollgate selected6\n" +
		"add element inet tollgate selected4 { 10.0.0.1 }\n"
	if got := nft.LastTransaction.String(); got != wantTx {
		t.Errorf("transaction:\n%s\nwant:\n%s", got, wantTx)
	}
}

func TestSyncSelectedRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	nft := knftables.NewFake(knftables.InetFamily, TableName)
	d, err := NewWithBackends(Config{QueueCount: 1}, ModeNFT, nft, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SyncSelected(ctx, addrs("10.0.0.1"), nil); !errors.Is(err, errNotSetUp) {
		t.Errorf("SyncSelected before Setup: %v, want errNotSetUp", err)
	}
	if err := d.AddVerdicts(ctx, []Verdict{{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DstPort: 80}}); !errors.Is(err, errNotSetUp) {
		t.Errorf("AddVerdicts before Setup: %v, want errNotSetUp", err)
	}
	if err := d.FlushVerdicts(ctx); !errors.Is(err, errNotSetUp) {
		t.Errorf("FlushVerdicts before Setup: %v, want errNotSetUp", err)
	}
	if err := d.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.SyncSelected(ctx, addrs("fd00::1"), nil); err == nil {
		t.Error("IPv6 address in the IPv4 list accepted")
	}
	if err := d.SyncSelected(ctx, nil, addrs("10.0.0.1")); err == nil {
		t.Error("IPv4 address in the IPv6 list accepted")
	}
	// A v4-mapped IPv6 address is an IPv4 address.
	if err := d.SyncSelected(ctx, addrs("::ffff:10.0.0.7"), nil); err != nil {
		t.Fatalf("v4-mapped address: %v", err)
	}
	if got := elements(t, nft, setSelected4); strings.Join(got, ",") != "10.0.0.7" {
		t.Errorf("selected4 = %v, want [10.0.0.7]", got)
	}
}

func TestAddAndFlushVerdicts(t *testing.T) {
	ctx := context.Background()
	d, nft, _ := newFake(t, ModeXT, Config{FirstQueue: 100, QueueCount: 1})
	a := netip.MustParseAddr
	vs := []Verdict{
		{Src: a("10.0.0.1"), Dst: a("10.0.0.2"), Proto: 6, DstPort: 80, Allow: true},
		{Src: a("10.0.0.1"), Dst: a("10.0.0.2"), Proto: 17, DstPort: 53, Allow: false},
		{Src: a("::ffff:10.0.0.3"), Dst: a("10.0.0.4"), Proto: 132, DstPort: 9999, Allow: true},
		{Src: a("10.0.0.1"), Dst: a("10.0.0.2"), Proto: 1, Allow: true}, // ICMP: not cached
		{Src: a("fd00::1"), Dst: a("fd00::2"), Proto: 6, DstPort: 443, Allow: true},
		{Src: a("fe80::1%eth0"), Dst: a("fd00::2"), Proto: 17, DstPort: 0, Allow: false},
		{Src: a("fd00::1"), Dst: a("fd00::2"), Proto: 58, Allow: false}, // ICMPv6: not cached
	}
	if err := d.AddVerdicts(ctx, vs); err != nil {
		t.Fatalf("AddVerdicts: %v", err)
	}
	want := map[string]string{
		setAllow4: "10.0.0.1 . 10.0.0.2 . tcp . 80,10.0.0.3 . 10.0.0.4 . sctp . 9999",
		setDeny4:  "10.0.0.1 . 10.0.0.2 . udp . 53",
		setAllow6: "fd00::1 . fd00::2 . tcp . 443",
		setDeny6:  "fe80::1 . fd00::2 . udp . 0",
	}
	for set, w := range want {
		if got := strings.Join(elements(t, nft, set), ","); got != w {
			t.Errorf("%s = %q, want %q", set, got, w)
		}
	}
	wantTx := "add element inet tollgate allow4 { 10.0.0.1 . 10.0.0.2 . tcp . 80 }\n" +
		"add element inet tollgate deny4 { 10.0.0.1 . 10.0.0.2 . udp . 53 }\n" +
		"add element inet tollgate allow4 { 10.0.0.3 . 10.0.0.4 . sctp . 9999 }\n" +
		"add element inet tollgate allow6 { fd00::1 . fd00::2 . tcp . 443 }\n" +
		"add element inet tollgate deny6 { fe80::1 . fd00::2 . udp . 0 }\n"
	if got := nft.LastTransaction.String(); got != wantTx {
		t.Errorf("one transaction:\n%s\nwant:\n%s", got, wantTx)
	}

	// Only portless verdicts: nothing to do, no transaction.
	last := nft.LastTransaction
	if err := d.AddVerdicts(ctx, vs[3:4]); err != nil || nft.LastTransaction != last {
		t.Errorf("ICMP-only AddVerdicts: err %v, ran a transaction %t", err, nft.LastTransaction != last)
	}
	// Mixed families are rejected and nothing is added.
	if err := d.AddVerdicts(ctx, []Verdict{vs[0], {Src: a("10.0.0.1"), Dst: a("fd00::2"), Proto: 6, DstPort: 1}}); err == nil {
		t.Error("mixed-family verdict accepted")
	}
	if err := d.AddVerdicts(ctx, []Verdict{{Proto: 6, DstPort: 1}}); err == nil {
		t.Error("verdict without addresses accepted")
	}

	// Cut flows, keyed with both ports, each in both directions; portless
	// ones skipped.
	if err := d.AddCuts(ctx, []Flow{
		{Src: a("::ffff:10.0.0.1"), Dst: a("10.0.0.2"), Proto: 6, SrcPort: 40000, DstPort: 80},
		{Src: a("fd00::1"), Dst: a("fd00::2"), Proto: 17, SrcPort: 5353, DstPort: 53},
		{Src: a("10.0.0.1"), Dst: a("10.0.0.2"), Proto: 1},
	}); err != nil {
		t.Fatalf("AddCuts: %v", err)
	}
	if err := d.AddCuts(ctx, []Flow{{Src: a("10.0.0.1"), Dst: a("fd00::2"), Proto: 6}}); err == nil {
		t.Error("mixed-family cut accepted")
	}
	wantCuts := map[string]string{
		setCut4: "10.0.0.1 . 10.0.0.2 . tcp . 40000 . 80,10.0.0.2 . 10.0.0.1 . tcp . 80 . 40000",
		setCut6: "fd00::1 . fd00::2 . udp . 5353 . 53,fd00::2 . fd00::1 . udp . 53 . 5353",
	}
	for set, w := range wantCuts {
		if got := strings.Join(elements(t, nft, set), ","); got != w {
			t.Errorf("%s = %q, want %q", set, got, w)
		}
	}

	if err := d.SyncSelected(ctx, addrs("10.0.0.2"), nil); err != nil {
		t.Fatal(err)
	}
	if err := d.FlushVerdicts(ctx); err != nil {
		t.Fatalf("FlushVerdicts: %v", err)
	}
	// A new generation does not forget cut flows.
	for set, w := range wantCuts {
		if got := strings.Join(elements(t, nft, set), ","); got != w {
			t.Errorf("%s after FlushVerdicts = %q, want %q", set, got, w)
		}
	}
	// A new process reads the cuts back in the direction they were opened.
	cuts, err := d.ListCuts(ctx)
	if err != nil || len(cuts) != 2 || cuts[0].SrcPort != 40000 || cuts[1].SrcPort != 5353 {
		t.Errorf("ListCuts = %+v, %v; want the two flows as opened", cuts, err)
	}
	if err := d.RemoveCuts(ctx, cuts[:1]); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, nft, setCut4); len(got) != 0 {
		t.Errorf("cut4 after RemoveCuts = %v", got)
	}
	// Removing what is gone already is no error.
	if err := d.RemoveCuts(ctx, cuts[:1]); err != nil {
		t.Errorf("second RemoveCuts: %v", err)
	}
	for _, set := range []string{setAllow4, setDeny4, setAllow6, setDeny6} {
		if got := elements(t, nft, set); len(got) != 0 {
			t.Errorf("%s after flush = %v", set, got)
		}
	}
	if got := elements(t, nft, setSelected4); strings.Join(got, ",") != "10.0.0.2" {
		t.Errorf("FlushVerdicts touched selected4: %v", got)
	}
}

func TestSetupAdoptsExistingTable(t *testing.T) {
	ctx := context.Background()
	cfg := Config{FirstQueue: 100, QueueCount: 2, FailOpen: false, VerdictTTL: 90 * time.Second}
	d, nft, ipt := newFake(t, ModeXT, cfg)
	if err := d.SyncSelected(ctx, addrs("10.0.0.1", "10.0.0.2"), addrs("fd00::1")); err != nil {
		t.Fatal(err)
	}
	if err := d.AddVerdicts(ctx, []Verdict{{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DstPort: 80, Allow: true}}); err != nil {
		t.Fatal(err)
	}
	// Leftovers of an older version of the ruleset.
	tx := nft.NewTransaction()
	tx.Add(&knftables.Chain{Name: "old-chain"})
	tx.Add(&knftables.Set{Name: "old-set", Type: "ipv4_addr"})
	tx.Add(&knftables.Rule{Chain: "old-chain", Rule: "ip saddr @old-set drop"})
	tx.Add(&knftables.Rule{Chain: chainClassify, Rule: "jump old-chain"})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// A restart in fail-open mode with a new TTL: one transaction replaces
	// the ruleset, keeps the selected pods, empties the verdict sets.
	cfg.FailOpen = true
	cfg.VerdictTTL = 45 * time.Second
	d2, err := NewWithBackends(cfg, ModeXT, nft, ipt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Setup(ctx); err != nil {
		t.Fatalf("Setup over an existing table: %v", err)
	}
	want := readGolden(t, "xt-failopen.nft")
	want = strings.ReplaceAll(want, "timeout 90s", "timeout 45s")
	want += "add element inet tollgate selected4 { 10.0.0.1 }\n" +
		"add element inet tollgate selected4 { 10.0.0.2 }\n" +
		"add element inet tollgate selected6 { fd00::1 }\n"
	if got := nft.Dump(); got != want {
		t.Errorf("adopted ruleset:\n%s\nwant:\n%s", got, want)
	}
	if got, want := ipt.Dump(), readGolden(t, "xt-failopen.iptables"); got != want {
		t.Errorf("iptables after restart:\n%s\nwant:\n%s", got, want)
	}
	// A restart with the same TTL adopts the verdict sets with their
	// elements, and knows them: a change removes what it affects.
	if err := d2.AddVerdicts(ctx, []Verdict{{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 6, DstPort: 80, Allow: true}}); err != nil {
		t.Fatal(err)
	}
	d3, err := NewWithBackends(cfg, ModeXT, nft, ipt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d3.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, nft, setAllow4); len(got) != 1 || d3.CachedVerdicts() != 1 {
		t.Errorf("allow4 after a restart with the same TTL = %v (mirror %d), want the verdict kept", got, d3.CachedVerdicts())
	}
	if err := d3.InvalidateVerdicts(ctx, func(x netip.Addr) bool { return x == netip.MustParseAddr("10.0.0.2") }); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, nft, setAllow4); len(got) != 0 {
		t.Errorf("allow4 = %v after invalidating an adopted verdict", got)
	}
	d2 = d3
	// The adopted elements are known: a sync only sends the difference.
	if err := d2.SyncSelected(ctx, addrs("10.0.0.1"), addrs("fd00::1")); err != nil {
		t.Fatal(err)
	}
	if got, want := nft.LastTransaction.String(), "delete element inet tollgate selected4 { 10.0.0.2 }\n"; got != want {
		t.Errorf("first sync after adoption:\n%s\nwant:\n%s", got, want)
	}
}

func TestModeSwitchRemovesXTRules(t *testing.T) {
	ctx := context.Background()
	cfg := Config{FirstQueue: 100, QueueCount: 1, FailOpen: true}
	_, nft, ipt := newFake(t, ModeXT, cfg)
	d, err := NewWithBackends(cfg, ModeNFT, nft, ipt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ipt.Dump(); got != "# iptables\n# ip6tables\n" {
		t.Errorf("iptables after switching to nft mode:\n%s", got)
	}
	if got := nft.Table.Chains[chainToQueue].Rules[0].Rule; got != "counter name queued meta mark set meta mark | 0x00002000 queue num 100 bypass" {
		t.Errorf("queue rule = %q", got)
	}
}

func TestShutdown(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []Mode{ModeNFT, ModeXT} {
		t.Run(string(mode)+"/remove", func(t *testing.T) {
			d, nft, ipt := newFake(t, mode, Config{FirstQueue: 100, QueueCount: 2, FailOpen: true})
			if err := d.Remove(ctx); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if got := nft.Dump(); got != "" {
				t.Errorf("nft after Remove:\n%s", got)
			}
			if got := ipt.Dump(); got != "# iptables\n# ip6tables\n" {
				t.Errorf("iptables after Remove:\n%s", got)
			}
			// A second removal finds nothing to remove and is fine.
			if err := d.Remove(ctx); err != nil {
				t.Errorf("second Remove: %v", err)
			}
			if err := d.SyncSelected(ctx, nil, nil); !errors.Is(err, errNotSetUp) {
				t.Errorf("SyncSelected after Remove: %v", err)
			}
		})
		for _, failOpen := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/fail-open=%t", mode, failOpen), func(t *testing.T) {
				// Both fail modes keep the ruleset: a restart must not leave
				// the node unenforced.
				d, nft, ipt := newFake(t, mode, Config{FirstQueue: 100, QueueCount: 2, FailOpen: failOpen})
				if err := d.SyncSelected(ctx, addrs("10.0.0.1"), nil); err != nil {
					t.Fatal(err)
				}
				nftBefore, iptBefore := nft.Dump(), ipt.Dump()
				if err := d.Shutdown(ctx); err != nil {
					t.Fatalf("Shutdown: %v", err)
				}
				if got := nft.Dump(); got != nftBefore {
					t.Errorf("shutdown changed nft:\n%s\nwas:\n%s", got, nftBefore)
				}
				if got := ipt.Dump(); got != iptBefore {
					t.Errorf("shutdown changed iptables:\n%s\nwas:\n%s", got, iptBefore)
				}
			})
		}
	}
}

func TestSetupFailsWhenIPTablesFails(t *testing.T) {
	nft := knftables.NewFake(knftables.InetFamily, TableName)
	ipt := NewFakeIPTables()
	ipt.FailOn("ip6tables-restore", &IPTablesError{Code: 4, Msg: "no ip6tables here"})
	d, err := NewWithBackends(Config{QueueCount: 1}, ModeXT, nft, ipt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Setup(context.Background()); err == nil {
		t.Fatal("Setup succeeded although ip6tables failed")
	}
	// The table must not mark packets that no iptables rule queues.
	if got := nft.Dump(); got != "" {
		t.Errorf("nft table installed after iptables failure:\n%s", got)
	}
}

// checkFilter is a knftables.Interface whose Check rejects transactions that
// contain reject (the way a kernel without an expression would).
type checkFilter struct {
	knftables.Interface
	reject string
}

func (c checkFilter) Check(ctx context.Context, tx *knftables.Transaction) error {
	if c.reject != "" && strings.Contains(tx.String(), c.reject) {
		return errors.New("Could not process rule: No such file or directory")
	}
	return c.Interface.Check(ctx, tx)
}

func TestDetectMode(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		reject  string
		want    Mode
		wantErr bool
	}{
		{"kernel has queue", "", ModeNFT, false},
		{"kernel lacks queue", "queue num", ModeXT, false},
		{"nft broken", "add table", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := knftables.NewFake(knftables.InetFamily, TableName)
			got, err := DetectMode(ctx, checkFilter{fake, tc.reject}, 100)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("DetectMode = %q, %v; want %q, error %t", got, err, tc.want, tc.wantErr)
			}
			if fake.Dump() != "" {
				t.Errorf("DetectMode left objects behind:\n%s", fake.Dump())
			}
		})
	}
}

func TestInvalidateVerdicts(t *testing.T) {
	ctx := context.Background()
	d, nft, _ := newFake(t, ModeXT, Config{FirstQueue: 100, QueueCount: 1, VerdictTTL: 60 * time.Second})
	now := time.Unix(1000, 0)
	d.now = func() time.Time { return now }
	a := netip.MustParseAddr
	add := func(vs ...Verdict) {
		t.Helper()
		if err := d.AddVerdicts(ctx, vs); err != nil {
			t.Fatal(err)
		}
	}
	add(Verdict{Src: a("10.0.0.1"), Dst: a("10.0.0.2"), Proto: 6, DstPort: 80, Allow: true},
		Verdict{Src: a("10.0.0.3"), Dst: a("10.0.0.4"), Proto: 6, DstPort: 80, Allow: false},
		Verdict{Src: a("10.0.0.5"), Dst: a("10.0.0.1"), Proto: 17, DstPort: 53, Allow: true},
		Verdict{Src: a("fd00::1"), Dst: a("fd00::2"), Proto: 6, DstPort: 443, Allow: true})
	changed := func(ips ...string) func(netip.Addr) bool {
		return func(x netip.Addr) bool {
			for _, ip := range ips {
				if x == a(ip) {
					return true
				}
			}
			return false
		}
	}
	// 10.0.0.1 changed: both elements that involve it go, as source or
	// destination; the others stay.
	if err := d.InvalidateVerdicts(ctx, changed("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	for set, want := range map[string]string{
		setAllow4: "", setDeny4: "10.0.0.3 . 10.0.0.4 . tcp . 80", setAllow6: "fd00::1 . fd00::2 . tcp . 443",
	} {
		if got := strings.Join(elements(t, nft, set), ","); got != want {
			t.Errorf("%s = %q, want %q", set, got, want)
		}
	}
	// Nothing involved: no transaction at all.
	last := nft.LastTransaction
	if err := d.InvalidateVerdicts(ctx, changed("10.9.9.9")); err != nil || nft.LastTransaction != last {
		t.Errorf("unrelated change: err %v, ran a transaction %v", err, nft.LastTransaction != last)
	}
	// An element the kernel expired is not deleted (it is gone already).
	now = now.Add(61 * time.Second)
	if err := d.InvalidateVerdicts(ctx, changed("10.0.0.3")); err != nil || nft.LastTransaction != last {
		t.Errorf("expired element: err %v, ran a transaction %v", err, nft.LastTransaction != last)
	}
	// If the kernel lost an element the mirror still has (someone deleted
	// it, or the set was full when it was learned), removing it is no
	// error and the other elements stay.
	add(Verdict{Src: a("10.0.0.7"), Dst: a("10.0.0.8"), Proto: 6, DstPort: 80, Allow: true},
		Verdict{Src: a("10.0.0.9"), Dst: a("10.0.0.8"), Proto: 6, DstPort: 81, Allow: true})
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Element{Set: setAllow4, Key: []string{"10.0.0.7", "10.0.0.8", "tcp", "80"}})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := d.InvalidateVerdicts(ctx, changed("10.0.0.8")); err != nil {
		t.Fatalf("invalidate with an element gone: %v", err)
	}
	for set, want := range map[string]string{
		setAllow4: "", setDeny4: "10.0.0.3 . 10.0.0.4 . tcp . 80", setAllow6: "fd00::1 . fd00::2 . tcp . 443",
	} {
		if got := strings.Join(elements(t, nft, set), ","); got != want {
			t.Errorf("%s = %q, want %q", set, got, want)
		}
	}
}

// TestInvalidateLearnedAndOverflow: verdicts the kernel learned from queue
// verdicts are invalidated like added ones; once the mirror cannot hold
// every element, an invalidation flushes the sets.
func TestInvalidateLearnedAndOverflow(t *testing.T) {
	ctx := context.Background()
	d, nft, _ := newFake(t, ModeXT, Config{FirstQueue: 100, QueueCount: 1, VerdictCacheSize: 2})
	a := netip.MustParseAddr
	learn := func(v Verdict) {
		// What the learn chain does in the kernel, then the queuer's note.
		e, _, _ := verdictElement(v)
		tx := nft.NewTransaction()
		tx.Add(e)
		if err := nft.Run(ctx, tx); err != nil {
			t.Fatal(err)
		}
		d.Learned(v)
	}
	learn(Verdict{Src: a("10.0.0.1"), Dst: a("10.0.0.2"), Proto: 6, DstPort: 80, Allow: true})
	learn(Verdict{Src: a("10.0.0.3"), Dst: a("10.0.0.4"), Proto: 6, DstPort: 80})
	if err := d.InvalidateVerdicts(ctx, func(x netip.Addr) bool { return x == a("10.0.0.2") }); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, nft, setAllow4); len(got) != 0 {
		t.Errorf("allow4 = %v after its destination changed", got)
	}
	if got := elements(t, nft, setDeny4); len(got) != 1 {
		t.Errorf("deny4 = %v, want the unrelated element kept", got)
	}
	// The mirror holds 4 x 2 elements; past that it overflows.
	for i := range 9 {
		learn(Verdict{Src: a("10.1.0.1"), Dst: a("10.1.0.2"), Proto: 17, DstPort: uint16(1000 + i), Allow: true})
	}
	if err := d.InvalidateVerdicts(ctx, func(x netip.Addr) bool { return x == a("10.9.9.9") }); err != nil {
		t.Fatal(err)
	}
	for _, set := range []string{setAllow4, setDeny4} {
		if got := elements(t, nft, set); len(got) != 0 {
			t.Errorf("%s = %v after an invalidation with an overflowed mirror, want empty", set, got)
		}
	}
}

// TestCheck: Check notices a missing table, a flushed chain, a changed set
// and missing iptables rules; Setup repairs each.
func TestCheck(t *testing.T) {
	ctx := context.Background()
	d, nft, ipt := newFake(t, ModeXT, Config{FirstQueue: 100, QueueCount: 1})
	if err := d.Check(ctx); err != nil {
		t.Fatalf("Check after Setup: %v", err)
	}
	for _, tc := range []struct {
		name   string
		damage func()
		want   string
	}{
		{"table deleted", func() {
			tx := nft.NewTransaction()
			tx.Delete(&knftables.Table{})
			_ = nft.Run(ctx, tx)
		}, "table inet tollgate is missing"},
		{"chain flushed", func() {
			tx := nft.NewTransaction()
			tx.Flush(&knftables.Chain{Name: chainClassify})
			_ = nft.Run(ctx, tx)
		}, "chain classify has 0 rules, want 7"},
		{"rule added", func() {
			tx := nft.NewTransaction()
			tx.Insert(&knftables.Rule{Chain: chainClassify, Rule: "accept"})
			_ = nft.Run(ctx, tx)
		}, "chain classify has 8 rules, want 7"},
		{"iptables jump deleted", func() {
			_ = ipt.Run(ctx, true, "-w", "-t", "mangle", "-D", "FORWARD", "-j", XTChain)
		}, `ip6tables -t mangle rule "FORWARD -j TOLLGATE" is missing`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.damage()
			err := d.Check(ctx)
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want ErrDamaged saying %q", err, tc.want)
			}
			if err := d.Setup(ctx); err != nil {
				t.Fatal(err)
			}
			if err := d.Check(ctx); err != nil {
				t.Errorf("Check after Setup repaired it: %v", err)
			}
		})
	}
}
