package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tollgate/tollgate/test/bench"
	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/netsim"
)

const (
	nodeName = "scale-node"
	// probeNS holds the probe pods: client c (role=allowed), client x
	// (role=blocked) and server s.
	probeNS = "probe"
	// bgNodes carry the pods not on the simulated node.
	bgNodes = 100
	// servePort is the probed port; otherPort is served but never
	// admitted by the probe policies.
	servePort = 8080
	otherPort = 8081
)

// env is the running benchmark.
type env struct {
	cfg      config
	cluster  *cluster.Cluster
	loader   *bench.Loader
	topo     *netsim.Topology
	fwd      *bench.Forwarder
	node     bench.Node
	bins     bench.Binaries
	c, x, s  *netsim.Pod
	pods     int // pods created so far
	loadTime []loadStep
	// out receives heap profiles.
	out string
}

// loadStep is how long creating a batch of objects took.
type loadStep struct {
	What string
	N    int
	Took time.Duration
}

// change is one measured change.
type change struct {
	Enforcer string
	Round    int
	Kind     string
	// Allowed is the verdict the change leads to.
	Allowed bool
	// Latency runs from the apiserver's answer to the start of the first
	// probe connection with the new verdict; API is the request's round
	// trip.
	Latency, API time.Duration
	// Flaps counts probes in the second after that one that still got the
	// old verdict.
	Flaps int
	// Missed is set when the verdict did not change within the timeout.
	Missed bool `json:",omitempty"`
	// Compile is, for Tollgate, the time the decider spent building
	// snapshots between the change and its enforcement (from its
	// tollgate_decider_snapshot_build_seconds), and Compiles how many.
	Compile  time.Duration `json:",omitempty"`
	Compiles int           `json:",omitempty"`
	// Apply is, for Tollgate, the time the queuer spent putting the new
	// generations in force (tollgate_generation_apply_seconds, from the
	// announcement's arrival to the caches and sets updated).
	Apply time.Duration `json:",omitempty"`
}

// stageTimes are Tollgate's cumulative build and apply times, from its
// metrics (zero for other enforcers).
type stageTimes struct {
	build, builds, apply float64
}

// memory is one process's memory with the cluster loaded.
type memory struct {
	Enforcer, Process string
	Pods, Policies    int
	// RSS now and at its peak, Go heap in use (from its metrics), bytes.
	RSS, HWM, HeapInuse int64
	// HeapAfterGC is the heap in use after a forced collection (the live
	// heap, with --profile); Profile the heap profile's top functions.
	HeapAfterGC int64  `json:",omitempty"`
	Profile     string `json:",omitempty"`
	// RSSLater is the RSS again after the round of changes that followed
	// (the Go runtime returns freed memory to the system over minutes).
	RSSLater int64 `json:",omitempty"`
	// Ready is how long the enforcer took to start on these objects.
	Ready time.Duration
}

// results is what a run produces.
type results struct {
	Changes []change
	Memory  []memory
	Load    []loadStep
	Checks  []string
	Probe   struct{ Errors, Skipped int }
}

