// Package contract is the conformance kit for deciders: it checks a running
// decider over the public gRPC contract alone (docs/decider-contract.md),
// one requirement at a time, against Expectations that say what the
// decider has loaded. Plugin authors run it as a binary:
//
//	go run github.com/tollgate/tollgate/cmd/tollgate-contract --socket /run/my.sock --expect my-expectations.yaml
//
// Without expectations it assumes the decider serves the example cluster
// and policies of deploy/examples (Examples). The package's tests run it
// against Tollgate's decider and the example plugins in examples/deciders.
package contract

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// Requirement is one rule of the contract that the kit checks.
type Requirement struct {
	// Name is short and stable, for -run and for reports.
	Name string
	// Rule says what is checked.
	Rule  string
	check func(*kit, *checker)
}

// Requirements lists what the kit checks, in the order it checks them.
// watch-change changes the decider's policy, so it comes after every
// check of the initial state.
var Requirements = []Requirement{
	{"health", `gRPC health: Check says SERVING for "" and tollgate.v1.DeciderService, NOT_FOUND for an unknown service; Watch streams SERVING`, checkHealth},
	{"decide-verdicts", "Decide gives every expected verdict, over each address family, with a generation; a pod reaching its own address directly is allowed", checkVerdicts},
	{"decide-explanations", "Decide explains each evaluated direction once (egress of a source pod, ingress of a destination pod), naming the pod and a tier, and the explanations agree with the verdict", checkExplanations},
	{"decide-port-ranges", "where Decide gives a destination port range (dst_port_min, dst_port_max), it contains the asked port and Decide gives the same verdict at both its ends", checkPortRanges},
	{"decide-invalid", "Decide answers malformed requests with InvalidArgument naming the field", checkInvalid},
	{"decide-stream", "DecideStream answers pipelined batches: every query id once, with Decide's verdict and a generation; a malformed query gets an error result and the stream stays open", checkStream},
	{"watch-initial", "Watch starts with the current generation, the instance and changed_all, and the node's selected addresses (4 or 16 bytes, sorted); Decide answers at that generation; a node without pods has none", checkWatchInitial},
	{"watch-change", "after a policy change, Watch announces a higher generation of the same instance, the new selected addresses, and lists in changed (or sets changed_all for) every address whose verdicts changed; a new stream starts with changed_all", checkWatchChange},
	{"generations", "generations are never 0 and never go down: an answer is never older than one received before it was asked", checkGenerations},
}

// Status is the outcome of one requirement.
type Status string

const (
	// Pass means the decider met the requirement.
	Pass Status = "PASS"
	// Fail means it did not; Details say where.
	Fail Status = "FAIL"
	// Skip means the requirement was not checked; Details say why.
	Skip Status = "SKIP"
)

// Result is the outcome of one requirement.
type Result struct {
	Requirement Requirement
	Status      Status
	// Details are the failures (for Fail), the reason (for Skip) or notes.
	Details []string
}

// Report is the outcome of a run, one Result per requirement.
type Report []Result

// Failed reports whether any requirement failed.
func (r Report) Failed() bool {
	for _, res := range r {
		if res.Status == Fail {
			return true
		}
	}
	return false
}

// Result returns the result of the named requirement, or nil.
func (r Report) Result(name string) *Result {
	for i := range r {
		if r[i].Requirement.Name == name {
			return &r[i]
		}
	}
	return nil
}

// maxDetails bounds the detail lines printed per requirement.
const maxDetails = 20

