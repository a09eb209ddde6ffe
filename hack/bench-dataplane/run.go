package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/test/bench"
	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/netsim"
)

// Workloads.
const (
	repeated = "repeated"
	fresh    = "new"
)

var workloads = []string{repeated, fresh}

// cell is one timed measurement of one variant.
type cell struct {
	Policies int
	Round    int
	Variant  string
	Workload string
	Shape    string
	// Conns are the connections completed (connect and reply) and Fails
	// those that were not, by reason.
	Conns       int
	Fails       int
	FailReasons map[string]int `json:",omitempty"`
	Elapsed     time.Duration
	ConnPerSec  float64
	// P50 and P99 are of the connect() times of completed connections.
	P50, P99 time.Duration
	// Queued is how many packets the node's queues received.
	Queued uint64
	// CPU is the cores each enforcer process used (its children, e.g.
	// nft, included), ChildCPU the children's part; RSS is at the end.
	CPU, ChildCPU map[string]float64 `json:",omitempty"`
	RSS           map[string]int64   `json:",omitempty"`
	// Busy is the fraction of the machine's CPU that was busy.
	Busy float64
	// Exhausted is set when a new-tuple run ran out of fresh ports.
	Exhausted bool `json:",omitempty"`
}

// check is the outcome of one variant's verdict probes.
type check struct {
	Policies int
	// When is "before timing" or "after timing".
	When    string
	Variant string
	Probes  []probeResult
}

// probeResult is one probe's expectation and outcome.
type probeResult struct {
	Desc      string
	Want, Got bool
}

// results is what a run produces.
type results struct {
	Cells   []cell
	Checks  []check
	Profile string `json:",omitempty"`
}

func run(ctx context.Context, cfg config) (err error) {
	needKNP := false
	for _, v := range cfg.variants {
		needKNP = needKNP || strings.HasPrefix(v, "knp-")
	}
	sess, err := bench.StartSession(ctx, bench.SessionOptions{
		Name: "bench-dataplane", Out: cfg.out, Cache: cfg.cache, Profile: cfg.profile, KNP: needKNP,
		CRDs: []cluster.CRDSet{cluster.ClusterNetworkPolicyCRDs}, TopologyPrefix: "tgbdp",
	})
	defer sess.Close(&err)
	if err != nil {
		return err
	}
	e := &env{cfg: cfg, cluster: sess.Cluster, topo: sess.Topo, loader: sess.Loader, bins: sess.Bins}
	defer func() {
		for _, n := range e.nodes {
			n.enf.Stop()
			if n.fwd != nil {
				n.fwd.Close()
			}
		}
	}()
	bench.Step("building %d nodes (one per variant) with %d pods each, and %d background pods on %d other nodes",
		len(cfg.variants), nServers+maxClients+1, cfg.bgPods, bgNodes)
	if err := setup(ctx, e, sess.Work); err != nil {
		return err
	}
	var res results
	for _, p := range cfg.policies {
		bench.Step("%d NetworkPolicies", p)
		if err := growPolicies(ctx, e, p); err != nil {
			return err
		}
		cells, checks, err := e.phase(ctx, p, sess.Machine)
		res.Cells = append(res.Cells, cells...)
		res.Checks = append(res.Checks, checks...)
		if err != nil {
			return err
		}
	}
	for _, v := range []string{"tollgate", exactVariant} {
		if !cfg.profile || !slices.Contains(cfg.variants, v) {
			continue
		}
		p, err := e.profileTollgate(ctx, v, sess.Out)
		if err != nil {
			return err
		}
		res.Profile += p
	}
	doc := cfg.doc
	if cfg.smoke {
		doc = ""
	}
	return sess.Finish(commandLine(cfg), res, func() string { return markdown(cfg, sess.Machine, res) },
		doc, "## Connections through the whole path")
}

// resetNode empties a node's ruleset and conntrack table and turns
// connection tracking on with one rule, as on any Kubernetes node, so that
// every variant pays for it.
func resetNode(n *node) error {
	if err := bench.ResetNode(n.node.NS); err != nil {
		return err
	}
	return bench.ApplyNFT(n.node.NS, n.node.WorkDir, "node-base", `table inet bench-node {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
	}
}
`)
}

