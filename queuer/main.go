// Command queuer is Tollgate's privileged node agent. It installs the
// nftables table that steers the first packet of new connections of
// policy-selected pods to NFQUEUE, asks the decider (over its Unix socket)
// for each verdict it has not cached, and answers the kernel. It holds no
// Kubernetes credentials: everything it knows comes from the decider.
//
// See docs/architecture.md for the flags and the contract with the decider.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tollgate/tollgate/internal/affinity"
	"github.com/tollgate/tollgate/internal/memlimit"
	"github.com/tollgate/tollgate/internal/version"
	"github.com/tollgate/tollgate/queuer/agent"
	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/decisionlog"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// options are the command-line flags.
type options struct {
	deciderSocket   string
	framedSocket    string
	failOpen        bool
	queues          uint
	firstQueue      uint
	queueMaxLen     uint
	queueWorkers    int
	deciderStreams  int
	queueMode       string
	metricsAddr     string
	nodeName        string
	cacheSize       int
	cacheTTL        time.Duration
	cachePortRanges bool
	netlinkSets     bool
	kernelCacheTTL  time.Duration
	kernelCacheSize int
	decideTimeout   time.Duration
	cutEstablished  bool
	checkInterval   time.Duration
	showVersion     bool
	logDecisions    decisionlog.Mode
	logRate         float64
	dnsQueue        uint
	memory          memlimit.Setting
	cpus            affinity.Set
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("queuer", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: queuer [flags]\n       queuer cleanup   remove the ruleset for good (uninstall)\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.deciderSocket, "decider-socket", "/run/tollgate/decider.sock", "Unix socket of the decider")
	fs.StringVar(&o.framedSocket, "decider-framed-socket", "", "the decider's framed-stream socket, used for verdicts when it accepts (default: decider-frames.sock beside --decider-socket; \"none\": gRPC DecideStream only)")
	fs.BoolVar(&o.failOpen, "fail-open", true, "accept packets while no decider can be asked (else drop them, also across restarts)")
	fs.UintVar(&o.queues, "queues", uint(runtime.NumCPU()), "number of NFQUEUE queues, fanned out across CPUs")
	fs.UintVar(&o.firstQueue, "nfqueue-id", 100, "first NFQUEUE queue number")
	fs.UintVar(&o.queueMaxLen, "queue-maxlen", 1024, "kernel queue length per queue (a full queue drops, in both fail modes)")
	fs.IntVar(&o.queueWorkers, "queue-workers", 0, "0: answer packets asynchronously, from the goroutine that receives the decider's answer (no hand-offs); N: N handler goroutines per queue, each waiting for its answer (1: inline on the queue's reader)")
	fs.IntVar(&o.deciderStreams, "decider-streams", 0, "decision streams to the decider, each answering its packets on its own goroutine (0: one per queue, at most 8)")
	fs.StringVar(&o.queueMode, "queue-mode", "auto", "how packets reach NFQUEUE: auto, nft (native queue statement) or xt (iptables NFQUEUE target)")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":9080", "address of /metrics, /healthz and /readyz (empty disables)")
	fs.StringVar(&o.nodeName, "node-name", "", "node whose pods are queued (default $NODE_NAME, then the hostname)")
	fs.IntVar(&o.cacheSize, "cache-size", 65536, "entries of the userspace verdict cache")
	fs.BoolVar(&o.netlinkSets, "netlink-sets", true, "write set elements on policy changes (invalidated verdicts, selected and DNS pods) over an nf_tables netlink socket instead of starting an nft process each time; nft still writes the ruleset, and takes over if a netlink write fails")
	fs.BoolVar(&o.cachePortRanges, "cache-port-ranges", true, "keep one userspace-cache answer for every destination port the decider says it holds for (off: for the queried port only)")
	fs.DurationVar(&o.cacheTTL, "cache-ttl", time.Minute, "lifetime of userspace verdict-cache entries (a safety net; generations invalidate them)")
	fs.DurationVar(&o.kernelCacheTTL, "kernel-cache-ttl", time.Minute, "timeout of kernel verdict-cache entries, whole seconds")
	fs.IntVar(&o.kernelCacheSize, "kernel-cache-size", dataplane.DefaultVerdictCacheSize, "entries of each of the four kernel verdict sets; when one is full, new verdicts are answered by the queuer without being cached in the kernel")
	fs.DurationVar(&o.decideTimeout, "decide-timeout", 250*time.Millisecond, "how long a packet waits for the decider; a connected decider that does not answer in time gets the packet dropped (it is retransmitted), one that is not connected gets the fail mode")
	fs.BoolVar(&o.cutEstablished, "cut-established", true, "after each policy change, cut established connections of selected pods that policy now denies")
	fs.DurationVar(&o.checkInterval, "check-interval", 2*time.Second, "how often the ruleset is checked and, if something removed or changed it, restored (0 disables)")
	fs.UintVar(&o.dnsQueue, "dns-nfqueue-id", 0, "queue of the DNS answers learned for domainNames rules (default: the one after the verdict queues)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	o.logDecisions = decisionlog.ModeDeny
	fs.Func("log-decisions", "decided connections to log on standard output as JSON lines: none, deny or all (default deny)", func(s string) (err error) {
		o.logDecisions, err = decisionlog.ParseMode(s)
		return err
	})
	fs.Float64Var(&o.logRate, "log-decisions-rate", decisionlog.DefaultRate, "decision log lines per second at most (bursts of twice that); the others are counted in a \"suppressed\" line")
	memory := fs.String("memory-limit", "auto", memlimit.FlagUsage)
	cpus := fs.String("cpus", "", affinity.FlagUsage)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var err error
	if o.memory, err = memlimit.Parse(*memory); err != nil {
		return o, fmt.Errorf("--memory-limit: %w", err)
	}
	if o.cpus, err = affinity.Parse(*cpus); err != nil {
		return o, fmt.Errorf("--cpus: %w", err)
	}
	if !o.cpus.Empty() && !flagSet(fs, "queues") {
		o.queues = uint(o.cpus.Count()) // one per CPU it may use
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	switch {
	case o.queues < 1 || o.queues > 65535:
		return o, fmt.Errorf("--queues %d: want 1..65535", o.queues)
	case o.firstQueue+o.queues-1 > 65535:
		return o, fmt.Errorf("--nfqueue-id %d with --queues %d exceeds queue 65535", o.firstQueue, o.queues)
	case o.dnsQueue > 65535:
		return o, fmt.Errorf("--dns-nfqueue-id %d exceeds queue 65535", o.dnsQueue)
	case o.queueMaxLen < 1 || o.queueMaxLen > 1<<31:
		return o, fmt.Errorf("--queue-maxlen %d out of range", o.queueMaxLen)
	case o.deciderStreams < 0 || o.deciderStreams > 256:
		return o, fmt.Errorf("--decider-streams %d: want 0 (one per queue) to 256", o.deciderStreams)
	case o.queueWorkers < 0:
		return o, fmt.Errorf("--queue-workers %d: want 0 (asynchronous) or more", o.queueWorkers)
	case o.cacheSize < 1:
		return o, fmt.Errorf("--cache-size %d: want at least 1", o.cacheSize)
	case o.kernelCacheSize < 1:
		return o, fmt.Errorf("--kernel-cache-size %d: want at least 1", o.kernelCacheSize)
	case o.decideTimeout <= 0:
		return o, errors.New("--decide-timeout must be positive")
	case o.checkInterval < 0:
		return o, errors.New("--check-interval must not be negative")
	case o.logRate <= 0:
		return o, errors.New("--log-decisions-rate must be positive")
	}
	switch o.framedSocket {
	case "":
		o.framedSocket = filepath.Join(filepath.Dir(o.deciderSocket), "decider-frames.sock")
	case "none":
		o.framedSocket = ""
	}
	if o.nodeName == "" {
		o.nodeName = os.Getenv("NODE_NAME")
	}
	if o.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return o, fmt.Errorf("no --node-name, no $NODE_NAME and no hostname: %w", err)
		}
		o.nodeName = h
	}
	return o, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cleanup" {
		if err := cleanup(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "queuer cleanup:", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "queuer:", err)
		os.Exit(2)
	}
	if o.showVersion {
		fmt.Println(version.Version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		slog.Error("queuer failed", "err", err)
		os.Exit(1)
	}
}

