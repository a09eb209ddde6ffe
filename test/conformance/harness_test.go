// Package conformance runs the whole system against a real apiserver: two
// simulated nodes in network namespaces, the upstream e2e pod model (x, y, z
// × a, b, c), one unprivileged decider per node using the shipped RBAC, one
// queuer per node, policies applied with kubectl, and real TCP, UDP and SCTP
// probes compared with an expected truth table.
package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/internal/testenv"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/netsim"
	pm "github.com/tollgate/tollgate/test/policymodel"
)

// The pod model (test/policymodel): a and b run on node-1, c on node-2.
type (
	target      = pm.Target
	cell        = pm.Cell
	expectation = pm.Expectation
)

var (
	namespaces, podNames, podKeys        = pm.Namespaces, pm.PodNames, pm.PodKeys
	ns, name, allowAll                   = pm.NS, pm.Name, pm.AllowAll
	np, anp, banp, cnp                   = pm.NP, pm.ANP, pm.BANP, pm.CNP
	tcp80, tcp81, udp80, sctp80, tcp80v6 = pm.TCP80, pm.TCP81, pm.UDP80, pm.SCTP80, pm.TCP80v6
)

// env is the running system shared by all cases.
type env struct {
	cluster *cluster.Cluster
	topo    *netsim.Topology
	nodes   map[string]*netsim.Node
	pods    map[string]*netsim.Pod // by "ns/name"
	sockets []string               // one decider socket per node
	clients []tollgatev1.DeciderServiceClient
	workDir string
	procs   []*proc.Proc
}

var sys *env

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return testenv.SkipMain("conformance tests need root")
	}
	if _, err := cluster.KubeAPIServerPath(); err != nil {
		return testenv.SkipMain("%v", err)
	}
	e, err := setup()
	if e != nil {
		defer e.teardown()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		if e != nil {
			e.dumpLogs()
		}
		return 1
	}
	sys = e
	code := m.Run()
	if code != 0 {
		e.dumpLogs()
	}
	return code
}

func setup() (*env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "tollgate-conformance-")
	if err != nil {
		return nil, err
	}
	// The deciders run as uid 65532: they must reach their kubeconfig and
	// socket directory.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	e := &env{workDir: work, nodes: map[string]*netsim.Node{}, pods: map[string]*netsim.Pod{}}
	for _, b := range []string{"decider", "queuer"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(work, b), "github.com/tollgate/tollgate/"+b).CombinedOutput()
		if err != nil {
			return e, fmt.Errorf("build %s: %v\n%s", b, err, out)
		}
	}
	e.cluster, err = cluster.Start(ctx, cluster.Options{CRDs: []cluster.CRDSet{cluster.AdminNetworkPolicyCRDs, cluster.ClusterNetworkPolicyCRDs}})
	if err != nil {
		return e, err
	}
	if e.topo, err = netsim.New("tgcf"); err != nil {
		return e, err
	}
	for i, name := range []string{"node-1", "node-2"} {
		n, err := e.topo.AddNode(name, netip.MustParsePrefix(fmt.Sprintf("10.210.%d.0/24", i+1)), netip.MustParsePrefix(fmt.Sprintf("fd00:210:%d::/64", i+1)))
		if err != nil {
			return e, err
		}
		e.nodes[name] = n
		if _, err := e.cluster.CreateNode(ctx, name, map[string]string{"kubernetes.io/hostname": name, "node-index": fmt.Sprint(i + 1)},
			[]string{n.IPv4.String(), n.IPv6.String()}); err != nil {
			return e, err
		}
	}
	if err := e.topo.ConnectNodes(e.nodes["node-1"], e.nodes["node-2"]); err != nil {
		return e, err
	}
	for _, n := range e.nodes {
		if err := e.topo.ServeTCP(n, 80); err != nil {
			return e, err
		}
	}
	client := e.cluster.Client()
	for ni, ns := range namespaces {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}}, metav1.CreateOptions{}); err != nil {
			return e, err
		}
		for pi, p := range podNames {
			nodeIdx := 1
			if p == "c" {
				nodeIdx = 2
			}
			node := e.nodes[fmt.Sprintf("node-%d", nodeIdx)]
			ip4 := netip.MustParseAddr(fmt.Sprintf("10.210.%d.%d", nodeIdx, 10*(ni+1)+pi))
			ip6 := netip.MustParseAddr(fmt.Sprintf("fd00:210:%d::%d", nodeIdx, 10*(ni+1)+pi))
			np, err := e.topo.AddPod(node, ns+"-"+p, ip4, ip6)
			if err != nil {
				return e, err
			}
			for _, port := range []uint16{80, 81} {
				for _, serve := range []func(netsim.Host, uint16) error{e.topo.ServeTCP, e.topo.ServeUDP, e.topo.ServeSCTP} {
					if err := serve(np, port); err != nil {
						return e, err
					}
				}
			}
			e.pods[ns+"/"+p] = np
			if err := e.createPod(ctx, ns, p, node.Name, ip4, ip6); err != nil {
				return e, err
			}
		}
	}
	if err := e.installRBAC(ctx); err != nil {
		return e, err
	}
	token, err := e.cluster.ServiceAccountToken("kube-system", "tollgate", 2*time.Hour)
	if err != nil {
		return e, err
	}
	kubeconfig, err := e.cluster.WriteKubeconfigForToken(token)
	if err != nil {
		return e, err
	}
	// Copy it where uid 65532 can read it.
	kc := filepath.Join(work, "decider.kubeconfig")
	b, err := os.ReadFile(kubeconfig)
	if err != nil {
		return e, err
	}
	if err := os.WriteFile(kc, b, 0o644); err != nil {
		return e, err
	}
	for i, name := range []string{"node-1", "node-2"} {
		if err := e.startNode(i, name, kc); err != nil {
			return e, err
		}
	}
	return e, nil
}