// phase starts every variant's enforcer on the current policies, checks
// their verdicts, measures every workload, load and variant in rounds,
// checks the verdicts again and stops the enforcers.
func (e *env) phase(ctx context.Context, policies int, machine *bench.Machine) ([]cell, []check, error) {
	defer func() {
		for _, n := range e.nodes {
			n.enf.Stop()
			if err := resetNode(n); err != nil {
				fmt.Fprintln(os.Stderr, "reset node:", err)
			}
		}
	}()
	for _, n := range e.nodes {
		if err := resetNode(n); err != nil {
			return nil, nil, err
		}
		took, err := bench.Timed(func() error { return n.enf.Start(ctx) })
		if err != nil {
			return nil, nil, fmt.Errorf("start %s: %w", n.variant, err)
		}
		fmt.Printf("  %s started in %s\n", n.variant, took.Round(time.Millisecond))
		n.resetPorts()
	}
	var checks []check
	verify := func(when string) error {
		for _, n := range e.nodes {
			chk, err := e.checkVerdicts(ctx, n)
			chk.Policies, chk.When = policies, when
			checks = append(checks, chk)
			if err != nil {
				return fmt.Errorf("%s, %s: %w", n.variant, when, err)
			}
		}
		fmt.Printf("  verdicts %s: every variant agrees with the policies\n", when)
		return nil
	}
	if err := verify("before timing"); err != nil {
		return nil, checks, err
	}
	var cells []cell
	for r := range e.cfg.rounds {
		fmt.Printf("  round %d\n", r+1)
		for wi, wl := range workloads {
			for si, sh := range e.cfg.shapes {
				for i := range e.nodes {
					n := e.nodes[(i+r+wi+si)%len(e.nodes)]
					e.load(ctx, n, wl, sh, e.cfg.warmup)
					c := e.measure(ctx, n, wl, sh)
					c.Policies, c.Round, c.Variant = policies, r, n.variant
					fmt.Printf("    %-16s %-8s %-5s %8.0f conn/s  p50 %7.3f ms  p99 %7.3f ms  fails %d  queued/conn %.2f  busy %3.0f%%\n",
						n.variant, wl, sh, c.ConnPerSec, bench.Millis(c.P50), bench.Millis(c.P99), c.Fails,
						float64(c.Queued)/float64(max(1, c.Conns)), 100*c.Busy)
					cells = append(cells, c)
					if ctx.Err() != nil {
						return cells, checks, ctx.Err()
					}
				}
			}
		}
		machine.SampleLoad()
	}
	return cells, checks, verify("after timing")
}

// enforcing reports whether variant v applies policy (else every probe
// must pass).
func enforcing(v string) bool {
	return strings.HasPrefix(v, "tollgate") || strings.HasPrefix(v, "knp-")
}