// ipvsInterface is the dummy interface kube-proxy creates in IPVS mode.
const ipvsInterface = "kube-ipvs0"

// checkNotIPVS refuses to run beside kube-proxy in IPVS mode.
func checkNotIPVS() error {
	if _, err := net.InterfaceByName(ipvsInterface); err == nil {
		return fmt.Errorf("kube-proxy runs in IPVS mode here (interface %s exists): IPVS translates Service "+
			"addresses inside its own hook, so the queuer's forward and input chains would judge connections "+
			"to a ClusterIP instead of the pod behind it; run kube-proxy in iptables or nftables mode "+
			"(docs/dataplane.md)", ipvsInterface)
	}
	return nil
}

// run wires the parts together and serves until ctx ends.
func run(ctx context.Context, o options) error {
	slog.Info("starting queuer", "version", version.Version, "node", o.nodeName,
		"failOpen", o.failOpen, "queues", o.queues, "firstQueue", o.firstQueue)
	if err := checkNotIPVS(); err != nil {
		return err
	}
	memlimit.ApplyAndLog(o.memory)
	if err := affinity.Confine(o.cpus); err != nil {
		return fmt.Errorf("--cpus: %w", err)
	}
	if !o.cpus.Empty() {
		slog.Info("confined to CPUs", "cpus", o.cpus.String())
	}

	dp, err := dataplane.New(dataplane.Config{
		QueueMode:        o.queueMode,
		FirstQueue:       uint16(o.firstQueue),
		QueueCount:       uint16(o.queues),
		FailOpen:         o.failOpen,
		VerdictTTL:       o.kernelCacheTTL,
		VerdictCacheSize: o.kernelCacheSize,
		DNSQueue:         uint16(o.dnsQueue),

		ElementsByNetlink: o.netlinkSets,
	})
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	streams := o.deciderStreams
	if streams == 0 {
		streams = min(int(o.queues), 8)
	}
	dec, err := client.NewPool(o.deciderSocket, client.Options{FramedSocket: o.framedSocket}, streams)
	if err != nil {
		return err
	}
	defer dec.Close()

	vc := cache.New(cache.Options{Size: o.cacheSize, TTL: o.cacheTTL})
	counters := nfq.NewCounters(uint16(o.firstQueue), uint16(o.queues))
	m := agent.NewMetrics(vc, counters, agent.ProcNFQueue)
	m.SetMode(string(dp.Mode()))

	var table *conntrack.Client
	if o.cutEstablished {
		if table, err = conntrack.Dial(); err != nil {
			return err
		}
		defer table.Close() // after the agent's loops have ended (below)
	}
	var ct conntrack.Table
	if table != nil {
		ct = table
	}
	decisions := decisionlog.New(os.Stdout, decisionlog.Options{Mode: o.logDecisions, Rate: o.logRate, Burst: max(1, int(2*o.logRate))})
	a := agent.New(agent.Config{
		NodeName:       o.nodeName,
		FailOpen:       o.failOpen,
		DecideTimeout:  o.decideTimeout,
		LearnVerdicts:  true,
		PortRanges:     o.cachePortRanges,
		CutEstablished: o.cutEstablished,
		CheckInterval:  o.checkInterval,
		Decisions:      decisions,
	}, vc, dec, dp, ct, m)

	var setUp atomic.Bool
	srv, err := serveHTTP(o.metricsAddr, m, func(ctx context.Context) bool { return setUp.Load() && a.Ready(ctx) })
	if err != nil {
		return err
	}
	if srv != nil {
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}

	if err := dp.Setup(ctx); err != nil {
		return fmt.Errorf("dataplane setup: %w", err)
	}
	setUp.Store(true)
	m.CountBypass(dp.QueuedPackets, o.failOpen)
	defer shutdownDataplane(dp)

	// The agent's loops and the decider stream end before the conntrack
	// socket and the decider connection close (deferred above).
	var wg sync.WaitGroup
	bg, cancelBg := context.WithCancel(ctx)
	defer func() {
		cancelBg()
		wg.Wait()
	}()
	wg.Go(func() { dec.Run(bg) })
	wg.Go(func() { decisions.Run(bg) })

	// DNS answers for domainNames rules: their own queue, answered by
	// HandleDNS, which never drops one; each connection's packets in order.
	// dnsOpen closes once the queue is read, or could not be opened.
	dnsOpen := make(chan struct{})
	var dnsOnce sync.Once
	wg.Go(func() {
		opened := func() { dnsOnce.Do(func() { close(dnsOpen) }) }
		err := nfq.Run(bg, nfq.Config{First: dp.DNSQueue(), Count: 1, Workers: 8, Shard: agent.DNSShard,
			OnError: func(queue uint16, err error) { slog.Warn("nfqueue error", "queue", queue, "err", err) },
			OnOpen:  opened,
		}, a.HandleDNS)
		opened()
		if err != nil {
			slog.Error("DNS answers cannot be read; domainNames rules match nothing new", "queue", dp.DNSQueue(), "err", err)
		}
	})

	qcfg := nfq.Config{
		First:        uint16(o.firstQueue),
		Count:        uint16(o.queues),
		MaxLen:       uint32(o.queueMaxLen),
		Workers:      o.queueWorkers,
		Counters:     counters,
		AfterVerdict: a.AfterVerdict,
		OnError: func(queue uint16, err error) {
			slog.Warn("nfqueue error", "queue", queue, "err", err)
		},
		// The agent puts the decider's selected pods (and the pods whose
		// DNS answers are learned) into the ruleset: only once something
		// reads the queues, or their first packets would bypass them,
		// unjudged (fail-open) or unlearned (DNS answers).
		OnOpen: func() {
			wg.Go(func() {
				select {
				case <-dnsOpen:
				case <-bg.Done():
					return
				}
				a.Run(bg)
			})
		},
	}
	if o.queueWorkers == 0 {
		// Packets awaiting the decider stay in the kernel queue, which
		// --queue-maxlen bounds.
		err = nfq.RunAsync(ctx, qcfg, a.HandleAsync)
	} else {
		err = nfq.Run(ctx, qcfg, a.Handle)
	}
	if err != nil {
		return fmt.Errorf("nfqueue: %w", err)
	}
	slog.Info("shutting down")
	return nil
}

