// Command bench-dataplane measures new TCP connections per second and the
// first-packet latency on one simulated node, with each enforcer a user
// could pick in the path, alternated within one run (make bench-dataplane,
// as root).
//
// The node and its pods are test/netsim network namespaces; a real
// kube-apiserver (test/cluster) holds the same pods, background pods and
// NetworkPolicies for every variant:
//
//   - none: no enforcer (the node still tracks connections);
//   - accept-all: the packets Tollgate would queue, queued the same way to
//     a program that accepts each at once (the limit of queueing);
//   - tollgate: the decider and queuer;
//   - tollgate-exact: the same with --cache-port-ranges=false, so that
//     every new tuple of the "new" workload goes to the decider;
//   - tollgate-exact-1cpu: tollgate-exact with the decider and the queuer
//     on one CPU (--cpus), where their round trip wakes no idle CPU;
//   - knp-standard, knp-npa-v1alpha2: kube-network-policies' own agents,
//     built from the Go module proxy by hack/bench-knp/agent.sh.
//
// Two workloads: "repeated" connects again and again to the same server
// port (Tollgate answers from its kernel verdict cache), "new" gives every
// connection a destination port never used before in that variant's run
// (a redirect in the server pod sends them all to one listener), so each
// one is queued; tollgate-exact asks its decider about each, tollgate only
// about the first of each pair of pods within a port range its decider
// gave (the policy admits a range). Before anything is timed, every variant's
// verdicts on allowed and denied probes of the measured traffic are checked.
// See docs/performance.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/test/bench"
)

// config holds the flags.
type config struct {
	rounds   int
	duration time.Duration
	warmup   time.Duration
	policies []int
	shapes   []shape
	variants []string
	bgPods   int
	doc      string
	out      string
	profile  bool
	smoke    bool
	cache    string
}

// shape is a load: clients client pods with conns connections in flight
// each. Each shape has client pods of its own, from first on, so that the
// new-tuple ports of one never run short because of another.
type shape struct{ clients, conns, first int }

func (s shape) String() string { return fmt.Sprintf("%d×%d", s.clients, s.conns) }

// allVariants are the variants in their default order.
var allVariants = []string{"none", "accept-all", "tollgate", "tollgate-exact", exact1CPUVariant, "knp-standard", "knp-npa-v1alpha2"}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench-dataplane", flag.ContinueOnError)
	policies := fs.String("policies", "10,1000", "comma-separated NetworkPolicy counts, one phase each")
	shapes := fs.String("shapes", "1x1,1x4,4x16", "comma-separated loads: client pods x connections in flight per pod")
	variants := fs.String("variants", strings.Join(allVariants, ","), "comma-separated variants")
	fs.IntVar(&c.rounds, "rounds", 7, "rounds; every round measures every workload, load and variant, variants in a rotated order")
	fs.DurationVar(&c.duration, "duration", time.Second, "timed length of each measurement")
	fs.DurationVar(&c.warmup, "warmup", 300*time.Millisecond, "untimed load before each measurement")
	fs.IntVar(&c.bgPods, "bg-pods", 1000, "background pods on other nodes")
	fs.StringVar(&c.doc, "doc", "", "markdown file whose bench-dataplane section to regenerate (e.g. docs/performance.md)")
	fs.StringVar(&c.out, "out", "", "directory for raw results and logs (default $CACHE/bench-dataplane)")
	fs.BoolVar(&c.profile, "profile", false, "also take CPU profiles of the queuer and decider under new connections (not timed)")
	fs.BoolVar(&c.smoke, "smoke", false, "tiny sizes, seconds in all: checks that the benchmark still runs, measures nothing")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.smoke {
		c.rounds, c.duration, c.warmup, c.bgPods = 1, 200*time.Millisecond, 50*time.Millisecond, 20
		*policies, *shapes = "2,5", "1x2"
	}
	var err error
	if c.policies, err = parseInts(*policies); err != nil {
		return c, fmt.Errorf("--policies: %w", err)
	}
	clients := 0
	for _, s := range strings.Split(*shapes, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(s), "x")
		ca, err1 := strconv.Atoi(a)
		cb, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || ca < 1 || cb < 1 {
			return c, fmt.Errorf("--shapes: bad load %q (want CLIENTSxCONNS)", s)
		}
		c.shapes = append(c.shapes, shape{ca, cb, clients})
		clients += ca
	}
	if clients > maxClients {
		return c, fmt.Errorf("--shapes: %d client pods in all, at most %d", clients, maxClients)
	}
	for _, v := range strings.Split(*variants, ",") {
		v = strings.TrimSpace(v)
		if !slices.Contains(allVariants, v) {
			return c, fmt.Errorf("--variants: unknown variant %q (known: %s)", v, strings.Join(allVariants, ", "))
		}
		c.variants = append(c.variants, v)
	}
	if !slices.Contains(c.variants, "none") {
		return c, fmt.Errorf("--variants must include none: every figure is a ratio to it")
	}
	if c.rounds < 1 || c.duration <= 0 {
		return c, fmt.Errorf("--rounds and --duration must be positive")
	}
	for _, p := range c.policies {
		if p < 1 {
			return c, fmt.Errorf("--policies: at least one policy (the one that admits the clients)")
		}
	}
	return c, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	var cfg config
	bench.Main("bench-dataplane", func(args []string) (err error) {
		cfg, err = parseFlags(args)
		cfg.cache = os.Getenv("CACHE")
		return err
	}, func(ctx context.Context) error { return run(ctx, cfg) })
}
