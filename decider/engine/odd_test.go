package engine

import (
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Policies the apiserver accepts but that are odd, beyond those of
// odd_policies_test.go: empty selectors in the cluster-scoped kinds,
// overlapping excepts in egress and IPv6, and the whole port range in ANP
// and CNP.
func TestOddPoliciesMore(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		probes   []probe
	}{{
		name: "ANP with empty selectors for subject and peers",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: everything}
spec:
  priority: 0
  subject: {pods: {namespaceSelector: {}, podSelector: {}}}
  egress: [{action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {}}}]}]`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", false}, {"z/c -> x/a:81/UDP", false}, {"x/a -> x/b/ICMP", false},
			{"x/a -> 1.2.3.4:80/TCP", true}, // pod peers do not match outside IPs
			{"1.2.3.4 -> x/a:80/TCP", true}, // and ingress is not governed
		},
	}, {
		name: "BANP with empty selectors loses to a NetworkPolicy allow",
		policies: anpAPI + `kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
kind: NetworkPolicy
metadata: {name: open, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]`,
		probes: []probe{
			{"y/a -> x/a:80/TCP", true}, {"x/a -> y/b:80/TCP", false}, {"z/a -> z/b:80/TCP", false},
			{"1.2.3.4 -> y/b:80/TCP", true},
		},
	}, {
		name: "CNP with empty selectors in both tiers",
		policies: cnpAPI + `kind: ClusterNetworkPolicy
metadata: {name: admin-pass}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  ingress: [{action: Pass, from: [{namespaces: {}}]}]
---
` + cnpAPI + `kind: ClusterNetworkPolicy
metadata: {name: baseline-deny}
spec:
  tier: Baseline
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {}}}
  ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {}}}]}]`,
		probes: []probe{{"x/a -> y/b:80/TCP", false}, {"y/b -> y/b:80/TCP", true}, {"192.168.0.1 -> y/b:80/TCP", true}},
	}, {
		name: "egress except wider than, equal to, and nested in the cidr",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.0.0/8]}}]
  - to: [{ipBlock: {cidr: 10.0.3.0/24, except: [10.0.3.0/24]}}]
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.0.1.0/28, 10.0.1.1/32]}}]`,
		probes: []probe{
			// 10.0.2.x and 10.0.3.x are allowed by the third rule only.
			{"x/a -> y/a:80/TCP", true}, {"x/a -> z/c:80/TCP", true},
			{"x/a -> x/b:80/TCP", false}, {"x/a -> x/c:80/TCP", false},
			{"x/a -> 10.1.0.1:80/TCP", false},
			{"x/b -> 10.1.0.1:80/TCP", true}, // not selected
		},
	}, {
		name: "IPv6 nested excepts and an except that covers everything",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: "fd00::/64", except: ["fd00::3:0/112", "fd00::3:3/128", "fd00::/16"]}}]
  - from: [{ipBlock: {cidr: "::/0", except: ["::/0"]}}]
  - from: [{ipBlock: {cidr: "fd00::/112", except: ["fd00::2:0/112"]}}]
  - from: [{ipBlock: {cidr: "0.0.0.0/0", except: ["0.0.0.0/0"]}}]`,
		probes: []probe{
			{"6:x/a -> y/b:80/TCP", false}, {"6:z/c -> y/b:80/TCP", false}, {"x/a -> y/b:80/TCP", false},
			{"fd00::2:5 -> y/b:80/TCP", false},
			{"fd00::5 -> y/b:80/TCP", true}, // the third rule: fd00::/112 holds fd00::5
		},
	}, {
		name: "IPv6 except that leaves a hole",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: "fd00::/64", except: ["fd00::3:0/112", "fd00::3:3/128"]}}]}]`,
		probes: []probe{
			{"6:x/a -> y/b:80/TCP", true}, {"6:z/c -> y/b:80/TCP", false}, {"6:z/a -> y/b:80/TCP", false},
			{"x/a -> y/b:80/TCP", false}, {"fd00::5 -> y/b:80/TCP", true}, {"fd01::5 -> y/b:80/TCP", false},
		},
	}, {
		name: "ANP and CNP over the whole port range",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: all-tcp}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portRange: {protocol: TCP, start: 1, end: 65535}}]}]
