// Package contract is the conformance kit for deciders: it checks, over the
// public gRPC contract only, that a decider serving the example cluster and
// policies (deploy/examples) answers as the contract says. Alternative
// decider plugins run it against their own socket:
//
//	go test ./test/contract/ -args -contract.socket=/run/my-decider.sock
//
// Without -contract.socket it builds Tollgate's decider, starts it on the
// examples and checks that (this is how it runs in make test).
// docs/decider-contract.md lists the rules it checks.
package contract

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tollgate/tollgate/deploy/examples"
	"github.com/tollgate/tollgate/internal/proc"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

var (
	socketFlag = flag.String("contract.socket", "", "Unix socket of a running decider loaded with deploy/examples (empty: build and start Tollgate's)")
	nodeFlag   = flag.String("contract.node", "node-1", "node name whose selected pods Watch reports")
)

// client is the decider under test, set up by TestMain.
var client tollgatev1.DeciderServiceClient
var conn *grpc.ClientConn

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	sock := *socketFlag
	if sock == "" {
		dir, err := os.MkdirTemp("", "tollgate-contract-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		stop, err := startDecider(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "start the decider:", err)
			return 1
		}
		defer stop()
		sock = filepath.Join(dir, "decider.sock")
	}
	var err error
	conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	client = tollgatev1.NewDeciderServiceClient(conn)
	if err := waitServing(30 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// startDecider builds the decider and starts it on the embedded examples.
func startDecider(dir string) (func(), error) {
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		return nil, err
	}
	for _, name := range []string{"cluster.yaml", "policies.yaml"} {
		b, err := examples.FS.ReadFile(name)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(manifests, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(dir, "decider")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tollgate/tollgate/decider").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build: %v\n%s", err, out)
	}
	p, err := proc.Start(exec.Command(bin, "--manifests", manifests, "--socket", filepath.Join(dir, "decider.sock"),
		"--node-name", *nodeFlag, "--metrics-bind-address", ""), filepath.Join(dir, "decider.log"))
	if err != nil {
		return nil, err
	}
	return p.Stop, nil
}

func waitServing(limit time.Duration) error {
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: tollgatev1.DeciderService_ServiceDesc.ServiceName})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the decider is not SERVING after %v: %v %v", limit, r.GetStatus(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// grid is the verdict table of deploy/examples/README.md: pod names, their
// addresses and, for every ordered pair, whether TCP port 80 is allowed.
type grid struct {
	pods  []string
	addrs map[string][2]netip.Addr // v4, v6
	allow map[[2]string]bool
}

// readGrid parses the example README: the pod table and the verdict grid.
func readGrid(t *testing.T) grid {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "examples", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	g := grid{addrs: map[string][2]netip.Addr{}, allow: map[[2]string]bool{}}
	var cols []string
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		switch {
		case len(cells) == 3:
			v4, err4 := netip.ParseAddr(cells[1])
			v6, err6 := netip.ParseAddr(cells[2])
			if err4 == nil && err6 == nil {
				g.pods = append(g.pods, cells[0])
				g.addrs[cells[0]] = [2]netip.Addr{v4, v6}
			}
		case len(cells) == 10 && cells[0] == "from \\ to":
			cols = cells[1:]
		case len(cells) == 10 && cols != nil && g.addrs[strings.Trim(cells[0], "*")] != [2]netip.Addr{}:
			from := strings.Trim(cells[0], "*")
			for i, to := range cols {
				g.allow[[2]string{from, to}] = cells[i+1] == "."
			}
		}
	}
	if len(g.pods) != 9 || len(g.allow) != 81 {
		t.Fatalf("README: found %d pods and %d grid cells, want 9 and 81", len(g.pods), len(g.allow))
	}
	return g
}

// TestHealth: the standard gRPC health service reports SERVING for the
// server and for tollgate.v1.DeciderService.
func TestHealth(t *testing.T) {
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", tollgatev1.DeciderService_ServiceDesc.ServiceName} {
		r, err := hc.Check(ctx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v %v, want SERVING", svc, r.GetStatus(), err)
		}
	}
}

