package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/decider/state"
	"github.com/tollgate/tollgate/internal/frames"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// startFrames serves srv's framed stream on a fresh socket; the returned
// channel yields ServeFrames' result.
func startFrames(t *testing.T, srv *Server) (string, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "f.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	done := make(chan error, 1)
	go func() { done <- srv.ServeFrames(l) }()
	return sock, done
}

type framedConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialFrames(t *testing.T, sock string) *framedConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &framedConn{c: c, r: bufio.NewReader(c)}
}

func (f *framedConn) send(t *testing.T, req *tollgatev1.DecideStreamRequest) {
	t.Helper()
	buf, err := frames.Append(nil, req, frames.MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Write(buf); err != nil {
		t.Fatal(err)
	}
}

func (f *framedConn) recv() (*tollgatev1.DecideStreamResponse, error) {
	msg, err := frames.Read(f.r, nil, frames.MaxResponse)
	if err != nil {
		return nil, err
	}
	resp := &tollgatev1.DecideStreamResponse{}
	return resp, proto.Unmarshal(msg, resp)
}

// TestFramedStreamAnswersAsDecideStream: the same pipelined messages get the
// same answers, in order, on both transports.
func TestFramedStreamAnswersAsDecideStream(t *testing.T) {
	st := state.New()
	st.Publish(cluster(true))
	client, _, srv, _ := startServer(t, st)
	sock, _ := startFrames(t, srv)

	a, b := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	msgs := []*tollgatev1.DecideStreamRequest{
		{Queries: []*tollgatev1.Query{{Id: 1, SrcAddr: a, DstAddr: b, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80, Explain: tollgatev1.Explain_EXPLAIN_DENIED}}},
		{Queries: []*tollgatev1.Query{
			{Id: 2, SrcAddr: b, DstAddr: []byte{8, 8, 8, 8}, Protocol: tollgatev1.Protocol_PROTOCOL_UDP, DstPort: 53},
			{Id: 3, SrcAddr: a, DstAddr: []byte{1, 2, 3}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP},
		}},
		{},
		{Queries: []*tollgatev1.Query{{Id: 4, SrcAddr: a, DstAddr: a, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80, Explain: tollgatev1.Explain_EXPLAIN_ALL}}},
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.DecideStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := dialFrames(t, sock)
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
		f.send(t, m)
	}
	var answers []*tollgatev1.DecideStreamResponse
	for i := range msgs {
		want, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.recv()
		if err != nil {
			t.Fatalf("framed answer %d: %v", i, err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("answer %d: framed %v, DecideStream %v", i, got, want)
		}
		answers = append(answers, got)
	}
	// The answers compared hold a denial with its reasons, an allow, an
	// error and an empty answer to the empty message.
	if r := answers[0].GetResults(); len(r) != 1 || r[0].GetVerdict() != tollgatev1.Verdict_VERDICT_DENY || len(r[0].GetExplanations()) == 0 {
		t.Errorf("answer 0: %v", r)
	}
	if r := answers[1].GetResults(); len(r) != 2 || r[0].GetVerdict() != tollgatev1.Verdict_VERDICT_ALLOW || r[1].GetError() == "" {
		t.Errorf("answer 1: %v", r)
	}
	if r := answers[2].GetResults(); len(r) != 0 {
		t.Errorf("answer 2: %v", r)
	}
}

// TestFramedStreamRejectsBadInput: a malformed message or one over the
// limit closes that connection and no other.
func TestFramedStreamRejectsBadInput(t *testing.T) {
	st := state.New()
	st.Publish(cluster(true))
	srv := New(st, Options{NodeName: "n1"})
	sock, _ := startFrames(t, srv)
	good := dialFrames(t, sock)
	q := &tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{{Id: 9, SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}}}

	var over [4]byte
	binary.BigEndian.PutUint32(over[:], frames.MaxRequest+1)
	for name, raw := range map[string][]byte{
		"not protobuf": {0, 0, 0, 2, 0xff, 0xff},
		"over limit":   over[:],
	} {
		bad := dialFrames(t, sock)
		if _, err := bad.c.Write(raw); err != nil {
			t.Fatal(err)
		}
		if resp, err := bad.recv(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: got %v, %v; want the connection closed", name, resp, err)
		}
		good.send(t, q)
		if resp, err := good.recv(); err != nil || resp.GetResults()[0].GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
			t.Errorf("after %s on another connection: %v, %v", name, resp, err)
		}
	}
}

// TestFramedStreamConnectionLimitAndShutdown: connections beyond
// MaxFramedConns are closed at once; Shutdown closes the rest and ends
// ServeFrames.
func TestFramedStreamConnectionLimitAndShutdown(t *testing.T) {
	st := state.New()
	st.Publish(cluster(true))
	srv := New(st, Options{NodeName: "n1"})
	sock, done := startFrames(t, srv)
	q := &tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{{Id: 1, SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}}}
	var open []*framedConn
	for range MaxFramedConns {
		c := dialFrames(t, sock)
		c.send(t, q) // an answer proves the server counts this one
		if _, err := c.recv(); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	extra := dialFrames(t, sock)
	if _, err := extra.recv(); !errors.Is(err, io.EOF) {
		t.Errorf("connection %d: %v, want closed", MaxFramedConns+1, err)
	}

	srv.Shutdown()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeFrames after Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeFrames still running after Shutdown")
	}
	for i, c := range open {
		_ = c.c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.recv(); !errors.Is(err, io.EOF) {
			t.Errorf("connection %d after Shutdown: %v, want closed", i, err)
		}
	}
}
