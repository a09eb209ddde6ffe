package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// clock is a settable time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// denied is x/a -> y/b:80/TCP denied on y/b's ingress by a NetworkPolicy.
func denied() Decision {
	return Decision{
		Src: netip.MustParseAddr("10.244.1.1"), Dst: netip.MustParseAddr("10.244.1.5"), SrcPort: 40000, DstPort: 81, Proto: 6,
		Answered: "decider", Generation: 3,
		Explanations: []*tollgatev1.Explanation{{
			Direction: tollgatev1.Direction_DIRECTION_EGRESS, Pod: &tollgatev1.PodRef{Namespace: "x", Name: "a"},
			Tier: tollgatev1.Tier_TIER_DEFAULT, Action: tollgatev1.Action_ACTION_ALLOW, Verdict: tollgatev1.Verdict_VERDICT_ALLOW,
			Reason: "egress of x/a: no policy decides: allowed by default",
		}, {
			Direction: tollgatev1.Direction_DIRECTION_INGRESS, Pod: &tollgatev1.PodRef{Namespace: "y", Name: "b"},
			Tier: tollgatev1.Tier_TIER_NETWORK_POLICY, Policy: &tollgatev1.PolicyRef{Kind: "NetworkPolicy", Namespace: "y", Name: "allow-x-to-b"},
			Action: tollgatev1.Action_ACTION_DENY, Verdict: tollgatev1.Verdict_VERDICT_DENY,
			Reason: "ingress of y/b: isolated by NetworkPolicy y/allow-x-to-b and no NetworkPolicy rule allows it: denied",
		}},
	}
}

// allowed is x/a -> y/b:80/TCP allowed by rule 0 of a NetworkPolicy.
func allowed() Decision {
	d := denied()
	d.Allow, d.DstPort = true, 80
	in := proto.Clone(d.Explanations[1]).(*tollgatev1.Explanation)
	in.Action, in.Verdict, in.Rule = tollgatev1.Action_ACTION_ALLOW, tollgatev1.Verdict_VERDICT_ALLOW, &tollgatev1.RuleRef{Index: 0}
	in.Reason = "ingress of y/b: NetworkPolicy y/allow-x-to-b rule 0 allows"
	d.Explanations = []*tollgatev1.Explanation{d.Explanations[0], in}
	return d
}

// drain runs l until everything queued is written.
func drain(l *Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.Run(ctx)
}