// checkVerdicts probes allowed and denied connections of the measured
// traffic on node n until every one gives the verdict the policies call
// for (for the variants that do not enforce: every one passes), or fails
// after 30 s.
func (e *env) checkVerdicts(ctx context.Context, n *node) (check, error) {
	type probe struct {
		from  *netsim.Pod
		to    netip.AddrPort
		allow bool
		desc  string
	}
	s0, s1 := n.servers[0].IPv4, n.servers[1].IPv4
	probes := []probe{
		{n.clients[0], netip.AddrPortFrom(s0, servePort), true, "client → server:8080"},
		{n.clients[1], netip.AddrPortFrom(s1, firstNewPort+1), true, fmt.Sprintf("client → server:%d (new-tuple port)", firstNewPort+1)},
		{n.other, netip.AddrPortFrom(s0, servePort), false, "other → server:8080"},
		{n.other, netip.AddrPortFrom(s1, firstNewPort+2), false, fmt.Sprintf("other → server:%d", firstNewPort+2)},
		{n.clients[0], netip.AddrPortFrom(s0, denyPort), false, "client → server:9090"},
	}
	chk := check{Variant: n.variant}
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; ; attempt++ {
		results := make([]probeResult, len(probes))
		errs := make([]error, len(probes))
		var wg sync.WaitGroup
		for i, p := range probes {
			want := p.allow || !enforcing(n.variant)
			wg.Go(func() {
				errs[i] = bench.InNamespace(p.from.NS, 1, func(int) error {
					_, err := bench.DialTCP4(p.to, 700*time.Millisecond, true)
					if err != nil && !errors.Is(err, bench.ErrTimeout) {
						return fmt.Errorf("probe %s: %w (refused or failed: the harness is broken)", p.desc, err)
					}
					results[i] = probeResult{Desc: p.desc, Want: want, Got: err == nil}
					return nil
				})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return chk, err
		}
		chk.Probes = results
		agree := true
		for _, r := range results {
			agree = agree && r.Want == r.Got
		}
		if agree {
			return chk, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			var b strings.Builder
			for _, r := range results {
				fmt.Fprintf(&b, "\n    %-45s want %-7s got %s", r.Desc, verdictWord(r.Want), verdictWord(r.Got))
			}
			return chk, fmt.Errorf("verdicts disagree with the policies after %d attempts:%s", attempt+1, b.String())
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

// loadResult is what one load run observed.
type loadResult struct {
	conns, fails int
	reasons      map[string]int
	latencies    []time.Duration
	elapsed      time.Duration
	exhausted    bool
}

// load opens connections on node n from sh.clients client pods, sh.conns
// at a time each, for d. Each connection slot goes round the servers (the
// shape's client c's slot w starts at server c+w), so that a client has
// four servers' worth of fresh ports.
func (e *env) load(ctx context.Context, n *node, wl string, sh shape, d time.Duration) loadResult {
	type workerResult struct {
		conns, fails int
		reasons      map[string]int
		lat          []time.Duration
		exhausted    bool
	}
	all := make([][]workerResult, sh.clients)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for c := range sh.clients {
		all[c] = make([]workerResult, sh.conns)
		cli := n.clients[sh.first+c]
		wg.Go(func() {
			_ = bench.InNamespace(cli.NS, sh.conns, func(w int) error {
				r := &all[c][w]
				r.reasons = map[string]int{}
				for i := c + w; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
					s := i % len(n.servers)
					srv := n.servers[s].IPv4
					port := uint16(servePort)
					if wl == fresh {
						if port = n.nextPort(sh.first+c, s); port == 0 {
							r.exhausted = true
							return nil
						}
					}
					took, err := bench.DialTCP4(netip.AddrPortFrom(srv, port), time.Second, true)
					if err != nil {
						r.fails++
						r.reasons[failReason(err)]++
						continue
					}
					r.conns++
					r.lat = append(r.lat, took)
				}
				return nil
			})
		})
	}
	wg.Wait()
	res := loadResult{elapsed: time.Since(start), reasons: map[string]int{}}
	for _, ws := range all {
		for _, w := range ws {
			res.conns += w.conns
			res.fails += w.fails
			res.latencies = append(res.latencies, w.lat...)
			res.exhausted = res.exhausted || w.exhausted
			for k, n := range w.reasons {
				res.reasons[k] += n
			}
		}
	}
	return res
}

// failReason shortens a connection error for counting.
func failReason(err error) string {
	if errors.Is(err, bench.ErrTimeout) {
		return "timeout"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// measure runs one timed load and reads the enforcer's processes, the
// queues and the machine around it.
func (e *env) measure(ctx context.Context, n *node, wl string, sh shape) cell {
	pids := n.enf.Pids()
	before := map[string]bench.ProcStat{}
	for name, pid := range pids {
		if s, err := bench.ReadProcStat(pid); err == nil {
			before[name] = s
		}
	}
	q0 := queued(n.node.NS)
	cpu0, _ := bench.ReadCPUTimes()
	r := e.load(ctx, n, wl, sh, e.cfg.duration)
	cpu1, _ := bench.ReadCPUTimes()
	q1 := queued(n.node.NS)
	c := cell{
		Workload: wl, Shape: sh.String(), Conns: r.conns, Fails: r.fails, Elapsed: r.elapsed,
		ConnPerSec: float64(r.conns) / r.elapsed.Seconds(),
		P50:        bench.Percentile(r.latencies, 50), P99: bench.Percentile(r.latencies, 99),
		Busy: bench.BusyBetween(cpu0, cpu1), Exhausted: r.exhausted,
	}
	if q1 >= q0 {
		c.Queued = q1 - q0
	}
	if len(r.reasons) > 0 {
		c.FailReasons = r.reasons
	}
	for name, pid := range pids {
		b, ok := before[name]
		a, err := bench.ReadProcStat(pid)
		if !ok || err != nil {
			continue
		}
		if c.CPU == nil {
			c.CPU, c.ChildCPU, c.RSS = map[string]float64{}, map[string]float64{}, map[string]int64{}
		}
		c.CPU[name] = (a.CPU + a.ChildCPU - b.CPU - b.ChildCPU).Seconds() / r.elapsed.Seconds()
		c.ChildCPU[name] = (a.ChildCPU - b.ChildCPU).Seconds() / r.elapsed.Seconds()
		c.RSS[name] = a.RSS
	}
	return c
}

// queued sums the packets every queue of ns has received so far.
func queued(ns string) uint64 {
	stats, err := bench.QueueStats(ns)
	if err != nil {
		return 0
	}
	var n uint64
	for _, s := range stats {
		n += s.IDSequence
	}
	return n
}

// commandLine is the benchmark's configuration as flags.
func commandLine(cfg config) string {
	if cfg.smoke {
		return "bench-dataplane --smoke"
	}
	var shapes []string
	for _, s := range cfg.shapes {
		shapes = append(shapes, fmt.Sprintf("%dx%d", s.clients, s.conns))
	}
	var pols []string
	for _, p := range cfg.policies {
		pols = append(pols, fmt.Sprint(p))
	}
	line := fmt.Sprintf("bench-dataplane --rounds %d --duration %s --warmup %s --policies %s --shapes %s --bg-pods %d --variants %s",
		cfg.rounds, cfg.duration, cfg.warmup, strings.Join(pols, ","), strings.Join(shapes, ","), cfg.bgPods, strings.Join(cfg.variants, ","))
	if cfg.profile {
		line += " --profile"
	}
	return line
}
