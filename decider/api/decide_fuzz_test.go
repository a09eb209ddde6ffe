package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// FuzzDecide feeds arbitrary field values to Decide and DecideStream's
// validation: never a panic; valid requests get ALLOW or DENY; invalid ones
// get InvalidArgument naming a field.
func FuzzDecide(f *testing.F) {
	f.Add("10.0.0.1", "10.0.0.2", int32(1), uint32(1234), uint32(80), []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2})
	f.Add("::ffff:10.0.0.1", "10.0.0.2", int32(4), uint32(0), uint32(0), []byte{}, []byte{1})
	f.Add("fe80::1%eth0", "fd00::1", int32(2), uint32(65535), uint32(65536), make([]byte, 16), make([]byte, 16))
	f.Add("", "not an ip", int32(0), uint32(70000), uint32(1), []byte{1, 2, 3}, make([]byte, 4))
	f.Add("fd00::1", "10.0.0.2", int32(99), uint32(1), uint32(1), make([]byte, 16), make([]byte, 4))
	st := state.New()
	st.Publish(cluster(true))
	srv := New(st, Options{})
	fields := []string{"src_ip", "dst_ip", "src_ip, dst_ip", "src_port", "dst_port", "protocol"}
	f.Fuzz(func(t *testing.T, src, dst string, proto int32, sport, dport uint32, srcAddr, dstAddr []byte) {
		resp, err := srv.Decide(context.Background(), &tollgatev1.DecideRequest{
			SrcIp: src, DstIp: dst, Protocol: tollgatev1.Protocol(proto), SrcPort: sport, DstPort: dport,
		})
		if err != nil {
			msg := status.Convert(err).Message()
			named := false
			for _, f := range fields {
				named = named || strings.HasPrefix(msg, f+":")
			}
			if status.Code(err) != codes.InvalidArgument || !named {
				t.Fatalf("error %v does not name a field", err)
			}
		} else if v := resp.GetVerdict(); v != tollgatev1.Verdict_VERDICT_ALLOW && v != tollgatev1.Verdict_VERDICT_DENY {
			t.Fatalf("verdict %v for a valid request", v)
		}
		q := &tollgatev1.Query{SrcAddr: srcAddr, DstAddr: dstAddr, Protocol: tollgatev1.Protocol(proto), DstPort: dport}
		if tup, err := tupleFromQuery(q); err == nil {
			_ = st.Current().Snapshot.Decide(tup)
		}
	})
}
