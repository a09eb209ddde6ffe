// Package frames is the framed stream: DecideStream's messages on a Unix
// socket of their own, without gRPC, for the queuer's hot path. The client
// writes DecideStreamRequest messages and the server answers each with one
// DecideStreamResponse, in order; each message is preceded by its length
// (4 bytes, big endian). Queries are pipelined and batched exactly as on
// DecideStream. A decider round trip then costs two reads and two writes
// instead of gRPC's framing and goroutine hand-offs. docs/decider-contract.md
// describes it for plugin authors; it is optional.
package frames

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

// MaxRequest bounds a request, like the gRPC server's receive limit;
// MaxResponse bounds an answer (explanations make answers larger than the
// queries they answer), like the gRPC client's.
const (
	MaxRequest  = 1 << 20
	MaxResponse = 4 << 20
)

// Read reads one length-prefixed message of at most limit bytes into buf
// (grown as needed) and returns it.
func Read(r *bufio.Reader, buf []byte, limit int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[:]))
	if n > int64(limit) {
		return nil, fmt.Errorf("frames: a message of %d bytes exceeds %d", n, limit)
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:int(n)]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// Append appends m, length-prefixed, to buf; a message over limit bytes is
// an error.
func Append(buf []byte, m proto.Message, limit int) ([]byte, error) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0)
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("frames: encode: %w", err)
	}
	n := len(buf) - start - 4
	if n > limit {
		return nil, fmt.Errorf("frames: a message of %d bytes exceeds %d", n, limit)
	}
	binary.BigEndian.PutUint32(buf[start:], uint32(n))
	return buf, nil
}
