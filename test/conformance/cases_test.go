package conformance

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
	pm "github.com/tollgate/tollgate/test/policymodel"
)

// step applies manifests (kubectl apply) or deletes them, then expects a
// truth table.
type step struct {
	apply, remove string
	targets       []target
	expect        expectation
	// publishWithin bounds the wait for every decider to publish the
	// change; 0 means 10 s.
	publishWithin time.Duration
}

// apply runs one step: change the policies, wait for every decider to move
// to a new generation, then probe until the observed table matches or 10 s
// pass. It returns how long enforcement took after kubectl returned.
func (e *env) runStep(t *testing.T, s step) {
	t.Helper()
	publishWithin := cmp.Or(s.publishWithin, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), publishWithin+10*time.Second)
	defer cancel()
	before, err := e.generations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pm.Change(e.cluster, s.apply, s.remove); err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	if s.apply != "" || s.remove != "" {
		if err := waitFor(publishWithin, func() bool {
			now, err := e.generations(ctx)
			if err != nil {
				return false
			}
			for i := range now {
				if now[i] <= before[i] {
					return false
				}
			}
			return true
		}); err != nil {
			t.Fatalf("deciders did not publish a new generation: %v", err)
		}
	}
	// Probing gets 10 s from when every decider has published, however long
	// that took.
	published := time.Now()
	var wrong []cell
	var observed map[cell]bool
	for attempt := 0; ; attempt++ {
		observed = e.probeAll(s.targets)
		wrong = wrong[:0]
		for c, ok := range observed {
			want := pm.Want(c, s.expect)
			if ok != want {
				wrong = append(wrong, c)
			}
		}
		if len(wrong) == 0 {
			t.Logf("enforced %v after kubectl returned (%d probes, %d attempts)", time.Since(applied).Round(time.Millisecond), len(observed), attempt+1)
			limit := 10 * time.Second
			if s.publishWithin > 0 {
				limit += s.publishWithin
			}
			if time.Since(applied) > limit {
				t.Errorf("enforcement took %v, more than %v", time.Since(applied), limit)
			}
			return
		}
		if time.Since(published) > 10*time.Second {
			break
		}
	}
	for _, tg := range s.targets {
		t.Errorf("truth table mismatch on %s (rows from, columns to; expected/observed, '.' allowed 'X' denied):\n%s", tg, pm.Table(observed, s.expect, tg))
	}
	sort.Slice(wrong, func(i, j int) bool { return fmt.Sprint(wrong[i]) < fmt.Sprint(wrong[j]) })
	for _, c := range wrong {
		t.Errorf("%s -> %s %s: observed %v; decider says %s", c.From, c.To, c.T, observed[c], e.explain(c.From, c.To, c.T.Proto, c.T.Port, c.T.V6))
	}
}

type tcase struct {
	name  string
	steps []step
}

// run executes the steps of a case and removes whatever it applied.
func (e *env) run(t *testing.T, c tcase) {
	var applied []string
	t.Cleanup(func() { _ = pm.Undo(e.cluster, applied) })
	for _, s := range c.steps {
		if s.apply != "" {
			applied = append(applied, s.apply)
		}
		e.runStep(t, s)
	}
}

// ipOf is a pod's IPv4 address as a /32 CIDR, for ipBlock cases.
func ipOf(pod string) string { return sys.pods[pod].IPv4.String() + "/32" }