// TestVerdictGrid: Decide gives the README's verdict for every pair of
// example pods on TCP 80, over IPv4 and IPv6, with a generation and one
// explanation per direction whose verdicts agree with the answer.
func TestVerdictGrid(t *testing.T) {
	g := readGrid(t)
	for _, family := range []int{0, 1} {
		for _, from := range g.pods {
			for _, to := range g.pods {
				req := &tollgatev1.DecideRequest{
					SrcIp: g.addrs[from][family].String(), DstIp: g.addrs[to][family].String(),
					Protocol: tollgatev1.Protocol_PROTOCOL_TCP, SrcPort: 40000, DstPort: 80,
				}
				r, err := client.Decide(ctx(t), req)
				if err != nil {
					t.Fatalf("Decide %s -> %s: %v", from, to, err)
				}
				want := tollgatev1.Verdict_VERDICT_DENY
				if g.allow[[2]string{from, to}] {
					want = tollgatev1.Verdict_VERDICT_ALLOW
				}
				if r.GetVerdict() != want {
					t.Errorf("%s -> %s:80 (%s): %v, README says %v", from, to, req.GetDstIp(), r.GetVerdict(), want)
				}
				if r.GetGeneration() == 0 {
					t.Errorf("%s -> %s: generation 0", from, to)
				}
				checkExplanations(t, fmt.Sprintf("%s -> %s", from, to), r, from != to)
			}
		}
	}
}

// checkExplanations: between two pods there is one explanation per
// direction (none when a pod reaches itself directly: not subject to
// policy); the answer is ALLOW exactly when no explanation denies.
func checkExplanations(t *testing.T, what string, r *tollgatev1.DecideResponse, both bool) {
	t.Helper()
	exps := r.GetExplanations()
	if both && len(exps) != 2 {
		t.Errorf("%s: %d explanations, want egress and ingress", what, len(exps))
		return
	}
	denied := false
	for _, e := range exps {
		if e.GetVerdict() == tollgatev1.Verdict_VERDICT_DENY {
			denied = true
		}
		if e.GetDirection() == tollgatev1.Direction_DIRECTION_UNSPECIFIED || e.GetTier() == tollgatev1.Tier_TIER_UNSPECIFIED {
			t.Errorf("%s: explanation without direction or tier: %v", what, e)
		}
	}
	if len(exps) > 0 && denied != (r.GetVerdict() == tollgatev1.Verdict_VERDICT_DENY) {
		t.Errorf("%s: verdict %v but explanations %v", what, r.GetVerdict(), exps)
	}
}

