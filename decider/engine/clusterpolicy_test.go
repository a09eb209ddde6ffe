package engine

import (
	"strconv"
	"testing"
)

const anpAPI = "apiVersion: policy.networking.k8s.io/v1alpha1\n"
const cnpAPI = "apiVersion: policy.networking.k8s.io/v1alpha2\n"

func TestClusterPolicies(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		probes   []probe
		// explain checks the tier and policy named for one probe's ingress
		// (or egress when the destination is external).
		explain map[string]string
	}{{
		name: "ANP priority: lower number wins",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: deny-x}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress: [{name: deny-from-x, action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}]
---
` + anpAPI + `kind: AdminNetworkPolicy
metadata: {name: allow-xa}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress: [{name: allow-xa, action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}]}]`,
		probes: []probe{{"x/a -> y/b:80/TCP", true}, {"x/b -> y/b:80/TCP", false}, {"z/b -> y/b:80/TCP", true}},
		explain: map[string]string{
			"x/a -> y/b:80/TCP": "AdminNetworkPolicy AdminNetworkPolicy/allow-xa 0 allow-xa Allow",
			"x/b -> y/b:80/TCP": "AdminNetworkPolicy AdminNetworkPolicy/deny-x 0 deny-from-x Deny",
		},
	}, {
		name: "ANP overrides NetworkPolicy, rules in list order",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: rules}
spec:
  priority: 1
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}}
  ingress:
  - {name: allow-81, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 81}}]}
  - {name: deny-all, action: Deny, from: [{namespaces: {}}]}
---
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]`,
		probes: []probe{
			{"z/a -> x/b:81/TCP", true}, {"z/a -> x/b:80/TCP", false}, {"z/a -> x/a:80/TCP", true},
			{"1.2.3.4 -> x/b:80/TCP", true}, // ingress peers are pods only: the deny does not match external sources
		},
	}, {
		name: "Pass goes to NetworkPolicy, then to the baseline",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: pass}
spec:
  priority: 1
  subject: {namespaces: {}}
  ingress: [{name: pass-x, action: Pass, from: [{namespaces: {matchLabels: {ns: x}}}]}]
---
` + anpAPI + `kind: AdminNetworkPolicy
metadata: {name: deny-after-pass}
spec:
  priority: 2
  subject: {namespaces: {}}
  ingress: [{name: deny, action: Deny, from: [{namespaces: {}}]}]
---
kind: NetworkPolicy
metadata: {name: allow-xa, namespace: z}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]
---
` + anpAPI + `kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{name: baseline-deny-x, action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}]`,
		probes: []probe{
			{"x/a -> z/b:80/TCP", true},  // pass, then NP allows
			{"x/b -> z/b:80/TCP", false}, // pass, NP isolates and does not allow
			{"x/b -> y/b:80/TCP", false}, // pass, no NP, baseline denies
			{"z/a -> y/b:80/TCP", false}, // not passed: the priority-2 deny wins
		},
		explain: map[string]string{
			"x/b -> y/b:80/TCP": "BaselineAdminNetworkPolicy BaselineAdminNetworkPolicy/default 0 baseline-deny-x Deny",
			"x/b -> z/b:80/TCP": "NetworkPolicy NetworkPolicy/z/allow-xa -1  Deny",
		},
	}, {
		name: "baseline applies only when no NetworkPolicy selects the pod",
		policies: anpAPI + `kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]`,
		probes: []probe{{"y/a -> x/a:80/TCP", true}, {"y/a -> x/b:80/TCP", false}},
	}, {
		name: "networks 0.0.0.0/0 and ::/0 catch pod-to-pod traffic too",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: deny-all-egress}
spec:
  priority: 3
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress: [{name: world, action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}]}]`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", false}, {"6:x/a -> y/b:80/TCP", false}, {"x/a -> 8.8.8.8:53/UDP", false},
			{"y/a -> x/b:80/TCP", true},
		},
	}, {
		name: "nodes peer matches node IPs by node labels",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: nodes}
