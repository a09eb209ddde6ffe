package contract

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

func checkHealth(k *kit, c *checker) {
	for _, svc := range []string{"", tollgatev1.DeciderService_ServiceDesc.ServiceName} {
		ctx, cancel := k.call()
		r, err := k.health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		cancel()
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			c.errorf("Check %q: status %v, error %v; want SERVING", svc, r.GetStatus(), err)
		}
	}
	ctx, cancel := k.call()
	_, err := k.health.Check(ctx, &healthpb.HealthCheckRequest{Service: "tollgate.contract.NoSuchService"})
	cancel()
	if status.Code(err) != codes.NotFound {
		c.errorf("Check of an unknown service: %v; want the NotFound status", err)
	}
	ctx, cancel = k.call()
	defer cancel()
	w, err := k.health.Watch(ctx, &healthpb.HealthCheckRequest{Service: tollgatev1.DeciderService_ServiceDesc.ServiceName})
	if err == nil {
		var r *healthpb.HealthCheckResponse
		r, err = w.Recv()
		if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			c.errorf("Watch: first status %v, want SERVING", r.GetStatus())
		}
	}
	if err != nil {
		c.errorf("Watch: %v", describe(err))
	}
}

func checkVerdicts(k *kit, c *checker) {
	probes, answers := k.initial(c)
	for i, p := range probes {
		a := answers[i]
		if a.err != nil {
			c.errorf("%s: %v", p.what, describe(a.err))
			continue
		}
		if got, want := a.resp.GetVerdict(), verdictOf(p.allow); got != want {
			c.errorf("%s: %v, want %v", p.what, got, want)
		}
	}
	c.notef("%d connections asked", len(probes))
}

func checkExplanations(k *kit, c *checker) {
	probes, answers := k.initial(c)
	for i, p := range probes {
		if a := answers[i]; a.err == nil {
			explained(c, p, a.resp)
		}
	}
}

// checkPortRanges checks the destination port ranges Decide gives: each
// contains the asked port, and Decide at both its ends gives the same
// verdict. Ranges are optional: a decider that gives none passes.
func checkPortRanges(k *kit, c *checker) {
	probes, answers := k.initial(c)
	ranges, asked := 0, 0
	for i, p := range probes {
		a := answers[i]
		if a.err != nil || p.proto == tollgatev1.Protocol_PROTOCOL_ICMP {
			continue
		}
		lo, hi := a.resp.GetDstPortMin(), a.resp.GetDstPortMax()
		if lo == 0 && hi == 0 {
			continue
		}
		ranges++
		if lo > p.port || hi < p.port || hi > 65535 {
			c.errorf("%s: ports %d-%d do not contain the asked port", p.what, lo, hi)
			continue
		}
		for _, port := range []uint32{lo, hi} {
			if port == p.port {
				continue
			}
			q := p
			q.port = port
			asked++
			r, err := k.decide(q)
			switch {
			case err != nil:
				c.errorf("%s at port %d: %v", p.what, port, describe(err))
			case r.GetVerdict() != a.resp.GetVerdict():
				c.errorf("%s: %v for ports %d-%d, but %v at port %d", p.what, a.resp.GetVerdict(), lo, hi, r.GetVerdict(), port)
			}
		}
	}
	c.notef("%d answers gave a port range; %d of their ends asked", ranges, asked)
}

// explained checks the explanations of one answer.
func explained(c *checker, p probe, r *tollgatev1.DecideResponse) {
	exps := r.GetExplanations()
	denied := false
	for _, e := range exps {
		if e.GetVerdict() == tollgatev1.Verdict_VERDICT_DENY {
			denied = true
		}
	}
	if p.self() {
		// Not subject to policy: nothing to explain, and nothing may deny.
		if denied {
			c.errorf("%s: a pod reaching itself directly, but an explanation denies: %v", p.what, exps)
		}
		return
	}
	want := map[tollgatev1.Direction]*Pod{}
	if p.from.pod != nil {
		want[tollgatev1.Direction_DIRECTION_EGRESS] = p.from.pod
	}
	if p.to.pod != nil {
		want[tollgatev1.Direction_DIRECTION_INGRESS] = p.to.pod
	}
	if len(exps) != len(want) {
		c.errorf("%s: %d explanations, want %d (one per pod end: %v)", p.what, len(exps), len(want), directions(want))
		return
	}
	for _, e := range exps {
		pod, ok := want[e.GetDirection()]
		if !ok {
			c.errorf("%s: unexpected or repeated %v explanation", p.what, e.GetDirection())
			continue
		}
		delete(want, e.GetDirection())
		if e.GetTier() == tollgatev1.Tier_TIER_UNSPECIFIED {
			c.errorf("%s: %v explanation without a tier", p.what, e.GetDirection())
		}
		if v := e.GetVerdict(); v != tollgatev1.Verdict_VERDICT_ALLOW && v != tollgatev1.Verdict_VERDICT_DENY {
			c.errorf("%s: %v explanation with verdict %v", p.what, e.GetDirection(), v)
		}
		if ns, name, ok := strings.Cut(pod.Name, "/"); ok && (e.GetPod().GetNamespace() != ns || e.GetPod().GetName() != name) {
			c.errorf("%s: %v explanation names pod %s/%s, want %s", p.what, e.GetDirection(),
				e.GetPod().GetNamespace(), e.GetPod().GetName(), pod.Name)
		}
	}
	if denied != (r.GetVerdict() == tollgatev1.Verdict_VERDICT_DENY) {
		c.errorf("%s: verdict %v but the explanations say %v", p.what, r.GetVerdict(), exps)
	}
}