func TestNetworkPolicy(t *testing.T) {
	cases := []tcase{
		{"no policy allows everything", []step{{targets: []target{tcp80, udp80}, expect: allowAll}}},
		{"default deny ingress", []step{{apply: np("x", "deny", `podSelector: {}
policyTypes: [Ingress]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "x" }}}},
		{"default deny egress", []step{{apply: np("x", "deny", `podSelector: {}
policyTypes: [Egress]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(f) != "x" }}}},
		{"default deny all", []step{{apply: np("x", "deny", `podSelector: {}
policyTypes: [Ingress, Egress]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(f) != "x" && ns(to) != "x" }}}},
		{"allow all ingress", []step{{apply: np("x", "allow", `podSelector: {}
ingress: [{}]`), targets: []target{tcp80}, expect: allowAll}}},
		{"deny all and allow all are a union", []step{{apply: np("x", "deny", `podSelector: {}`) + np("x", "allow", `podSelector: {}
ingress: [{}]`), targets: []target{tcp80}, expect: allowAll}}},
		{"ingress from pod selector in the same namespace", []step{{apply: np("x", "from-b", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || f == "x/b" }}}},
		{"ingress from a namespace", []step{{apply: np("x", "from-y", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || ns(f) == "y" }}}},
		{"namespace AND pod selector in one peer", []step{{apply: np("x", "and", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: c}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || f == "y/c" }}}},
		{"namespace OR pod selector as two peers", []step{{apply: np("x", "or", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}, {podSelector: {matchLabels: {pod: c}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || ns(f) == "y" || f == "x/c" }}}},
		{"namespace selector NotIn", []step{{apply: np("x", "notin", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: ["y"]}]}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || ns(f) != "y" }}}},
		{"pod selector In across all namespaces", []step{{apply: np("x", "in", `podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool {
			return ns(to) != "x" || name(to) == "c" || name(f) != "a"
		}}}},
		{"pod selector Exists and DoesNotExist", []step{{apply: np("x", "exists", `podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}, podSelector: {matchExpressions: [{key: missing, operator: DoesNotExist}]}}]}]`), targets: []target{tcp80}, expect: allowAll}}},
		{"ingress on port 81 only", []step{{apply: np("x", "p81", `podSelector: {matchLabels: {pod: a}}
ingress: [{ports: [{port: 81}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return to != "x/a" || t.Port == 81 }}}},
		{"named port", []step{{apply: np("x", "named", `podSelector: {matchLabels: {pod: a}}
ingress: [{ports: [{port: serve-81-tcp}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return to != "x/a" || t.Port == 81 }}}},
		{"endPort range", []step{{apply: np("x", "range", `podSelector: {matchLabels: {pod: a}}
ingress: [{ports: [{port: 75, endPort: 80, protocol: TCP}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return to != "x/a" || t.Port == 80 }}}},
		{"UDP only", []step{{apply: np("x", "udp", `podSelector: {matchLabels: {pod: a}}
ingress: [{ports: [{port: 80, protocol: UDP}]}]`), targets: []target{tcp80, udp80}, expect: func(f, to string, t target) bool { return to != "x/a" || t.Proto == netsim.UDP }}}},
		{"SCTP only", []step{{apply: np("x", "sctp", `podSelector: {matchLabels: {pod: a}}
ingress: [{ports: [{port: 80, protocol: SCTP}]}]`), targets: []target{tcp80, sctp80}, expect: func(f, to string, t target) bool { return to != "x/a" || t.Proto == netsim.SCTP }}}},
		{"multiple ports and protocols", []step{{apply: np("x", "multi", `podSelector: {matchLabels: {pod: a}}
ingress: [{ports: [{port: 81, protocol: TCP}, {port: 80, protocol: UDP}]}]`), targets: []target{tcp80, tcp81, udp80}, expect: func(f, to string, t target) bool { return to != "x/a" || t != tcp80 }}}},
		{"ipBlock of one pod", []step{{apply: np("x", "ipblock", fmt.Sprintf(`podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{ipBlock: {cidr: %s}}]}]`, ipOf("y/b"))), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || f == "y/b" }}}},
		{"ipBlock with except", []step{{apply: np("x", "except", fmt.Sprintf(`podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{ipBlock: {cidr: 10.210.0.0/16, except: [%s]}}]}]`, ipOf("y/b"))), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || f != "y/b" }}}},
		{"ipBlock except re-allowed by a second policy", []step{{apply: np("x", "except", fmt.Sprintf(`podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{ipBlock: {cidr: 10.210.0.0/16, except: [%s, %s]}}]}]`, ipOf("y/b"), ipOf("z/b"))) + np("x", "readd", fmt.Sprintf(`podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{ipBlock: {cidr: %s}}]}]`, ipOf("y/b"))), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || f != "z/b" }}}},
		{"egress to a namespace", []step{{apply: np("x", "egress-y", `podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return f != "x/a" || ns(to) == "y" }}}},
		{"egress to one pod in another namespace", []step{{apply: np("x", "egress-zc", `podSelector: {}
policyTypes: [Egress]
egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(f) != "x" || to == "z/c" }}}},
		{"egress ipBlock", []step{{apply: np("x", "egress-ip", fmt.Sprintf(`podSelector: {matchLabels: {pod: b}}
policyTypes: [Egress]
egress: [{to: [{ipBlock: {cidr: %s}}]}]`, ipOf("z/a"))), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return f != "x/b" || to == "z/a" }}}},
		{"egress named port resolves on the destination", []step{{apply: np("x", "egress-named", `podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{ports: [{port: serve-81-tcp}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return f != "x/a" || t.Port == 81 }}}},
		{"egress deny all then allow port 80", []step{{apply: np("x", "deny", `podSelector: {}
policyTypes: [Egress]`) + np("x", "allow-80", `podSelector: {}
policyTypes: [Egress]
egress: [{ports: [{port: 80}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return ns(f) != "x" || t.Port == 80 }}}},
		{"egress denied though ingress allows", []step{{apply: np("x", "deny-egress", `podSelector: {}
policyTypes: [Egress]`) + np("y", "allow-x", `podSelector: {}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool {
			return ns(f) != "x" && (ns(to) != "y" || ns(f) == "x")
		}}}},
		{"default deny ingress over IPv6", []step{{apply: np("y", "deny", `podSelector: {}`), targets: []target{tcp80v6}, expect: func(f, to string, _ target) bool { return ns(to) != "y" }}}},
		{"policy updated between probes", []step{
			{apply: np("x", "from", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || ns(f) == "y" }},
			{apply: np("x", "from", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || ns(f) == "z" }},
		}},
		{"policy deleted", []step{
			{apply: np("z", "deny", `podSelector: {}`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "z" }},
			{remove: np("z", "deny", `podSelector: {}`), targets: []target{tcp80}, expect: allowAll},
		}},
		{"pod selector selects several pods, from one namespace", []step{{apply: np("x", "ab-from-z", `podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "x" || name(to) == "c" || ns(f) == "z" }}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { sys.run(t, c) })
	}
}

func TestAdminNetworkPolicy(t *testing.T) {
	cases := []tcase{
		{"ANP deny overrides a NetworkPolicy allow", []step{{apply: np("x", "allow-all", `podSelector: {}
ingress: [{}]`) + anp("deny-z", `priority: 10
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{name: deny-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return !(ns(to) == "x" && ns(f) == "z") }}}},
		{"lower priority number wins", []step{{apply: anp("deny-z", `priority: 20
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]`) + anp("allow-za", `priority: 5
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return !(ns(to) == "x" && ns(f) == "z" && f != "z/a") }}}},
		{"rules apply in order", []step{{apply: anp("order", `priority: 3
subject: {pods: {namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: b}}}}
ingress:
- {name: allow-81, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 81}}]}
- {name: deny-rest, action: Deny, from: [{namespaces: {}}]}`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return to != "y/b" || t.Port == 81 }}}},
		{"Pass hands over to NetworkPolicy", []step{{apply: anp("pass-z", `priority: 3
subject: {namespaces: {matchLabels: {ns: x}}}
ingress:
- {action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}
- {action: Deny, from: [{namespaces: {}}]}`) + np("x", "from-zb", `podSelector: {}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool {
			return ns(to) != "x" || f == "z/b"
		}}}},
		{"Pass with no NetworkPolicy goes to the baseline", []step{{apply: anp("pass-z", `priority: 3
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}]`) + banp(`subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{name: deny-z-y, action: Deny, from: [{namespaces: {matchExpressions: [{key: ns, operator: In, values: [z, "y"]}]}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool {
			return ns(to) != "x" || ns(f) == "x"
		}}}},
		{"baseline yields to NetworkPolicy", []step{{apply: banp(`subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {}}]}]`) + np("x", "allow-a", `podSelector: {matchLabels: {pod: a}}
