package client_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/decider/api"
	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
	"github.com/tollgate/tollgate/queuer/client"
)

// BenchmarkRoundTrip: one query at a time (Serial) and many in flight
// (Parallel) through the client and Tollgate's decider server on Unix
// sockets, in one process, over DecideStream and over the framed stream:
// the decider round trip of a verdict-cache miss.
func BenchmarkRoundTrip(b *testing.B) {
	st := state.New()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "a"}, Spec: corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}}}
	st.Publish(engine.Input{Pods: []*corev1.Pod{pod},
		NetworkPolicies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "deny"}}}})
	dir := b.TempDir()
	sock, framedSock := filepath.Join(dir, "d.sock"), filepath.Join(dir, "f.sock")
	srv := api.New(st, api.Options{NodeName: "n1"})
	lis, err := api.Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	g := srv.NewGRPCServer()
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	flis, err := api.Listen(framedSock)
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.ServeFrames(flis) }()
	defer srv.Shutdown()

	q := client.Query{Src: netip.MustParseAddr("10.0.0.9"), Dst: netip.MustParseAddr("10.0.0.1"), Proto: 6, DstPort: 80}
	for _, tc := range []struct{ name, framed string }{{"DecideStream", ""}, {"Framed", framedSock}} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := client.New(sock, client.Options{FramedSocket: tc.framed})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go c.Run(ctx)
			for deadline := time.Now().Add(5 * time.Second); !c.Connected(); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					b.Fatal("no connection")
				}
			}
			b.Run("Serial", func(b *testing.B) {
				for range b.N {
					if _, err := c.Decide(ctx, q); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("Parallel", func(b *testing.B) {
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.Decide(ctx, q); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	}
}