func directions(m map[tollgatev1.Direction]*Pod) []string {
	var out []string
	for _, d := range []tollgatev1.Direction{tollgatev1.Direction_DIRECTION_EGRESS, tollgatev1.Direction_DIRECTION_INGRESS} {
		if p, ok := m[d]; ok {
			out = append(out, strings.TrimPrefix(d.String(), "DIRECTION_")+" of "+p.Name)
		}
	}
	return out
}

// goodRequest is a valid request between two addresses of the
// expectations (any two addresses would do).
func (k *kit) goodRequest() *tollgatev1.DecideRequest {
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	var v4 []netip.Addr
	for _, p := range k.e.Pods {
		if p.v4.IsValid() {
			v4 = append(v4, p.v4)
		}
	}
	if len(v4) > 0 {
		src, dst = v4[0], v4[len(v4)-1]
	}
	return &tollgatev1.DecideRequest{SrcIp: src.String(), DstIp: dst.String(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, SrcPort: 40000, DstPort: 80}
}

func checkInvalid(k *kit, c *checker) {
	for _, bad := range []struct {
		what   string
		fields []string // the message must name one of these
		mutate func(*tollgatev1.DecideRequest)
	}{
		{"src_ip not an address", []string{"src_ip"}, func(r *tollgatev1.DecideRequest) { r.SrcIp = "10.244.1" }},
		{"dst_ip empty", []string{"dst_ip"}, func(r *tollgatev1.DecideRequest) { r.DstIp = "" }},
		{"mixed address families", []string{"dst_ip", "src_ip"}, func(r *tollgatev1.DecideRequest) { r.DstIp = "fd00:10:244:1::5" }},
		{"protocol unspecified", []string{"protocol"}, func(r *tollgatev1.DecideRequest) { r.Protocol = tollgatev1.Protocol_PROTOCOL_UNSPECIFIED }},
		{"protocol not in the enum", []string{"protocol"}, func(r *tollgatev1.DecideRequest) { r.Protocol = 99 }},
		{"dst_port above 65535", []string{"dst_port"}, func(r *tollgatev1.DecideRequest) { r.DstPort = 65536 }},
		{"src_port above 65535", []string{"src_port"}, func(r *tollgatev1.DecideRequest) { r.SrcPort = 70000 }},
	} {
		req := k.goodRequest()
		bad.mutate(req)
		ctx, cancel := k.call()
		_, err := k.api.Decide(ctx, req)
		cancel()
		if status.Code(err) != codes.InvalidArgument {
			c.errorf("%s: %v, want InvalidArgument", bad.what, err)
			continue
		}
		msg := status.Convert(err).Message()
		named := false
		for _, f := range bad.fields {
			named = named || strings.Contains(msg, f)
		}
		if !named {
			c.errorf("%s: message %q names none of %v", bad.what, msg, bad.fields)
		}
	}
	ctx, cancel := k.call()
	defer cancel()
	if _, err := k.api.Decide(ctx, k.goodRequest()); err != nil {
		c.errorf("a valid request (%v): %v", k.goodRequest(), err)
	}
}

// streamBatch is how many queries the kit puts in one DecideStream message.
const streamBatch = 9

func checkStream(k *kit, c *checker) {
	probes, answers := k.initial(c)
	if len(probes) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(k.ctx, 3*k.opts.CallTimeout)
	defer cancel()
	floor := k.gens.floor()
	stream, err := k.api.DecideStream(ctx)
	if err != nil {
		c.errorf("open: %v", describe(err))
		return
	}
	// Query ids are the probe index + 1; malformed queries have ids of
	// their own, far above.
	const badShort, badMixed = 1 << 40, 1<<40 + 1
	var batches [][]*tollgatev1.Query
	var batch []*tollgatev1.Query
	for i, p := range probes {
		batch = append(batch, query(uint64(i+1), p))
		if len(batch) == streamBatch || i == len(probes)-1 {
			batches = append(batches, batch)
			batch = nil
		}
	}
	// The malformed queries ride in the middle message, between good ones.
	mid := len(batches) / 2
	first := probes[0]
	batches[mid] = append(batches[mid],
		&tollgatev1.Query{Id: badShort, SrcAddr: []byte{10, 244, 1}, DstAddr: first.dst.AsSlice(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80},
		&tollgatev1.Query{Id: badMixed, SrcAddr: netip.MustParseAddr("10.0.0.1").AsSlice(), DstAddr: netip.MustParseAddr("fd00::1").AsSlice(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
	for _, b := range batches { // all sent before reading anything: pipelined
		if err := stream.Send(&tollgatev1.DecideStreamRequest{Queries: b}); err != nil {
			c.errorf("send: %v", describe(err))
			return
		}
	}
	want := len(probes) + 2
	seen := map[uint64]bool{}
	check := func(r *tollgatev1.Result) {
		id := r.GetId()
		if seen[id] {
			c.errorf("id %d answered twice", id)
		}
		seen[id] = true
		if id == badShort || id == badMixed {
			if r.GetError() == "" || r.GetVerdict() != tollgatev1.Verdict_VERDICT_UNSPECIFIED {
				c.errorf("malformed query %d: error %q, verdict %v; want an error and no verdict", id, r.GetError(), r.GetVerdict())
			}
			return
		}
		if id == 0 || id > uint64(len(probes)) {
			c.errorf("result for unknown id %d", id)
			return
		}
		p := probes[id-1]
		k.gens.observe(floor, r.GetGeneration(), "DecideStream "+p.what)
		if r.GetError() != "" || r.GetVerdict() != verdictOf(p.allow) {
			c.errorf("%s: verdict %v, error %q; want %v", p.what, r.GetVerdict(), r.GetError(), verdictOf(p.allow))
		} else if a := answers[int(id-1)]; a.err == nil && a.resp.GetVerdict() != r.GetVerdict() {
			c.errorf("%s: %v on the stream, %v from Decide", p.what, r.GetVerdict(), a.resp.GetVerdict())
		}
	}
	for len(seen) < want {
		resp, err := stream.Recv()
		if err != nil {
			c.errorf("%d of %d queries answered, then: %v", len(seen), want, describe(err))
			return
		}
		for _, r := range resp.GetResults() {
			check(r)
		}
	}
	// After the malformed queries the stream still answers.
	last := probes[len(probes)-1]
	const lastID = 1<<40 + 2
	if err := stream.Send(&tollgatev1.DecideStreamRequest{Queries: []*tollgatev1.Query{query(lastID, last)}}); err != nil {
		c.errorf("send after the malformed queries: %v", describe(err))
		return
	}
	resp, err := stream.Recv()
	switch {
	case err != nil:
		c.errorf("after the malformed queries the stream ended: %v", describe(err))
		return
	case len(resp.GetResults()) != 1 || resp.GetResults()[0].GetId() != lastID || resp.GetResults()[0].GetVerdict() != verdictOf(last.allow):
		c.errorf("after the malformed queries: %v, want id %d with %v", resp.GetResults(), lastID, verdictOf(last.allow))
	}
	if err := stream.CloseSend(); err != nil {
		c.errorf("close: %v", describe(err))
		return
	}
	if _, err := stream.Recv(); err == nil {
		c.errorf("a message after the client closed its side; want the end of the stream")
	} else if !errors.Is(err, io.EOF) {
		c.errorf("the stream ended with %v after the client closed its side; want a clean end", describe(err))
	}
	c.notef("%d queries in %d messages, %d malformed", want+1, len(batches)+1, 2)
}

func query(id uint64, p probe) *tollgatev1.Query {
	return &tollgatev1.Query{Id: id, SrcAddr: p.src.AsSlice(), DstAddr: p.dst.AsSlice(), Protocol: p.proto, DstPort: p.port, ViaService: p.via}
}
