package contract

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// bug is one way a fake decider breaks the contract.
type bug int

const (
	noBug            bug = iota
	noHealth             // no health service at all
	wrongVerdict         // one connection's verdict inverted, before any change
	noExplanations       // Decide explains nothing
	wideRanges           // Decide says every verdict holds for every port
	acceptsBadInput      // malformed requests get an answer
	dropsBadQuery        // DecideStream skips malformed queries
	unsortedSelected     // Watch lists addresses out of order
	noChangedAll         // the first Watch message lacks changed_all
	omitsChanged         // after a change, Watch lists nothing and no changed_all
	keepsGeneration      // a change keeps the generation number
	generationZero       // every answer at generation 0
)

// fake is a decider that answers from the expectations themselves, with
// at most one bug.
type fake struct {
	tollgatev1.UnimplementedDeciderServiceServer
	e   *Expectations
	bug bug

	mu      sync.Mutex
	state   *State
	gen     uint64
	verdict map[key]bool
	changed chan struct{}
	// changedBy maps a generation to the addresses it changed.
	changedBy map[uint64][]netip.Addr
}

func newFake(e *Expectations, b bug) *fake {
	f := &fake{e: e, bug: b, changed: make(chan struct{}), changedBy: map[uint64][]netip.Addr{}}
	f.set(&e.State)
	return f
}

// set switches to state s at a new generation.
func (f *fake) set(s *State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := map[key]bool{}
	probes := f.e.probes(s)
	for i, p := range probes {
		allow := p.allow
		if f.bug == wrongVerdict && f.verdict == nil && i == len(probes)/2 {
			allow = !allow
		}
		next[p.key()] = allow
	}
	var diff []netip.Addr
	for k, v := range next {
		if old, ok := f.verdict[k]; ok && old != v {
			diff = append(diff, k.src, k.dst)
		}
	}
	slices.SortFunc(diff, netip.Addr.Compare)
	diff = slices.Compact(diff)
	if f.verdict == nil || f.bug != keepsGeneration {
		f.gen++
	}
	f.changedBy[f.gen] = diff
	f.state, f.verdict = s, next
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fake) generation() uint64 {
	if f.bug == generationZero {
		return 0
	}
	return f.gen
}

