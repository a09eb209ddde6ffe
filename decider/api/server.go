// Package api serves the decider's gRPC contract (tollgate.v1.DeciderService)
// from the published engine snapshots, together with gRPC health and server
// reflection on the same Unix socket.
package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/resolved"
	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// Options configure a Server.
type Options struct {
	// NodeName is the node whose pods Watch reports when a request names
	// none; empty means every node.
	NodeName string
	// Metrics, if not nil, records requests.
	Metrics *Metrics
	// Instance names this server's generation numbering in Watch responses
	// (see WatchResponse.instance); it must differ between processes.
	Instance string
	// DNS, if not nil, learns the node's pods' DNS answers (Learn);
	// without it Learn is UNIMPLEMENTED.
	DNS *resolved.Keeper
}

// Server implements tollgatev1.DeciderServiceServer over a state.State.
type Server struct {
	tollgatev1.UnimplementedDeciderServiceServer
	state  *state.State
	opts   Options
	health *health.Server
	// stopping is closed by Shutdown: Watch streams end, so that a graceful
	// stop does not wait for them.
	stopping chan struct{}
	stopOnce sync.Once
}

// New returns a server answering from st. Health reports NOT_SERVING until
// MarkServing is called.
func New(st *state.State, opts Options) *Server {
	s := &Server{state: st, opts: opts, health: health.NewServer(), stopping: make(chan struct{})}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.SetServingStatus(tollgatev1.DeciderService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	return s
}

// MarkServing flips health to SERVING; call it once the first snapshot is
// published.
func (s *Server) MarkServing() {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(tollgatev1.DeciderService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
}

// Shutdown reports NOT_SERVING to health watchers.
func (s *Server) Shutdown() {
	s.health.Shutdown()
	s.stopOnce.Do(func() { close(s.stopping) })
}

// NewGRPCServer returns a gRPC server with the limits a node-local daemon
// needs so that a stalled or misbehaving client cannot starve others, with
// the decider service, health and reflection registered.
func (s *Server) NewGRPCServer() *grpc.Server {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(1<<20),
		grpc.MaxConcurrentStreams(256),
		grpc.ConnectionTimeout(5*time.Second),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 10 * time.Minute, Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	tollgatev1.RegisterDeciderServiceServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
	reflection.Register(g)
	return g
}

// Decide answers one connection with the full verdict and its explanation.
func (s *Server) Decide(ctx context.Context, req *tollgatev1.DecideRequest) (*tollgatev1.DecideResponse, error) {
	start := time.Now()
	t, err := tupleFromRequest(req)
	if err != nil {
		s.opts.Metrics.request("Decide", "invalid")
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	v := s.state.Current()
	if v == nil {
		s.opts.Metrics.request("Decide", "unavailable")
		return nil, status.Error(codes.Unavailable, "the decider has not synced its sources yet")
	}
	t.DNS = v.DNS
	d, ids := v.Snapshot.DecideIDs(t)
	s.opts.Metrics.decided(v.Snapshot, &d, &ids)
	resp := &tollgatev1.DecideResponse{Verdict: verdict(d.Allowed), Generation: v.Generation, Explanations: explanations(v.Snapshot, t, &d),
		DstPortMin: uint32(d.Ports.Lo), DstPortMax: uint32(d.Ports.Hi)}
	s.opts.Metrics.request("Decide", resp.Verdict.String())
	s.opts.Metrics.observe(time.Since(start))
	return resp, nil
}

// DecideStream answers pipelined, batched queries on one stream.
func (s *Server) DecideStream(stream tollgatev1.DeciderService_DecideStreamServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			// io.EOF is the client closing its side: a clean end, not an
			// error to report back as Unknown.
			if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := s.answer(req)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// answer decides every query of a DecideStream message.
func (s *Server) answer(req *tollgatev1.DecideStreamRequest) *tollgatev1.DecideStreamResponse {
	start := time.Now()
	v := s.state.Current()
	resp := &tollgatev1.DecideStreamResponse{Results: make([]*tollgatev1.Result, 0, len(req.GetQueries()))}
	for _, q := range req.GetQueries() {
		r := &tollgatev1.Result{Id: q.GetId()}
		t, err := tupleFromQuery(q)
		switch {
		case err != nil:
			r.Error = err.Error()
		case v == nil:
			r.Error = "no snapshot yet"
		default:
			t.DNS = v.DNS
			d, ids := v.Snapshot.DecideIDs(t)
			s.opts.Metrics.decided(v.Snapshot, &d, &ids)
			r.Verdict = verdict(d.Allowed)
			r.Generation = v.Generation
			r.DstPortMin, r.DstPortMax = uint32(d.Ports.Lo), uint32(d.Ports.Hi)
			if x := q.GetExplain(); x == tollgatev1.Explain_EXPLAIN_ALL || (x == tollgatev1.Explain_EXPLAIN_DENIED && !d.Allowed) {
				r.Explanations = explanations(v.Snapshot, t, &d)
			}
		}
		resp.Results = append(resp.Results, r)
	}
	s.opts.Metrics.streamed(len(resp.Results))
	s.opts.Metrics.observe(time.Since(start))
	return resp
}

// Watch sends the generation and the node's selected pod IPs now and after
// every change.
func (s *Server) Watch(req *tollgatev1.WatchRequest, stream tollgatev1.DeciderService_WatchServer) error {
	node := req.GetNodeName()
	if node == "" {
		node = s.opts.NodeName
	}
	var sent uint64
	for {
		changed := s.state.Changed()
		if v := s.state.Current(); v != nil && v.Generation != sent {
			resp := s.watchResponse(v, node)
			resp.Instance = s.opts.Instance
			ips, all := s.state.ChangedBetween(sent, v.Generation)
			resp.ChangedAll = all
			for _, ip := range ips {
				resp.Changed = append(resp.Changed, ip.AsSlice())
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			sent = v.Generation
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-s.stopping:
			return status.Error(codes.Unavailable, "decider shutting down")
		case <-changed:
		}
	}
}

func (s *Server) watchResponse(v *state.View, node string) *tollgatev1.WatchResponse {
	resp := &tollgatev1.WatchResponse{Generation: v.Generation}
	resp.SelectedIpv4, resp.SelectedIpv6 = splitFamilies(v.Snapshot.SelectedPodIPs(node))
	if s.opts.DNS != nil {
		resp.DnsIpv4, resp.DnsIpv6 = splitFamilies(v.Snapshot.DomainPodIPs(node))
	}
	return resp
}

// splitFamilies turns addresses into their 4- and 16-byte forms.
func splitFamilies(ips []netip.Addr) (v4, v6 [][]byte) {
	for _, ip := range ips {
		if ip.Is4() {
			b := ip.As4()
			v4 = append(v4, slices.Clone(b[:]))
		} else {
			b := ip.As16()
			v6 = append(v6, slices.Clone(b[:]))
		}
	}
	return v4, v6
}

// Learn records a DNS answer that a pod of the node received.
func (s *Server) Learn(_ context.Context, req *tollgatev1.LearnRequest) (*tollgatev1.LearnResponse, error) {
	if s.opts.DNS == nil {
		return nil, status.Error(codes.Unimplemented, "this decider does not learn DNS answers")
	}
	pod, ok := netip.AddrFromSlice(req.GetPodAddr())
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "pod_addr: %d bytes, want 4 or 16", len(req.GetPodAddr()))
	}
	answers := make([]resolved.Answer, 0, len(req.GetResolutions()))
	for i, r := range req.GetResolutions() {
		a := resolved.Answer{Names: r.GetNames(), TTL: time.Duration(r.GetTtlSeconds()) * time.Second}
		for j, b := range r.GetAddresses() {
			addr, ok := netip.AddrFromSlice(b)
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "resolutions[%d].addresses[%d]: %d bytes, want 4 or 16", i, j, len(b))
			}
			a.Addrs = append(a.Addrs, addr.Unmap())
		}
		answers = append(answers, a)
	}
	gen, learned := s.opts.DNS.Learn(pod.Unmap(), answers)
	s.opts.Metrics.learned(learned)
	if gen == 0 {
		if v := s.state.Current(); v != nil {
			gen = v.Generation
		}
	}
	return &tollgatev1.LearnResponse{Generation: gen}, nil
}

func verdict(allowed bool) tollgatev1.Verdict {
	if allowed {
		return tollgatev1.Verdict_VERDICT_ALLOW
	}
	return tollgatev1.Verdict_VERDICT_DENY
}

// tupleFromRequest validates a DecideRequest field by field.
func tupleFromRequest(req *tollgatev1.DecideRequest) (engine.Tuple, error) {
	src, err := netip.ParseAddr(req.GetSrcIp())
	if err != nil {
		return engine.Tuple{}, fmt.Errorf("src_ip: %q is not an IP address", req.GetSrcIp())
	}
	dst, err := netip.ParseAddr(req.GetDstIp())
	if err != nil {
		return engine.Tuple{}, fmt.Errorf("dst_ip: %q is not an IP address", req.GetDstIp())
	}
	if src.Zone() != "" {
		return engine.Tuple{}, fmt.Errorf("src_ip: %q: zoned addresses are not supported", req.GetSrcIp())
	}
	if dst.Zone() != "" {
		return engine.Tuple{}, fmt.Errorf("dst_ip: %q: zoned addresses are not supported", req.GetDstIp())
	}
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return engine.Tuple{}, fmt.Errorf("dst_ip: %s is not of the same address family as src_ip %s", dst, src)
	}
	if req.GetSrcPort() > 65535 {
		return engine.Tuple{}, fmt.Errorf("src_port: %d is greater than 65535", req.GetSrcPort())
	}
	if req.GetDstPort() > 65535 {
		return engine.Tuple{}, fmt.Errorf("dst_port: %d is greater than 65535", req.GetDstPort())
	}
	proto, err := protocol(req.GetProtocol())
	if err != nil {
		return engine.Tuple{}, err
	}
	return engine.Tuple{Src: src, Dst: dst, Proto: proto, DstPort: uint16(req.GetDstPort()), ViaService: req.GetViaService()}, nil
}

