package examples_test

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/source"
)

// TestREADMEMatrix checks the verdict grid the README promises against the
// engine: the README is the spec of the examples.
func TestREADMEMatrix(t *testing.T) {
	in, warnings, err := source.LoadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	snap := engine.Compile(in)
	ips := map[string]netip.Addr{}
	for _, p := range in.Pods {
		ips[p.Namespace+"/"+p.Name] = netip.MustParseAddr(p.Status.PodIP)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	rows := 0
	for _, line := range strings.Split(string(readme), "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 10 {
			continue
		}
		if cells[0] == "from \\ to" {
			cols = cells[1:]
			continue
		}
		from := strings.Trim(cells[0], "*")
		if cols == nil || ips[from] == (netip.Addr{}) {
			continue
		}
		rows++
		for i, to := range cols {
			want := cells[i+1] == "."
			d := snap.Decide(engine.Tuple{Src: ips[from], Dst: ips[to], Proto: engine.ProtocolTCP, DstPort: 80})
			if d.Allowed != want {
				t.Errorf("%s -> %s:80: allowed=%v, README says %v (%+v / %+v)", from, to, d.Allowed, want, d.Egress, d.Ingress)
			}
		}
	}
	if rows != 9 {
		t.Fatalf("found %d matrix rows in README.md, want 9", rows)
	}
}
