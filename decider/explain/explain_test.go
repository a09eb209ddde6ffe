package explain

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/source"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

const examples = "../../deploy/examples"

// run runs the command and returns its standard output and error and its
// exit status.
func run(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), code
}

// TestGolden runs the command on the example cluster and compares its
// output with testdata/golden (go test -run TestGolden -update rewrites
// them after a deliberate change).
func TestGolden(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"flows", []string{"--from", "x/a,z/a,z/b", "--to", "y/b,x/a,z/c", "--port", "80/TCP"}, ExitDenied},
		{"flow-allowed", []string{"--from", "x/a", "--to", "y/b", "--port", "80"}, ExitAllowed},
		{"flow-external", []string{"--from", "172.18.0.2", "--to", "z/b", "--port", "80/TCP,ICMP"}, ExitAllowed},
		{"pod-y-b", []string{"--pod", "y/b"}, ExitAllowed},
		{"pod-z-b", []string{"--pod", "z/b"}, ExitAllowed},
		{"pod-z-a", []string{"--pod", "z/a"}, ExitAllowed},
		{"matrix", []string{"--matrix", "x,y,z", "--port", "80/TCP,81/UDP"}, ExitDenied},
		{"matrix-x", []string{"--matrix", "x", "--port", "80/TCP"}, ExitAllowed},
		{"whatif-breaks", []string{"--matrix", "x,y,z", "--port", "80/TCP", "--with", examples + "/what-if/deny-x-to-b.yaml"}, ExitDenied},
		{"whatif-replaces", []string{"--from", "x/a,z/a", "--to", "y/b", "--port", "80/TCP", "--with", "testdata/allow-z-to-b.yaml"}, ExitDenied},
		{"whatif-nothing", []string{"--from", "y/a", "--to", "z/a", "--port", "80/TCP", "--with", examples + "/what-if/deny-x-to-b.yaml"}, ExitAllowed},
	}
	for _, tc := range tests {
		for _, format := range []string{"table", "json"} {
			t.Run(tc.name+"/"+format, func(t *testing.T) {
				out, errOut, code := run(t, "", append([]string{"--manifests", examples, "-o", format}, tc.args...)...)
				if code != tc.code {
					t.Errorf("exit status %d, want %d; stderr:\n%s", code, tc.code, errOut)
				}
				if errOut != "" {
					t.Errorf("stderr:\n%s", errOut)
				}
				ext := map[string]string{"table": ".txt", "json": ".json"}[format]
				golden := filepath.Join("testdata", "golden", tc.name+ext)
				if *update {
					if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run with -update to create it)", err)
				}
				if out != string(want) {
					t.Errorf("output differs from %s (rerun with -update if intended):\n%s", golden, out)
				}
				if format == "json" && !json.Valid([]byte(out)) {
					t.Errorf("invalid JSON")
				}
			})
		}
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"no mode", "", []string{"--manifests", examples}, "exactly one of"},
		{"two modes", "", []string{"--manifests", examples, "--pod", "x/a", "--matrix", "x"}, "exactly one of"},
		{"from without to", "", []string{"--manifests", examples, "--from", "x/a", "--port", "80"}, "go together"},
		{"no port", "", []string{"--manifests", examples, "--matrix", "x"}, "--port is required"},
		{"bad port", "", []string{"--manifests", examples, "--matrix", "x", "--port", "80/QUIC"}, "TCP, UDP or SCTP"},
		{"pod with --with", "", []string{"--manifests", examples, "--pod", "x/a", "--with", examples + "/what-if/deny-x-to-b.yaml"}, "--pod takes"},
		{"bad format", "", []string{"--manifests", examples, "--pod", "x/a", "-o", "yaml"}, "table or json"},
		{"unknown pod", "", []string{"--manifests", examples, "--pod", "x/nope"}, "pod x/nope not found"},
		{"bad endpoint", "", []string{"--manifests", examples, "--from", "nope", "--to", "x/a", "--port", "80"}, "NAMESPACE/POD or an IP"},
		{"empty namespace", "", []string{"--manifests", examples, "--matrix", "q", "--port", "80"}, "namespace q has no pods"},
		{"families", "", []string{"--manifests", examples, "--from", "10.0.0.1", "--to", "fd00::1", "--port", "80"}, "no address family in common"},
		{"missing manifests", "", []string{"--manifests", "testdata/missing", "--pod", "x/a"}, "testdata/missing"},
		// Errors point at the file and line.
		{"broken manifest", "", []string{"--manifests", "testdata/broken.yaml", "--pod", "x/a"}, "testdata/broken.yaml:7:"},
		{"broken --with", "", []string{"--manifests", examples, "--matrix", "x", "--port", "80", "--with", "testdata/broken.yaml"}, "--with: testdata/broken.yaml:7:"},
		{"broken stdin", "kind: Pod\napiVersion: v1\nmetadata: {name: [\n", []string{"--manifests", "-", "--pod", "x/a"}, "<stdin>:3:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, tc.stdin, tc.args...)
			if code != ExitUsage {
				t.Errorf("exit status %d, want %d", code, ExitUsage)
			}
			if out != "" {
				t.Errorf("stdout: %s", out)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not contain %q", errOut, tc.want)
			}
		})
	}
}

