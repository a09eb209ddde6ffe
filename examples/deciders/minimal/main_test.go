package main

import (
	"net/netip"
	"strings"
	"testing"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

const testPolicy = `{"pods": [
  {"name": "x/a", "node": "n1", "ips": ["10.0.0.1", "fd00::1"]},
  {"name": "y/b", "node": "n1", "ips": ["10.0.0.2"], "allowFrom": ["10.0.0.1/32"], "ports": [80, 443]},
  {"name": "z/c", "node": "n2", "ips": ["10.0.0.3"], "allowFrom": ["10.0.0.0/24"]}
]}`

func TestDecide(t *testing.T) {
	p, err := parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	tcp, icmp := tollgatev1.Protocol_PROTOCOL_TCP, tollgatev1.Protocol_PROTOCOL_ICMP
	for _, tc := range []struct {
		src, dst string
		proto    tollgatev1.Protocol
		port     uint32
		via      bool
		allow    bool
		exps     int
	}{
		{"10.0.0.1", "10.0.0.2", tcp, 80, false, true, 2},
		{"10.0.0.1", "10.0.0.2", tcp, 443, false, true, 2},
		{"10.0.0.1", "10.0.0.2", tcp, 81, false, false, 2},
		{"10.0.0.1", "10.0.0.2", icmp, 0, false, false, 2}, // ports listed: ICMP has none
		{"10.0.0.3", "10.0.0.2", tcp, 80, false, false, 2},
		{"10.0.0.2", "10.0.0.3", icmp, 0, false, true, 2}, // no ports: ICMP too
		{"192.0.2.1", "10.0.0.3", tcp, 80, false, false, 1},
		{"10.0.0.2", "192.0.2.1", tcp, 80, false, true, 1}, // egress is never restricted
		{"10.0.0.2", "10.0.0.2", tcp, 80, false, true, 0},  // itself, directly
		{"10.0.0.2", "10.0.0.2", tcp, 80, true, false, 2},  // itself, through a service
		{"192.0.2.1", "192.0.2.2", tcp, 80, false, true, 0},
	} {
		c := conn{netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst), tc.proto, tc.port, tc.via}
		allow, exps := p.decide(c)
		if allow != tc.allow || len(exps) != tc.exps {
			t.Errorf("%+v: allow %v with %d explanations, want %v with %d", tc, allow, len(exps), tc.allow, tc.exps)
		}
	}
}

func TestValidate(t *testing.T) {
	a4, b4, a6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::1")
	tcp := tollgatev1.Protocol_PROTOCOL_TCP
	for _, tc := range []struct {
		c          conn
		okS, okD   bool
		srcPort    uint32
		wantPrefix string
	}{
		{conn{a4, b4, tcp, 80, false}, false, true, 0, "src_ip"},
		{conn{a4, b4, tcp, 80, false}, true, false, 0, "dst_ip"},
		{conn{a4, a6, tcp, 80, false}, true, true, 0, "dst_ip"},
		{conn{a4, b4, tcp, 80, false}, true, true, 70000, "src_port"},
		{conn{a4, b4, tcp, 65536, false}, true, true, 0, "dst_port"},
		{conn{a4, b4, 0, 80, false}, true, true, 0, "protocol"},
		{conn{a4, b4, 99, 80, false}, true, true, 0, "protocol"},
	} {
		_, err := validate(tc.c, tc.okS, tc.okD, "src_ip", "dst_ip", tc.srcPort)
		if err == nil || !strings.HasPrefix(err.Error(), tc.wantPrefix) {
			t.Errorf("%+v: %v, want an error about %s", tc, err, tc.wantPrefix)
		}
	}
	mapped := netip.MustParseAddr("::ffff:10.0.0.1")
	if c, err := validate(conn{mapped, b4, tcp, 80, false}, true, true, "src_ip", "dst_ip", 0); err != nil || c.src != a4 {
		t.Errorf("an IPv4-mapped source: %v %v, want it as IPv4", c.src, err)
	}
}

func TestParseRejects(t *testing.T) {
	for _, bad := range []string{
		`{"pods": [{"name": "a", "ips": ["10.0.0.1"]}, {"name": "b", "ips": ["10.0.0.1"]}]}`,
		`{"pods": [{"name": "", "ips": ["10.0.0.1"]}]}`,
		`{"pods": [{"name": "a", "ips": []}]}`,
		`{"pods": [{"name": "a", "ips": ["10.0.0"]}]}`,
		`{"pods": [{"name": "a", "ips": ["10.0.0.1"], "allowFrom": ["10.0.0.1/33"]}]}`,
		`{"pods": [{"name": "a", "ips": ["10.0.0.1"], "colour": "red"}]}`,
	} {
		if _, err := parse([]byte(bad)); err == nil {
			t.Errorf("%s: parsed", bad)
		}
	}
}
