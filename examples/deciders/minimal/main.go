// Command minimal is the smallest complete Tollgate decider plugin in Go:
// it serves tollgate.v1.DeciderService on a Unix socket from a JSON file of
// pods, each optionally accepting connections only from some prefixes to
// some ports:
//
//	{"pods": [
//	  {"name": "x/a", "node": "node-1", "ips": ["10.99.1.1"]},
//	  {"name": "y/b", "node": "node-1", "ips": ["10.99.1.2", "fd00:99:1::2"],
//	   "allowFrom": ["10.99.1.1/32"], "ports": [80]}
//	]}
//
// A pod with allowFrom is isolated for ingress: a connection to it passes
// when its source is in one of the prefixes and its destination port is
// listed (no ports: every port, and ICMP). Egress is never restricted. The
// file is read again every second; a bad file keeps the previous policy.
//
// It takes the simplest correct way through the contract: every Watch
// message sets changed_all, so the queuer drops its caches at each change
// instead of keeping the verdicts a change does not touch.
//
//	minimal --policy pods.json --socket /run/tollgate/decider.sock --node-name node-1
//	minimal healthcheck --socket /run/tollgate/decider.sock
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// pod is one entry of the policy file.
type pod struct {
	Name      string         `json:"name"`
	Node      string         `json:"node"`
	IPs       []netip.Addr   `json:"ips"`
	AllowFrom []netip.Prefix `json:"allowFrom"` // nil: not isolated
	Ports     []uint16       `json:"ports"`
}

// policy is one loaded file at one generation.
type policy struct {
	generation uint64
	pods       []*pod
	byAddr     map[netip.Addr]*pod
}

