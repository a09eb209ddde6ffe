package engine

import "testing"

func TestNetworkPolicy(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		extra    string // extra pods
		probes   []probe
	}{{
		name: "no policy allows everything",
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"x/a -> 8.8.8.8:53/UDP", true}, {"1.2.3.4 -> z/c:81/SCTP", true},
			{"x/a -> y/b/ICMP", true}, {"6:x/a -> y/b:80/TCP", true},
		},
	}, {
		name: "default deny ingress isolates only its namespace",
		policies: `
kind: NetworkPolicy
metadata: {name: deny, namespace: "y"}
spec: {podSelector: {}}`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", false}, {"y/a -> y/b:80/TCP", false}, {"1.2.3.4 -> y/c:80/TCP", false},
			{"y/a -> x/b:80/TCP", true}, {"y/a -> 1.2.3.4:80/TCP", true}, {"6:x/a -> y/b:80/TCP", false},
			{"x/a -> y/b/ICMP", false},
		},
	}, {
		name: "default deny egress",
		policies: `
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", false}, {"x/a -> 8.8.8.8:53/UDP", false}, {"y/a -> x/b:80/TCP", true},
			{"x/a -> x/b:80/TCP", false},
		},
	}, {
		name: "policyTypes Egress only leaves ingress open",
		policies: `
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]`,
		probes: []probe{
			{"y/b -> x/a:80/TCP", true}, {"x/a -> x/b:80/TCP", true}, {"x/a -> y/b:80/TCP", false},
		},
	}, {
		name: "egress rules imply Egress when policyTypes is empty",
		policies: `
kind: NetworkPolicy
metadata: {name: implied, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{ports: [{port: 53, protocol: UDP}]}]`,
		probes: []probe{
			{"x/a -> 8.8.8.8:53/UDP", true}, {"x/a -> 8.8.8.8:53/TCP", false},
			{"y/b -> x/a:80/TCP", false}, // Ingress is always implied: isolated, no ingress rules
		},
	}, {
		name: "empty podSelector peer means the policy's namespace only",
		policies: `
kind: NetworkPolicy
metadata: {name: same-ns, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]`,
		probes: []probe{{"y/a -> y/b:80/TCP", true}, {"x/a -> y/b:80/TCP", false}, {"1.2.3.4 -> y/b:80/TCP", false}},
	}, {
		name: "empty namespaceSelector peer means every namespace, pods only",
		policies: `
kind: NetworkPolicy
metadata: {name: all-ns, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]`,
		probes: []probe{{"x/a -> y/b:80/TCP", true}, {"z/c -> y/b:80/TCP", true}, {"1.2.3.4 -> y/b:80/TCP", false}},
	}, {
		name: "namespaceSelector AND podSelector in one element",
		policies: `
kind: NetworkPolicy
metadata: {name: and, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: a}}`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"x/b -> y/b:80/TCP", false}, {"z/a -> y/b:80/TCP", false}, {"y/a -> y/b:80/TCP", false},
		},
	}, {
		name: "separate elements are OR",
		policies: `
kind: NetworkPolicy
metadata: {name: or, namespace: "y"}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
    - podSelector: {matchLabels: {pod: a}}`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"x/b -> y/b:80/TCP", true}, {"y/a -> y/b:80/TCP", true},
			{"z/a -> y/b:80/TCP", false}, {"y/c -> y/b:80/TCP", false},
		},
	}, {
		name: "matchExpressions",
		policies: `
kind: NetworkPolicy
metadata: {name: expr, namespace: "y"}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}
      podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: missing, operator: DoesNotExist}]}`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", false}, {"z/a -> y/b:80/TCP", true}, {"y/c -> y/a:80/TCP", true},
			{"x/a -> y/c:80/TCP", true}, // y/c is not selected
		},
	}, {
		name: "ports and protocols: SCTP is not TCP, ICMP matches only portless rules",
		policies: `
kind: NetworkPolicy
metadata: {name: tcp80, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{ports: [{port: 80}]}]`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"x/a -> y/b:81/TCP", false}, {"x/a -> y/b:80/SCTP", false},
			{"x/a -> y/b:80/UDP", false}, {"x/a -> y/b/ICMP", false},
		},
	}, {
		name: "portless rule allows ICMP",
		policies: `
kind: NetworkPolicy
metadata: {name: from-x, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]`,
		probes: []probe{{"x/a -> y/b/ICMP", true}, {"z/a -> y/b/ICMP", false}},
	}, {
		name: "protocol without port means every port of that protocol",
		policies: `
kind: NetworkPolicy
metadata: {name: udp, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP}]}]`,
		probes: []probe{{"x/a -> y/b:81/UDP", true}, {"x/a -> y/b:81/TCP", false}},
	}, {
		name: "endPort is an inclusive range",
		policies: `
kind: NetworkPolicy
metadata: {name: range, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, endPort: 81, protocol: TCP}]}]`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"x/a -> y/b:81/TCP", true}, {"x/a -> y/b:82/TCP", false}, {"x/a -> y/b:79/TCP", false},
		},
	}, {
		name: "named ports resolve per destination pod",
		extra: `