spec:
  priority: 3
  subject: {namespaces: {}}
  egress:
  - {name: allow-zone-a, action: Allow, to: [{nodes: {matchLabels: {zone: a}}}]}
  - {name: deny-rest, action: Deny, to: [{networks: [0.0.0.0/0]}]}`,
		probes: []probe{{"x/a -> 192.168.0.1:10250/TCP", true}, {"x/a -> 192.168.0.2:10250/TCP", false}},
	}, {
		name: "namedPort and portRange",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: ports}
spec:
  priority: 3
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress:
  - {action: Allow, from: [{namespaces: {}}], ports: [{namedPort: serve-81-udp}, {portRange: {protocol: SCTP, start: 80, end: 81}}]}
  - {action: Deny, from: [{namespaces: {}}]}`,
		probes: []probe{
			{"x/a -> y/b:81/UDP", true}, {"x/a -> y/b:80/UDP", false}, {"x/a -> y/b:81/TCP", false},
			{"x/a -> y/b:80/SCTP", true}, {"x/a -> y/b:81/SCTP", true}, {"x/a -> y/b/ICMP", false},
		},
	}, {
		name: "an unknown peer fails closed: Allow matches nothing, Deny matches everything",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: unknown-allow}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{name: future-allow, action: Allow, from: [{}]}]
---
` + anpAPI + `kind: AdminNetworkPolicy
metadata: {name: unknown-deny}
spec:
  priority: 2
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress: [{name: future-deny, action: Deny, from: [{}]}]`,
		probes: []probe{
			{"z/a -> x/a:80/TCP", true}, // the allow matched nothing; default allows
			{"z/a -> y/a:80/TCP", false}, {"1.2.3.4 -> y/a:80/TCP", false},
		},
	}, {
		name: "domainNames Allow matches nothing without DNS answers",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: dns}
spec:
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Allow, to: [{domainNames: ["*.example.com"]}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}`,
		probes: []probe{{"x/a -> 93.184.216.34:443/TCP", false}},
	}, {
		name: "equal priorities are ordered by name",
		policies: anpAPI + `kind: AdminNetworkPolicy
metadata: {name: b-allow}
spec:
  priority: 7
  subject: {namespaces: {}}
  ingress: [{action: Allow, from: [{namespaces: {}}]}]
---
` + anpAPI + `kind: AdminNetworkPolicy
metadata: {name: a-deny}
spec:
  priority: 7
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`,
		probes: []probe{{"x/a -> y/b:80/TCP", false}},
	}, {
		name: "CNP admin and baseline tiers with protocols",
		policies: cnpAPI + `kind: ClusterNetworkPolicy
metadata: {name: admin-accept}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress:
  - name: accept-udp81
    action: Accept
    from: [{namespaces: {}}]
    protocols: [{udp: {destinationPort: {number: 81}}}, {destinationNamedPort: serve-80-sctp}]
  - name: pass-x
    action: Pass
    from: [{namespaces: {matchLabels: {ns: x}}}]
  - name: deny-rest
    action: Deny
    from: [{namespaces: {}}]
    protocols: [{tcp: {destinationPort: {range: {start: 80, end: 81}}}}]
---
` + cnpAPI + `kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{name: deny-x-80, action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}]`,
		probes: []probe{
			{"z/a -> y/b:81/UDP", true}, {"z/a -> y/b:80/SCTP", true}, {"z/a -> y/b:80/TCP", false},
			{"x/a -> y/b:81/TCP", true}, {"x/a -> y/b:80/TCP", false}, {"z/a -> y/b:82/TCP", true},
		},
		explain: map[string]string{
			"x/a -> y/b:80/TCP": "ClusterNetworkPolicy(Baseline) ClusterNetworkPolicy/baseline 0 deny-x-80 Deny",
			"z/a -> y/b:80/TCP": "ClusterNetworkPolicy(Admin) ClusterNetworkPolicy/admin-accept 2 deny-rest Deny",
		},
	}, {
		name: "CNP egress networks and ANP share the admin tier by priority",
		policies: cnpAPI + `kind: ClusterNetworkPolicy
metadata: {name: cnp-deny}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: ["10.0.2.0/24"]}]}]
---
` + anpAPI + `kind: AdminNetworkPolicy
metadata: {name: anp-allow}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress: [{action: Allow, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}}]}]`,
		probes: []probe{{"x/a -> y/b:80/TCP", true}, {"x/a -> y/c:80/TCP", false}, {"z/a -> y/b:80/TCP", false}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := Compile(withPolicies(t, testCluster(), tc.policies))
			if w := snap.Warnings(); len(w) > 0 {
				t.Logf("warnings: %q", w)
			}
			checkProbes(t, snap, tc.probes)
			for conn, want := range tc.explain {
				d := snap.Decide(parseProbe(t, conn))
				e := d.Ingress
				if !e.Evaluated || e.Allowed {
					if !d.Egress.Allowed {
						e = d.Egress
					}
				}
				got := e.Tier.String() + " " + e.Policy.String() + " " + strconv.Itoa(e.Rule) + " " + e.RuleName + " " + e.Action.String()
				if got != want {
					t.Errorf("%s explained as %q, want %q", conn, got, want)
				}
			}
		})
	}
}