// Print writes one line per requirement, its details indented below it,
// and a summary line.
func (r Report) Print(w io.Writer) {
	counts := map[Status]int{}
	for _, res := range r {
		counts[res.Status]++
		fmt.Fprintf(w, "%s  %-20s %s\n", res.Status, res.Requirement.Name, res.Requirement.Rule)
		for i, d := range res.Details {
			if i == maxDetails {
				fmt.Fprintf(w, "      ... and %d more\n", len(res.Details)-maxDetails)
				break
			}
			fmt.Fprintf(w, "      %s\n", d)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", counts[Pass], counts[Fail], counts[Skip])
}

// Options tune a run.
type Options struct {
	// Change and Revert, when set, replace the commands of the
	// expectations' change (Change without Revert leaves the decider
	// changed). Tests use them to change a decider they started.
	Change, Revert func(context.Context) error
	// Run, when set, checks only the requirements whose name it matches.
	Run *regexp.Regexp
	// CallTimeout bounds each RPC (default 10s).
	CallTimeout time.Duration
}

// kit is one run against one decider.
type kit struct {
	ctx    context.Context
	api    tollgatev1.DeciderServiceClient
	health healthpb.HealthClient
	e      *Expectations
	opts   Options
	gens   generations

	decided map[int]decided // initial-state probe index -> Decide's answer
}

type decided struct {
	resp *tollgatev1.DecideResponse
	err  error
}

// checker collects one requirement's outcome.
type checker struct {
	failures []string
	notes    []string
	skip     string
}

func (c *checker) errorf(format string, args ...any) {
	c.failures = append(c.failures, fmt.Sprintf(format, args...))
}

func (c *checker) notef(format string, args ...any) {
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

// Check runs every requirement against the decider on conn.
func Check(ctx context.Context, conn grpc.ClientConnInterface, e *Expectations, opts Options) Report {
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 10 * time.Second
	}
	k := &kit{
		ctx: ctx, api: tollgatev1.NewDeciderServiceClient(conn), health: healthpb.NewHealthClient(conn),
		e: e, opts: opts,
	}
	var report Report
	for _, req := range Requirements {
		res := Result{Requirement: req}
		switch {
		case opts.Run != nil && !opts.Run.MatchString(req.Name):
			res.Status, res.Details = Skip, []string{"not selected by -run"}
		default:
			c := &checker{}
			req.check(k, c)
			switch {
			case c.skip != "":
				res.Status, res.Details = Skip, []string{c.skip}
			case len(c.failures) > 0:
				res.Status, res.Details = Fail, c.failures
			default:
				res.Status, res.Details = Pass, c.notes
			}
		}
		report = append(report, res)
	}
	return report
}

// WaitServing waits until the decider's health says SERVING for
// tollgate.v1.DeciderService, or limit passes.
func WaitServing(ctx context.Context, conn grpc.ClientConnInterface, limit time.Duration) error {
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(limit)
	for {
		c, cancel := context.WithTimeout(ctx, time.Second)
		r, err := hc.Check(c, &healthpb.HealthCheckRequest{Service: tollgatev1.DeciderService_ServiceDesc.ServiceName})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("status %v", r.GetStatus())
			}
			return fmt.Errorf("the decider is not SERVING after %v: %w", limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// call returns a context for one RPC.
func (k *kit) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(k.ctx, k.opts.CallTimeout)
}

// decide asks Decide about p and records the generation.
func (k *kit) decide(p probe) (*tollgatev1.DecideResponse, error) {
	ctx, cancel := k.call()
	defer cancel()
	floor := k.gens.floor()
	r, err := k.api.Decide(ctx, request(p))
	if err == nil {
		k.gens.observe(floor, r.GetGeneration(), "Decide "+p.what)
	}
	return r, err
}

// initial asks Decide about every probe of the initial state, once per
// run. With no probes it skips c's requirement.
func (k *kit) initial(c *checker) ([]probe, map[int]decided) {
	probes := k.e.probes(&k.e.State)
	if len(probes) == 0 {
		c.skip = "the expectations list no pods, grid or cases"
	}
	if k.decided == nil {
		k.decided = map[int]decided{}
		for i, p := range probes {
			r, err := k.decide(p)
			k.decided[i] = decided{r, err}
		}
	}
	return probes, k.decided
}

func request(p probe) *tollgatev1.DecideRequest {
	return &tollgatev1.DecideRequest{SrcIp: p.src.String(), DstIp: p.dst.String(), Protocol: p.proto,
		SrcPort: 40000, DstPort: p.port, ViaService: p.via}
}

func verdictOf(allow bool) tollgatev1.Verdict {
	if allow {
		return tollgatev1.Verdict_VERDICT_ALLOW
	}
	return tollgatev1.Verdict_VERDICT_DENY
}

// generations checks that answers never go back in time: an answer
// received after another was complete carries at least its generation.
type generations struct {
	mu         sync.Mutex
	max        uint64
	seen       int
	violations []string
}

// floor is the highest generation received so far; take it before asking.
func (g *generations) floor() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max
}

// observe records an answer at gen to a question asked when the highest
// generation received was floor.
func (g *generations) observe(floor, gen uint64, what string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen++
	switch {
	case gen == 0:
		g.violations = append(g.violations, what+": generation 0")
	case gen < floor:
		g.violations = append(g.violations, fmt.Sprintf("%s: generation %d, after %d had been received", what, gen, floor))
	}
	g.max = max(g.max, gen)
}

func checkGenerations(k *kit, c *checker) {
	k.gens.mu.Lock()
	defer k.gens.mu.Unlock()
	if k.gens.seen == 0 {
		c.skip = "no answers were received"
		return
	}
	for _, v := range k.gens.violations {
		c.errorf("%s", v)
	}
	if len(k.gens.violations) == 0 {
		c.notef("%d answers, generations up to %d", k.gens.seen, k.gens.max)
	}
}

// describe shortens a gRPC error for a report line.
func describe(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
