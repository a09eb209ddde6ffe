package testenv

import (
	"strings"
	"testing"
)

func TestSkipFailsUnderCI(t *testing.T) {
	for _, tc := range []struct {
		ci       string
		wantSkip bool
	}{{"", true}, {"false", true}, {"1", true}, {"true", false}} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			for name, fn := range map[string]func(testing.TB){
				"Skip":     func(tb testing.TB) { Skip(tb, "no %s here", "thing") },
				"LookPath": func(tb testing.TB) { LookPath(tb, "tollgate-no-such-command") },
			} {
				skipped, failed := Capture(t, fn)
				if tc.wantSkip && (skipped == "" || failed != "") {
					t.Errorf("%s: want a skip, got skipped=%q failed=%q", name, skipped, failed)
				}
				if !tc.wantSkip && (failed == "" || skipped != "" || !strings.Contains(failed, "CI=true")) {
					t.Errorf("%s: want a failure naming CI=true, got skipped=%q failed=%q", name, skipped, failed)
				}
			}
		})
	}
}

func TestLookPathFindsCommands(t *testing.T) {
	t.Setenv("CI", "true")
	skipped, failed := Capture(t, func(tb testing.TB) {
		if p := LookPath(tb, "sh"); p == "" {
			tb.Fatalf("empty path")
		}
	})
	if failed != "" || skipped != "" {
		t.Errorf("sh: skipped=%q failed=%q", skipped, failed)
	}
}

func TestSkipMain(t *testing.T) {
	for _, tc := range []struct {
		ci             string
		code           int
		stdout, stderr string
	}{
		{"", 0, "SKIP: suite needs root\n", ""},
		{"true", 1, "", "suite needs root; CI=true forbids skipping\n"},
	} {
		t.Setenv("CI", tc.ci)
		var stdout, stderr strings.Builder
		code := skipMain(&stdout, &stderr, "suite needs root")
		if code != tc.code || stdout.String() != tc.stdout || stderr.String() != tc.stderr {
			t.Errorf("CI=%q: code %d, stdout %q, stderr %q; want %d, %q, %q", tc.ci, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}