kind: Pod
metadata: {name: d, namespace: "y", labels: {pod: d}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.2.4}`,
		policies: `
kind: NetworkPolicy
metadata: {name: named, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{ports: [{port: serve-80-tcp}]}]`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"x/a -> 10.0.2.4:8080/TCP", true},
			{"x/a -> 10.0.2.4:80/TCP", false}, // never widen to every number the name has
			{"x/a -> y/b:8080/TCP", false},
			{"x/a -> y/b:80/UDP", false}, // the name is declared for TCP only
		},
	}, {
		name: "named port in egress resolves on the destination pod",
		policies: `
kind: NetworkPolicy
metadata: {name: named-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]`,
		probes: []probe{
			{"x/a -> y/b:81/UDP", true}, {"x/a -> y/b:80/UDP", false}, {"x/a -> 8.8.8.8:81/UDP", false},
		},
	}, {
		name: "ipBlock with except, and a second policy re-allowing the excepted IP",
		policies: `
kind: NetworkPolicy
metadata: {name: block, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]}]
---
kind: NetworkPolicy
metadata: {name: readd, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.1.1/32}}]}]`,
		probes: []probe{
			{"z/a -> y/b:80/TCP", true},  // ipBlock matches pod IPs too
			{"x/a -> y/b:80/TCP", false}, // excepted
			{"x/a -> y/c:80/TCP", true},  // union with the second policy
			{"x/b -> y/c:80/TCP", false},
			{"10.1.0.1 -> y/b:80/TCP", false},
			{"6:z/a -> y/b:80/TCP", false}, // a v4 block does not match v6
		},
	}, {
		name: "ipBlock IPv6 in egress",
		policies: `
kind: NetworkPolicy
metadata: {name: v6, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: "fd00::/64", except: ["fd00::2:0/112"]}}]}]`,
		probes: []probe{
			{"6:x/a -> z/b:80/TCP", true}, {"6:x/a -> y/b:80/TCP", false}, {"x/a -> z/b:80/TCP", false},
		},
	}, {
		name: "hostNetwork pods are never selected and their IP is external",
		extra: `
kind: Pod
metadata: {name: host, namespace: "y", labels: {pod: host}}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 192.168.0.1}`,
		policies: `
kind: NetworkPolicy
metadata: {name: deny-all, namespace: "y"}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
kind: NetworkPolicy
metadata: {name: from-host-pods, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`,
		probes: []probe{
			{"192.168.0.1 -> z/a:80/TCP", true},  // not isolated by y's deny-all
			{"192.168.0.1 -> x/a:80/TCP", false}, // a namespace selector does not match it
			{"y/a -> x/a:80/TCP", false},         // y egress denied
		},
	}, {
		name: "finished pods do not exist; their IP is reused",
		extra: `
kind: Pod
metadata: {name: old, namespace: z, labels: {pod: old}}
spec: {containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.0.9.9}
---
kind: Pod
metadata: {name: new, namespace: "y", labels: {pod: new}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.9.9}`,
		policies: `
kind: NetworkPolicy
metadata: {name: from-z, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]`,
		probes: []probe{{"10.0.9.9 -> x/a:80/TCP", false}, {"z/a -> x/a:80/TCP", true}},
	}, {
		name: "terminating pods still count",
		extra: `
kind: Pod
metadata: {name: going, namespace: z, labels: {pod: going}, deletionTimestamp: "2026-01-01T00:00:00Z"}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.3.9}`,
		policies: `
kind: NetworkPolicy
metadata: {name: from-z, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]`,
		probes: []probe{{"10.0.3.9 -> x/a:80/TCP", true}},
	}, {
		name: "a pod reaching its own IP is not subject to policy; through a service it is",
		policies: `
kind: NetworkPolicy
metadata: {name: deny, namespace: "y"}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`,
		probes: []probe{{"y/a -> y/a:80/TCP", true}, {"y/a -> y/a:80/TCP via-service", false}},
	}, {
		name: "both directions must allow",
		policies: `
kind: NetworkPolicy
metadata: {name: egress-to-y, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]
---
kind: NetworkPolicy
metadata: {name: ingress-from-z, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]`,
		probes: []probe{{"x/a -> y/b:80/TCP", false}, {"z/a -> y/b:80/TCP", true}, {"x/a -> z/b:80/TCP", false}},
	}, {
		name: "multiple policies are a union",
		policies: `
kind: NetworkPolicy
metadata: {name: p80, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: 80}]}]
---
kind: NetworkPolicy
metadata: {name: p81, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]`,
		probes: []probe{
			{"x/a -> y/b:80/TCP", true}, {"z/a -> y/b:81/TCP", true}, {"z/a -> y/b:80/TCP", false}, {"z/a -> y/a:81/TCP", false},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testCluster()
			if tc.extra != "" {
				in = withPolicies(t, in, tc.extra)
			}
			in = withPolicies(t, in, tc.policies)
			snap := Compile(in)
			if w := snap.Warnings(); len(w) > 0 {
				t.Logf("warnings: %q", w)
			}
			checkProbes(t, snap, tc.probes)
		})
	}
}