ingress: [{}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "x" || to == "x/a" }}}},
		{"named port", []step{{apply: anp("named", `priority: 3
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{namedPort: serve-81-tcp}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool { return ns(to) != "x" || t.Port == 80 }}}},
		{"networks 0.0.0.0/0 catches pod traffic", []step{{apply: anp("world", `priority: 3
subject: {namespaces: {matchLabels: {ns: x}}}
egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(f) != "x" }}}},
		{"networks ::/0 over IPv6", []step{{apply: anp("world6", `priority: 3
subject: {namespaces: {matchLabels: {ns: z}}}
egress: [{action: Deny, to: [{networks: ["::/0"]}]}]`), targets: []target{tcp80v6, tcp80}, expect: func(f, to string, t target) bool { return ns(f) != "z" || !t.V6 }}}},
		{"priority patched between probes", []step{
			{apply: anp("a", `priority: 10
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: "y"}}}]}]`) + anp("b", `priority: 20
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Allow, from: [{namespaces: {matchLabels: {ns: "y"}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return !(ns(to) == "x" && ns(f) == "y") }},
			{apply: anp("b", `priority: 5
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Allow, from: [{namespaces: {matchLabels: {ns: "y"}}}]}]`), targets: []target{tcp80}, expect: allowAll},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { sys.run(t, c) })
	}
}

func TestClusterNetworkPolicy(t *testing.T) {
	cases := []tcase{
		{"admin tier deny with protocols", []step{{apply: cnp("deny-z", `tier: Admin
priority: 10
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}]`), targets: []target{tcp80, tcp81}, expect: func(f, to string, t target) bool {
			return !(ns(to) == "x" && ns(f) == "z" && t.Port == 80)
		}}}},
		{"admin Accept beats a NetworkPolicy deny", []step{{apply: np("x", "deny", `podSelector: {}`) + cnp("accept-y", `tier: Admin
