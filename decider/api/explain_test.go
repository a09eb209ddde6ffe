package api

import (
	"context"
	"net"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

func TestReasonAndExplanation(t *testing.T) {
	anp := engine.PolicyRef{Kind: "AdminNetworkPolicy", Name: "pass-y"}
	tests := []struct {
		name     string
		e        engine.Explanation
		reason   string
		wantRule bool
	}{{
		name: "network policy rule allows",
		e: engine.Explanation{Evaluated: true, Direction: engine.Ingress, Pod: engine.PodRef{Namespace: "y", Name: "b"},
			Tier: engine.TierNetworkPolicy, Policy: engine.PolicyRef{Kind: "NetworkPolicy", Namespace: "y", Name: "allow-x"},
			Rule: 0, Action: engine.ActionAllow, Allowed: true},
		reason:   "ingress of y/b: NetworkPolicy y/allow-x rule 0 allows",
		wantRule: true,
	}, {
		name: "named admin rule denies",
		e: engine.Explanation{Evaluated: true, Direction: engine.Egress, Pod: engine.PodRef{Namespace: "x", Name: "a"},
			Tier: engine.TierAdminNetworkPolicy, Policy: engine.PolicyRef{Kind: "AdminNetworkPolicy", Name: "deny-z"},
			Rule: 1, RuleName: "deny-all", Action: engine.ActionDeny},
		reason:   `egress of x/a: AdminNetworkPolicy deny-z rule 1 "deny-all" denies`,
		wantRule: true,
	}, {
		name: "default",
		e: engine.Explanation{Evaluated: true, Direction: engine.Ingress, Pod: engine.PodRef{Namespace: "z", Name: "c"},
			Tier: engine.TierDefault, Rule: -1, Action: engine.ActionAllow, Allowed: true},
		reason: "ingress of z/c: no policy decides: allowed by default",
	}, {
		name: "isolation after a pass",
		e: engine.Explanation{Evaluated: true, Direction: engine.Ingress, Pod: engine.PodRef{Namespace: "y", Name: "b"},
			Tier: engine.TierNetworkPolicy, Policy: engine.PolicyRef{Kind: "NetworkPolicy", Namespace: "y", Name: "default-deny"},
			Rule: -1, Action: engine.ActionDeny, Passed: true, PassPolicy: anp, PassRule: 2},
		reason: "ingress of y/b: isolated by NetworkPolicy y/default-deny (after AdminNetworkPolicy pass-y rule 2 passed) and no NetworkPolicy rule allows it: denied",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Reason(tc.e); got != tc.reason {
				t.Errorf("Reason:\n got %s\nwant %s", got, tc.reason)
			}
			x := explanation(tc.e)
			if (x.GetRule() != nil) != tc.wantRule {
				t.Errorf("rule %v, want present=%v", x.GetRule(), tc.wantRule)
			}
			if tc.wantRule && (x.GetRule().GetIndex() != uint32(tc.e.Rule) || x.GetRule().GetName() != tc.e.RuleName) {
				t.Errorf("rule %v", x.GetRule())
			}
			wantDir := tollgatev1.Direction_DIRECTION_INGRESS
			if tc.e.Direction == engine.Egress {
				wantDir = tollgatev1.Direction_DIRECTION_EGRESS
			}
			if x.GetDirection() != wantDir || x.GetPod().GetName() != tc.e.Pod.Name || x.GetPolicy().GetName() != tc.e.Policy.Name ||
				x.GetTier() == tollgatev1.Tier_TIER_UNSPECIFIED || x.GetAction() == tollgatev1.Action_ACTION_UNSPECIFIED {
				t.Errorf("explanation %v", x)
			}
			if (tc.e.Tier == engine.TierDefault) != (x.GetPolicy() == nil) {
				t.Errorf("policy %v for tier %v", x.GetPolicy(), tc.e.Tier)
			}
		})
	}
}

