package engine

import (
	"math/rand/v2"
	"testing"
)

// TestDecisionPorts checks the port range a Decision says it holds for,
// on policies whose port clauses break the port space in known places.
// The test pods declare named ports 80 and 81 for TCP, UDP and SCTP.
func TestDecisionPorts(t *testing.T) {
	policies := `
kind: NetworkPolicy
metadata: {name: web, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: 8080}, {port: 10000, endPort: 20000}, {port: serve-81-tcp}]
---
kind: AdminNetworkPolicy
apiVersion: policy.networking.k8s.io/v1alpha1
metadata: {name: deny-9000s}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {ns: "y"}}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}]
    ports: [{portRange: {start: 9000, end: 9099, protocol: TCP}}]
`
	snap := Compile(withPolicies(t, testCluster(), policies))
	tests := []struct {
		probe  string
		allow  bool
		lo, hi uint16
	}{
		// Below every clause: the admin tier's range starts at 9000, the
		// NetworkPolicy's named port 81 and port 8080 bound it.
		{"x/a -> y/b:5000/TCP", false, 82, 8079},
		{"x/a -> y/b:1/TCP", false, 0, 80},
		{"x/a -> y/b:81/TCP", true, 81, 81},
		{"x/a -> y/b:8080/TCP", true, 8080, 8080},
		{"x/a -> y/b:8081/TCP", false, 8081, 8999},
		// The admin tier decides here: the NetworkPolicy is not looked at.
		{"x/a -> y/b:9050/TCP", false, 9000, 9099},
		{"x/a -> y/b:15000/TCP", true, 10000, 20000},
		{"x/a -> y/b:30000/TCP", false, 20001, 65535},
		// UDP: the TCP clauses do not break it, but the named port is
		// looked up on the pod only for TCP (serve-81-tcp), so only the
		// clauses of UDP matter: none.
		{"x/a -> y/b:15000/UDP", false, 0, 65535},
		// Nothing isolates y/a: every port is allowed alike, except that
		// the admin tier's range was looked at.
		{"x/a -> y/a:15000/TCP", true, 9100, 65535},
		{"x/a -> x/b:9050/TCP", true, 0, 65535},
		// A pod reaching itself is not subject to policy at all.
		{"y/b -> y/b:9050/TCP", true, 0, 65535},
	}
	for _, tc := range tests {
		tup := parseProbe(t, tc.probe)
		d := snap.Decide(tup)
		if d.Allowed != tc.allow || d.Ports != (PortRange{tc.lo, tc.hi}) {
			t.Errorf("%s: allowed %v over %d-%d, want %v over %d-%d", tc.probe, d.Allowed, d.Ports.Lo, d.Ports.Hi, tc.allow, tc.lo, tc.hi)
		}
		checkPortRange(t, snap, tup, d, rand.New(rand.NewPCG(1, 2)))
	}
}

// checkPortRange checks that the tuple with other ports of d.Ports is
// decided exactly as d, range included: its ends and a few ports between.
func checkPortRange(t testing.TB, snap *Snapshot, tup Tuple, d Decision, r *rand.Rand) {
	t.Helper()
	if !d.Ports.Contains(tup.DstPort) {
		t.Fatalf("%+v: range %d-%d does not contain the port", tup, d.Ports.Lo, d.Ports.Hi)
	}
	ports := []uint16{d.Ports.Lo, d.Ports.Hi}
	for range 3 {
		ports = append(ports, d.Ports.Lo+uint16(r.IntN(int(d.Ports.Hi-d.Ports.Lo)+1)))
	}
	for _, p := range ports {
		other := tup
		other.DstPort = p
		if d2 := snap.Decide(other); d2 != d {
			t.Fatalf("%+v decided %+v, but port %d in its range decided %+v", tup, d, p, d2)
		}
	}
}
