package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/decisionlog"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// explainingDecider denies, explaining when asked, or fails with err.
type explainingDecider struct {
	err     error
	explain []tollgatev1.Explain
}

func (d *explainingDecider) Connected() bool { return true }

func (d *explainingDecider) Learn(context.Context, netip.Addr, []client.Resolution) (uint64, error) {
	return 0, errors.New("not a DNS test")
}

func (d *explainingDecider) Watch(ctx context.Context, _ string, _ func(client.WatchUpdate)) error {
	<-ctx.Done()
	return ctx.Err()
}

func (d *explainingDecider) DecideFunc(q client.Query, timeout time.Duration, fn func(client.Result, error)) {
	decideFunc(d.Decide, q, timeout, fn)
}

func (d *explainingDecider) Decide(_ context.Context, q client.Query) (client.Result, error) {
	d.explain = append(d.explain, q.Explain)
	if d.err != nil {
		return client.Result{}, d.err
	}
	r := client.Result{Generation: 4}
	if q.Explain != tollgatev1.Explain_EXPLAIN_UNSPECIFIED {
		r.Explanations = []*tollgatev1.Explanation{{
			Direction: tollgatev1.Direction_DIRECTION_INGRESS, Pod: &tollgatev1.PodRef{Namespace: "y", Name: "b"},
			Tier: tollgatev1.Tier_TIER_NETWORK_POLICY, Policy: &tollgatev1.PolicyRef{Kind: "NetworkPolicy", Namespace: "y", Name: "deny"},
			Action: tollgatev1.Action_ACTION_DENY, Verdict: tollgatev1.Verdict_VERDICT_DENY,
		}}
	}
	return r, nil
}

// TestHandleLogsDecisions: one line per connection the agent decides,
// saying who answered; the decider is asked for explanations only while
// the log wants them.
func TestHandleLogsDecisions(t *testing.T) {
	dec := &explainingDecider{}
	var out bytes.Buffer
	log := decisionlog.New(&out, decisionlog.Options{Mode: decisionlog.ModeDeny})
	h := newTestAgent(t, &fakeDecider{}, Config{Decisions: log}, nil)
	h.dec = nil
	h.Agent.dec = dec
	h.handle(nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40000, 80)}) // the decider answers
	h.handle(nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40001, 80)}) // the cache answers
	dec.err = errors.New("down")
	h.handle(nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.2", 6, 40002, 81)}) // fail-closed
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	log.Run(ctx)

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), out.String())
	}
	var got []decisionlog.Line
	for _, l := range lines {
		var ln decisionlog.Line
		if err := json.Unmarshal([]byte(l), &ln); err != nil {
			t.Fatal(err)
		}
		got = append(got, ln)
	}
	if l := got[0]; l.Answered != sourceDecider || l.Verdict != "deny" || l.SrcPort != 40000 || l.DstPod != "y/b" || l.Policy == nil || l.Policy.Name != "deny" || l.Generation != 4 {
		t.Errorf("decider line %+v", l)
	}
	if l := got[1]; l.Answered != sourceCache || l.SrcPort != 40001 || l.Policy != nil {
		t.Errorf("cache line %+v", l)
	}
	if l := got[2]; l.Answered != sourceFailMode || l.DstPort != 81 || l.Verdict != "deny" {
		t.Errorf("fail-mode line %+v", l)
	}
	if len(dec.explain) != 2 || dec.explain[0] != tollgatev1.Explain_EXPLAIN_DENIED {
		t.Errorf("queries asked %v, want EXPLAIN_DENIED", dec.explain)
	}

	// Without a log, nothing is asked.
	h.cfg.Decisions = nil
	dec.err, dec.explain = nil, nil
	h.handle(nfq.Packet{Payload: pkt4("10.0.0.1", "10.0.0.3", 6, 40000, 80)})
	if len(dec.explain) != 1 || dec.explain[0] != tollgatev1.Explain_EXPLAIN_UNSPECIFIED {
		t.Errorf("queries asked %v without a log", dec.explain)
	}
}
