package api

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// rawH2 is a hand-driven HTTP/2 client connection to the decider's socket:
// it can stop at any point of a gRPC exchange, which a real client never
// does.
type rawH2 struct {
	conn net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
}

// dialRawH2 connects to sock, sends the client preface and settings, and
// leaves the server's frames for the caller to read.
func dialRawH2(t *testing.T, sock string, settings ...http2.Setting) *rawH2 {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawH2{conn: conn, fr: http2.NewFramer(conn, conn)}
	c.henc = hpack.NewEncoder(&c.hbuf)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

// openStream sends the request headers of a gRPC call to method on stream
// id, without a message and without ending the stream.
func (c *rawH2) openStream(t *testing.T, id uint32, method string) {
	t.Helper()
	c.hbuf.Reset()
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/tollgate.v1.DeciderService/" + method}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		if err := c.henc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// sendMessage sends one length-prefixed gRPC message on stream id.
func (c *rawH2) sendMessage(t *testing.T, id uint32, m proto.Message) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	frame := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b)))
	if err := c.fr.WriteData(id, false, append(frame, b...)); err != nil {
		t.Fatal(err)
	}
}

var okRequest = &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}

// TestHalfOpenStreamsAreCappedAndDoNotBlockOthers opens 300 Decide calls
// on one connection that send headers and never their request: the server
// refuses the streams beyond its limit of 256 with REFUSED_STREAM, and a
// normal client is answered meanwhile.
func TestHalfOpenStreamsAreCappedAndDoNotBlockOthers(t *testing.T) {
	t.Parallel()
	st := state.New()
	st.Publish(cluster(true))
	client, _, _, sock := startServer(t, st)

	c := dialRawH2(t, sock)
	const streams = 300
	for i := range streams {
		c.openStream(t, uint32(2*i+1), "Decide")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if resp, err := client.Decide(ctx, okRequest); err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
		t.Fatalf("normal client beside %d half-open streams: %v %v", streams, resp, err)
	}

	// Read what the server says until it has refused every stream over
	// the limit, or the deadline passes.
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	refused := 0
	for refused < streams-256 {
		f, err := c.fr.ReadFrame()
		if err != nil {
			break
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("stream %d reset with %v, want REFUSED_STREAM", rst.StreamID, rst.ErrCode)
			}
			refused++
		}
	}
	if refused != streams-256 {
		t.Errorf("%d streams refused, want %d (the ones over MaxConcurrentStreams)", refused, streams-256)
	}
}

// TestMessageSizeLimit checks the 1 MiB receive limit at its edge on both
// unary and streaming calls: just under it the request reaches validation,
// just over it the call fails with ResourceExhausted, and the server keeps
// answering afterwards on the same connection.
func TestMessageSizeLimit(t *testing.T) {
	t.Parallel()
	st := state.New()
	st.Publish(cluster(true))
	client, _, _, _ := startServer(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	sized := func(n int) *tollgatev1.DecideRequest {
		req := &tollgatev1.DecideRequest{DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP}
		req.SrcIp = strings.Repeat("1", n-proto.Size(req)-4) // 4: tag and length varint of src_ip
		if proto.Size(req) != n {
			t.Fatalf("built a %d-byte request, want %d", proto.Size(req), n)
		}
		return req
	}
	_, err := client.Decide(ctx, sized(1<<20))
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "src_ip: ") {
		t.Errorf("request of exactly 1 MiB: %v, want InvalidArgument about src_ip", err)
	}
	if _, err := client.Decide(ctx, sized(1<<20+1)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("request of 1 MiB + 1: %v, want ResourceExhausted", err)
	}

	stream, err := client.DecideStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addr := []byte{10, 0, 0, 1}
	var big tollgatev1.DecideStreamRequest
	for i := 0; len(big.Queries) < 1<<20/16; i++ { // each query takes more than 16 bytes
		big.Queries = append(big.Queries, &tollgatev1.Query{Id: uint64(i), SrcAddr: addr, DstAddr: addr, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
	}
	if n := proto.Size(&big); n <= 1<<20 || n > 2<<20 {
		t.Fatalf("built a %d-byte batch, want a little over 1 MiB", n)
	}
	if err := stream.Send(&big); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("send of the oversized batch: %v", err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("stream batch over 1 MiB: %v, want ResourceExhausted", err)
	}

	if resp, err := client.Decide(ctx, okRequest); err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
		t.Errorf("after the oversized requests: %v %v", resp, err)
	}
	stream, err = client.DecideStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	big.Queries = big.Queries[:len(big.Queries)/2]
	if err := stream.Send(&big); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.GetResults()) != len(big.Queries) {
		t.Errorf("a batch under 1 MiB on a new stream: %d results, %v", len(resp.GetResults()), err)
	}
	_ = stream.CloseSend()
}

// TestStalledWatcherDoesNotBlockPublishOrOthers opens a Watch whose client
// grants the server no flow-control window, so that nothing it is sent can
// be delivered, then publishes many generations: Publish never waits for
// the watcher, and a normal client sees the latest generation in Watch and
// Decide.
func TestStalledWatcherDoesNotBlockPublishOrOthers(t *testing.T) {
	t.Parallel()
	st := state.New()
	st.Publish(cluster(true))
	client, _, _, sock := startServer(t, st)

	for i := range 3 {
		c := dialRawH2(t, sock, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		c.openStream(t, 1, "Watch")
		c.sendMessage(t, 1, &tollgatev1.WatchRequest{NodeName: []string{"n1", "", "n2"}[i]})
	}

	const generations = 500
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range generations {
			st.Publish(cluster(i%2 == 0))
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Publish is blocked behind the stalled watchers")
	}
	want := st.Current().Generation

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := client.Watch(ctx, &tollgatev1.WatchRequest{NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.GetGeneration() != want {
		t.Errorf("watch beside stalled watchers: %v %v, want generation %d", m, err, want)
	}
	if resp, err := client.Decide(ctx, okRequest); err != nil || resp.GetGeneration() != want {
		t.Errorf("decide beside stalled watchers: %v %v, want generation %d", resp, err, want)
	}
}
