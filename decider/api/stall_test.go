package api

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// TestStalledAndGarbageClientsDoNotBlockOthers opens connections that say
// nothing, send half a preface, or send garbage, and checks that a normal
// client is still answered promptly, that an oversized message is refused
// without harm, and that the server drops the garbage connections.
func TestStalledAndGarbageClientsDoNotBlockOthers(t *testing.T) {
	st := state.New()
	st.Publish(cluster(true))
	client, _, _, sock := startServer(t, st)

	var bad []net.Conn
	for i := range 30 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		switch i % 3 {
		case 1:
			_, _ = c.Write([]byte("PRI * HTTP/2.0\r\n")) // half a preface
		case 2:
			_, _ = c.Write([]byte(strings.Repeat("garbage\x00\xff", 100)))
		}
		bad = append(bad, c)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
	if err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
		t.Fatalf("normal client behind 30 bad connections: %v %v", resp, err)
	}

	_, err = client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: strings.Repeat("1", 2<<20), DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized request: %v, want ResourceExhausted", err)
	}
	if _, err := client.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "10.0.0.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}); err != nil {
		t.Errorf("after an oversized request: %v", err)
	}

	// Garbage gets the connection closed at once; silent and half-preface
	// connections are closed by the handshake timeout (5 s).
	closed := 0
	for _, c := range bad {
		_ = c.SetReadDeadline(time.Now().Add(7 * time.Second))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
					closed++
				}
				break
			}
		}
	}
	if closed != len(bad) {
		t.Errorf("%d of %d bad connections were closed by the server", closed, len(bad))
	}
}
