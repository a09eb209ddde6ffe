package client

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/internal/frames"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// transport carries DecideStream's messages: the gRPC stream, or the
// framed stream (internal/frames). Send and Recv may run concurrently with
// each other; Close ends both.
type transport interface {
	Send(*tollgatev1.DecideStreamRequest) error
	Recv() (*tollgatev1.DecideStreamResponse, error)
	Close() error
}

// grpcStream is a DecideStream.
type grpcStream struct {
	stream grpc.BidiStreamingClient[tollgatev1.DecideStreamRequest, tollgatev1.DecideStreamResponse]
	cancel context.CancelFunc
}

func (g *grpcStream) Send(req *tollgatev1.DecideStreamRequest) error  { return g.stream.Send(req) }
func (g *grpcStream) Recv() (*tollgatev1.DecideStreamResponse, error) { return g.stream.Recv() }
func (g *grpcStream) Close() error                                    { g.cancel(); return nil }

// framed is the framed stream on a Unix socket connection.
type framed struct {
	conn  net.Conn
	r     *bufio.Reader
	out   []byte // reused by Send
	in    []byte // reused by Recv
	close sync.Once
}

func newFramed(conn net.Conn) *framed {
	return &framed{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
}

func (f *framed) Send(req *tollgatev1.DecideStreamRequest) error {
	out, err := frames.Append(f.out[:0], req, frames.MaxRequest)
	if err != nil {
		return err
	}
	f.out = out
	_, err = f.conn.Write(out)
	return err
}

func (f *framed) Recv() (*tollgatev1.DecideStreamResponse, error) {
	msg, err := frames.Read(f.r, f.in, frames.MaxResponse)
	if err != nil {
		return nil, err
	}
	f.in = msg
	resp := &tollgatev1.DecideStreamResponse{}
	if err := proto.Unmarshal(msg, resp); err != nil {
		return nil, fmt.Errorf("framed stream: %w", err)
	}
	return resp, nil
}

func (f *framed) Close() error {
	var err error
	f.close.Do(func() { err = f.conn.Close() })
	return err
}
