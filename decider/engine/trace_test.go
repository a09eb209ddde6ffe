package engine

import (
	"slices"
	"testing"
)

// TestTraceAgreesWithDecide checks, over random policies and every test
// connection, that Trace and DecideIDs give Decide's decision, that the
// last step of each direction is its explanation, and that the ids name
// the explanation's policies.
func TestTraceAgreesWithDecide(t *testing.T) {
	tuples := allTuples()
	for seed := range uint64(60) {
		snap := Compile(genInput(seed))
		policies := snap.Policies()
		byID := func(id uint32) PolicyRef {
			if id == 0 {
				return PolicyRef{}
			}
			return policies[id-1].Ref
		}
		for _, tup := range tuples {
			d := snap.Decide(tup)
			tr := snap.Trace(tup)
			if tr.Decision != d {
				t.Fatalf("seed %d %+v: Trace decided %+v, Decide %+v", seed, tup, tr.Decision, d)
			}
			d2, ids := snap.DecideIDs(tup)
			if d2 != d {
				t.Fatalf("seed %d %+v: DecideIDs decided %+v, Decide %+v", seed, tup, d2, d)
			}
			for dir, c := range []struct {
				e     Explanation
				steps []Step
			}{{d.Egress, tr.Egress}, {d.Ingress, tr.Ingress}} {
				if byID(ids.Policy[dir]) != c.e.Policy || byID(ids.Pass[dir]) != c.e.PassPolicy {
					t.Fatalf("seed %d %+v %v: ids %v name %v and %v, explanation %v and %v", seed, tup, Direction(dir),
						ids, byID(ids.Policy[dir]), byID(ids.Pass[dir]), c.e.Policy, c.e.PassPolicy)
				}
				if id := ids.Policy[dir]; id != 0 && policies[id-1].Tier != c.e.Tier {
					t.Fatalf("seed %d %+v: policy %d has tier %v, explanation %v", seed, tup, id, policies[id-1].Tier, c.e.Tier)
				}
				if !c.e.Evaluated {
					if len(c.steps) != 0 {
						t.Fatalf("seed %d %+v: steps %+v for a direction not evaluated", seed, tup, c.steps)
					}
					continue
				}
				checkSteps(t, c.e, c.steps)
			}
		}
	}
}

// checkSteps checks that steps are in stage order, that only the last one
// decided and that it says what e says.
func checkSteps(t *testing.T, e Explanation, steps []Step) {
	t.Helper()
	if len(steps) == 0 {
		t.Fatalf("no steps for %+v", e)
	}
	for i, st := range steps {
		if i > 0 && st.Stage <= steps[i-1].Stage {
			t.Fatalf("stages out of order: %+v", steps)
		}
		if (st.Outcome == OutcomeDecided) != (i == len(steps)-1) {
			t.Fatalf("step %d of %+v: outcome %v", i, steps, st.Outcome)
		}
		if st.Outcome == OutcomePass && (!e.Passed || st.Action != ActionPass) {
			t.Fatalf("pass step %+v but explanation %+v", st, e)
		}
	}
	last := steps[len(steps)-1]
	if last.Tier != e.Tier || last.Policy != e.Policy || last.Rule != e.Rule || last.RuleName != e.RuleName || last.Action != e.Action {
		t.Fatalf("last step %+v does not say what %+v says", last, e)
	}
}

func TestTraceWalk(t *testing.T) {
	snap := Compile(withPolicies(t, testCluster(), anpAPI+`kind: AdminNetworkPolicy
metadata: {name: pass-x}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress: [{name: pass, action: Pass, from: [{namespaces: {matchLabels: {ns: x}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-b, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {}}]}]`))

	tr := snap.Trace(parseProbe(t, "x/a -> y/b:80/TCP"))
	if tr.Decision.Allowed {
		t.Fatalf("x/a -> y/b allowed: %+v", tr.Decision)
	}
	want := []Step{
		{Stage: StageAdmin, Policies: []PolicyRef{{Kind: KindAdminNetworkPolicy, Name: "pass-x"}}, Outcome: OutcomePass,
			Tier: TierAdminNetworkPolicy, Policy: PolicyRef{Kind: KindAdminNetworkPolicy, Name: "pass-x"}, Rule: 0, RuleName: "pass", Action: ActionPass},
		{Stage: StageNetworkPolicy, Policies: []PolicyRef{{Kind: KindNetworkPolicy, Namespace: "y", Name: "only-b"}}, Outcome: OutcomeDecided,
			Tier: TierNetworkPolicy, Policy: PolicyRef{Kind: KindNetworkPolicy, Namespace: "y", Name: "only-b"}, Rule: -1, Action: ActionDeny},
	}
	if !slices.EqualFunc(tr.Ingress, want, stepEqual) {
		t.Errorf("ingress steps\n got %+v\nwant %+v", tr.Ingress, want)
	}
	wantEgress := []Step{{Stage: StageAdmin, Rule: -1}, {Stage: StageNetworkPolicy, Rule: -1}, {Stage: StageBaseline, Rule: -1},
		{Stage: StageDefault, Outcome: OutcomeDecided, Tier: TierDefault, Rule: -1, Action: ActionAllow}}
	if !slices.EqualFunc(tr.Egress, wantEgress, stepEqual) {
		t.Errorf("egress steps\n got %+v\nwant %+v", tr.Egress, wantEgress)
	}

	if tr := snap.Trace(parseProbe(t, "x/a -> x/a:80/TCP")); !tr.Decision.SamePod || tr.Egress != nil || tr.Ingress != nil {
		t.Errorf("same pod: %+v", tr)
	}
}