func run(ctx context.Context, cfg config) (err error) {
	sess, err := bench.StartSession(ctx, bench.SessionOptions{
		Name: "bench-scale", Out: cfg.out, Cache: cfg.cache, KNP: slices.Contains(cfg.enforcers, "knp-standard"), Profile: cfg.profile,
		TopologyPrefix: "tgbsc",
	})
	defer sess.Close(&err)
	if err != nil {
		return err
	}
	e := &env{cfg: cfg, cluster: sess.Cluster, loader: sess.Loader, topo: sess.Topo, bins: sess.Bins, out: sess.Out}
	defer func() {
		if e.fwd != nil {
			e.fwd.Close()
		}
	}()
	if err := e.setup(ctx, sess.Work); err != nil {
		return err
	}
	var res results
	measured := map[string]bool{}
	for r := range cfg.rounds {
		for i := range cfg.enforcers {
			name := cfg.enforcers[(i+r)%len(cfg.enforcers)]
			// tollgate-nft differs from tollgate in how its queuer
			// writes set elements only: its memory is not measured.
			chs, mem, chk, err := e.slot(ctx, name, r, !measured[name] && name != "tollgate-nft")
			sess.Machine.SampleLoad()
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", name, r+1, err)
			}
			measured[name] = true
			res.Changes = append(res.Changes, chs...)
			res.Memory = append(res.Memory, mem...)
			res.Checks = append(res.Checks, chk)
		}
	}
	if cfg.bigPods > 0 {
		if err := e.growPods(ctx, cfg.bigPods); err != nil {
			return err
		}
		for _, name := range cfg.enforcers {
			if name == "tollgate-nft" {
				continue
			}
			mem, err := e.memoryOnly(ctx, name)
			sess.Machine.SampleLoad()
			if err != nil {
				return fmt.Errorf("%s at %d pods: %w", name, cfg.bigPods, err)
			}
			res.Memory = append(res.Memory, mem...)
		}
	}
	res.Load = e.loadTime
	doc := cfg.doc
	if cfg.smoke {
		doc = ""
	}
	return sess.Finish(commandLine(cfg), res, func() string { return markdown(cfg, sess.Machine, res) },
		doc, "## Policy changes and memory at scale")
}

// setup builds the node and probe pods and loads the cluster: namespaces,
// nodes, pods, background policies and the probe policies.
func (e *env) setup(ctx context.Context, work string) error {
	cfg := e.cfg
	n, err := e.topo.AddNode(nodeName, netip.MustParsePrefix("10.88.0.0/24"), netip.MustParsePrefix("fd00:88::/64"))
	if err != nil {
		return err
	}
	e.node = bench.Node{NS: n.NS, Name: nodeName, Kubeconfig: e.cluster.Kubeconfig(), WorkDir: work}
	if e.fwd, err = bench.Forward(n.NS, "127.0.0.1:6443", e.cluster.APIServerAddr()); err != nil {
		return err
	}
	if e.node.NSKubeconfig, err = e.cluster.WriteAdminKubeconfigVia(e.fwd.Addr()); err != nil {
		return err
	}
	probes := []struct {
		pod    **netsim.Pod
		name   string
		ip     byte
		labels map[string]string
	}{
		{&e.c, "c", 10, map[string]string{"app": "probe-client", "role": "allowed"}},
		{&e.x, "x", 11, map[string]string{"app": "probe-client", "role": "blocked"}},
		{&e.s, "s", 12, map[string]string{"app": "probe-server"}},
	}
	var objs []bench.PodWithIPs
	for _, p := range probes {
		ip4 := netip.AddrFrom4([4]byte{10, 88, 0, p.ip})
		ip6 := netip.MustParseAddr(fmt.Sprintf("fd00:88::%x", p.ip))
		if *p.pod, err = e.topo.AddPod(n, "probe-"+p.name, ip4, ip6); err != nil {
			return err
		}
		objs = append(objs, bench.PodWithIPs{Pod: bench.Pod(probeNS, p.name, nodeName, p.labels), IPs: []string{ip4.String(), ip6.String()}})
	}
	for _, port := range []uint16{servePort, otherPort} {
		if err := e.topo.ServeTCP(e.s, port); err != nil {
			return err
		}
	}
	nss := []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: probeNS, Labels: map[string]string{"access": "yes", "team": "probe"}}}}
	for i := range cfg.namespaces {
		nss = append(nss, bench.Namespace(i))
	}
	bench.Step("loading %d namespaces, %d nodes", len(nss), bgNodes+1)
	if err := e.timed("namespaces", len(nss), func() error { return e.loader.Namespaces(ctx, nss) }); err != nil {
		return err
	}
	if _, err := e.cluster.CreateNode(ctx, nodeName, nil, []string{n.IPv4.String(), n.IPv6.String()}); err != nil {
		return err
	}
	for i := range bgNodes {
		if _, err := e.cluster.CreateNode(ctx, bgNodeName(i), nil, []string{fmt.Sprintf("172.31.%d.%d", i/250, i%250+1)}); err != nil {
			return err
		}
	}
	if err := e.loader.Pods(ctx, objs); err != nil {
		return err
	}
	if err := e.growPods(ctx, cfg.pods); err != nil {
		return err
	}
	nps := []*networkingv1.NetworkPolicy{denyAll(), base(servePort)}
	for k := range cfg.policies {
		nps = append(nps, bench.BackgroundPolicy(k, cfg.namespaces))
	}
	bench.Step("loading %d NetworkPolicies", len(nps))
	return e.timed("network policies", len(nps), func() error { return e.loader.Policies(ctx, nps) })
}

