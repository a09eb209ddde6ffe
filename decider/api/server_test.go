package api

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// cluster has pods y/a (10.0.0.1, fd00::1) and y/b (10.0.0.2) on node n1
// and a default-deny-ingress NetworkPolicy in y.
func cluster(withPolicy bool) engine.Input {
	pod := func(name string, ips ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: name}, Spec: corev1.PodSpec{NodeName: "n1"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ips[0]}}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		return p
	}
	in := engine.Input{Pods: []*corev1.Pod{pod("a", "10.0.0.1", "fd00::1"), pod("b", "10.0.0.2")}}
	if withPolicy {
		in.NetworkPolicies = []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "deny"}}}
	}
	return in
}

func startServer(t *testing.T, st *state.State) (tollgatev1.DeciderServiceClient, *grpc.ClientConn, *Server, string) {
	t.Helper()
	return startServerWith(t, st, Options{NodeName: "n1", Instance: "i1"})
}

func startServerWith(t *testing.T, st *state.State, opts Options) (tollgatev1.DeciderServiceClient, *grpc.ClientConn, *Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	lis, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(st, opts)
	g := srv.NewGRPCServer()
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tollgatev1.NewDeciderServiceClient(conn), conn, srv, sock
}

func TestDecide(t *testing.T) {
	st := state.New()
	client, conn, srv, _ := startServer(t, st)
	ctx := context.Background()
	req := &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}

	if _, err := client.Decide(ctx, req); status.Code(err) != codes.Unavailable {
		t.Errorf("before the first snapshot: %v, want Unavailable", err)
	}
	hc := healthpb.NewHealthClient(conn)
	if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health before sync: %v %v", resp, err)
	}
	st.Publish(cluster(true))
	srv.MarkServing()
	if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "tollgate.v1.DeciderService"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health after sync: %v %v", resp, err)
	}

	resp, err := client.Decide(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY || resp.GetGeneration() != 1 || len(resp.GetExplanations()) != 2 {
		t.Fatalf("got %v", resp)
	}
	in := resp.GetExplanations()[1]
	if in.GetDirection() != tollgatev1.Direction_DIRECTION_INGRESS || in.GetTier() != tollgatev1.Tier_TIER_NETWORK_POLICY ||
		in.GetPolicy().GetName() != "deny" || in.GetRule() != nil || !strings.Contains(in.GetReason(), "y/deny") {
		t.Errorf("ingress explanation: %v", in)
	}

	// Outside the cluster: no pod, no explanation, allowed.
	resp, err = client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "1.1.1.1", DstIp: "8.8.8.8", Protocol: tollgatev1.Protocol_PROTOCOL_UDP, DstPort: 53})
	if err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_ALLOW || len(resp.GetExplanations()) != 0 {
		t.Errorf("external: %v %v", resp, err)
	}

	for _, tc := range []struct {
		req   *tollgatev1.DecideRequest
		field string
	}{
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.999", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP}, "src_ip"},
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "", Protocol: tollgatev1.Protocol_PROTOCOL_TCP}, "dst_ip"},
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "fd00::1", Protocol: tollgatev1.Protocol_PROTOCOL_TCP}, "dst_ip"},
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 70000}, "dst_port"},
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, SrcPort: 65536}, "src_port"},
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2"}, "protocol"},
		{&tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: 99}, "protocol"},
	} {
		_, err := client.Decide(ctx, tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), tc.field+":") {
			t.Errorf("%v: got %v, want InvalidArgument naming %s", tc.req, err, tc.field)
		}
	}
}