func (f *fake) Decide(_ context.Context, r *tollgatev1.DecideRequest) (*tollgatev1.DecideResponse, error) {
	src, err1 := netip.ParseAddr(r.GetSrcIp())
	dst, err2 := netip.ParseAddr(r.GetDstIp())
	if f.bug != acceptsBadInput {
		switch {
		case err1 != nil:
			return nil, status.Error(codes.InvalidArgument, "src_ip: bad")
		case err2 != nil || src.Is4() != dst.Is4():
			return nil, status.Error(codes.InvalidArgument, "dst_ip: bad")
		case r.GetProtocol() == 0 || r.GetProtocol() > 4:
			return nil, status.Error(codes.InvalidArgument, "protocol: bad")
		case r.GetDstPort() > 65535:
			return nil, status.Error(codes.InvalidArgument, "dst_port: bad")
		case r.GetSrcPort() > 65535:
			return nil, status.Error(codes.InvalidArgument, "src_port: bad")
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := key{src, dst, r.GetProtocol(), r.GetDstPort(), r.GetViaService()}
	allow, known := f.verdict[k]
	resp := &tollgatev1.DecideResponse{Verdict: verdictOf(allow || !known), Generation: f.generation()}
	if f.bug == wideRanges {
		resp.DstPortMin, resp.DstPortMax = 0, 65535
	}
	if f.bug == noExplanations || src == dst && !r.GetViaService() {
		return resp, nil
	}
	// Explain from the pods of the expectations: the ingress side denies.
	from, _ := f.e.endpoint(src.String())
	to, _ := f.e.endpoint(dst.String())
	explain := func(p *Pod, d tollgatev1.Direction, v tollgatev1.Verdict) {
		ns, name, _ := strings.Cut(p.Name, "/")
		resp.Explanations = append(resp.Explanations, &tollgatev1.Explanation{Direction: d, Tier: tollgatev1.Tier_TIER_DEFAULT,
			Pod: &tollgatev1.PodRef{Namespace: ns, Name: name}, Verdict: v})
	}
	egress, ingress := tollgatev1.Verdict_VERDICT_ALLOW, resp.Verdict
	if to.pod == nil {
		egress = resp.Verdict
	}
	if from.pod != nil {
		explain(from.pod, tollgatev1.Direction_DIRECTION_EGRESS, egress)
	}
	if to.pod != nil {
		explain(to.pod, tollgatev1.Direction_DIRECTION_INGRESS, ingress)
	}
	return resp, nil
}

func (f *fake) DecideStream(s tollgatev1.DeciderService_DecideStreamServer) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &tollgatev1.DecideStreamResponse{}
		for _, q := range req.GetQueries() {
			src, ok1 := netip.AddrFromSlice(q.GetSrcAddr())
			dst, ok2 := netip.AddrFromSlice(q.GetDstAddr())
			if !ok1 || !ok2 || src.Is4() != dst.Is4() {
				if f.bug != dropsBadQuery {
					resp.Results = append(resp.Results, &tollgatev1.Result{Id: q.GetId(), Error: "bad address"})
				}
				continue
			}
			d, _ := f.Decide(s.Context(), &tollgatev1.DecideRequest{SrcIp: src.String(), DstIp: dst.String(),
				Protocol: q.GetProtocol(), DstPort: q.GetDstPort(), ViaService: q.GetViaService()})
			resp.Results = append(resp.Results, &tollgatev1.Result{Id: q.GetId(), Verdict: d.GetVerdict(), Generation: d.GetGeneration()})
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

func (f *fake) Watch(r *tollgatev1.WatchRequest, s tollgatev1.DeciderService_WatchServer) error {
	var sent uint64
	first := true
	for {
		f.mu.Lock()
		gen, state, changed := f.gen, f.state, f.changed
		m := &tollgatev1.WatchResponse{Generation: f.generation(), Instance: "fake", ChangedAll: first && f.bug != noChangedAll}
		if !first && f.bug != omitsChanged {
			var all []netip.Addr
			for g := sent + 1; g <= gen; g++ {
				all = append(all, f.changedBy[g]...)
			}
			slices.SortFunc(all, netip.Addr.Compare)
			for _, a := range slices.Compact(all) {
				m.Changed = append(m.Changed, a.AsSlice())
			}
		}
		f.mu.Unlock()
		if first || gen != sent {
			if r.GetNodeName() == f.e.Node {
				v4, v6 := f.e.selected(state)
				slices.SortFunc(v4, netip.Addr.Compare)
				slices.SortFunc(v6, netip.Addr.Compare)
				if f.bug == unsortedSelected {
					slices.Reverse(v4)
				}
				for _, a := range v4 {
					m.SelectedIpv4 = append(m.SelectedIpv4, a.AsSlice())
				}
				for _, a := range v6 {
					m.SelectedIpv6 = append(m.SelectedIpv6, a.AsSlice())
				}
			}
			if err := s.Send(m); err != nil {
				return err
			}
			sent, first = gen, false
		}
		select {
		case <-changed:
		case <-s.Context().Done():
			return nil
		}
	}
}

// serve starts f on a socket and returns a connection to it.
func (f *fake) serve(t *testing.T) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	tollgatev1.RegisterDeciderServiceServer(g, f)
	if f.bug != noHealth {
		hs := health.NewServer() // SERVING for ""
		hs.SetServingStatus(tollgatev1.DeciderService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(g, hs)
	}
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// withChange is the examples with the change TestTollgateDecider makes.
func withChange(t *testing.T) *Expectations {
	t.Helper()
	e, err := ParseExpectations(append(append([]byte{}, examplesYAML...), tollgateChange...), "")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestKitFindsEachBug: a fake decider passes every requirement, and each
// bug makes exactly the requirements it breaks fail.
func TestKitFindsEachBug(t *testing.T) {
	for _, tc := range []struct {
		name string
		bug  bug
		fail []string
	}{
		{"correct", noBug, nil},
		{"no health", noHealth, []string{"health"}},
		{"a wrong verdict", wrongVerdict, []string{"decide-verdicts", "decide-stream"}},
		{"no explanations", noExplanations, []string{"decide-explanations"}},
		{"port ranges too wide", wideRanges, []string{"decide-port-ranges"}},
		{"accepts bad input", acceptsBadInput, []string{"decide-invalid"}},
		{"drops a bad query", dropsBadQuery, []string{"decide-stream"}},
		{"unsorted selected", unsortedSelected, []string{"watch-initial", "watch-change"}},
		{"no changed_all first", noChangedAll, []string{"watch-initial", "watch-change"}},
		{"omits changed", omitsChanged, []string{"watch-change"}},
		{"keeps the generation", keepsGeneration, []string{"watch-change"}},
		{"generation 0", generationZero, []string{"watch-initial", "watch-change", "generations"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := withChange(t)
			f := newFake(e, tc.bug)
			// A dropped answer shows only when the wait for it ends: short
			// for that bug, generous for a loaded machine otherwise.
			timeout := 10 * time.Second
			if tc.bug == dropsBadQuery {
				timeout = 3 * time.Second
			}
			conn := f.serve(t)
			report := Check(context.Background(), conn, e, Options{
				Change:      func(context.Context) error { f.set(&e.Change.State); return nil },
				Revert:      func(context.Context) error { f.set(&e.State); return nil },
				CallTimeout: timeout,
			})
			var out strings.Builder
			report.Print(&out)
			for _, r := range report {
				want := Pass
				if slices.Contains(tc.fail, r.Requirement.Name) {
					want = Fail
				}
				if r.Status != want {
					t.Errorf("%s: %s, want %s", r.Requirement.Name, r.Status, want)
				}
			}
			if t.Failed() {
				t.Logf("report:\n%s", out.String())
			}
		})
	}
}
