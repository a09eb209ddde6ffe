package engine

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseDomainPattern(t *testing.T) {
	for _, tc := range []struct {
		in       string
		want     string
		wildcard bool
		ok       bool
	}{
		{"kubernetes.io", "kubernetes.io", false, true},
		{"Blog.Kubernetes.IO.", "blog.kubernetes.io", false, true},
		{"*.kubernetes.io", "kubernetes.io", true, true},
		{"*.Example.COM.", "example.com", true, true},
		{"under_score.example.com", "under_score.example.com", false, true},
		{"io", "", false, false},  // one label
		{"*.io", "", true, false}, // one label after the wildcard
		{"*example.com", "", false, false},
		{"www.*.example.com", "", false, false},
		{"*", "", false, false},
		{"a..b", "", false, false},
		{"-a.b", "", false, false},
		{"a-.b", "", false, false},
		{"a b.c", "", false, false},
		{"", "", false, false},
		{strings.Repeat("a", 64) + ".com", "", false, false},
	} {
		p, ok := parseDomainPattern(tc.in)
		if ok != tc.ok || (ok && (p.name != tc.want || p.wildcard != tc.wildcard)) {
			t.Errorf("parseDomainPattern(%q) = %+v, %v; want %q wildcard=%v ok=%v", tc.in, p, ok, tc.want, tc.wildcard, tc.ok)
		}
	}
}