func TestLines(t *testing.T) {
	c := &clock{t0}
	var out bytes.Buffer
	l := New(&out, Options{Mode: ModeAll, Now: c.now})
	l.Log(denied())
	c.t = c.t.Add(time.Millisecond)
	l.Log(allowed())
	cached := allowed()
	cached.Answered, cached.Explanations, cached.Generation = "cache", nil, 0
	l.Log(cached)
	self := Decision{Src: netip.MustParseAddr("10.244.1.1"), Dst: netip.MustParseAddr("10.244.1.1"), Proto: 1, Allow: true, Answered: "decider",
		Explanations: []*tollgatev1.Explanation{{Direction: tollgatev1.Direction_DIRECTION_EGRESS, Pod: &tollgatev1.PodRef{Namespace: "x", Name: "a"},
			Tier: tollgatev1.Tier_TIER_DEFAULT, Action: tollgatev1.Action_ACTION_ALLOW, Verdict: tollgatev1.Verdict_VERDICT_ALLOW}}}
	l.Log(self)
	drain(l)
	want := `{"time":"2026-12-01T10:00:00Z","verdict":"deny","protocol":"TCP","src":"10.244.1.1","srcPort":40000,"dst":"10.244.1.5","dstPort":81,"srcPod":"x/a","dstPod":"y/b","answered":"decider","generation":3,"direction":"ingress","tier":"NetworkPolicy","policy":{"kind":"NetworkPolicy","namespace":"y","name":"allow-x-to-b"},"action":"Deny","reason":"ingress of y/b: isolated by NetworkPolicy y/allow-x-to-b and no NetworkPolicy rule allows it: denied"}
{"time":"2026-12-01T10:00:00.001Z","verdict":"allow","protocol":"TCP","src":"10.244.1.1","srcPort":40000,"dst":"10.244.1.5","dstPort":80,"srcPod":"x/a","dstPod":"y/b","answered":"decider","generation":3,"direction":"ingress","tier":"NetworkPolicy","policy":{"kind":"NetworkPolicy","namespace":"y","name":"allow-x-to-b"},"rule":{"index":0},"action":"Allow","reason":"ingress of y/b: NetworkPolicy y/allow-x-to-b rule 0 allows"}
{"time":"2026-12-01T10:00:00.001Z","verdict":"allow","protocol":"TCP","src":"10.244.1.1","srcPort":40000,"dst":"10.244.1.5","dstPort":80,"answered":"cache"}
{"time":"2026-12-01T10:00:00.001Z","verdict":"allow","protocol":"ICMP","src":"10.244.1.1","dst":"10.244.1.1","srcPod":"x/a","dstPod":"x/a","answered":"decider","direction":"egress","tier":"default","action":"Allow"}
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	if st := l.Stats(); st.Logged != 4 || st.Suppressed != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestModes(t *testing.T) {
	if l := New(&bytes.Buffer{}, Options{Mode: ModeNone}); l != nil {
		t.Fatal("ModeNone gave a logger")
	}
	var none *Logger
	none.Log(denied()) // a nil logger logs nothing, and does not panic
	drain(none)
	if none.Explain() != tollgatev1.Explain_EXPLAIN_UNSPECIFIED || none.Stats() != (Stats{}) {
		t.Error("nil logger")
	}

	var out bytes.Buffer
	l := New(&out, Options{Mode: ModeDeny})
	l.Log(allowed())
	l.Log(denied())
	drain(l)
	if n := strings.Count(out.String(), "\n"); n != 1 || !strings.Contains(out.String(), `"verdict":"deny"`) {
		t.Errorf("deny mode wrote:\n%s", out.String())
	}
	if l.Explain() != tollgatev1.Explain_EXPLAIN_DENIED || New(&out, Options{Mode: ModeAll}).Explain() != tollgatev1.Explain_EXPLAIN_ALL {
		t.Error("Explain does not follow the mode")
	}
	for s, want := range map[string]Mode{"none": ModeNone, "deny": ModeDeny, "all": ModeAll} {
		if m, err := ParseMode(s); err != nil || m != want || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMode("some"); err == nil {
		t.Error("ParseMode accepted some")
	}
}

// TestRateLimit: a burst past the bucket is suppressed and counted; the
// count is reported in order, before the next line written; what is left
// is reported when the writer stops.
func TestRateLimit(t *testing.T) {
	c := &clock{t0}
	var out bytes.Buffer
	l := New(&out, Options{Mode: ModeDeny, Rate: 2, Burst: 3, Now: c.now})
	for range 10 {
		l.Log(denied()) // 3 pass, 7 suppressed
	}
	c.t = c.t.Add(time.Second) // two tokens back
	for range 5 {
		l.Log(denied()) // 2 pass, 3 suppressed
	}
	drain(l)
	var kinds []string
	for _, ln := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(ln), &m); err != nil {
			t.Fatalf("%q: %v", ln, err)
		}
		if n, ok := m["suppressed"]; ok {
			kinds = append(kinds, "suppressed:"+strings.TrimSpace(jsonNumber(n)))
		} else {
			kinds = append(kinds, "line")
		}
	}
	want := "line line line suppressed:7 line line suppressed:3"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("lines: %s\nwant:  %s\n%s", got, want, out.String())
	}
	if st := l.Stats(); st.Logged != 5 || st.Suppressed != 10 {
		t.Errorf("stats %+v, want 5 logged and 10 suppressed", st)
	}
}

func jsonNumber(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestFullQueue: when the writer falls behind, decisions are suppressed
// rather than blocking the packet path.
func TestFullQueue(t *testing.T) {
	var out bytes.Buffer
	l := New(&out, Options{Mode: ModeAll, Queue: 2})
	for range 5 {
		l.Log(allowed())
	}
	drain(l)
	if st := l.Stats(); st.Logged != 2 || st.Suppressed != 3 {
		t.Errorf("stats %+v, want 2 logged, 3 suppressed", st)
	}
	if !strings.HasSuffix(out.String(), "\"suppressed\":3}\n") {
		t.Errorf("no report of the suppressed decisions at the end:\n%s", out.String())
	}
}

// TestPeriodicReport: suppressed decisions are reported even when no
// later decision is logged.
func TestPeriodicReport(t *testing.T) {
	var out syncBuffer
	l := New(&out, Options{Mode: ModeAll, Rate: 0.001, Burst: 1, ReportEvery: 10 * time.Millisecond})
	l.Log(allowed())
	l.Log(allowed())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), `"suppressed":1`) {
		if time.Now().After(deadline) {
			t.Fatalf("no report within 5s:\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkLogNotLogged is the packet path's cost for a decision the mode
// does not log.
func BenchmarkLogNotLogged(b *testing.B) {
	l := New(&bytes.Buffer{}, Options{Mode: ModeDeny})
	d := allowed()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(d)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
