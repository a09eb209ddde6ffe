package dataplane

import (
	"os"
	"testing"
	"time"
)

// TestParseShape reads `nft --terse --json list ruleset inet` as nft 1.0.6
// wrote it for two tables with chains and sets of the same names: only the
// asked-for table's objects count, and no table means no shape.
func TestParseShape(t *testing.T) {
	b, err := os.ReadFile("testdata/ruleset-inet.json")
	if err != nil {
		t.Fatal(err)
	}
	s, err := parseShape(b, "tollgate")
	if err != nil {
		t.Fatal(err)
	}
	if s == nil {
		t.Fatal("no shape for a table in the listing")
	}
	if got, want := s.chains["forward"], (chainShape{hook: "forward", prio: -160, rules: 1}); got != want || len(s.chains) != 1 {
		t.Errorf("chains = %+v, want only forward: %+v", s.chains, want)
	}
	want := setShape{typ: "ipv4_addr . ipv4_addr . inet_proto . inet_service", timeout: time.Minute, size: 65536}
	if got := s.sets["allow4"]; got != want || len(s.sets) != 1 {
		t.Errorf("sets = %+v, want only allow4: %+v", s.sets, want)
	}
	if s, err := parseShape(b, "absent"); err != nil || s != nil {
		t.Errorf("table not listed: shape %+v, error %v; want none", s, err)
	}
	if _, err := parseShape([]byte("{"), "tollgate"); err == nil {
		t.Error("a malformed listing parsed")
	}
}