func bgNodeName(i int) string { return fmt.Sprintf("bg-node-%d", i) }

// growPods creates background pods until there are want; every
// pods/nodePods-th is on the simulated node.
func (e *env) growPods(ctx context.Context, want int) error {
	every := max(1, e.cfg.pods/e.cfg.nodePods)
	var objs []bench.PodWithIPs
	for i := e.pods; i < want; i++ {
		node := bgNodeName(i % bgNodes)
		if i%every == 0 {
			node = nodeName
		}
		objs = append(objs, bench.BackgroundPod(i, e.cfg.namespaces, node))
	}
	bench.Step("loading %d pods (%d in all)", len(objs), want)
	if err := e.timed("pods", len(objs), func() error { return e.loader.Pods(ctx, objs) }); err != nil {
		return err
	}
	e.pods = want
	return nil
}

// timed runs fn and records how long it took.
func (e *env) timed(what string, n int, fn func() error) error {
	took, err := bench.Timed(fn)
	if err == nil {
		e.loadTime = append(e.loadTime, loadStep{What: what, N: n, Took: took})
		fmt.Printf("    %d %s in %s (%.0f/s)\n", n, what, took.Round(time.Millisecond), float64(n)/took.Seconds())
	}
	return err
}

// serverSelector selects the probe server.
var serverSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "probe-server"}}

// denyAll isolates the probe server for ingress, so that deleting base
// denies.
func denyAll() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: probeNS, Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: serverSelector,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
}

// base admits role=allowed pods of namespaces labelled access=yes to the
// probe server on port.
func base(port int32) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: probeNS, Name: "base"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: serverSelector,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     baseIngress(port),
		},
	}
}

func baseIngress(port int32) []networkingv1.NetworkPolicyIngressRule {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	return []networkingv1.NetworkPolicyIngressRule{{
		From: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"access": "yes"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}},
		}},
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
	}}
}

// step of the change cycle: what to do and the verdict it leads to.
type changeStep struct {
	kind    string
	allowed bool
	apply   func(ctx context.Context) error
}

// cycle is eight changes that each flip the probe's verdict and end where
// they started (allowed): base's port updated away and back, the client
// relabelled away and back, its namespace relabelled away and back, base
// deleted and created.
func (e *env) cycle() []changeStep {
	client := e.loader.Client
	patchNP := func(port int32) func(context.Context) error {
		return func(ctx context.Context) error {
			body, err := json.Marshal(map[string]any{"spec": map[string]any{"ingress": baseIngress(port)}})
			if err != nil {
				return err
			}
			_, err = client.NetworkingV1().NetworkPolicies(probeNS).Patch(ctx, "base", types.MergePatchType, body, metav1.PatchOptions{})
			return err
		}
	}
	labels := func(key, value string) []byte {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{key: value}}})
		return b
	}
	relabelPod := func(role string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := client.CoreV1().Pods(probeNS).Patch(ctx, "c", types.MergePatchType, labels("role", role), metav1.PatchOptions{})
			return err
		}
	}
	relabelNS := func(access string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := client.CoreV1().Namespaces().Patch(ctx, probeNS, types.MergePatchType, labels("access", access), metav1.PatchOptions{})
			return err
		}
	}
	return []changeStep{
		{"policy update", false, patchNP(otherPort)},
		{"policy update", true, patchNP(servePort)},
		{"pod relabel", false, relabelPod("blocked")},
		{"pod relabel", true, relabelPod("allowed")},
		{"namespace relabel", false, relabelNS("no")},
		{"namespace relabel", true, relabelNS("yes")},
		{"policy delete", false, func(ctx context.Context) error {
			return client.NetworkingV1().NetworkPolicies(probeNS).Delete(ctx, "base", metav1.DeleteOptions{})
		}},
		{"policy create", true, func(ctx context.Context) error {
			_, err := client.NetworkingV1().NetworkPolicies(probeNS).Create(ctx, base(servePort), metav1.CreateOptions{})
			return err
		}},
	}
}

