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
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tollgate/tollgate/internal/version"
	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/dataplane"
	"github.com/tollgate/tollgate/queuer/decisionlog"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// options are the command-line flags.
type options struct {
	deciderSocket  string
	failOpen       bool
	queues         uint
	firstQueue     uint
	queueMaxLen    uint
	queueWorkers   int
	queueMode      string
	metricsAddr    string
	nodeName       string
	cacheSize      int
	cacheTTL       time.Duration
	kernelCacheTTL time.Duration
	decideTimeout  time.Duration
	cutEstablished bool
	showVersion    bool
	logDecisions   decisionlog.Mode
	logRate        float64
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("queuer", flag.ContinueOnError)
	fs.StringVar(&o.deciderSocket, "decider-socket", "/run/tollgate/decider.sock", "Unix socket of the decider")
	fs.BoolVar(&o.failOpen, "fail-open", true, "accept packets while no verdict can be had (else drop them, also across restarts)")
	fs.UintVar(&o.queues, "queues", uint(runtime.NumCPU()), "number of NFQUEUE queues, fanned out across CPUs")
	fs.UintVar(&o.firstQueue, "nfqueue-id", 100, "first NFQUEUE queue number")
	fs.UintVar(&o.queueMaxLen, "queue-maxlen", 1024, "kernel queue length per queue")
	fs.IntVar(&o.queueWorkers, "queue-workers", 16, "handler goroutines per queue, so that decider misses overlap")
	fs.StringVar(&o.queueMode, "queue-mode", "auto", "how packets reach NFQUEUE: auto, nft (native queue statement) or xt (iptables NFQUEUE target)")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":9080", "address of /metrics, /healthz and /readyz (empty disables)")
	fs.StringVar(&o.nodeName, "node-name", "", "node whose pods are queued (default $NODE_NAME, then the hostname)")
	fs.IntVar(&o.cacheSize, "cache-size", 65536, "entries of the userspace verdict cache")
	fs.DurationVar(&o.cacheTTL, "cache-ttl", time.Minute, "lifetime of userspace verdict-cache entries (a safety net; generations invalidate them)")
	fs.DurationVar(&o.kernelCacheTTL, "kernel-cache-ttl", time.Minute, "timeout of kernel verdict-cache entries, whole seconds")
	fs.DurationVar(&o.decideTimeout, "decide-timeout", 250*time.Millisecond, "how long a packet waits for the decider before the fail mode applies")
	fs.BoolVar(&o.cutEstablished, "cut-established", true, "after each policy change, cut established connections of selected pods that policy now denies")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	o.logDecisions = decisionlog.ModeDeny
	fs.Func("log-decisions", "decided connections to log on standard output as JSON lines: none, deny or all (default deny)", func(s string) (err error) {
		o.logDecisions, err = decisionlog.ParseMode(s)
		return err
	})
	fs.Float64Var(&o.logRate, "log-decisions-rate", decisionlog.DefaultRate, "decision log lines per second at most (bursts of twice that); the others are counted in a \"suppressed\" line")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	switch {
	case o.queues < 1 || o.queues > 65535:
		return o, fmt.Errorf("--queues %d: want 1..65535", o.queues)
	case o.firstQueue+o.queues-1 > 65535:
		return o, fmt.Errorf("--nfqueue-id %d with --queues %d exceeds queue 65535", o.firstQueue, o.queues)
	case o.queueMaxLen < 1 || o.queueMaxLen > 1<<31:
		return o, fmt.Errorf("--queue-maxlen %d out of range", o.queueMaxLen)
	case o.cacheSize < 1:
		return o, fmt.Errorf("--cache-size %d: want at least 1", o.cacheSize)
	case o.decideTimeout <= 0:
		return o, errors.New("--decide-timeout must be positive")
	case o.logRate <= 0:
		return o, errors.New("--log-decisions-rate must be positive")
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

// run wires the parts together and serves until ctx ends.
func run(ctx context.Context, o options) error {
	slog.Info("starting queuer", "version", version.Version, "node", o.nodeName,
		"failOpen", o.failOpen, "queues", o.queues, "firstQueue", o.firstQueue)

	dp, err := dataplane.New(dataplane.Config{
		QueueMode:  o.queueMode,
		FirstQueue: uint16(o.firstQueue),
		QueueCount: uint16(o.queues),
		FailOpen:   o.failOpen,
		VerdictTTL: o.kernelCacheTTL,
	})
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	dec, err := client.New(o.deciderSocket, client.Options{})
	if err != nil {
		return err
	}
	defer dec.Close()

	vc := cache.New(cache.Options{Size: o.cacheSize, TTL: o.cacheTTL})
	counters := nfq.NewCounters(uint16(o.firstQueue), uint16(o.queues))
	m := newMetrics(vc, counters, procNFQueue)
	m.dataplaneMode.WithLabelValues(string(dp.Mode())).Set(1)
	batcher := newKernelBatcher(dp, m)
	decisions := decisionlog.New(os.Stdout, decisionlog.Options{Mode: o.logDecisions, Rate: o.logRate, Burst: max(1, int(2*o.logRate))})
	h := &handler{cache: vc, decider: dec, sink: batcher, failOpen: o.failOpen, timeout: o.decideTimeout, metrics: m, decisions: decisions}

	var setUp atomic.Bool
	ready := func() bool { return setUp.Load() && dec.Connected() && h.watched.Load() }
	srv, err := serveHTTP(o.metricsAddr, m, ready)
	if err != nil {
		return err
	}

	if err := dp.Setup(ctx); err != nil {
		return fmt.Errorf("dataplane setup: %w", err)
	}
	setUp.Store(true)
	m.countBypass(dp.QueuedPackets, o.failOpen)
	defer shutdownDataplane(dp, o.failOpen)

	var wg sync.WaitGroup
	defer wg.Wait()
	bg, cancelBg := context.WithCancel(ctx)
	defer cancelBg()
	wg.Go(func() { dec.Run(bg) })
	wg.Go(func() { batcher.Run(bg) })
	wg.Go(func() { decisions.Run(bg) })
	var cutter *flowCutter
	if o.cutEstablished {
		table, err := conntrack.Dial()
		if err != nil {
			return err
		}
		defer table.Close()
		cutter = newFlowCutter(table, dec, dp, time.Second)
		m.countCuts(cutter.cutter.Stats)
		wg.Go(func() { cutter.Run(bg) })
	}
	wg.Go(func() {
		_ = dec.Watch(bg, o.nodeName, func(u client.WatchUpdate) {
			if err := h.applyWatch(bg, dp, u); err != nil {
				slog.Error("applying decider state failed", "generation", u.Generation, "err", err)
				return
			}
			slog.Info("decider state applied", "generation", u.Generation, "ipv4", len(u.IPv4), "ipv6", len(u.IPv6))
			if cutter != nil {
				cutter.Trigger(u)
			}
		})
	})
	if srv != nil {
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}

	err = nfq.Run(ctx, nfq.Config{
		First:    uint16(o.firstQueue),
		Count:    uint16(o.queues),
		MaxLen:   uint32(o.queueMaxLen),
		FailOpen: o.failOpen,
		Workers:  o.queueWorkers,
		Counters: counters,
		OnError: func(queue uint16, err error) {
			slog.Warn("nfqueue error", "queue", queue, "err", err)
		},
	}, h.handle)
	if err != nil {
		return fmt.Errorf("nfqueue: %w", err)
	}
	slog.Info("shutting down")
	return nil
}

// shutdownDataplane removes the ruleset under fail-open; under fail-closed
// Shutdown leaves it so that packets of selected pods stay dropped until the
// queuer is back.
func shutdownDataplane(dp *dataplane.Dataplane, failOpen bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dp.Shutdown(ctx); err != nil {
		slog.Error("dataplane shutdown failed", "failOpen", failOpen, "err", err)
	}
}

// serveHTTP serves /metrics, /healthz and /readyz on addr; empty addr
// disables it and returns a nil server.
func serveHTTP(addr string, m *metrics, ready func() bool) (*http.Server, error) {
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
// /readyz once the dataplane is set up, the decider stream is connected and
// the decider's first state has been applied.
func newMux(m *metrics, ready func() bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
