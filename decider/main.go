// Command decider answers Tollgate's connection verdicts. It watches the
// Kubernetes API (or manifest files), compiles the policies into snapshots
// and serves tollgate.v1.DeciderService on a Unix socket.
//
//	decider [--kubeconfig PATH | --manifests DIR] [--socket PATH] [--node-name NAME]
//	decider healthcheck [--socket PATH]
//	decider explain --help
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tollgate/tollgate/decider/api"
	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/explain"
	"github.com/tollgate/tollgate/decider/idlegc"
	"github.com/tollgate/tollgate/decider/resolved"
	"github.com/tollgate/tollgate/decider/source"
	"github.com/tollgate/tollgate/decider/state"
	"github.com/tollgate/tollgate/internal/affinity"
	"github.com/tollgate/tollgate/internal/memlimit"
	"github.com/tollgate/tollgate/internal/version"
)

const defaultSocket = "/run/tollgate/decider.sock"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "explain" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := explain.Main(ctx, os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "decider:", err)
		os.Exit(1)
	}
}

// gcPercent is the decider's GOGC unless the environment sets one.
const gcPercent = 50

// After a publication, the decider collects once it has been quiet for
// idleGCDelay if more than idleGCThreshold of the heap's allowance to the
// next collection is in use: at most twice as many collections as Go would
// run, each off the path of a build.
const (
	idleGCDelay     = 100 * time.Millisecond
	idleGCThreshold = 0.5
)

