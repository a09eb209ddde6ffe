package engine

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// Policies the apiserver accepts but that are odd: verdicts stay correct and
// deterministic, and the snapshot does not blow up.
func TestOddPolicies(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		probes   []probe
	}{{
		name: "except wider than the cidr excludes everything",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.0.0/16]}}]}]`,
		probes: []probe{{"y/a -> x/a:80/TCP", false}, {"z/a -> x/a:80/TCP", false}},
	}, {
		name: "except equal to the cidr, and nested excepts",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.0/24]}}]
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.3.0/24, 10.0.3.1/32, 10.0.3.0/25]}}]`,
		probes: []probe{{"y/a -> x/a:80/TCP", true}, {"z/a -> x/a:80/TCP", false}, {"x/b -> x/a:80/TCP", true}},
	}, {
		name: "the whole port range",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 1, endPort: 65535, protocol: UDP}]}]`,
		probes: []probe{{"y/a -> x/a:65535/UDP", true}, {"y/a -> x/a:1/UDP", true}, {"y/a -> x/a:80/TCP", false}},
	}, {
		name: "empty selectors everywhere",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]
  egress: [{to: [{namespaceSelector: {}}]}]`,
		probes: []probe{{"y/a -> x/a:80/TCP", true}, {"1.2.3.4 -> x/a:80/TCP", false}, {"x/a -> 1.2.3.4:80/TCP", false}, {"x/a -> z/c:80/TCP", true}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkProbes(t, Compile(withPolicies(t, testCluster(), tc.policies)), tc.probes)
		})
	}
}

// bigPolicy is one NetworkPolicy with rules rules of peers peers each; only
// the last peer of the last rule lets z/c in.
func bigPolicy(rules, peers int) string {
	var b strings.Builder
	b.WriteString("kind: NetworkPolicy\nmetadata: {name: big, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n")
	for r := range rules {
		b.WriteString("  - from:\n")
		for p := range peers {
			if r == rules-1 && p == peers-1 {
				b.WriteString("    - {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}\n")
				continue
			}
			fmt.Fprintf(&b, "    - {namespaceSelector: {matchLabels: {ns: ns-%d}}, podSelector: {matchLabels: {app: a-%d}}}\n", r, p)
		}
	}
	return b.String()
}

func TestHundredRulesTimesHundredPeers(t *testing.T) {
	heap := func(rules, peers int) uint64 {
		in := withPolicies(t, testCluster(), bigPolicy(rules, peers))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		snap := Compile(in)
		runtime.ReadMemStats(&after)
		checkProbes(t, snap, []probe{{"z/c -> x/a:80/TCP", true}, {"z/b -> x/a:80/TCP", false}, {"y/c -> x/a:80/TCP", false}})
		runtime.KeepAlive(snap)
		runtime.KeepAlive(in)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, big := heap(10, 10), heap(100, 100)
	t.Logf("bytes allocated by Compile: 10x10 rules/peers %d B, 100x100 %d B", small, big)
	// 100 times the peers: linear growth is ~100x; allow 200x for map
	// growth, far below anything quadratic.
	if big > 200*small {
		t.Errorf("snapshot grows too fast: 10x10 %d B, 100x100 %d B", small, big)
	}
}

func TestEqualPrioritiesAreDeterministic(t *testing.T) {
	docs := ""
	for i := range 6 {
		action := []string{"Allow", "Deny"}[i%2]
		docs += fmt.Sprintf("%skind: AdminNetworkPolicy\nmetadata: {name: p-%d}\nspec:\n  priority: 5\n  subject: {namespaces: {}}\n  ingress: [{action: %s, from: [{namespaces: {}}]}]\n---\n", anpAPI, (i*7)%6, action)
	}
	in := withPolicies(t, testCluster(), docs)
	want := Compile(in).Decide(parseProbe(t, "x/a -> y/b:80/TCP"))
	for i := range len(in.AdminNetworkPolicies) {
		in.AdminNetworkPolicies = append(in.AdminNetworkPolicies[1:], in.AdminNetworkPolicies[0])
		if got := Compile(in).Decide(parseProbe(t, "x/a -> y/b:80/TCP")); got != want {
			t.Fatalf("rotation %d: %+v, want %+v", i, got, want)
		}
	}
	if want.Ingress.Policy.Name != "p-0" {
		t.Errorf("equal priorities decided by %s, want p-0 (the first by name)", want.Ingress.Policy.Name)
	}
}
