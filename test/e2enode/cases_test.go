package e2enode

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/test/netsim"
	pm "github.com/tollgate/tollgate/test/policymodel"
)

// enforceWithin bounds how long after kubectl returns a change must show in
// every probe: informers, compile, the queuer's sets, then one probe round.
const enforceWithin = 30 * time.Second

// step applies manifests (kubectl apply) or deletes them, then expects a
// truth table on targets.
type step struct {
	apply, remove string
	targets       []pm.Target
	expect        pm.Expectation
}

// tcase is a named sequence of steps; short cases also run in -short mode.
type tcase struct {
	name  string
	short bool
	steps []step
}

// runCases runs cases, each removing what it applied. With -short only the
// short ones exist: the others are not run, rather than skipped.
func (e *env) runCases(t *testing.T, cases []tcase) {
	for _, c := range cases {
		if testing.Short() && !c.short {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			var applied []string
			t.Cleanup(func() {
				if err := pm.Undo(e.cluster, applied); err != nil {
					t.Errorf("clean up: %v", err)
				}
			})
			for _, s := range c.steps {
				if s.apply != "" {
					applied = append(applied, s.apply)
				}
				e.runStep(t, s)
			}
		})
	}
}

// runStep changes the policies, then probes until the observed table
// matches the expected one or enforceWithin passes.
func (e *env) runStep(t *testing.T, s step) {
	t.Helper()
	if err := pm.Change(e.cluster, s.apply, s.remove); err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	var observed map[pm.Cell]bool
	var wrong []pm.Cell
	for attempt := 1; ; attempt++ {
		var err error
		observed, err = e.probeAll(s.targets)
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		wrong = wrong[:0]
		for c, ok := range observed {
			if ok != pm.Want(c, s.expect) {
				wrong = append(wrong, c)
			}
		}
		if len(wrong) == 0 {
			t.Logf("enforced %v after kubectl returned (%d probes, %d rounds)", time.Since(applied).Round(time.Millisecond), len(observed), attempt)
			return
		}
		if time.Since(applied) > enforceWithin {
			break
		}
	}
	for _, tg := range s.targets {
		t.Errorf("truth table mismatch on %s (rows from, columns to; expected/observed, '.' allowed 'X' denied):\n%s", tg, pm.Table(observed, s.expect, tg))
	}
	slices.SortFunc(wrong, func(a, b pm.Cell) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	for _, c := range wrong {
		t.Errorf("%s -> %s %s: observed %v; decider on %s says %s", c.From, c.To, c.T, observed[c], e.pods[c.From].node, e.explain(c))
	}
}

// explain asks the decider on the source pod's node, with the grpcurl its
// image carries (as deploy/README.md shows), why a connection gets its
// verdict.
func (e *env) explain(c pm.Cell) string {
	pod, err := e.tollgatePod(e.pods[c.From].node)
	if err != nil {
		return err.Error()
	}
	req := fmt.Sprintf(`{"src_ip":%q,"dst_ip":%q,"protocol":"PROTOCOL_%s","dst_port":%d}`,
		e.pods[c.From].ip, e.pods[c.To].ip, strings.ToUpper(string(c.T.Proto)), c.T.Port)
	out, err := e.cluster.Kubectl("-n", "kube-system", "exec", pod, "-c", "decider", "--",
		"grpcurl", "-plaintext", "-unix", "-d", req, "/run/tollgate/decider.sock", "tollgate.v1.DeciderService/Decide")
	if err != nil {
		return err.Error()
	}
	return strings.Join(strings.Fields(out), " ")
}

// tollgatePod is the name of the Tollgate pod on node.
func (e *env) tollgatePod(node string) (string, error) {
	out, err := e.cluster.Kubectl("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=tollgate",
		"--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name}")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// Shorthands for the cases.
var (
	np, anp, banp, cnp = pm.NP, pm.ANP, pm.BANP, pm.CNP
	ns, name           = pm.NS, pm.Name
	allowAll           = pm.AllowAll
	tcp80, tcp81       = pm.TCP80, pm.TCP81
	udp80, sctp80      = pm.UDP80, pm.SCTP80
)

// TestNetworkPolicy installs deploy/install.yaml and runs NetworkPolicy
// cases on the pods of both nodes, then a ClusterIP Service and a rolling
// update of the DaemonSet.
func TestNetworkPolicy(t *testing.T) {
	sys.install(t, deploy.NetworkPolicy)
	sys.runCases(t, []tcase{
		{"no policy allows everything", true, []step{{targets: []pm.Target{tcp80, udp80, sctp80}, expect: allowAll}}},
		{"default deny ingress", false, []step{{apply: np("x", "deny", `podSelector: {}
policyTypes: [Ingress]`), targets: []pm.Target{tcp80, udp80}, expect: func(f, to string, _ pm.Target) bool { return ns(to) != "x" }}}},
		{"ingress from a namespace, same node and across nodes", true, []step{{apply: np("x", "from-y", `podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return to != "x/a" || ns(f) == "y" }}}},
		{"default deny egress", false, []step{{apply: np("y", "deny", `podSelector: {}
policyTypes: [Egress]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return ns(f) != "y" }}}},
		{"named port", false, []step{{apply: np("x", "named", `podSelector: {matchLabels: {pod: c}}
ingress: [{ports: [{port: serve-81-tcp}]}]`), targets: []pm.Target{tcp80, tcp81}, expect: func(f, to string, t pm.Target) bool { return to != "x/c" || t.Port == 81 }}}},
		{"SCTP only", false, []step{{apply: np("z", "sctp", `podSelector: {matchLabels: {pod: b}}
ingress: [{ports: [{port: 80, protocol: SCTP}]}]`), targets: []pm.Target{tcp80, sctp80}, expect: func(f, to string, t pm.Target) bool { return to != "z/b" || t.Proto == netsim.SCTP }}}},
		{"policy updated, then deleted", false, []step{
			{apply: np("z", "from", `podSelector: {}
ingress: [{from: [{podSelector: {matchLabels: {pod: c}}, namespaceSelector: {}}]}]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return ns(to) != "z" || name(f) == "c" }},
			{apply: np("z", "from", `podSelector: {}
ingress: [{from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}]}]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return ns(to) != "z" || name(f) == "a" }},
			{remove: np("z", "from", `podSelector: {}`), targets: []pm.Target{tcp80}, expect: allowAll},
		}},
	})
	t.Run("ClusterIP Service through kube-proxy", sys.testService)
	t.Run("rolling update of the DaemonSet, fail-open", func(t *testing.T) { sys.testRollingUpdate(t, true) })
	if !testing.Short() {
		t.Run("rolling update of the DaemonSet, fail-closed", func(t *testing.T) { sys.testRollingUpdate(t, false) })
	}
	t.Run("uninstall while a policy denies traffic", func(t *testing.T) {
		deny := np("x", "deny", `podSelector: {}
policyTypes: [Ingress]`)
		t.Cleanup(func() { _ = pm.Undo(sys.cluster, []string{deny}) })
		sys.runStep(t, step{apply: deny, targets: []pm.Target{tcp80, udp80}, expect: func(f, to string, _ pm.Target) bool { return ns(to) != "x" }})
		// deploy/README.md: once uninstalled, traffic flows normally, the
		// policy notwithstanding: nothing enforces it any more.
		sys.uninstall(t, deploy.NetworkPolicy)
		sys.runStep(t, step{targets: []pm.Target{tcp80, udp80}, expect: allowAll})
	})
}

