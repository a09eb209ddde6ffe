// Command bench-scale measures, at cluster scale and beside
// kube-network-policies' own agent (make bench-scale, as root):
//
//   - how long a policy change takes to govern packets: the time from the
//     apiserver answering a change (a NetworkPolicy created, updated or
//     deleted; a pod relabelled; a namespace relabelled) to the first new
//     connection, on the simulated node, that gets the new verdict. A probe
//     opens a connection between two pods of the node every couple of
//     milliseconds throughout; every change flips its verdict.
//   - the memory of the decider (RSS and Go heap) and of the agent, with
//     the cluster's objects loaded through the real apiserver, at two
//     sizes.
//
// The cluster is test/cluster's etcd and kube-apiserver; pods are objects
// with their status set as a kubelet would (no kubelet), except the probe
// pods, which are test/netsim namespaces on the simulated node. One node's
// enforcer runs at a time: Tollgate's decider (host namespace) and queuer
// (node namespace), or the agent (node namespace, built by
// hack/bench-knp/agent.sh). See docs/performance.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tollgate/tollgate/test/bench"
)

// config holds the flags.
type config struct {
	pods, bigPods, policies int
	namespaces, nodePods    int
	rounds                  int
	enforcers               []string
	interval, timeout       time.Duration
	changeTimeout           time.Duration
	settle                  time.Duration
	doc, out, cache         string
	smoke, profile          bool
}

var allEnforcers = []string{"tollgate", "knp-standard", "tollgate-nft"}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench-scale", flag.ContinueOnError)
	enforcers := fs.String("enforcers", strings.Join(allEnforcers, ","), "comma-separated enforcers: tollgate, knp-standard, tollgate-nft (tollgate whose queuer writes set elements with an nft process per change, --netlink-sets=false)")
	fs.IntVar(&c.pods, "pods", 10000, "pods for the change measurements and the first memory figures")
	fs.IntVar(&c.bigPods, "big-pods", 100000, "pods for the second memory figures (0: skip)")
	fs.IntVar(&c.policies, "policies", 10000, "background NetworkPolicies")
	fs.IntVar(&c.namespaces, "namespaces", 100, "namespaces the pods and policies are spread over")
	fs.IntVar(&c.nodePods, "node-pods", 100, "of the pods, how many are on the simulated node (objects only)")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds of eight changes per enforcer (the enforcers alternate)")
	fs.DurationVar(&c.interval, "probe-interval", 2*time.Millisecond, "time between probe connections (the measurement's resolution)")
	fs.DurationVar(&c.timeout, "probe-timeout", 400*time.Millisecond, "a probe connection not answered in this time counts as denied")
	fs.DurationVar(&c.changeTimeout, "change-timeout", 30*time.Second, "give up on a change not enforced in this time")
	fs.DurationVar(&c.settle, "settle", 10*time.Second, "wait after an enforcer is ready before reading its memory")
	fs.StringVar(&c.doc, "doc", "", "markdown file whose bench-scale section to regenerate (e.g. docs/performance.md)")
	fs.StringVar(&c.out, "out", "", "directory for raw results and logs (default $CACHE/bench-scale)")
	fs.BoolVar(&c.profile, "profile", false, "build the decider with pprof and save its heap profile (after a forced GC) at each size")
	fs.BoolVar(&c.smoke, "smoke", false, "tiny sizes, one round: checks that the benchmark still runs, measures nothing")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.smoke {
		c.pods, c.bigPods, c.policies, c.namespaces, c.nodePods, c.rounds, c.settle = 200, 300, 100, 10, 10, 1, 0
		// Generous, so that a loaded machine does not turn a slow
		// allowed connection into a "denied" one.
		c.timeout = 700 * time.Millisecond
	}
	for _, e := range strings.Split(*enforcers, ",") {
		e = strings.TrimSpace(e)
		if !slices.Contains(allEnforcers, e) {
			return c, fmt.Errorf("--enforcers: unknown %q (known: %s)", e, strings.Join(allEnforcers, ", "))
		}
		c.enforcers = append(c.enforcers, e)
	}
	switch {
	case c.namespaces < 1 || c.pods < c.namespaces || c.nodePods < 1 || c.nodePods > c.pods:
		return c, fmt.Errorf("want 1 <= --namespaces <= --pods and 1 <= --node-pods <= --pods")
	case c.bigPods != 0 && c.bigPods < c.pods:
		return c, fmt.Errorf("--big-pods must be 0 or at least --pods")
	case c.rounds < 1 || c.interval <= 0 || c.timeout <= 0:
		return c, fmt.Errorf("--rounds, --probe-interval and --probe-timeout must be positive")
	}
	return c, nil
}

func main() {
	var cfg config
	bench.Main("bench-scale", func(args []string) (err error) {
		cfg, err = parseFlags(args)
		cfg.cache = os.Getenv("CACHE")
		return err
	}, func(ctx context.Context) error { return run(ctx, cfg) })
}

// commandLine is the configuration as flags.
func commandLine(cfg config) string {
	if cfg.smoke {
		return "bench-scale --smoke"
	}
	line := fmt.Sprintf("bench-scale --pods %d --big-pods %d --policies %d --namespaces %d --node-pods %d --rounds %d --probe-interval %s --probe-timeout %s --enforcers %s",
		cfg.pods, cfg.bigPods, cfg.policies, cfg.namespaces, cfg.nodePods, cfg.rounds, cfg.interval, cfg.timeout, strings.Join(cfg.enforcers, ","))
	if cfg.profile {
		line += " --profile"
	}
	return line
}
