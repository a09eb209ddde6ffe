package engine

import (
	"maps"
	"testing"
)

func TestWarningsByPolicy(t *testing.T) {
	in := withPolicies(t, testCluster(), `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: a, operator: Sometimes}]}
  ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]
---
`+anpAPI+`kind: AdminNetworkPolicy
metadata: {name: bad-net}
spec:
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [nonsense]}]}]
---
`+anpAPI+`kind: BaselineAdminNetworkPolicy
metadata: {name: not-default}
spec:
  subject: {namespaces: {}}
---
`+cnpAPI+`kind: ClusterNetworkPolicy
metadata: {name: bad-tier}
spec:
  tier: Middle
  priority: 1
  subject: {namespaces: {}}`)
	in.Nodes[0].Status.Addresses[0].Address = "not-an-ip"
	snap := Compile(in)
	got := snap.WarningsByPolicy()
	want := map[PolicyRef]int{
		{Kind: KindNetworkPolicy, Namespace: "x", Name: "bad"}:      2,
		{Kind: KindAdminNetworkPolicy, Name: "bad-net"}:             2, // the network, and failing closed
		{Kind: KindBaselineAdminNetworkPolicy, Name: "not-default"}: 1,
		{Kind: KindClusterNetworkPolicy, Name: "bad-tier"}:          1,
	}
	if !maps.Equal(got, want) {
		t.Errorf("WarningsByPolicy() = %v, want %v\nwarnings: %q", got, want, snap.Warnings())
	}
	total := 0
	for _, n := range got {
		total += n
	}
	// Every warning but the node's is about a policy.
	if total != len(snap.Warnings())-1 {
		t.Errorf("%d warnings counted of %q", total, snap.Warnings())
	}
}
