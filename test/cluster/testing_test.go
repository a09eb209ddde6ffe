package cluster

import (
	"testing"

	"github.com/tollgate/tollgate/internal/testenv"
)

func TestStartForTestMissingBinary(t *testing.T) {
	tests := []struct {
		ci       string
		wantSkip bool
	}{
		{ci: "", wantSkip: true},
		{ci: "false", wantSkip: true},
		{ci: "true", wantSkip: false},
	}
	for _, tt := range tests {
		t.Run("CI="+tt.ci, func(t *testing.T) {
			t.Setenv("CI", tt.ci)
			t.Setenv(EnvKubeAPIServer, "/nonexistent/kube-apiserver")
			skipped, failed := testenv.Capture(t, func(tb testing.TB) { StartForTest(tb, Options{}) })
			if tt.wantSkip && (skipped == "" || failed != "") {
				t.Errorf("want a skip, got skipped=%q failed=%q", skipped, failed)
			}
			if !tt.wantSkip && (failed == "" || skipped != "") {
				t.Errorf("want a failure, got skipped=%q failed=%q", skipped, failed)
			}
		})
	}
}