// enforcer builds the enforcer called name.
func (e *env) enforcer(name string) bench.Enforcer {
	if name == "knp-standard" {
		return &bench.KNP{Node: e.node, Command: "standard", Bin: e.bins.KNPStandard, SyncTimeout: 10 * time.Minute}
	}
	t := &bench.Tollgate{Node: e.node, Bin: e.bins, SyncTimeout: 10 * time.Minute}
	if name == "tollgate-nft" {
		t.Label, t.QueuerArgs = name, []string{"--netlink-sets=false"}
	}
	if e.cfg.profile {
		t.DeciderPprof = deciderPprof
	}
	return t
}

// deciderPprof is the decider's pprof address in profiling builds.
const deciderPprof = "127.0.0.1:6062"

// slot starts one enforcer, checks its verdicts, reads its memory (the
// first time), and measures one cycle of changes.
func (e *env) slot(ctx context.Context, name string, round int, measureMemory bool) ([]change, []memory, string, error) {
	if err := bench.ResetNode(e.node.NS); err != nil {
		return nil, nil, "", err
	}
	enf := e.enforcer(name)
	fmt.Printf("  round %d: %s\n", round+1, name)
	start := time.Now()
	if err := enf.Start(ctx); err != nil {
		enf.Stop()
		return nil, nil, "", err
	}
	ready := time.Since(start)
	defer func() {
		enf.Stop()
		_ = bench.ResetNode(e.node.NS)
	}()
	chk, err := e.checkVerdicts(ctx, name)
	if err != nil {
		return nil, nil, "", err
	}
	var mem []memory
	if measureMemory {
		if mem, err = e.readMemory(ctx, name, enf, ready); err != nil {
			return nil, nil, "", err
		}
	}
	prober := bench.StartProber(e.c.NS, netip.AddrPortFrom(e.s.IPv4, servePort), e.cfg.interval, e.cfg.timeout,
		int(e.cfg.timeout/e.cfg.interval)+16)
	defer prober.Close()
	var chs []change
	allowed := true
	stages := func() stageTimes { return stageTimes{} }
	if t, ok := enf.(*bench.Tollgate); ok {
		stages = func() stageTimes {
			var st stageTimes
			if text, err := bench.Scrape("", t.DeciderMetrics); err == nil {
				st.build, _ = bench.MetricValue(text, "tollgate_decider_snapshot_build_seconds_sum")
				st.builds, _ = bench.MetricValue(text, "tollgate_decider_snapshot_build_seconds_count")
			}
			if text, err := bench.Scrape(e.node.NS, bench.QueuerMetricsAddr); err == nil {
				st.apply, _ = bench.MetricValue(text, "tollgate_generation_apply_seconds_sum")
			}
			return st
		}
	}
	for _, st := range e.cycle() {
		ch, err := e.measureChange(ctx, prober, st, allowed, stages)
		if err != nil {
			return nil, nil, "", err
		}
		ch.Enforcer, ch.Round = name, round
		fmt.Printf("    %-18s → %-7s %8.1f ms (API %5.1f ms, flaps %d, compiles %d: %.1f ms, apply %.1f ms)%s\n", ch.Kind, verdictWord(ch.Allowed),
			bench.Millis(ch.Latency), bench.Millis(ch.API), ch.Flaps, ch.Compiles, bench.Millis(ch.Compile), bench.Millis(ch.Apply),
			map[bool]string{true: "  NOT ENFORCED", false: ""}[ch.Missed])
		chs = append(chs, ch)
		allowed = st.allowed
	}
	pids := enf.Pids()
	for i := range mem {
		if st, err := bench.ReadProcStat(pids[mem[i].Process]); err == nil {
			mem[i].RSSLater = st.RSS
		}
	}
	return chs, mem, chk, nil
}