// tupleFromQuery validates a stream Query.
func tupleFromQuery(q *tollgatev1.Query) (engine.Tuple, error) {
	src, ok := netip.AddrFromSlice(q.GetSrcAddr())
	if !ok {
		return engine.Tuple{}, fmt.Errorf("src_addr: %d bytes, want 4 or 16", len(q.GetSrcAddr()))
	}
	dst, ok := netip.AddrFromSlice(q.GetDstAddr())
	if !ok {
		return engine.Tuple{}, fmt.Errorf("dst_addr: %d bytes, want 4 or 16", len(q.GetDstAddr()))
	}
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return engine.Tuple{}, errors.New("dst_addr: not of the same address family as src_addr")
	}
	if q.GetDstPort() > 65535 {
		return engine.Tuple{}, fmt.Errorf("dst_port: %d is greater than 65535", q.GetDstPort())
	}
	proto, err := protocol(q.GetProtocol())
	if err != nil {
		return engine.Tuple{}, err
	}
	return engine.Tuple{Src: src, Dst: dst, Proto: proto, DstPort: uint16(q.GetDstPort()), ViaService: q.GetViaService()}, nil
}

func protocol(p tollgatev1.Protocol) (engine.Protocol, error) {
	switch p {
	case tollgatev1.Protocol_PROTOCOL_TCP:
		return engine.ProtocolTCP, nil
	case tollgatev1.Protocol_PROTOCOL_UDP:
		return engine.ProtocolUDP, nil
	case tollgatev1.Protocol_PROTOCOL_SCTP:
		return engine.ProtocolSCTP, nil
	case tollgatev1.Protocol_PROTOCOL_ICMP:
		return engine.ProtocolICMP, nil
	case tollgatev1.Protocol_PROTOCOL_UNSPECIFIED:
		return 0, errors.New("protocol: must be set (PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOL_SCTP or PROTOCOL_ICMP)")
	}
	return 0, fmt.Errorf("protocol: unknown value %d", int32(p))
}