// TestStreamExplanations: DecideStream results carry the explanations
// Decide gives, for the queries that ask for them.
func TestStreamExplanations(t *testing.T) {
	st := state.New()
	st.Publish(cluster(true))
	srv := New(st, Options{})
	denied := func(x tollgatev1.Explain) *tollgatev1.Query { // y/a -> y/b: denied by y/deny
		return &tollgatev1.Query{SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80, Explain: x}
	}
	allowed := func(x tollgatev1.Explain) *tollgatev1.Query { // y/b -> 192.0.2.1: allowed by default
		return &tollgatev1.Query{SrcAddr: []byte{10, 0, 0, 2}, DstAddr: []byte{192, 0, 2, 1}, Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80, Explain: x}
	}
	decide := func(q *tollgatev1.Query) *tollgatev1.DecideResponse {
		resp, err := srv.Decide(context.Background(), &tollgatev1.DecideRequest{SrcIp: net.IP(q.GetSrcAddr()).String(),
			DstIp: net.IP(q.GetDstAddr()).String(), Protocol: q.GetProtocol(), DstPort: q.GetDstPort()})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	tests := []struct {
		q    *tollgatev1.Query
		want bool
	}{
		{denied(tollgatev1.Explain_EXPLAIN_UNSPECIFIED), false},
		{denied(tollgatev1.Explain_EXPLAIN_DENIED), true},
		{denied(tollgatev1.Explain_EXPLAIN_ALL), true},
		{allowed(tollgatev1.Explain_EXPLAIN_UNSPECIFIED), false},
		{allowed(tollgatev1.Explain_EXPLAIN_DENIED), false},
		{allowed(tollgatev1.Explain_EXPLAIN_ALL), true},
	}
	for i, tc := range tests {
		tc.q.Id = uint64(i)
		stream := &oneShotStream{req: &tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{tc.q}}}
		if err := srv.DecideStream(stream); err != nil {
			t.Fatal(err)
		}
		r := stream.sent[0].GetResults()[0]
		got := r.GetExplanations()
		if !tc.want {
			if len(got) != 0 {
				t.Errorf("query %d (%v): explanations %v, want none", i, tc.q.GetExplain(), got)
			}
			continue
		}
		want := decide(tc.q).GetExplanations()
		if len(want) == 0 || len(got) != len(want) {
			t.Fatalf("query %d: %d explanations, Decide gives %d", i, len(got), len(want))
		}
		for j := range want {
			if !proto.Equal(got[j], want[j]) {
				t.Errorf("query %d: explanation %d is %v, Decide gives %v", i, j, got[j], want[j])
			}
		}
	}
}

// BenchmarkDecideStreamExplain measures a DecideStream message of 64
// queries (half of them denied), answered and marshalled as gRPC would,
// without explanations, with those of the denied results, and with all.
// bytes/query is the marshalled size per result.
func BenchmarkDecideStreamExplain(b *testing.B) {
	st := state.New()
	st.Publish(cluster(true))
	srv := New(st, Options{})
	for _, x := range []tollgatev1.Explain{tollgatev1.Explain_EXPLAIN_UNSPECIFIED, tollgatev1.Explain_EXPLAIN_DENIED, tollgatev1.Explain_EXPLAIN_ALL} {
		b.Run(x.String(), func(b *testing.B) {
			req := &tollgatev1.DecideStreamRequest{}
			for i := range 64 {
				q := &tollgatev1.Query{Id: uint64(i), SrcAddr: []byte{10, 0, 0, 1}, DstAddr: []byte{10, 0, 0, 2},
					Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80, Explain: x}
				if i%2 == 1 { // y/b -> an outside address: allowed
					q.SrcAddr, q.DstAddr = []byte{10, 0, 0, 2}, []byte{192, 0, 2, 1}
				}
				req.Queries = append(req.Queries, q)
			}
			size := 0
			b.ReportAllocs()
			for b.Loop() {
				stream := &oneShotStream{req: req}
				if err := srv.DecideStream(stream); err != nil {
					b.Fatal(err)
				}
				out, err := proto.Marshal(stream.sent[0])
				if err != nil {
					b.Fatal(err)
				}
				size = len(out)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/64, "ns/query")
			b.ReportMetric(float64(size)/64, "bytes/query")
		})
	}
}
