package cluster

import (
	"context"
	"errors"
	"testing"

	"github.com/tollgate/tollgate/internal/testenv"
)

// StartForTest starts a cluster for t and stops it in t.Cleanup. When the
// kube-apiserver binary has not been built it skips t (testenv.Skip: a
// failure under CI=true).
func StartForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.KubeAPIServer == "" {
		path, err := KubeAPIServerPath()
		if errors.Is(err, ErrNoKubeAPIServer) {
			testenv.Skip(t, "%v", err)
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
