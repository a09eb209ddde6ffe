// Package decisionlog writes the queuer's decision log: one JSON line per
// connection the queuer decides (the first packet of a connection reaches
// the queuer once; later packets never do), saying when, the connection,
// the pods at both ends, the verdict, the tier, policy and rule that
// decided it, and who answered (the decider, the userspace cache or the
// fail mode). Connections answered by the kernel's verdict cache never
// reach the queuer and are not logged.
//
// Lines are rate-limited by a token bucket; what the limit (or a full
// queue) drops is counted and reported in a line of its own. Log never
// blocks the packet path: a goroutine (Run) formats and writes.
package decisionlog

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// Mode says which decisions are logged.
type Mode uint8

// Modes.
const (
	ModeNone Mode = iota
	ModeDeny
	ModeAll
)

// ParseMode reads "none", "deny" or "all".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "none":
		return ModeNone, nil
	case "deny":
		return ModeDeny, nil
	case "all":
		return ModeAll, nil
	}
	return ModeNone, fmt.Errorf("%q: want none, deny or all", s)
}

// String names the mode as ParseMode reads it.
func (m Mode) String() string {
	return [...]string{"none", "deny", "all"}[m]
}

// Defaults of Options.
const (
	DefaultRate  = 100  // lines per second
	DefaultBurst = 200  // lines at once
	DefaultQueue = 1024 // decisions waiting for the writer
	// DefaultReportEvery is how often the writer reports suppressed lines
	// when no decision is logged to carry the report.
	DefaultReportEvery = 10 * time.Second
)

// Options tune a Logger; zero values pick the defaults.
type Options struct {
	Mode Mode
	// Rate and Burst bound the lines written: Rate per second on average,
	// Burst at once.
	Rate  float64
	Burst int
	// Queue is how many decisions may wait for the writer.
	Queue int
	// ReportEvery is how often suppressed lines are reported while nothing
	// is logged.
	ReportEvery time.Duration
	// Now is the clock; tests set their own.
	Now func() time.Time
}

// Decision is one connection the queuer decided.
type Decision struct {
	// The first packet's addresses, ports (zero without ports) and IP
	// protocol number; Dst is after DNAT.
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
	ViaService       bool
	Allow            bool
	// Answered is who answered: "decider", "cache" (the queuer's userspace
	// cache) or "fail-mode" (no answer could be had).
	Answered   string
	Generation uint64
	// Explanations are the decider's, when it gave them (see
	// tollgatev1.Query.explain): they name the pods, tier, policy and rule.
	Explanations []*tollgatev1.Explanation
}

// Stats count what a Logger did.
type Stats struct {
	// Logged counts lines written for decisions; Suppressed the decisions
	// of the mode that the rate limit or a full queue kept out.
	Logged, Suppressed uint64
}

// Logger writes the decision log. A nil *Logger logs nothing, so callers
// need no check.
type Logger struct {
	w     io.Writer
	mode  Mode
	rate  float64
	burst float64
	every time.Duration
	now   func() time.Time
	queue chan entry

	mu     sync.Mutex // the token bucket
	tokens float64
	last   time.Time

	logged, suppressed atomic.Uint64
	unreported         atomic.Uint64 // suppressed since the last report
}

type entry struct {
	at time.Time
	d  Decision
	// suppressed counts the decisions suppressed since the entry before.
	suppressed uint64
}