// memoryOnly starts an enforcer only to read its memory.
func (e *env) memoryOnly(ctx context.Context, name string) ([]memory, error) {
	if err := bench.ResetNode(e.node.NS); err != nil {
		return nil, err
	}
	enf := e.enforcer(name)
	fmt.Printf("  %s at %d pods\n", name, e.pods)
	start := time.Now()
	if err := enf.Start(ctx); err != nil {
		enf.Stop()
		return nil, err
	}
	ready := time.Since(start)
	defer func() {
		enf.Stop()
		_ = bench.ResetNode(e.node.NS)
	}()
	if _, err := e.checkVerdicts(ctx, name); err != nil {
		return nil, err
	}
	return e.readMemory(ctx, name, enf, ready)
}

// readMemory waits cfg.settle and reads every process's RSS and Go heap.
func (e *env) readMemory(ctx context.Context, name string, enf bench.Enforcer, ready time.Duration) ([]memory, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(e.cfg.settle):
	}
	var out []memory
	for proc, pid := range enf.Pids() {
		st, err := bench.ReadProcStat(pid)
		if err != nil {
			return nil, err
		}
		m := memory{Enforcer: name, Process: proc, Pods: e.pods, Policies: e.cfg.policies + 2, RSS: st.RSS, HWM: st.HWM, Ready: ready}
		ns, addr := "", ""
		switch {
		case proc == "decider":
			addr = enf.(*bench.Tollgate).DeciderMetrics
		case proc == "queuer":
			ns, addr = e.node.NS, bench.QueuerMetricsAddr
		case strings.HasPrefix(name, "knp-"):
			ns, addr = e.node.NS, bench.KNPMetricsAddr
		}
		if text, err := bench.Scrape(ns, addr); err == nil {
			if v, ok := bench.MetricValue(text, "go_memstats_heap_inuse_bytes"); ok {
				m.HeapInuse = int64(v)
			}
		}
		if proc == "decider" && e.cfg.profile {
			if err := e.heapProfile(ctx, enf.(*bench.Tollgate), &m); err != nil {
				return nil, err
			}
		}
		fmt.Printf("    %s %s: RSS %.0f MB (peak %.0f MB), heap in use %.0f MB, ready after %s\n", name, proc,
			float64(m.RSS)/1e6, float64(m.HWM)/1e6, float64(m.HeapInuse)/1e6, ready.Round(time.Millisecond))
		out = append(out, m)
	}
	return out, nil
}

// heapProfile forces a collection in the decider, reads its heap in use
// again and saves its heap profile and the profile's top functions.
func (e *env) heapProfile(ctx context.Context, t *bench.Tollgate, m *memory) error {
	body, err := bench.HTTPGet("", deciderPprof, "/debug/pprof/heap?gc=1", time.Minute)
	if err != nil {
		return fmt.Errorf("decider heap profile: %w", err)
	}
	if text, err := bench.Scrape("", t.DeciderMetrics); err == nil {
		if v, ok := bench.MetricValue(text, "go_memstats_heap_inuse_bytes"); ok {
			m.HeapAfterGC = int64(v)
		}
	}
	file := filepath.Join(e.out, fmt.Sprintf("heap-decider-%dpods-%s.pb.gz", m.Pods, time.Now().Format("20060102-150405")))
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		return err
	}
	top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=25", e.bins.Decider, file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pprof: %w\n%s", err, top)
	}
	txt := strings.TrimSuffix(file, ".pb.gz") + ".txt"
	m.Profile = txt
	return os.WriteFile(txt, top, 0o644)
}

