package contract

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/source"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// TestExamplesMatchEngine: the embedded expectations of the examples say
// what the engine says of deploy/examples (whose README the examples
// package checks against the engine too).
func TestExamplesMatchEngine(t *testing.T) {
	in, _, err := source.LoadDir("../../deploy/examples")
	if err != nil {
		t.Fatal(err)
	}
	snap := engine.Compile(in)
	e := Examples()
	protos := map[tollgatev1.Protocol]engine.Protocol{
		tollgatev1.Protocol_PROTOCOL_TCP: engine.ProtocolTCP, tollgatev1.Protocol_PROTOCOL_UDP: engine.ProtocolUDP,
		tollgatev1.Protocol_PROTOCOL_SCTP: engine.ProtocolSCTP, tollgatev1.Protocol_PROTOCOL_ICMP: engine.ProtocolICMP,
	}
	probes := e.probes(&e.State)
	if len(probes) < 2*81 {
		t.Fatalf("%d probes, want at least the 81-cell grid in two families", len(probes))
	}
	for _, p := range probes {
		d := snap.Decide(engine.Tuple{Src: p.src, Dst: p.dst, Proto: protos[p.proto], DstPort: uint16(p.port), ViaService: p.via})
		if d.Allowed != p.allow {
			t.Errorf("%s: engine allows=%v, examples.yaml says %v", p.what, d.Allowed, p.allow)
		}
	}
	v4, v6 := e.selected(&e.State)
	want := append(v4, v6...)
	slices.SortFunc(want, netip.Addr.Compare)
	if got := snap.SelectedPodIPs(e.Node); !slices.Equal(got, want) {
		t.Errorf("selected: engine %v, examples.yaml %v", got, want)
	}
}

func TestParseExpectationsErrors(t *testing.T) {
	const pods = "node: n\npods:\n- {name: x/a, ips: [10.0.0.1, \"fd00::1\"]}\n- {name: x/b, ips: [10.0.0.2]}\n"
	for _, tc := range []struct{ yaml, want string }{
		{"pods: []", "node: must be set"},
		{"node: n\nunknown: 1", "unknown field"},
		{"node: n\npods:\n- {name: a, ips: [10.0.0.1, 10.0.0.2]}", "more than one address of a family"},
		{"node: n\npods:\n- {name: a, ips: [10.0.0.1]}\n- {name: b, ips: [10.0.0.1]}", "also a's"},
		{"node: n\npods:\n- {name: a, ips: []}", "no address"},
		{"node: n\npods:\n- {name: a, ips: [10.0.0.300]}", "not an IP address"},
		{pods + "selected: [x/c]", "neither a pod nor an IP address"},
		{pods + "grid: {protocol: TCP, port: 80, rows: {x/a: \". .\", x/c: \". .\"}}", `row "x/c" is not a pod`},
		{pods + "grid: {protocol: TCP, port: 80, rows: {x/a: \". . .\"}}", "has 3 cells"},
		{pods + "grid: {protocol: TCP, port: 80, rows: {x/a: \"X .\"}}", "always allowed"},
		{pods + "grid: {protocol: GRE, port: 80, rows: {x/a: \". .\"}}", "want TCP, UDP, SCTP or ICMP"},
		{pods + "cases: [{from: x/a, to: x/b, protocol: TCP, port: 80, verdict: maybe}]", "want allow or deny"},
		{pods + "cases: [{from: x/b, to: \"fd00::9\", protocol: TCP, port: 80, verdict: deny}]", "share no address family"},
		{pods + "cases: [{from: x/a, to: x/a, protocol: TCP, port: 80, verdict: deny}]", "always allowed"},
		{pods + "change: {selected: []}", "change.run"},
		{pods + "change: {run: [true], timeout: soon}", "change.timeout"},
	} {
		_, err := ParseExpectations([]byte(tc.yaml), "")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := ParseExpectations([]byte(pods+"cases: [{from: x/a, to: x/a, protocol: TCP, port: 80, viaService: true, verdict: deny}]"), ""); err != nil {
		t.Errorf("a pod reaching itself through a service may be denied: %v", err)
	}
}