func parse(b []byte) (*policy, error) {
	var f struct {
		Pods []*pod `json:"pods"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	p := &policy{pods: f.Pods, byAddr: map[netip.Addr]*pod{}}
	for i, pd := range f.Pods {
		if pd.Name == "" || len(pd.IPs) == 0 {
			return nil, fmt.Errorf("pods[%d]: a pod needs a name and an address", i)
		}
		for _, a := range pd.IPs {
			if _, dup := p.byAddr[a.Unmap()]; dup {
				return nil, fmt.Errorf("pods[%d]: %s is listed twice", i, a)
			}
			p.byAddr[a.Unmap()] = pd
		}
	}
	return p, nil
}

// conn is a validated connection.
type conn struct {
	src, dst netip.Addr
	proto    tollgatev1.Protocol
	port     uint32
	via      bool
}

// validate checks what Decide and DecideStream share; srcField and
// dstField are the names of the address fields, for the error.
func validate(c conn, srcOK, dstOK bool, srcField, dstField string, srcPort uint32) (conn, error) {
	switch {
	case !srcOK:
		return c, fmt.Errorf("%s: not an IP address", srcField)
	case !dstOK:
		return c, fmt.Errorf("%s: not an IP address", dstField)
	case c.src.Unmap().Is4() != c.dst.Unmap().Is4():
		return c, fmt.Errorf("%s: not of the same address family as %s", dstField, srcField)
	case srcPort > 65535:
		return c, fmt.Errorf("src_port: %d is greater than 65535", srcPort)
	case c.port > 65535:
		return c, fmt.Errorf("dst_port: %d is greater than 65535", c.port)
	case c.proto == tollgatev1.Protocol_PROTOCOL_UNSPECIFIED:
		return c, errors.New("protocol: must be set")
	case c.proto > tollgatev1.Protocol_PROTOCOL_ICMP || c.proto < 0:
		return c, fmt.Errorf("protocol: unknown value %d", c.proto)
	}
	c.src, c.dst = c.src.Unmap(), c.dst.Unmap()
	return c, nil
}

// decide judges c: the egress side is always allowed; the ingress side of
// an isolated pod needs a matching source and port.
func (p *policy) decide(c conn) (bool, []*tollgatev1.Explanation) {
	from, to := p.byAddr[c.src], p.byAddr[c.dst]
	if from != nil && from == to && !c.via {
		return true, nil // a pod reaching itself directly: not subject to policy
	}
	var exps []*tollgatev1.Explanation
	if from != nil {
		exps = append(exps, explain(from, tollgatev1.Direction_DIRECTION_EGRESS, tollgatev1.Tier_TIER_DEFAULT, true, "egress is never restricted"))
	}
	if to == nil {
		return true, exps
	}
	if to.AllowFrom == nil {
		return true, append(exps, explain(to, tollgatev1.Direction_DIRECTION_INGRESS, tollgatev1.Tier_TIER_DEFAULT, true, "not isolated"))
	}
	portOK := len(to.Ports) == 0 || c.proto != tollgatev1.Protocol_PROTOCOL_ICMP && slices.Contains(to.Ports, uint16(c.port))
	srcOK := slices.ContainsFunc(to.AllowFrom, func(pf netip.Prefix) bool { return pf.Contains(c.src) })
	allow := portOK && srcOK
	e := explain(to, tollgatev1.Direction_DIRECTION_INGRESS, tollgatev1.Tier_TIER_NETWORK_POLICY, allow, "source or port not in allowFrom/ports")
	e.Policy = &tollgatev1.PolicyRef{Kind: "MinimalAllowFrom", Name: to.Name}
	if allow {
		e.Rule, e.Reason = &tollgatev1.RuleRef{}, "source and port allowed"
	}
	return allow, append(exps, e)
}

func explain(p *pod, dir tollgatev1.Direction, tier tollgatev1.Tier, allow bool, reason string) *tollgatev1.Explanation {
	ns, name, ok := strings.Cut(p.Name, "/")
	if !ok {
		ns, name = "", p.Name
	}
	v, a := tollgatev1.Verdict_VERDICT_DENY, tollgatev1.Action_ACTION_DENY
	if allow {
		v, a = tollgatev1.Verdict_VERDICT_ALLOW, tollgatev1.Action_ACTION_ALLOW
	}
	return &tollgatev1.Explanation{Direction: dir, Pod: &tollgatev1.PodRef{Namespace: ns, Name: name}, Tier: tier, Action: a, Verdict: v, Reason: p.Name + ": " + reason}
}

// server serves the current policy.
type server struct {
	tollgatev1.UnimplementedDeciderServiceServer
	node     string
	instance string

	mu      sync.Mutex
	cur     *policy
	changed chan struct{} // closed and replaced at every new policy
}

func (s *server) current() (*policy, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, s.changed
}

func (s *server) publish(p *policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.generation = 1
	if s.cur != nil {
		p.generation = s.cur.generation + 1
	}
	s.cur = p
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *server) Decide(_ context.Context, r *tollgatev1.DecideRequest) (*tollgatev1.DecideResponse, error) {
	src, errS := netip.ParseAddr(r.GetSrcIp())
	dst, errD := netip.ParseAddr(r.GetDstIp())
	c, err := validate(conn{src, dst, r.GetProtocol(), r.GetDstPort(), r.GetViaService()},
		errS == nil && src.Zone() == "", errD == nil && dst.Zone() == "", "src_ip", "dst_ip", r.GetSrcPort())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	p, _ := s.current()
	if p == nil {
		return nil, status.Error(codes.Unavailable, "no policy loaded yet")
	}
	allow, exps := p.decide(c)
	return &tollgatev1.DecideResponse{Verdict: verdict(allow), Generation: p.generation, Explanations: exps}, nil
}

func (s *server) DecideStream(stream tollgatev1.DeciderService_DecideStreamServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p, _ := s.current()
		resp := &tollgatev1.DecideStreamResponse{}
		for _, q := range req.GetQueries() {
			src, okS := netip.AddrFromSlice(q.GetSrcAddr())
			dst, okD := netip.AddrFromSlice(q.GetDstAddr())
			r := &tollgatev1.Result{Id: q.GetId()}
			c, err := validate(conn{src, dst, q.GetProtocol(), q.GetDstPort(), q.GetViaService()}, okS, okD, "src_addr", "dst_addr", 0)
			switch {
			case err != nil:
				r.Error = err.Error()
			case p == nil:
				r.Error = "no policy loaded yet"
			default:
				allow, _ := p.decide(c)
				r.Verdict, r.Generation = verdict(allow), p.generation
			}
			resp.Results = append(resp.Results, r)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Watch sends the whole state at every generation, always with
// changed_all: correct, if not the cheapest for the queuer.
func (s *server) Watch(r *tollgatev1.WatchRequest, stream tollgatev1.DeciderService_WatchServer) error {
	node := r.GetNodeName()
	if node == "" {
		node = s.node
	}
	var sent uint64
	for {
		p, changed := s.current()
		if p != nil && p.generation != sent {
			m := &tollgatev1.WatchResponse{Generation: p.generation, Instance: s.instance, ChangedAll: true}
			var sel []netip.Addr
			for _, pd := range p.pods {
				if pd.Node == node && pd.AllowFrom != nil {
					for _, a := range pd.IPs {
						sel = append(sel, a.Unmap())
					}
				}
			}
			slices.SortFunc(sel, netip.Addr.Compare)
			for _, a := range sel {
				if a.Is4() {
					m.SelectedIpv4 = append(m.SelectedIpv4, a.AsSlice())
				} else {
					m.SelectedIpv6 = append(m.SelectedIpv6, a.AsSlice())
				}
			}
			if err := stream.Send(m); err != nil {
				return err
			}
			sent = p.generation
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func verdict(allow bool) tollgatev1.Verdict {
	if allow {
		return tollgatev1.Verdict_VERDICT_ALLOW
	}
	return tollgatev1.Verdict_VERDICT_DENY
}

// watchFile loads path now and whenever its content changes.
func watchFile(ctx context.Context, path string, s *server, hs *health.Server) {
	var last []byte
	for {
		b, err := os.ReadFile(path)
		switch {
		case err != nil:
			log.Printf("reading %s: %v", path, err)
		case string(b) != string(last):
			last = b
			if p, err := parse(b); err != nil {
				log.Printf("%s: %v; keeping the previous policy", path, err)
			} else {
				s.publish(p)
				log.Printf("loaded %s: %d pods, generation %d", path, len(p.pods), p.generation)
				hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
				hs.SetServingStatus(tollgatev1.DeciderService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// listen creates the socket with mode 0660, replacing a stale one.
func listen(path string) (net.Listener, error) {
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("another process is serving on %s", path)
	}
	_ = os.Remove(path)
	old := syscall.Umask(0o117)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	return l, os.Chmod(path, 0o660)
}

func serve(policyPath, socket, node string) error {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	s := &server{node: node, instance: hex.EncodeToString(id), changed: make(chan struct{})}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(tollgatev1.DeciderService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	l, err := listen(socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	tollgatev1.RegisterDeciderServiceServer(g, s)
	healthpb.RegisterHealthServer(g, hs)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go watchFile(ctx, policyPath, s, hs)
	go func() {
		<-ctx.Done()
		hs.Shutdown() // NOT_SERVING
		// Watch streams end with their contexts; give the rest a moment.
		t := time.AfterFunc(2*time.Second, g.Stop)
		g.GracefulStop()
		t.Stop()
	}()
	log.Printf("serving on %s for node %q, instance %s", socket, node, s.instance)
	return g.Serve(l)
}

func healthcheck(socket string) error {
	c, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{Service: tollgatev1.DeciderService_ServiceDesc.ServiceName})
	if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		err = fmt.Errorf("status %v", r.GetStatus())
	}
	return err
}

func main() {
	args := os.Args[1:]
	check := len(args) > 0 && args[0] == "healthcheck"
	if check {
		args = args[1:]
	}
	fs := flag.NewFlagSet("minimal", flag.ExitOnError)
	policyPath := fs.String("policy", "", "JSON file of pods (required)")
	socket := fs.String("socket", "/run/tollgate/decider.sock", "Unix socket to serve on")
	node := fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	_ = fs.Parse(args)
	var err error
	switch {
	case check:
		err = healthcheck(*socket)
	case *policyPath == "":
		err = errors.New("--policy is required")
	default:
		err = serve(*policyPath, *socket, *node)
	}
	if err != nil {
		log.Fatal(err)
	}
}