type config struct {
	kubeconfig, manifests, socket, framedSocket, nodeName, metricsAddr, logLevel string
	settle, crdCheck                                                             time.Duration
	maxPolicySeries                                                              int
	dns                                                                          resolved.Options
	memory                                                                       memlimit.Setting
	cpus                                                                         affinity.Set
	printVersion                                                                 bool
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("decider", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when neither this nor --manifests is set")
	fs.StringVar(&c.manifests, "manifests", "", "read objects from *.yaml, *.yml and *.json files in this directory instead of the Kubernetes API")
	fs.StringVar(&c.socket, "socket", defaultSocket, "Unix socket to serve the gRPC API on (created with mode 0660)")
	fs.StringVar(&c.framedSocket, "framed-socket", "", "Unix socket of the framed stream, DecideStream without gRPC for the queuer's hot path (default: decider-frames.sock beside --socket; \"none\" disables)")
	fs.StringVar(&c.nodeName, "node-name", "", "this node's name: whose pods Watch reports (default $NODE_NAME, then the hostname)")
	fs.StringVar(&c.metricsAddr, "metrics-bind-address", ":9081", "address for /metrics, /healthz and /readyz; empty disables")
	fs.DurationVar(&c.settle, "settle", 20*time.Millisecond, "least time between the end of one snapshot rebuild and the start of the next: a change after a quiet spell is built at once, the changes that follow are gathered for this long")
	fs.DurationVar(&c.crdCheck, "crd-check-interval", source.DefaultCRDCheckInterval, "how often to ask discovery which network-policy-api kinds are served")
	fs.IntVar(&c.maxPolicySeries, "metrics-max-policies", api.DefaultMaxPolicySeries,
		"how many policies get their own series in the per-policy metrics; the verdicts and warnings of the others add up under policy=\""+api.OtherPolicy+"\"")
	fs.DurationVar(&c.dns.MinTTL, "dns-min-ttl", resolved.DefaultMinTTL, "domainNames: keep a learned DNS answer at least this long, whatever its TTL")
	fs.DurationVar(&c.dns.MaxTTL, "dns-max-ttl", resolved.DefaultMaxTTL, "domainNames: keep a learned DNS answer at most this long, whatever its TTL")
	fs.IntVar(&c.dns.MaxPerPod, "dns-max-per-pod", resolved.DefaultMaxPerPod, "domainNames: learned (name, address) pairs kept per pod; past it the soonest to expire go")
	fs.IntVar(&c.dns.MaxTotal, "dns-max-entries", resolved.DefaultMaxTotal, "domainNames: learned (pod, name, address) entries kept in all")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	memory := fs.String("memory-limit", "auto", memlimit.FlagUsage)
	cpus := fs.String("cpus", "", affinity.FlagUsage)
	fs.BoolVar(&c.printVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.memory, err = memlimit.Parse(*memory); err != nil {
		return c, fmt.Errorf("--memory-limit: %w", err)
	}
	if c.cpus, err = affinity.Parse(*cpus); err != nil {
		return c, fmt.Errorf("--cpus: %w", err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.kubeconfig != "" && c.manifests != "" {
		return c, errors.New("--kubeconfig and --manifests are mutually exclusive")
	}
	switch c.framedSocket {
	case "":
		c.framedSocket = filepath.Join(filepath.Dir(c.socket), "decider-frames.sock")
	case "none":
		c.framedSocket = ""
	}
	if c.nodeName == "" {
		c.nodeName = os.Getenv("NODE_NAME")
	}
	if c.nodeName == "" {
		c.nodeName, _ = os.Hostname()
	}
	return c, nil
}

func run(args []string) error {
	cfg, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if cfg.printVersion {
		fmt.Println(version.Version)
		return nil
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	memlimit.ApplyAndLog(cfg.memory)
	if err := affinity.Confine(cfg.cpus); err != nil {
		return fmt.Errorf("--cpus: %w", err)
	}
	if !cfg.cpus.Empty() {
		slog.Info("confined to CPUs", "cpus", cfg.cpus.String())
	}
	if os.Getenv("GOGC") == "" {
		// The heap is mostly long-lived state (informer caches, the
		// serving snapshot); the garbage is each rebuild's. Collecting at
		// 1.5× the live heap instead of Go's 2× keeps RSS near what the
		// state needs, for a collection every few rebuilds.
		debug.SetGCPercent(gcPercent)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	src, err := newSource(cfg, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := api.NewMetrics(reg, cfg.maxPolicySeries)
	st := state.New()
	dnsStore := resolved.New(cfg.dns)
	api.RegisterDNS(reg, func() (int, int, uint64) { s := dnsStore.Stats(); return s.Entries, s.Pods, s.Evicted })
	keeper := resolved.NewKeeper(dnsStore, st, cfg.nodeName)
	srv := api.New(st, api.Options{NodeName: cfg.nodeName, Metrics: metrics, Instance: newInstance(), DNS: keeper})

	lis, err := api.Listen(cfg.socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.socket)
	g := srv.NewGRPCServer()
	log.Info("decider starting", "version", version.Version, "socket", cfg.socket, "node", cfg.nodeName, "source", sourceName(cfg))

	errs := make(chan error, 4)
	go func() { errs <- g.Serve(lis) }()
	if cfg.framedSocket != "" {
		flis, err := api.Listen(cfg.framedSocket)
		if err != nil {
			return err
		}
		defer os.Remove(cfg.framedSocket)
		go func() {
			if err := srv.ServeFrames(flis); err != nil {
				errs <- err
			}
		}()
	}
	if cfg.metricsAddr != "" {
		go func() { errs <- serveMetrics(ctx, cfg.metricsAddr, reg, st) }()
	}
	go func() {
		if err := src.Run(ctx, st.Trigger); err != nil {
			errs <- fmt.Errorf("source: %w", err)
		}
	}()
	go keeper.Run(ctx, time.Second)
	// Collect garbage in the quiet after a build rather than during the
	// next one (see package idlegc).
	collector := idlegc.New(idleGCDelay, idleGCThreshold)
	go collector.Run(ctx)
	warned := map[string]bool{}
	go st.Run(ctx, cfg.settle, src.HasSynced, func() engine.Input { return src.Input() }, func(v *state.View) {
		stats := v.Snapshot.Stats()
		log.Info("snapshot published", "generation", v.Generation, "pods", stats.Pods, "policies",
			stats.NetworkPolicies+stats.AdminNetworkPolicies+stats.BaselineAdminNetworkPolicies+stats.ClusterNetworkPolicies,
			"selectedPods", stats.SelectedPods, "compile", v.CompileTime, "build", v.BuildTime)
		for _, w := range v.Snapshot.Warnings() {
			if !warned[w] {
				warned[w] = true
				log.Warn("policy warning", "msg", w)
			}
		}
		metrics.Published(v)
		collector.Kick()
		if v.Generation == 1 {
			srv.MarkServing()
			// Listing every object at start-up leaves the heap at its
			// largest; return that memory now rather than over the
			// minutes the runtime's scavenger would take.
			go debug.FreeOSMemory()
		}
	})

	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	log.Info("decider stopping")
	// Health goes NOT_SERVING and Watch streams end. Unary calls get a short
	// grace; DecideStream streams stay open for as long as their queuer
	// runs, so after the grace the connections are closed and the queuers
	// reconnect to the next decider. A slow exit would only lengthen the
	// gap a restart leaves.
	srv.Shutdown()
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(500 * time.Millisecond):
		g.Stop()
	}
	return err
}

func sourceName(cfg config) string {
	switch {
	case cfg.manifests != "":
		return "manifests:" + cfg.manifests
	case cfg.kubeconfig != "":
		return "kubeconfig:" + cfg.kubeconfig
	}
	return "in-cluster"
}

func newSource(cfg config, log *slog.Logger) (source.Source, error) {
	if cfg.manifests != "" {
		if fi, err := os.Stat(cfg.manifests); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--manifests %s: not a readable directory", cfg.manifests)
		}
		return source.NewManifests(cfg.manifests, source.ManifestsOptions{Logger: log}), nil
	}
	var rc *rest.Config
	var err error
	if cfg.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			err = fmt.Errorf("not running in a cluster and neither --kubeconfig nor --manifests was given: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "tollgate-decider/" + version.Version
	return source.NewKube(rc, source.KubeOptions{Logger: log, CRDCheckInterval: cfg.crdCheck})
}

// serveMetrics serves /metrics, /healthz (the process runs) and /readyz (a
// snapshot is published).
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, st *state.State) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if st.Current() == nil {
			http.Error(w, "not synced", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	hs := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = hs.Close() }()
	if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// healthcheck asks the decider's gRPC health service and exits 0 only for
// SERVING. The Kubernetes probes run it.
func healthcheck(args []string) int {
	fs := flag.NewFlagSet("decider healthcheck", flag.ContinueOnError)
	socket := fs.String("socket", defaultSocket, "the decider's Unix socket")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for an answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix:"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		return 1
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		return 1
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		fmt.Fprintln(os.Stderr, "healthcheck:", resp.GetStatus())
		return 1
	}
	return 0
}

// newInstance returns a random name for this process's generation
// numbering, so that watchers notice a restart even when the new process
// reaches the generation the old one had.
func newInstance() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