---
` + cnpAPI + `kind: ClusterNetworkPolicy
metadata: {name: all-udp}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {range: {start: 1, end: 65535}}}}]}]`,
		probes: []probe{
			{"z/a -> x/a:1/TCP", false}, {"z/a -> x/a:65535/TCP", false}, {"z/a -> x/a:80/UDP", true},
			{"z/a -> y/a:1/UDP", false}, {"z/a -> y/a:65535/UDP", false}, {"z/a -> y/a:80/TCP", true},
			{"z/a -> x/a/ICMP", true}, {"z/a -> y/a:80/SCTP", true},
		},
	}, {
		name: "NetworkPolicy with many overlapping huge ranges",
		policies: `
kind: NetworkPolicy
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 1, endPort: 65535}, {port: 2, endPort: 65534}, {port: 80, endPort: 65535}, {port: 65535}]
  - ports: [{port: 1, endPort: 65535, protocol: SCTP}]`,
		probes: []probe{
			{"x/a -> z/a:1/TCP", true}, {"x/a -> z/a:65535/TCP", true}, {"x/a -> z/a:80/UDP", false},
			{"x/a -> z/a:65535/SCTP", true}, {"x/a -> z/a/ICMP", false},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := withPolicies(t, testCluster(), tc.policies)
			snap := Compile(in)
			checkProbes(t, snap, tc.probes)
			if w := snap.Warnings(); len(w) > 0 {
				t.Errorf("warnings for policies the apiserver accepts: %q", w)
			}
		})
	}
}

// permutations calls fn with every ordering of n indices.
func permutations(n int, fn func([]int)) {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	var rec func(k int)
	rec = func(k int) {
		if k == n {
			fn(idx)
			return
		}
		for i := k; i < n; i++ {
			idx[k], idx[i] = idx[i], idx[k]
			rec(k + 1)
			idx[k], idx[i] = idx[i], idx[k]
		}
	}
	rec(0)
}

// TestEqualPrioritiesEveryOrder gives four ANPs and two admin-tier CNPs the
// same priority, with conflicting actions in both directions, and compiles
// every ordering of the input lists: every decision, explanation included,
// is the same, and among the ANPs the first by name decides.
func TestEqualPrioritiesEveryOrder(t *testing.T) {
	docs := []string{}
	for _, p := range []struct{ name, action string }{{"m-allow", "Allow"}, {"b-deny", "Deny"}, {"z-pass", "Pass"}, {"c-allow", "Allow"}} {
		docs = append(docs, fmt.Sprintf(anpAPI+`kind: AdminNetworkPolicy
metadata: {name: %s}
spec:
  priority: 7
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress: [{name: in, action: %s, from: [{namespaces: {}}]}]
  egress: [{name: out, action: %[2]s, to: [{networks: ["0.0.0.0/0"]}]}]`, p.name, p.action))
	}
	for _, p := range []struct{ name, action string }{{"cnp-accept", "Accept"}, {"a-cnp-deny", "Deny"}} {
		docs = append(docs, fmt.Sprintf(cnpAPI+`kind: ClusterNetworkPolicy