func (e *env) createPod(ctx context.Context, ns, name, node string, ip4, ip6 netip.Addr) error {
	var ports []corev1.ContainerPort
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		for _, port := range []int32{80, 81} {
			ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), ContainerPort: port, Protocol: proto})
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "agnhost", Ports: ports}}},
	}
	created, err := e.cluster.Client().CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	_, err = e.cluster.SetPodStatus(ctx, created, []string{ip4.String(), ip6.String()}, corev1.PodRunning)
	return err
}

// installRBAC applies the shipped ANP flavour and adds the ClusterNetworkPolicy
// rule of the CNP flavour under another name, so the decider may watch both
// API generations with exactly the rules we ship.
func (e *env) installRBAC(ctx context.Context) error {
	manifest, err := deploy.Manifest(deploy.AdminNetworkPolicy)
	if err != nil {
		return err
	}
	if out, err := e.cluster.KubectlWithInput(string(manifest), "apply", "--server-side", "-f", "-"); err != nil {
		return fmt.Errorf("apply install-anp.yaml: %v\n%s", err, out)
	}
	objs, err := deploy.Objects(deploy.ClusterNetworkPolicy)
	if err != nil {
		return err
	}
	rbac := e.cluster.Client().RbacV1()
	for _, o := range objs {
		switch r := o.(type) {
		case *rbacv1.ClusterRole:
			r.Name = "tollgate-cnp"
			if _, err := rbac.ClusterRoles().Create(ctx, r, metav1.CreateOptions{}); err != nil {
				return err
			}
		case *rbacv1.ClusterRoleBinding:
			r.Name, r.RoleRef.Name = "tollgate-cnp", "tollgate-cnp"
			if _, err := rbac.ClusterRoleBindings().Create(ctx, r, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *env) startNode(i int, name, kubeconfig string) error {
	dir := filepath.Join(e.workDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chown(dir, 65532, 65532); err != nil {
		return err
	}
	sock := filepath.Join(dir, "decider.sock")
	dec := exec.Command(filepath.Join(e.workDir, "decider"), "--kubeconfig", kubeconfig, "--socket", sock,
		"--node-name", name, "--metrics-bind-address", "")
	dec.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
	if err := e.start(name+"-decider", dec); err != nil {
		return err
	}
	if err := waitFor(30*time.Second, func() bool {
		return exec.Command(filepath.Join(e.workDir, "decider"), "healthcheck", "--socket", sock).Run() == nil
	}); err != nil {
		return fmt.Errorf("decider on %s never became SERVING", name)
	}
	q := exec.Command("ip", "netns", "exec", e.nodes[name].NS, filepath.Join(e.workDir, "queuer"),
		"--decider-socket", sock, "--node-name", name, "--queues", "2", "--nfqueue-id", fmt.Sprint(100+10*i),
		"--metrics-bind-address", "127.0.0.1:9080")
	if err := e.start(name+"-queuer", q); err != nil {
		return err
	}
	if err := waitFor(20*time.Second, func() bool {
		out, err := netsim.Exec(e.nodes[name].NS, "nft", "list", "table", "inet", "tollgate")
		return err == nil && strings.Contains(out, "selected4")
	}); err != nil {
		return fmt.Errorf("queuer on %s never installed its table", name)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	e.sockets = append(e.sockets, sock)
	e.clients = append(e.clients, tollgatev1.NewDeciderServiceClient(conn))
	return nil
}

func (e *env) start(name string, cmd *exec.Cmd) error {
	p, err := proc.Start(cmd, filepath.Join(e.workDir, name+".log"))
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	e.procs = append(e.procs, p)
	return nil
}

func (e *env) teardown() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].Stop()
	}
	if e.topo != nil {
		_ = e.topo.Close()
	}
	if e.cluster != nil {
		e.cluster.Stop()
	}
	_ = os.RemoveAll(e.workDir)
}

func (e *env) dumpLogs() {
	for _, p := range e.procs {
		b := p.Log()
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		fmt.Fprintf(os.Stderr, "--- %s (tail) ---\n%s\n", filepath.Base(p.LogPath()), b)
	}
}

func waitFor(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// generations returns every decider's current generation.
func (e *env) generations(ctx context.Context) ([]uint64, error) {
	var out []uint64
	for _, c := range e.clients {
		r, err := c.Decide(ctx, &tollgatev1.DecideRequest{SrcIp: "192.0.2.1", DstIp: "192.0.2.2", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 1})
		if err != nil {
			return nil, err
		}
		out = append(out, r.GetGeneration())
	}
	return out, nil
}

// explain asks the first decider why a connection gets its verdict.
func (e *env) explain(from, to string, proto netsim.Proto, port uint16, v6 bool) string {
	p := map[netsim.Proto]tollgatev1.Protocol{netsim.TCP: tollgatev1.Protocol_PROTOCOL_TCP, netsim.UDP: tollgatev1.Protocol_PROTOCOL_UDP, netsim.SCTP: tollgatev1.Protocol_PROTOCOL_SCTP}[proto]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := e.clients[0].Decide(ctx, &tollgatev1.DecideRequest{SrcIp: e.addr(from, v6).String(), DstIp: e.addr(to, v6).String(), Protocol: p, DstPort: uint32(port)})
	if err != nil {
		return err.Error()
	}
	var reasons []string
	for _, x := range r.GetExplanations() {
		reasons = append(reasons, x.GetReason())
	}
	b, _ := json.Marshal(reasons)
	return fmt.Sprintf("%s gen %d %s", r.GetVerdict(), r.GetGeneration(), b)
}

// explainAddr asks the first decider about pod -> ip:80/TCP.
func (e *env) explainAddr(from string, ip netip.Addr) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := e.clients[0].Decide(ctx, &tollgatev1.DecideRequest{SrcIp: e.addr(from, false).String(), DstIp: ip.String(), Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 80})
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%s gen %d", r.GetVerdict(), r.GetGeneration())
}

func (e *env) addr(pod string, v6 bool) netip.Addr {
	if v6 {
		return e.pods[pod].IPv6
	}
	return e.pods[pod].IPv4
}

// probeAll probes every ordered pod pair for each target in parallel and
// returns the observed reachability.
func (e *env) probeAll(targets []target) map[cell]bool {
	type job struct{ c cell }
	var jobs []job
	for _, t := range targets {
		for _, from := range podKeys() {
			for _, to := range podKeys() {
				jobs = append(jobs, job{cell{From: from, To: to, T: t}})
			}
		}
	}
	out := make(map[cell]bool, len(jobs))
	var mu sync.Mutex
	ch := make(chan job)
	var wg sync.WaitGroup
	for range 48 {
		wg.Go(func() {
			for j := range ch {
				ok, _ := netsim.Probe(e.pods[j.c.From], e.addr(j.c.To, j.c.T.V6), j.c.T.Port, j.c.T.Proto, 800*time.Millisecond)
				mu.Lock()
				out[j.c] = ok
				mu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	return out
}

func grpcDial(sock string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
}
