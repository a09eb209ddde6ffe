package cluster

import (
	"fmt"
	"runtime"
	"testing"
)

// recordingTB records how StartForTest ends a test without ending ours.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

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
			rec := &recordingTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				StartForTest(rec, Options{})
			}()
			<-done
			if tt.wantSkip && (rec.skipped == "" || rec.failed != "") {
				t.Errorf("want a skip, got skipped=%q failed=%q", rec.skipped, rec.failed)
			}
			if !tt.wantSkip && (rec.failed == "" || rec.skipped != "") {
				t.Errorf("want a failure, got skipped=%q failed=%q", rec.skipped, rec.failed)
			}
		})
	}
}