func TestDecideStreamPipelinedAndBatched(t *testing.T) {
	st := state.New()
	st.Publish(cluster(true))
	client, _, _, _ := startServer(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := client.DecideStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, b := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	// Three messages sent before reading any answer; the second holds two
	// queries and an invalid one.
	msgs := []*tollgatev1.DecideStreamRequest{
		{Queries: []*tollgatev1.Query{{Id: 1, SrcAddr: a, DstAddr: b, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}}},
		{Queries: []*tollgatev1.Query{
			{Id: 2, SrcAddr: b, DstAddr: []byte{8, 8, 8, 8}, Protocol: tollgatev1.Protocol_PROTOCOL_UDP, DstPort: 53},
			{Id: 3, SrcAddr: a, DstAddr: []byte{1, 2, 3}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP},
		}},
		{Queries: []*tollgatev1.Query{{Id: 4, SrcAddr: a, DstAddr: a, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint64]*tollgatev1.Result{}
	for range msgs {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResults() {
			got[r.GetId()] = r
		}
	}
	want := map[uint64]tollgatev1.Verdict{1: tollgatev1.Verdict_VERDICT_DENY, 2: tollgatev1.Verdict_VERDICT_ALLOW, 3: tollgatev1.Verdict_VERDICT_UNSPECIFIED, 4: tollgatev1.Verdict_VERDICT_ALLOW}
	for id, v := range want {
		if got[id].GetVerdict() != v {
			t.Errorf("query %d: %v, want %v", id, got[id], v)
		}
	}
	if !strings.HasPrefix(got[3].GetError(), "dst_addr:") || got[1].GetGeneration() != 1 {
		t.Errorf("results: %v", got)
	}
	// Closing the sending side ends the stream cleanly.
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != io.EOF {
		t.Errorf("after CloseSend: %v %v, want io.EOF", resp, err)
	}
}

func TestDecideStreamBeforeFirstSnapshot(t *testing.T) {
	client, _, _, _ := startServer(t, state.New())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := client.DecideStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q := &tollgatev1.Query{Id: 7, SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}
	if err := stream.Send(&tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{q}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetResults()
	if len(r) != 1 || r[0].GetId() != 7 || r[0].GetVerdict() != tollgatev1.Verdict_VERDICT_UNSPECIFIED || r[0].GetError() != "no snapshot yet" {
		t.Errorf("got %v, want one result with error \"no snapshot yet\"", r)
	}
}

func TestWatch(t *testing.T) {
	st := state.New()
	client, _, _, _ := startServer(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := client.Watch(ctx, &tollgatev1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st.Publish(cluster(false))
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetGeneration() != 1 || len(first.GetSelectedIpv4()) != 0 || !first.GetChangedAll() || first.GetInstance() != "i1" {
		t.Errorf("first: %v", first)
	}
	st.Publish(cluster(true))
	second, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if second.GetGeneration() != 2 || len(second.GetSelectedIpv4()) != 2 || len(second.GetSelectedIpv6()) != 1 {
		t.Errorf("second: %v", second)
	}
	// The new policy selects both pods: their addresses changed, no more.
	var changed []string
	for _, b := range second.GetChanged() {
		a, _ := netip.AddrFromSlice(b)
		changed = append(changed, a.String())
	}
	if second.GetChangedAll() || strings.Join(changed, " ") != "10.0.0.1 10.0.0.2 fd00::1" {
		t.Errorf("second: changed_all %v, changed %v", second.GetChangedAll(), changed)
	}
	// Another node's watch sees none of n1's pods.
	other, err := client.Watch(ctx, &tollgatev1.WatchRequest{NodeName: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := other.Recv(); err != nil || len(m.GetSelectedIpv4()) != 0 || m.GetGeneration() != 2 || !m.GetChangedAll() {
		t.Errorf("n2: %v %v", m, err)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "d.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("mode: %v %v", fi.Mode(), err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("live socket: %v", err)
	}
	// A crashed run leaves the file behind: simulate by closing without
	// removing it.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	plain := filepath.Join(dir, "file")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
}

// TestShutdownEndsWatch: Watch streams end at Shutdown, so that a graceful
// stop of the gRPC server does not wait for them.
func TestShutdownEndsWatch(t *testing.T) {
	st := state.New()
	st.Publish(cluster(false))
	client, _, srv, _ := startServer(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := client.Watch(ctx, &tollgatev1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Recv after Shutdown: %v, want Unavailable", err)
	}
}

// TestDecidePortRange checks that both Decide and DecideStream say over
// which destination ports their verdict holds.
func TestDecidePortRange(t *testing.T) {
	in := cluster(false)
	tcp := corev1.ProtocolTCP
	port := func(p int32) *intstr.IntOrString { v := intstr.FromInt32(p); return &v }
	end := int32(20000)
	in.NetworkPolicies = []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "web"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
			{Protocol: &tcp, Port: port(8080)}, {Protocol: &tcp, Port: port(10000), EndPort: &end}}}}}}}
	st := state.New()
	st.Publish(in)
	client, _, _, _ := startServer(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	resp, err := client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
	if err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY || resp.GetDstPortMin() != 0 || resp.GetDstPortMax() != 8079 {
		t.Errorf("Decide to port 80: %v %v, want a deny for ports 0-8079", resp, err)
	}
	stream, err := client.DecideStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, b := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	want := map[uint32][3]uint32{ // port -> verdict, min, max
		15000: {uint32(tollgatev1.Verdict_VERDICT_ALLOW), 10000, 20000},
		9000:  {uint32(tollgatev1.Verdict_VERDICT_DENY), 8081, 9999},
		8080:  {uint32(tollgatev1.Verdict_VERDICT_ALLOW), 8080, 8080},
	}
	var qs []*tollgatev1.Query
	for p := range want {
		qs = append(qs, &tollgatev1.Query{Id: uint64(p), SrcAddr: a, DstAddr: b, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: p})
	}
	if err := stream.Send(&tollgatev1.DecideStreamRequest{Queries: qs}); err != nil {
		t.Fatal(err)
	}
	got, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range got.GetResults() {
		w := want[uint32(r.GetId())]
		if uint32(r.GetVerdict()) != w[0] || r.GetDstPortMin() != w[1] || r.GetDstPortMax() != w[2] {
			t.Errorf("port %d: %v, want verdict %d over %d-%d", r.GetId(), r, w[0], w[1], w[2])
		}
	}
}
