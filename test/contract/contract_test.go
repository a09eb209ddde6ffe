package contract

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/deploy/examples"
	"github.com/tollgate/tollgate/internal/exampledeciders"
	"github.com/tollgate/tollgate/internal/proc"
)

// A decider someone else started is checked with the kit's binary:
// go run ./cmd/tollgate-contract --socket /run/my.sock [--expect FILE]
// (make contract SOCKET=...).

// dial connects to the decider on sock and waits until it is SERVING.
func dial(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := WaitServing(context.Background(), conn, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return conn
}

// requireAll runs the kit and fails the test for every requirement that
// did not pass; skipped ones fail too unless allowed.
func requireAll(t *testing.T, conn *grpc.ClientConn, e *Expectations, opts Options, mayskip ...string) Report {
	t.Helper()
	report := Check(context.Background(), conn, e, opts)
	var out strings.Builder
	report.Print(&out)
	t.Logf("kit report:\n%s", out.String())
	for _, r := range report {
		if r.Status == Fail || r.Status == Skip && !contains(mayskip, r.Requirement.Name) {
			t.Errorf("%s: %s %v", r.Requirement.Name, r.Status, r.Details)
		}
	}
	return report
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// tollgateChange isolates namespace x for ingress: the change the kit
// makes to Tollgate's decider on the examples, and the state after it.
const tollgateChange = `
change:
  run: [unused]
  selected: [x/a, x/b, x/c, y/a, y/b, y/c, z/a, z/b, z/c]
  grid:
    protocol: TCP
    port: 80
    rows:
      x/a: ". X X X . X X X X"
      x/b: "X . X X . X X X X"
      x/c: "X X . X . X X X X"
      y/a: "X X X . X X . X X"
      y/b: "X X X X . X . X X"
      y/c: "X X X X X . . X X"
      z/a: "X X X X X X . . ."
      z/b: "X X X X X X X . ."
      z/c: "X X X X X X X . ."
  cases:
    - {from: 172.18.0.2, to: x/a, protocol: TCP, port: 80, verdict: deny}
`

const denyXIngress = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

// TestTollgateDecider: Tollgate's own decider on the examples meets every
// requirement, including a policy change made by adding a manifest.
func TestTollgateDecider(t *testing.T) {
	dir := t.TempDir()
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cluster.yaml", "policies.yaml"} {
		b, err := examples.FS.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(manifests, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "decider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tollgate/tollgate/decider").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "decider.sock")
	proc.ForTest(t, "decider", exec.Command(bin, "--manifests", manifests, "--socket", sock,
		"--node-name", "node-1", "--metrics-bind-address", ""))

	e, err := ParseExpectations(append(append([]byte{}, examplesYAML...), tollgateChange...), dir)
	if err != nil {
		t.Fatal(err)
	}
	extra := filepath.Join(manifests, "deny-x.yaml")
	requireAll(t, dial(t, sock), e, Options{
		Change: func(context.Context) error { return os.WriteFile(extra, []byte(denyXIngress), 0o644) },
		Revert: func(context.Context) error { return os.Remove(extra) },
	})
}

// TestAllowlistDecider: the Node.js example plugin meets every
// requirement with its own expectations file, whose change and revert
// commands rewrite a scratch copy of its policy.
func TestAllowlistDecider(t *testing.T) {
	dir := t.TempDir()
	expect, policy, err := exampledeciders.Contract("allowlist", dir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "decider.sock")
	cmd, err := exampledeciders.Allowlist("--policy", policy, "--socket", sock, "--node-name", "node-1", "--poll-interval-ms", "200")
	if err != nil {
		t.Fatal(err)
	}
	proc.ForTest(t, "allowlist", cmd)
	e, err := LoadExpectations(expect)
	if err != nil {
		t.Fatal(err)
	}
	report := requireAll(t, dial(t, sock), e, Options{})
	// The allowlist lists what changed instead of setting changed_all.
	if r := report.Result("watch-change"); r.Status == Pass && strings.Contains(strings.Join(r.Details, " "), "changed_all") {
		t.Errorf("watch-change: the allowlist decider fell back to changed_all: %v", r.Details)
	}
}

// TestMinimalDecider: the Go example plugin meets every requirement with
// its own expectations file.
func TestMinimalDecider(t *testing.T) {
	dir := t.TempDir()
	expect, policy, err := exampledeciders.Contract("minimal", dir)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := exampledeciders.BuildMinimal(dir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "decider.sock")
	proc.ForTest(t, "minimal", exec.Command(bin, "--policy", policy, "--socket", sock, "--node-name", "node-1"))
	e, err := LoadExpectations(expect)
	if err != nil {
		t.Fatal(err)
	}
	requireAll(t, dial(t, sock), e, Options{})
}