// TestDecideRejectsBadRequests: malformed requests get InvalidArgument.
func TestDecideRejectsBadRequests(t *testing.T) {
	good := func() *tollgatev1.DecideRequest {
		return &tollgatev1.DecideRequest{SrcIp: "10.244.1.1", DstIp: "10.244.1.5", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}
	}
	for name, mutate := range map[string]func(*tollgatev1.DecideRequest){
		"src_ip not an address":    func(r *tollgatev1.DecideRequest) { r.SrcIp = "10.244.1" },
		"dst_ip empty":             func(r *tollgatev1.DecideRequest) { r.DstIp = "" },
		"mixed address families":   func(r *tollgatev1.DecideRequest) { r.DstIp = "fd00:10:244:1::5" },
		"protocol unspecified":     func(r *tollgatev1.DecideRequest) { r.Protocol = tollgatev1.Protocol_PROTOCOL_UNSPECIFIED },
		"dst_port above 65535":     func(r *tollgatev1.DecideRequest) { r.DstPort = 65536 },
		"src_port above 65535":     func(r *tollgatev1.DecideRequest) { r.SrcPort = 70000 },
		"protocol not in the enum": func(r *tollgatev1.DecideRequest) { r.Protocol = 99 },
	} {
		req := good()
		mutate(req)
		if _, err := client.Decide(ctx(t), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := client.Decide(ctx(t), good()); err != nil {
		t.Errorf("the good request: %v", err)
	}
}

// TestDecideStream: many queries in one message and several messages in
// flight; every id is answered exactly once with Decide's verdict and
// generation; a malformed query gets an error result and the stream goes on.
func TestDecideStream(t *testing.T) {
	g := readGrid(t)
	stream, err := client.DecideStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	type q struct {
		from, to string
	}
	want := map[uint64]q{}
	var id uint64
	var batch []*tollgatev1.Query
	const badID = 1 << 40
	send := func() {
		if err := stream.Send(&tollgatev1.DecideStreamRequest{Queries: batch}); err != nil {
			t.Fatal(err)
		}
		batch = nil
	}
	for _, from := range g.pods {
		for _, to := range g.pods {
			id++
			want[id] = q{from, to}
			batch = append(batch, &tollgatev1.Query{Id: id, SrcAddr: g.addrs[from][0].AsSlice(), DstAddr: g.addrs[to][0].AsSlice(),
				Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
		}
		send() // nine messages of nine queries, sent without waiting
	}
	batch = []*tollgatev1.Query{{Id: badID, SrcAddr: []byte{10, 244, 1}, DstAddr: g.addrs["x/a"][0].AsSlice(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80}}
	send()
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		for _, r := range resp.GetResults() {
			if seen[r.GetId()] {
				t.Errorf("id %d answered twice", r.GetId())
			}
			seen[r.GetId()] = true
			if r.GetId() == badID {
				if r.GetError() == "" || r.GetVerdict() != tollgatev1.Verdict_VERDICT_UNSPECIFIED {
					t.Errorf("malformed query: error %q, verdict %v; want an error and no verdict", r.GetError(), r.GetVerdict())
				}
				continue
			}
			c, ok := want[r.GetId()]
			if !ok {
				t.Errorf("result for unknown id %d", r.GetId())
				continue
			}
			v := tollgatev1.Verdict_VERDICT_DENY
			if g.allow[[2]string{c.from, c.to}] {
				v = tollgatev1.Verdict_VERDICT_ALLOW
			}
			if r.GetError() != "" || r.GetVerdict() != v || r.GetGeneration() == 0 {
				t.Errorf("%s -> %s: verdict %v generation %d error %q, want %v", c.from, c.to, r.GetVerdict(), r.GetGeneration(), r.GetError(), v)
			}
		}
	}
	if len(seen) != len(want)+1 {
		t.Errorf("%d of %d queries answered before the stream ended", len(seen), len(want)+1)
	}
}

// TestWatch: the first message has a generation, the instance and
// changed_all; the selected addresses are well formed, sorted, and are the
// node's pods that some policy selects (in the examples, every pod of
// node-1); Decide answers at the announced generation.
func TestWatch(t *testing.T) {
	g := readGrid(t)
	w, err := client.Watch(ctx(t), &tollgatev1.WatchRequest{NodeName: *nodeFlag})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetGeneration() == 0 || !first.GetChangedAll() {
		t.Errorf("first Watch message: generation %d, changed_all %v; want a generation and changed_all", first.GetGeneration(), first.GetChangedAll())
	}
	check := func(name string, raw [][]byte, size int, want []netip.Addr) {
		var got []netip.Addr
		for _, b := range raw {
			a, ok := netip.AddrFromSlice(b)
			if !ok || len(b) != size {
				t.Errorf("%s: %d-byte address %v", name, len(b), b)
				continue
			}
			got = append(got, a)
		}
		if !slices.IsSortedFunc(got, netip.Addr.Compare) {
			t.Errorf("%s not sorted: %v", name, got)
		}
		slices.SortFunc(want, netip.Addr.Compare)
		if !slices.Equal(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	var v4, v6 []netip.Addr
	for _, p := range g.pods {
		v4, v6 = append(v4, g.addrs[p][0]), append(v6, g.addrs[p][1])
	}
	check("selected_ipv4", first.GetSelectedIpv4(), 4, v4)
	check("selected_ipv6", first.GetSelectedIpv6(), 16, v6)
	r, err := client.Decide(ctx(t), &tollgatev1.DecideRequest{SrcIp: "10.244.1.1", DstIp: "10.244.1.5", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetGeneration() != first.GetGeneration() {
		t.Errorf("Decide answered at generation %d, Watch announced %d", r.GetGeneration(), first.GetGeneration())
	}
	// A watch for a node with no pods reports none, at the same generation.
	other, err := client.Watch(ctx(t), &tollgatev1.WatchRequest{NodeName: "no-such-node"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := other.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.GetSelectedIpv4())+len(m.GetSelectedIpv6()) != 0 || m.GetGeneration() != first.GetGeneration() {
		t.Errorf("watch of a node without pods: %d addresses at generation %d", len(m.GetSelectedIpv4())+len(m.GetSelectedIpv6()), m.GetGeneration())
	}
}
