package engine

import (
	"net/netip"
	"slices"
	"testing"
)

func TestSelectedPodIPs(t *testing.T) {
	in := withPolicies(t, testCluster(), `
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}}
---
`+anpAPI+`kind: AdminNetworkPolicy
metadata: {name: z-egress}
spec:
  priority: 1
  subject: {pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}}
  egress: [{action: Deny, to: [{networks: [1.1.1.1/32]}]}]
---
`+anpAPI+`kind: AdminNetworkPolicy
metadata: {name: no-rules}
spec:
  priority: 2
  subject: {namespaces: {}}`)
	in.Pods[0].Spec.NodeName = "n2" // x/a lives elsewhere
	snap := Compile(in)
	got := snap.SelectedPodIPs("")
	want := []netip.Addr{podIP("x", "a", false), podIP("z", "c", false), podIP("x", "a", true), podIP("z", "c", true)}
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Errorf("SelectedPodIPs(\"\") = %v, want %v", got, want)
	}
	if got := snap.SelectedPodIPs("n1"); len(got) != 2 || got[0] != podIP("z", "c", false) {
		t.Errorf("SelectedPodIPs(n1) = %v, want z/c's two IPs", got)
	}
	if n := snap.Stats().SelectedPods; n != 2 {
		t.Errorf("SelectedPods = %d, want 2", n)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	snap := Compile(withPolicies(t, testCluster(), `
kind: NetworkPolicy
metadata: {name: p, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: serve-80-tcp}]}]`))
	tup := parseProbe(t, "z/a -> y/b:80/TCP")
	if n := testing.AllocsPerRun(100, func() { snap.Decide(tup) }); n != 0 {
		t.Errorf("Decide allocates %v times per call", n)
	}
}

func TestWarnings(t *testing.T) {
	snap := Compile(withPolicies(t, testCluster(), `
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: a, operator: Sometimes}]}
  ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]`))
	if len(snap.Warnings()) != 2 {
		t.Errorf("warnings = %q, want two", snap.Warnings())
	}
	// The invalid selector matches nothing: x stays open.
	checkProbes(t, snap, []probe{{"y/a -> x/a:80/TCP", true}})
}