func stepEqual(a, b Step) bool {
	return a.Stage == b.Stage && slices.Equal(a.Policies, b.Policies) && a.Outcome == b.Outcome && a.Tier == b.Tier &&
		a.Policy == b.Policy && a.Rule == b.Rule && a.RuleName == b.RuleName && a.Action == b.Action
}

func TestDecideIDsDoesNotAllocate(t *testing.T) {
	snap := Compile(withPolicies(t, testCluster(), anpAPI+`kind: AdminNetworkPolicy
metadata: {name: pass-x}
spec:
  priority: 5
  subject: {namespaces: {}}
  ingress: [{action: Pass, from: [{namespaces: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: serve-80-tcp}]}]`))
	tup := parseProbe(t, "x/a -> y/b:80/TCP")
	d, ids := snap.DecideIDs(tup)
	if !d.Allowed || ids.Policy[Ingress] == 0 || ids.Pass[Ingress] == 0 {
		t.Fatalf("DecideIDs = %+v, %+v", d, ids)
	}
	if n := testing.AllocsPerRun(100, func() { snap.DecideIDs(tup) }); n != 0 {
		t.Errorf("DecideIDs allocates %v times per call", n)
	}
}

func TestPodPolicies(t *testing.T) {
	snap := Compile(withPolicies(t, testCluster(), anpAPI+`kind: AdminNetworkPolicy
metadata: {name: deny-nodes}
spec:
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}}
  egress:
  - {name: no-nodes, action: Deny, to: [{nodes: {matchLabels: {zone: a}}}, {networks: [10.9.0.0/16]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, z]}]}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}, {port: 90, endPort: 99}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.3.0/24]}}]`))

	got, ok := snap.PodPolicies(PodRef{Namespace: "y", Name: "b"})
	if !ok {
		t.Fatal("y/b not found")
	}
	if got.Pod.Node != "n1" || len(got.Pod.IPs) != 2 {
		t.Errorf("pod %+v", got.Pod)
	}
	eg := got.Selecting[Egress]
	if len(eg) != 1 || eg[0].Policy.Name != "deny-nodes" || eg[0].Stage != StageAdmin || eg[0].Priority != 5 {
		t.Fatalf("egress %+v", eg)
	}
	r := eg[0].Rules[0]
	if r.Name != "no-nodes" || r.Action != ActionDeny || !r.AnyPort || len(r.Peers) != 2 ||
		r.Peers[0].Description != "nodes zone=a" || !slices.Equal(r.Peers[0].Nodes, []string{"n1"}) ||
		r.Peers[1].Description != "networks 10.9.0.0/16" {
		t.Errorf("egress rule %+v", r)
	}
	in := got.Selecting[Ingress]
	if len(in) != 1 || in[0].Policy.Name != "web" || in[0].Stage != StageNetworkPolicy || len(in[0].Rules) != 2 {
		t.Fatalf("ingress %+v", in)
	}
	r0, r1 := in[0].Rules[0], in[0].Rules[1]
	if want := []string{"80/TCP", "serve-81-udp/UDP", "90-99/TCP"}; r0.AnyPort || !slices.Equal(r0.Ports, want) {
		t.Errorf("ports %v, want %v", r0.Ports, want)
	}
	wantPods := []PodRef{{Namespace: "x", Name: "a"}, {Namespace: "z", Name: "a"}}
	if len(r0.Peers) != 1 || r0.Peers[0].Description != "pods pod=a in namespaces x, z" || !slices.Equal(r0.Peers[0].Pods, wantPods) {
		t.Errorf("rule 0 peers %+v", r0.Peers)
	}
	if len(r1.Peers) != 1 || r1.Peers[0].Description != "ipBlock 10.0.0.0/8 except 10.0.3.0/24" || !r1.AnyPort {
		t.Errorf("rule 1 %+v", r1)
	}
	if _, ok := snap.PodPolicies(PodRef{Namespace: "y", Name: "nope"}); ok {
		t.Error("a missing pod was found")
	}
	if pods := snap.Pods(); len(pods) != 9 || pods[0].Ref != (PodRef{Namespace: "x", Name: "a"}) {
		t.Errorf("Pods() = %+v", pods)
	}
}