// shutdownDataplane ends the dataplane. The ruleset and its caches stay in
// both fail modes, so that the node stays enforced while the queuer
// restarts (a rolling update); `queuer cleanup` removes them.
func shutdownDataplane(dp *dataplane.Dataplane) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dp.Shutdown(ctx); err != nil {
		slog.Error("dataplane shutdown failed", "err", err)
	}
}

// cleanup removes the table and the iptables rules: what an uninstall
// leaves behind (a DaemonSet's pods cannot tell their deletion from a
// restart, so they never remove it themselves).
func cleanup(args []string) error {
	fs := flag.NewFlagSet("queuer cleanup", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	dp, err := dataplane.New(dataplane.Config{QueueMode: "xt", QueueCount: 1})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dp.Remove(ctx); err != nil {
		return err
	}
	fmt.Println("removed table inet " + dataplane.TableName + " and the iptables rules")
	return nil
}

// serveHTTP serves /metrics, /healthz and /readyz on addr; empty addr
// disables it and returns a nil server.
func serveHTTP(addr string, m *agent.Metrics, ready func(context.Context) bool) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: newMux(m, ready), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics server failed", "err", err)
		}
	}()
	return srv, nil
}

// newMux routes the HTTP endpoints. /healthz answers while the process runs;
// /readyz while the ruleset is in place, the decider stream is connected and
// the decider's state has been applied.
func newMux(m *agent.Metrics, ready func(context.Context) bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready(r.Context()) {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// flagSet reports whether the command line set the flag called name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