func TestStdinAndFile(t *testing.T) {
	cluster, err := os.ReadFile(filepath.Join(examples, "cluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	policies, err := os.ReadFile(filepath.Join(examples, "policies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want, _, _ := run(t, "", "--manifests", examples, "--pod", "y/b")
	if got, errOut, code := run(t, string(cluster)+"\n---\n"+string(policies), "--manifests", "-", "--pod", "y/b"); got != want || code != 0 {
		t.Errorf("from standard input (exit %d, stderr %s):\n%s\nwant\n%s", code, errOut, got, want)
	}
	// A single file: the cluster without the policies.
	out, _, code := run(t, "", "--manifests", filepath.Join(examples, "cluster.yaml"), "--pod", "y/b")
	if code != 0 || !strings.Contains(out, "ingress: no policy selects this pod") {
		t.Errorf("cluster.yaml alone (exit %d):\n%s", code, out)
	}
}

// TestFlowsAgreeWithDecide checks every verdict and deciding policy that
// the command prints for the example cluster against Snapshot.Decide, over
// every pair of pods (IPv4 and IPv6), the node and an outside address, on
// several ports.
func TestFlowsAgreeWithDecide(t *testing.T) {
	in, _, err := source.LoadDir(examples)
	if err != nil {
		t.Fatal(err)
	}
	snap := engine.Compile(in)
	var ends4, ends6 []string
	for _, p := range snap.Pods() {
		ends4 = append(ends4, p.IPs[0].String())
		ends6 = append(ends6, p.IPs[1].String())
	}
	ends4 = append(ends4, "172.18.0.2", "8.8.8.8")
	checked := 0
	for _, ends := range [][]string{ends4, ends6} {
		all := strings.Join(ends, ",")
		out, errOut, code := run(t, "", "--manifests", examples, "-o", "json", "--from", all, "--to", all, "--port", "80/TCP,81/UDP,80/SCTP,ICMP")
		var doc Document
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("%v (exit %d, stderr %s)", err, code, errOut)
		}
		for _, f := range doc.Flows {
			tup := engine.Tuple{Src: netip.MustParseAddr(f.From.IP), Dst: netip.MustParseAddr(f.To.IP), DstPort: f.Port}
			tup.Proto = map[string]engine.Protocol{"TCP": engine.ProtocolTCP, "UDP": engine.ProtocolUDP, "SCTP": engine.ProtocolSCTP, "ICMP": engine.ProtocolICMP}[f.Protocol]
			d := snap.Decide(tup)
			if f.Verdict != verdict(d.Allowed) {
				t.Errorf("%s -> %s %s/%d: printed %s, Decide says allowed=%v", f.From.IP, f.To.IP, f.Protocol, f.Port, f.Verdict, d.Allowed)
			}
			evaluated := 0
			for _, e := range []engine.Explanation{d.Egress, d.Ingress} {
				if !e.Evaluated {
					continue
				}
				if evaluated >= len(f.Directions) {
					t.Fatalf("%+v: fewer directions than Decide evaluated", f)
				}
				got := f.Directions[evaluated]
				evaluated++
				if got.Verdict != verdict(e.Allowed) || got.Tier != e.Tier.String() || (got.Policy == nil) != (e.Policy.Kind == "") ||
					(got.Policy != nil && *got.Policy != policyRef(e.Policy)) {
					t.Errorf("%s -> %s %s/%d %s: printed %+v, Decide says %+v", f.From.IP, f.To.IP, f.Protocol, f.Port, got.Direction, got, e)
				}
			}
			if evaluated != len(f.Directions) {
				t.Errorf("%+v: %d directions printed, %d evaluated", f, len(f.Directions), evaluated)
			}
			checked++
		}
	}
	if want := (11*11 + 9*9) * 4; checked != want {
		t.Errorf("checked %d flows, want %d", checked, want)
	}
}