// TestAdminNetworkPolicy installs deploy/install-anp.yaml (after the
// v1alpha1 CRDs) and runs AdminNetworkPolicy and BaselineAdminNetworkPolicy
// cases.
func TestAdminNetworkPolicy(t *testing.T) {
	sys.install(t, deploy.AdminNetworkPolicy)
	sys.runCases(t, []tcase{
		{"ANP deny overrides a NetworkPolicy allow", true, []step{{apply: np("x", "allow-all", `podSelector: {}
ingress: [{}]`) + anp("deny-z", `priority: 10
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{name: deny-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return !(ns(to) == "x" && ns(f) == "z") }}}},
		{"Pass with no NetworkPolicy goes to the baseline", false, []step{{apply: anp("pass-z", `priority: 3
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}]`) + banp(`subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{name: deny-z-y, action: Deny, from: [{namespaces: {matchExpressions: [{key: ns, operator: In, values: [z, "y"]}]}}]}]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool {
			return ns(to) != "x" || ns(f) == "x"
		}}}},
		{"lower priority number wins, egress", false, []step{{apply: anp("deny-x", `priority: 20
subject: {namespaces: {matchLabels: {ns: "y"}}}
egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: x}}}]}]`) + anp("allow-xc", `priority: 5
subject: {namespaces: {matchLabels: {ns: "y"}}}
egress: [{action: Allow, to: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: c}}}}]}]`), targets: []pm.Target{tcp80}, expect: func(f, to string, _ pm.Target) bool { return !(ns(f) == "y" && ns(to) == "x" && to != "x/c") }}}},
	})
}

// TestClusterNetworkPolicy installs deploy/install-cnp.yaml (after the
// v1alpha2 CRD) and runs ClusterNetworkPolicy cases.
func TestClusterNetworkPolicy(t *testing.T) {
	sys.install(t, deploy.ClusterNetworkPolicy)
	sys.runCases(t, []tcase{
		{"admin tier deny with protocols", true, []step{{apply: cnp("deny-z", `tier: Admin
priority: 10
subject: {namespaces: {matchLabels: {ns: x}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}]`), targets: []pm.Target{tcp80, tcp81}, expect: func(f, to string, t pm.Target) bool {
			return !(ns(to) == "x" && ns(f) == "z" && t.Port == 80)
		}}}},
		{"Pass to the baseline tier", false, []step{{apply: cnp("pass", `tier: Admin
priority: 1
subject: {namespaces: {matchLabels: {ns: "y"}}}
ingress: [{action: Pass, from: [{namespaces: {}}]}]`) + cnp("baseline", `tier: Baseline
priority: 1
subject: {namespaces: {matchLabels: {ns: "y"}}}
ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{destinationNamedPort: serve-80-udp}]}]`), targets: []pm.Target{udp80, tcp80}, expect: func(f, to string, t pm.Target) bool {
			return !(ns(to) == "y" && ns(f) == "z" && t.Proto == netsim.UDP)
		}}}},
	})
}
