package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/internal/proc"
)

func runTool(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errs strings.Builder
	code := run(context.Background(), args, &out, &errs)
	return code, out.String() + errs.String()
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--socket is required"},
		{[]string{"--socket", "/nonexistent.sock", "--expect", "/nonexistent.yaml"}, "no such file"},
		{[]string{"--socket", "/nonexistent.sock", "--run", "("}, "--run"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
	} {
		code, out := runTool(t, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, output %q; want 2 and %q", tc.args, code, out, tc.want)
		}
	}
	code, out := runTool(t, "--list")
	if code != 0 || !strings.Contains(out, "watch-change") || !strings.Contains(out, "decide-stream") {
		t.Errorf("--list: exit %d\n%s", code, out)
	}
}

// TestAgainstTollgate: a PASS line per requirement and exit 0 against
// Tollgate's decider on the examples; a FAIL line and exit 1 when the
// expectations disagree with it.
func TestAgainstTollgate(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "decider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tollgate/tollgate/decider").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "d.sock")
	proc.ForTest(t, "decider", exec.Command(bin, "--manifests", "../../deploy/examples", "--socket", sock,
		"--node-name", "node-1", "--metrics-bind-address", ""))

	code, out := runTool(t, "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d against the examples:\n%s", code, out)
	}
	for _, want := range []string{"PASS  health", "PASS  decide-verdicts", "PASS  decide-stream", "PASS  watch-initial", "PASS  decide-port-ranges", "SKIP  watch-change", "8 passed, 0 failed, 1 skipped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// The same expectations with one cell of the grid wrong.
	b, err := os.ReadFile("../../test/contract/examples.yaml")
	if err != nil {
		t.Fatal(err)
	}
	wrong := strings.Replace(string(b), `x/a: ". . . X . X X X X"`, `x/a: ". . . X X X X X X"`, 1)
	if wrong == string(b) {
		t.Fatal("the examples' grid row of x/a is not where this test expects it")
	}
	expect := filepath.Join(dir, "wrong.yaml")
	if err := os.WriteFile(expect, []byte(wrong), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = runTool(t, "--socket", sock, "--expect", expect, "--run", "decide-verdicts")
	if code != 1 || !strings.Contains(out, "FAIL  decide-verdicts") || !strings.Contains(out, "x/a -> y/b TCP 80 (10.244.1.1 -> 10.244.1.5): VERDICT_ALLOW, want VERDICT_DENY") {
		t.Errorf("exit %d with a wrong grid cell; want 1 and a FAIL line naming it:\n%s", code, out)
	}
}