metadata: {name: %s}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {matchLabels: {ns: z}}}
  ingress: [{action: %s, from: [{namespaces: {}}]}]`, p.name, p.action))
	}
	base := withPolicies(t, testCluster(), strings.Join(docs, "\n---\n"))
	tuples := allTuples()

	first := Compile(base)
	want := make([]Decision, len(tuples))
	for i, tup := range tuples {
		want[i] = first.Decide(tup)
	}
	checkProbes(t, first, []probe{
		{"x/a -> y/b:80/TCP", false}, {"y/a -> x/a:80/TCP", false}, {"y/a -> 1.2.3.4:80/TCP", false},
		{"x/a -> z/b:80/TCP", false},
		{"x/a -> x/b:80/TCP", true},
	})
	if d := first.Decide(parseProbe(t, "x/a -> y/b:80/TCP")); d.Ingress.Policy.Name != "b-deny" {
		t.Errorf("equal ANP priorities decided by %q, want b-deny (first by name)", d.Ingress.Policy.Name)
	}

	orders := 0
	anps := base.AdminNetworkPolicies
	cnps := base.ClusterNetworkPolicies
	permutations(len(anps), func(ai []int) {
		permutations(len(cnps), func(ci []int) {
			orders++
			in := base
			in.AdminNetworkPolicies = make([]*v1alpha1.AdminNetworkPolicy, len(anps))
			for i, j := range ai {
				in.AdminNetworkPolicies[i] = anps[j]
			}
			in.ClusterNetworkPolicies = make([]*v1alpha2.ClusterNetworkPolicy, len(cnps))
			for i, j := range ci {
				in.ClusterNetworkPolicies[i] = cnps[j]
			}
			snap := Compile(in)
			for i, tup := range tuples {
				if got := snap.Decide(tup); got != want[i] {
					t.Fatalf("order %v %v, %+v: %+v, want %+v", ai, ci, tup, got, want[i])
				}
			}
		})
	})
	if orders != 48 {
		t.Fatalf("compiled %d orders, want 48", orders)
	}
}

// bigANP is one AdminNetworkPolicy for namespace x with rules rules of
// peers peers each. Only the last peer of the last two rules matches
// anything: rule rules-2 allows z/c, rule rules-1 denies namespace z.
func bigANP(rules, peers int) string {
	var b strings.Builder
	b.WriteString(anpAPI + "kind: AdminNetworkPolicy\nmetadata: {name: big}\nspec:\n  priority: 1\n  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress:\n")
	for r := range rules {
		action := "Deny"
		if r == rules-2 {
			action = "Allow"
		}
		fmt.Fprintf(&b, "  - name: r%d\n    action: %s\n    from:\n", r, action)
		for p := range peers {
			switch {
			case r == rules-2 && p == peers-1:
				b.WriteString("    - pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}\n")
			case r == rules-1 && p == peers-1:
				b.WriteString("    - namespaces: {matchLabels: {ns: z}}\n")
			default:
				fmt.Fprintf(&b, "    - pods: {namespaceSelector: {matchLabels: {ns: ns-%d}}, podSelector: {matchLabels: {app: a-%d}}}\n", r, p)
			}
		}
	}
	return b.String()
}

// bigIPBlocks is one NetworkPolicy in y with rules rules of peers ipBlock
// peers each, on distinct ports. Only the last peer of the last rule
// matches a pod: 10.0.0.0/16 except 10.0.3.0/24, on port 80.
func bigIPBlocks(rules, peers int) string {
	var b strings.Builder
	b.WriteString("kind: NetworkPolicy\nmetadata: {name: blocks, namespace: \"y\"}\nspec:\n  podSelector: {}\n  ingress:\n")
	for r := range rules {
		port := 1000 + r
		if r == rules-1 {
			port = 80
		}
		fmt.Fprintf(&b, "  - ports: [{port: %d}]\n    from:\n", port)
		for p := range peers {
			if r == rules-1 && p == peers-1 {
				b.WriteString("    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.3.0/24]}\n")
				continue
			}
			fmt.Fprintf(&b, "    - ipBlock: {cidr: 172.%d.%d.0/24, except: [172.%[1]d.%[2]d.128/25]}\n", 16+r%16, p)
		}
	}
	return b.String()
}

// TestHundredByHundredStaysLinear compiles 10x10 and 100x100 rules by
// peers, for ANP pod peers and NetworkPolicy ipBlock peers: the verdicts
// are right (rule order included), the snapshot counts the rules, and the
// allocations Compile makes for the policy grow at most about linearly with
// rules x peers (100 times the peers, allowed up to 300 times the
// allocations; a quadratic compile would be near 10000 times).
func TestHundredByHundredStaysLinear(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy func(rules, peers int) string
		probes []probe
	}{{
		name:   "ANP pod peers",
		policy: bigANP,
		probes: []probe{{"z/c -> x/a:80/TCP", true}, {"z/b -> x/a:80/TCP", false}, {"y/c -> x/a:80/TCP", true}, {"z/b -> y/a:80/TCP", true}},
	}, {
		name:   "NetworkPolicy ipBlock peers",
		policy: bigIPBlocks,
		probes: []probe{{"x/a -> y/b:80/TCP", true}, {"z/a -> y/b:80/TCP", false}, {"x/a -> y/b:81/TCP", false}, {"172.16.0.1 -> y/b:1000/TCP", true}, {"172.16.0.129 -> y/b:1000/TCP", false}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			plain := testCluster()
			baseline := testing.AllocsPerRun(2, func() { Compile(plain) })
			allocs := func(n int) float64 {
				in := withPolicies(t, testCluster(), tc.policy(n, n))
				var snap *Snapshot
				allocs := testing.AllocsPerRun(1, func() { snap = Compile(in) })
				checkProbes(t, snap, tc.probes)
				if got := snap.Stats().Rules; got != n {
					t.Errorf("%dx%d: snapshot counts %d rules, want %d", n, n, got, n)
				}
				return allocs - baseline
			}
			small, big := allocs(10), allocs(100)
			t.Logf("allocations for the policy: 10x10 %.0f, 100x100 %.0f (cluster alone %.0f)", small, big, baseline)
			if small <= 0 || big > 300*small {
				t.Errorf("compile does not scale linearly: 10x10 %.0f allocations, 100x100 %.0f", small, big)
			}
		})
	}
}
