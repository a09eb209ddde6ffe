package frames

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

func TestRoundTrip(t *testing.T) {
	msgs := []*tollgatev1.DecideStreamRequest{
		{Queries: []*tollgatev1.Query{{Id: 1, SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}}},
		{}, // an empty message is a frame of length 0
		{Queries: []*tollgatev1.Query{{Id: 2}, {Id: 3, Explain: tollgatev1.Explain_EXPLAIN_ALL}}},
	}
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = Append(buf, m, MaxRequest); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(bytes.NewReader(buf))
	var in []byte
	for i, want := range msgs {
		msg, err := Read(r, in, MaxRequest)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		in = msg
		got := &tollgatev1.DecideStreamRequest{}
		if err := proto.Unmarshal(msg, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("message %d: got %v, want %v", i, got, want)
		}
	}
	if _, err := Read(r, in, MaxRequest); !errors.Is(err, io.EOF) {
		t.Errorf("after the last message: %v, want io.EOF", err)
	}
}

func TestLimits(t *testing.T) {
	big := &tollgatev1.DecideStreamResponse{Results: []*tollgatev1.Result{{Error: strings.Repeat("x", 100)}}}
	if _, err := Append(nil, big, 50); err == nil || !strings.Contains(err.Error(), "exceeds 50") {
		t.Errorf("Append over the limit: %v", err)
	}
	buf, err := Append(nil, big, MaxResponse)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Read(bufio.NewReader(bytes.NewReader(buf)), nil, 50); err == nil || !strings.Contains(err.Error(), "exceeds 50") {
		t.Errorf("Read over the limit: %v", err)
	}
	// A length that claims more than follows is an unexpected EOF, not a
	// short message.
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 10)
	truncated := append(hdr[:], 1, 2, 3)
	if _, err := Read(bufio.NewReader(bytes.NewReader(truncated)), nil, MaxRequest); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated message: %v, want io.ErrUnexpectedEOF", err)
	}
	// A huge length is refused before any allocation of that size.
	binary.BigEndian.PutUint32(hdr[:], 0xffffffff)
	if _, err := Read(bufio.NewReader(bytes.NewReader(hdr[:])), nil, MaxRequest); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("huge length: %v", err)
	}
}