// New returns a logger writing to w, or nil for ModeNone.
func New(w io.Writer, opts Options) *Logger {
	if opts.Mode == ModeNone {
		return nil
	}
	if opts.Rate <= 0 {
		opts.Rate = DefaultRate
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.ReportEvery <= 0 {
		opts.ReportEvery = DefaultReportEvery
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Logger{
		w: w, mode: opts.Mode, rate: opts.Rate, burst: float64(opts.Burst), every: opts.ReportEvery, now: opts.Now,
		queue: make(chan entry, opts.Queue), tokens: float64(opts.Burst),
	}
}

// Explain is what the queuer asks the decider to explain for this logger:
// the decisions it logs.
func (l *Logger) Explain() tollgatev1.Explain {
	switch {
	case l == nil:
		return tollgatev1.Explain_EXPLAIN_UNSPECIFIED
	case l.mode == ModeDeny:
		return tollgatev1.Explain_EXPLAIN_DENIED
	}
	return tollgatev1.Explain_EXPLAIN_ALL
}

// Log queues d for writing if the mode logs it and the rate allows; it
// never blocks.
func (l *Logger) Log(d Decision) {
	if l == nil || (l.mode == ModeDeny && d.Allow) {
		return
	}
	now := l.now()
	if !l.take(now) {
		l.suppress(0)
		return
	}
	e := entry{at: now, d: d, suppressed: l.unreported.Swap(0)}
	select {
	case l.queue <- e:
	default:
		l.suppress(e.suppressed)
	}
}

// suppress counts one decision not logged, and gives back the count of
// earlier ones that its entry was to report.
func (l *Logger) suppress(earlier uint64) {
	l.suppressed.Add(1)
	l.unreported.Add(1 + earlier)
}

// take takes a token from the bucket, refilled at l.rate since the last
// call.
func (l *Logger) take(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// Stats returns the counters.
func (l *Logger) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	return Stats{Logged: l.logged.Load(), Suppressed: l.suppressed.Load()}
}

// Run writes queued decisions until ctx ends, then what is still queued
// and the last report of suppressed lines.
func (l *Logger) Run(ctx context.Context) {
	if l == nil {
		return
	}
	tick := time.NewTicker(l.every)
	defer tick.Stop()
	for {
		select {
		case e := <-l.queue:
			l.write(e)
		case <-tick.C:
			l.report(l.now(), l.unreported.Swap(0))
		case <-ctx.Done():
			for {
				select {
				case e := <-l.queue:
					l.write(e)
				default:
					l.report(l.now(), l.unreported.Swap(0))
					return
				}
			}
		}
	}
}

// write writes one decision's line, after the report of the lines
// suppressed before it.
func (l *Logger) write(e entry) {
	l.report(e.at, e.suppressed)
	b, err := json.Marshal(line(e))
	if err != nil {
		return // the line holds only strings, numbers and booleans
	}
	if _, err := l.w.Write(append(b, '\n')); err == nil {
		l.logged.Add(1)
	}
}

// report writes a line counting n suppressed decisions, if n > 0.
func (l *Logger) report(at time.Time, n uint64) {
	if n > 0 {
		b, _ := json.Marshal(suppressedLine{Time: at.UTC().Format(time.RFC3339Nano), Suppressed: n})
		_, _ = l.w.Write(append(b, '\n'))
	}
}

// suppressedLine says how many decisions were not logged.
type suppressedLine struct {
	Time       string `json:"time"`
	Suppressed uint64 `json:"suppressed"`
}

// Line is one decision as written (see docs/observability.md).
type Line struct {
	Time       string `json:"time"`
	Verdict    string `json:"verdict"`
	Protocol   string `json:"protocol"`
	Src        string `json:"src"`
	SrcPort    uint16 `json:"srcPort,omitempty"`
	Dst        string `json:"dst"`
	DstPort    uint16 `json:"dstPort,omitempty"`
	ViaService bool   `json:"viaService,omitempty"`
	// SrcPod and DstPod are "namespace/name", when the decider's
	// explanations name them.
	SrcPod string `json:"srcPod,omitempty"`
	DstPod string `json:"dstPod,omitempty"`
	// Answered is "decider", "cache" or "fail-mode".
	Answered   string `json:"answered"`
	Generation uint64 `json:"generation,omitempty"`
	// The direction that decided: for a denial the first direction that
	// denied (egress is evaluated first), for an allow the last direction
	// a policy allowed (else the last evaluated). Absent without
	// explanations.
	Direction string     `json:"direction,omitempty"`
	Tier      string     `json:"tier,omitempty"`
	Policy    *PolicyRef `json:"policy,omitempty"`
	Rule      *RuleRef   `json:"rule,omitempty"`
	Action    string     `json:"action,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

// PolicyRef names a policy.
type PolicyRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// RuleRef names a rule.
type RuleRef struct {
	Index uint32 `json:"index"`
	Name  string `json:"name,omitempty"`
}

func line(e entry) Line {
	d := e.d
	l := Line{
		Time: e.at.UTC().Format(time.RFC3339Nano), Verdict: "deny", Protocol: protocol(d.Proto),
		Src: d.Src.String(), SrcPort: d.SrcPort, Dst: d.Dst.String(), DstPort: d.DstPort, ViaService: d.ViaService,
		Answered: d.Answered, Generation: d.Generation,
	}
	if d.Allow {
		l.Verdict = "allow"
	}
	var decided *tollgatev1.Explanation
	for _, x := range d.Explanations {
		pod := ""
		if p := x.GetPod(); p != nil {
			pod = p.GetNamespace() + "/" + p.GetName()
		}
		if x.GetDirection() == tollgatev1.Direction_DIRECTION_INGRESS {
			l.DstPod = pod
		} else {
			l.SrcPod = pod
			if d.Src == d.Dst {
				l.DstPod = pod // a pod reaching itself
			}
		}
		switch {
		case !d.Allow && decided == nil && x.GetVerdict() == tollgatev1.Verdict_VERDICT_DENY:
			decided = x
		case d.Allow && (decided == nil || x.GetTier() != tollgatev1.Tier_TIER_DEFAULT || decided.GetTier() == tollgatev1.Tier_TIER_DEFAULT):
			decided = x
		}
	}
	if decided != nil {
		l.Direction = directionNames[decided.GetDirection()]
		l.Tier = tierNames[decided.GetTier()]
		if p := decided.GetPolicy(); p != nil {
			l.Policy = &PolicyRef{Kind: p.GetKind(), Namespace: p.GetNamespace(), Name: p.GetName()}
		}
		if r := decided.GetRule(); r != nil {
			l.Rule = &RuleRef{Index: r.GetIndex(), Name: r.GetName()}
		}
		l.Action = actionNames[decided.GetAction()]
		l.Reason = decided.GetReason()
	}
	return l
}

func protocol(p uint8) string {
	switch p {
	case 1:
		return "ICMP"
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 58:
		return "ICMPv6"
	case 132:
		return "SCTP"
	}
	return strconv.Itoa(int(p))
}

var (
	directionNames = map[tollgatev1.Direction]string{
		tollgatev1.Direction_DIRECTION_EGRESS: "egress", tollgatev1.Direction_DIRECTION_INGRESS: "ingress",
	}
	tierNames = map[tollgatev1.Tier]string{
		tollgatev1.Tier_TIER_ADMIN_NETWORK_POLICY:            "AdminNetworkPolicy",
		tollgatev1.Tier_TIER_CLUSTER_NETWORK_POLICY_ADMIN:    "ClusterNetworkPolicy(Admin)",
		tollgatev1.Tier_TIER_NETWORK_POLICY:                  "NetworkPolicy",
		tollgatev1.Tier_TIER_BASELINE_ADMIN_NETWORK_POLICY:   "BaselineAdminNetworkPolicy",
		tollgatev1.Tier_TIER_CLUSTER_NETWORK_POLICY_BASELINE: "ClusterNetworkPolicy(Baseline)",
		tollgatev1.Tier_TIER_DEFAULT:                         "default",
	}
	actionNames = map[tollgatev1.Action]string{
		tollgatev1.Action_ACTION_ALLOW: "Allow", tollgatev1.Action_ACTION_DENY: "Deny", tollgatev1.Action_ACTION_PASS: "Pass",
	}
)
