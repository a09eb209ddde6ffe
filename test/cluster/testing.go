package cluster

import (
	"context"
	"errors"
	"os"
	"testing"
)

// StartForTest starts a cluster for t and stops it in t.Cleanup. When the
// kube-apiserver binary has not been built it skips t, except under CI=true
// where a missing binary fails the test.
func StartForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.KubeAPIServer == "" {
		path, err := KubeAPIServerPath()
		if errors.Is(err, ErrNoKubeAPIServer) && os.Getenv("CI") != "true" {
			t.Skipf("skipping: %v", err)
		}
		if err != nil {
			t.Fatalf("locate kube-apiserver: %v", err)
		}
		opts.KubeAPIServer = path
	}
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}