// checkVerdicts probes the client (allowed), the blocked client (denied)
// and the client on the other port (denied) until the enforcer agrees with
// the policies, or fails after 30 s.
func (e *env) checkVerdicts(ctx context.Context, name string) (string, error) {
	probes := []struct {
		from  *netsim.Pod
		port  uint16
		allow bool
		desc  string
	}{
		{e.c, servePort, true, "c → s:8080"},
		{e.x, servePort, false, "x → s:8080"},
		{e.c, otherPort, false, "c → s:8081"},
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got []string
		agree := true
		for _, p := range probes {
			var ok bool
			err := bench.InNamespace(p.from.NS, 1, func(int) error {
				_, err := bench.DialTCP4(netip.AddrPortFrom(e.s.IPv4, p.port), 700*time.Millisecond, false)
				if err != nil && !errors.Is(err, bench.ErrTimeout) {
					return err
				}
				ok = err == nil
				return nil
			})
			if err != nil {
				return "", fmt.Errorf("probe %s: %w", p.desc, err)
			}
			agree = agree && ok == p.allow
			got = append(got, fmt.Sprintf("%s %s", p.desc, verdictWord(ok)))
		}
		summary := fmt.Sprintf("%s at %d pods: %s", name, e.pods, strings.Join(got, ", "))
		if agree {
			return summary, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("verdicts disagree with the policies: %s", summary)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func verdictWord(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}

// measureChange waits until the probe steadily shows before, applies the
// change and finds the first probe connection governed by the new verdict.
// stages reads Tollgate's build and apply times so far.
func (e *env) measureChange(ctx context.Context, p *bench.Prober, st changeStep, before bool, stages func() stageTimes) (change, error) {
	ch := change{Kind: st.kind, Allowed: st.allowed}
	steadyN := int(200 * time.Millisecond / e.cfg.interval)
	steadyFrom := time.Now()
	deadline := steadyFrom.Add(e.cfg.changeTimeout)
	for !bench.Steady(p.Since(steadyFrom), steadyN, before) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return ch, fmt.Errorf("before %s: the probe never settled on %s", st.kind, verdictWord(before))
		}
		time.Sleep(20 * time.Millisecond)
	}
	st0 := stages()
	t0 := time.Now()
	if err := st.apply(ctx); err != nil {
		return ch, fmt.Errorf("%s: %w", st.kind, err)
	}
	t1 := time.Now()
	ch.API = t1.Sub(t0)
	deadline = t1.Add(e.cfg.changeTimeout)
	for {
		if _, _, ok := bench.Governed(p.Since(t0), t0, t0, st.allowed); ok {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			ch.Missed = true
			ch.Latency = e.cfg.changeTimeout
			return ch, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let every attempt that started before the one found finish, and
	// watch a second more for flaps.
	time.Sleep(e.cfg.timeout + time.Second)
	first, _, _ := bench.Governed(p.Since(t0), t0, t0, st.allowed)
	_, flaps, _ := bench.Governed(p.Since(t0), t0, first.Start.Add(time.Second), st.allowed)
	ch.Latency = first.Start.Sub(t1)
	ch.Flaps = flaps
	st1 := stages()
	ch.Compile, ch.Compiles = time.Duration((st1.build-st0.build)*float64(time.Second)), int(st1.builds-st0.builds)
	ch.Apply = time.Duration((st1.apply - st0.apply) * float64(time.Second))
	return ch, nil
}