priority: 1
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: "y"}}}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return ns(to) != "x" || ns(f) == "y" }}}},
		{"Pass to the baseline tier", []step{{apply: cnp("pass", `tier: Admin
priority: 1
subject: {namespaces: {matchLabels: {ns: "y"}}}
ingress: [{action: Pass, from: [{namespaces: {}}]}]`) + cnp("baseline", `tier: Baseline
priority: 1
subject: {namespaces: {matchLabels: {ns: "y"}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{destinationNamedPort: serve-80-udp}]}]`), targets: []target{udp80, tcp80}, expect: func(f, to string, t target) bool {
			return !(ns(to) == "y" && ns(f) == "z" && t.Proto == netsim.UDP)
		}}}},
		{"egress networks", []step{{apply: cnp("egress-nets", `tier: Admin
priority: 2
subject: {pods: {namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: a}}}}
egress: [{action: Deny, to: [{networks: ["10.210.2.0/24"]}]}]`), targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return f != "y/a" || name(to) != "c" }}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { sys.run(t, c) })
	}
}

// TestServiceDNAT probes through a ClusterIP that each node DNATs to x/a, as
// kube-proxy would: policy applies to the backend pod after translation.
func TestServiceDNAT(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	for _, n := range sys.nodes {
		if err := sys.topo.AddDNAT(n, netsim.TCP, vip, 80, sys.pods["x/a"].IPv4, 80); err != nil {
			t.Fatal(err)
		}
	}
	policy := np("x", "from-y", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`)
	sys.run(t, tcase{steps: []step{{apply: policy, targets: []target{tcp80}, expect: func(f, to string, _ target) bool { return to != "x/a" || ns(f) == "y" }}}})
	for _, from := range podKeys() {
		if from == "x/a" {
			continue
		}
		ok, err := netsim.Probe(sys.pods[from], vip, 80, netsim.TCP, 800*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if want := ns(from) == "y"; ok != want {
			t.Errorf("%s -> ClusterIP %s:80 (x/a): reachable=%v, want %v", from, vip, ok, want)
		}
	}
}

// TestNodesPeer denies egress from x to the nodes labelled node-index=2:
// pod-to-node traffic is judged by the nodes peer.
func TestNodesPeer(t *testing.T) {
	policy := anp("nodes", `priority: 4
subject: {namespaces: {matchLabels: {ns: x}}}
egress: [{action: Deny, to: [{nodes: {matchLabels: {node-index: "2"}}}]}]`)
	sys.run(t, tcase{steps: []step{{apply: policy, targets: []target{tcp80}, expect: allowAll}}})
	var wrong []string
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		wrong = wrong[:0]
		for _, from := range podKeys() {
			for _, node := range []string{"node-1", "node-2"} {
				ok, err := netsim.Probe(sys.pods[from], sys.nodes[node].IPv4, 80, netsim.TCP, 800*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				if want := !(ns(from) == "x" && node == "node-2"); ok != want {
					wrong = append(wrong, fmt.Sprintf("%s -> %s (%s):80: reachable=%v, want %v; decider: %s", from, node, sys.nodes[node].IPv4, ok, want,
						sys.explainAddr(from, sys.nodes[node].IPv4)))
				}
			}
		}
		if len(wrong) == 0 {
			t.Logf("nodes peer enforced after %v", time.Since(start).Round(time.Millisecond))
			return
		}
	}
	for _, w := range wrong {
		t.Error(w)
	}
}