func TestDomainPatternMatches(t *testing.T) {
	// The API's own examples.
	for _, tc := range []struct {
		pattern string
		name    string
		want    bool
	}{
		{"kubernetes.io", "kubernetes.io", true},
		{"kubernetes.io", "www.kubernetes.io", false},
		{"kubernetes.io", "my-kubernetes.io", false},
		{"kubernetes.io", "wikipedia.org", false},
		{"blog.kubernetes.io", "blog.kubernetes.io", true},
		{"blog.kubernetes.io", "www.kubernetes.io", false},
		{"blog.kubernetes.io", "kubernetes.io", false},
		{"*.kubernetes.io", "www.kubernetes.io", true},
		{"*.kubernetes.io", "blog.kubernetes.io", true},
		{"*.kubernetes.io", "latest.blog.kubernetes.io", true},
		{"*.kubernetes.io", "kubernetes.io", false},
		{"*.kubernetes.io", "wikipedia.org", false},
		{"*.kubernetes.io", "xkubernetes.io", false},
		{"KUBERNETES.io.", "kubernetes.io", true},
	} {
		p, ok := parseDomainPattern(tc.pattern)
		if !ok {
			t.Fatalf("pattern %q refused", tc.pattern)
		}
		if got := p.matches(NormalizeDomain(tc.name)); got != tc.want {
			t.Errorf("%q matches %q = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

// FuzzDomainMatch compares the matcher with the definition read label by
// label: an exact pattern matches the same labels, a wildcard one matches
// one or more whole labels followed by the pattern's labels.
func FuzzDomainMatch(f *testing.F) {
	f.Add("*.example.com", "a.b.example.com")
	f.Add("example.com", "EXAMPLE.com.")
	f.Add("*.b.c", "b.c")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		p, ok := parseDomainPattern(pattern)
		if !ok {
			return
		}
		n := NormalizeDomain(name)
		got := p.matches(n)
		pl := strings.Split(p.name, ".")
		nl := strings.Split(n, ".")
		want := false
		switch {
		case !p.wildcard:
			want = n == p.name
		case len(nl) > len(pl):
			want = strings.Join(nl[len(nl)-len(pl):], ".") == p.name
			for _, l := range nl[:len(nl)-len(pl)] {
				if l == "" {
					want = false
				}
			}
		}
		if got != want {
			t.Errorf("%q (%+v) matches %q = %v, want %v", pattern, p, name, got, want)
		}
	})
}

// resolvedMap is a Resolved for tests: local pods and what they resolved.
type resolvedMap struct {
	local map[netip.Addr]bool
	names map[[2]netip.Addr][]string
}

func (r resolvedMap) Local(pod netip.Addr) bool           { return r.local[pod] }
func (r resolvedMap) Names(pod, addr netip.Addr) []string { return r.names[[2]netip.Addr{pod, addr}] }

func TestDomainNamesPeers(t *testing.T) {
	in := withPolicies(t, testCluster(), cnpAPI+`kind: ClusterNetworkPolicy
metadata: {name: dns-allowlist}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {name: allowed, action: Accept, to: [{domainNames: ["*.allowed.test", "exact.test"]}]}
  - {name: rest, action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}]}
---
`+anpAPI+`kind: AdminNetworkPolicy
metadata: {name: anp-dns}
spec:
  priority: 20
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  egress:
  - {action: Allow, to: [{domainNames: ["api.example.test"]}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}`)
	snap := Compile(in)
	xa, xb, ya := podIP("x", "a", false), podIP("x", "b", false), podIP("y", "a", false)
	web, other, yb := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6"), podIP("y", "b", false)
	dns := resolvedMap{
		local: map[netip.Addr]bool{xa: true, ya: true},
		names: map[[2]netip.Addr][]string{
			{xa, web}:   {"www.allowed.test"},
			{xa, other}: {"www.denied.test"},
			{xa, yb}:    {"exact.test"}, // a name that resolves to a pod
			{ya, web}:   {"api.example.test"},
		},
	}
	for _, tc := range []struct {
		src, dst netip.Addr
		dns      Resolved
		allow    bool
		domain   string
	}{
		{xa, web, dns, true, "www.allowed.test"},
		{xa, other, dns, false, ""},
		{xa, yb, dns, true, "exact.test"},
		{xa, web, nil, false, ""},                // nothing learned: no match
		{xb, web, dns, true, RemoteDomain},       // x/b's answers are learned on its own node
		{ya, web, dns, true, "api.example.test"}, // the ANP
		{ya, other, dns, false, ""},
	} {
		d := snap.Decide(Tuple{Src: tc.src, Dst: tc.dst, Proto: ProtocolTCP, DstPort: 443, DNS: tc.dns})
		if d.Allowed != tc.allow || d.Egress.Domain != tc.domain {
			t.Errorf("%s -> %s: allowed=%v domain=%q, want %v %q (egress %+v)", tc.src, tc.dst, d.Allowed, d.Egress.Domain, tc.allow, tc.domain, d.Egress)
		}
	}
	if got := snap.DomainPodIPs(""); len(got) != 12 { // x/a..c and y/a..c, IPv4 and IPv6
		t.Errorf("DomainPodIPs = %v, want the 6 pods of x and y", got)
	}
	// Decide stays free of allocations with DNS answers too.
	tup := Tuple{Src: xa, Dst: web, Proto: ProtocolTCP, DstPort: 443, DNS: dns}
	if n := testing.AllocsPerRun(100, func() { snap.Decide(tup) }); n != 0 {
		t.Errorf("Decide with a domainNames peer allocates %v times", n)
	}
}

// TestDomainNamesOnlyInEgressAllow: the API allows domainNames only in
// Accept/Allow egress rules; elsewhere the rule fails closed, with a
// warning, as for any peer the engine cannot use.
func TestDomainNamesOnlyInEgressAllow(t *testing.T) {
	in := withPolicies(t, testCluster(), anpAPI+`kind: AdminNetworkPolicy
metadata: {name: deny-by-name}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {action: Deny, to: [{domainNames: ["bad.test"]}]}
---
`+cnpAPI+`kind: ClusterNetworkPolicy
metadata: {name: bad-pattern}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  egress:
  - {action: Accept, to: [{domainNames: ["www.*.test"]}]}`)
	snap := Compile(in)
	var warned int
	for _, w := range snap.Warnings() {
		if strings.Contains(w, "domain") {
			warned++
		}
	}
	if warned < 2 {
		t.Errorf("warnings %q, want one for the Deny rule and one for the bad pattern", snap.Warnings())
	}
	checkProbes(t, snap, []probe{
		{"x/a -> 203.0.113.5:443/TCP", false}, // the Deny with a domain peer denies all
		{"y/a -> 203.0.113.5:443/TCP", true},  // the Accept with a bad pattern matches nothing; default allow
	})
}
