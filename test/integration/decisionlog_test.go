package integration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// logLine is the part of a decision log line this test reads.
type logLine struct {
	Verdict, Protocol, Src, Dst, SrcPod, DstPod, Answered, Tier, Direction, Reason string
	DstPort                                                                        int
	Policy                                                                         *struct{ Kind, Namespace, Name string }
}

// decisions returns the decision lines the queuer wrote so far.
func (n *node) decisions() []logLine {
	var out []logLine
	for _, l := range strings.Split(n.queuer.Log(), "\n") {
		var ln logLine
		if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &ln) == nil && ln.Verdict != "" {
			out = append(out, ln)
		}
	}
	return out
}

// TestDecisionLog: with real packets, the queuer logs each connection it
// decides with the pods and the policy the decider names; in deny mode,
// only denials.
func TestDecisionLog(t *testing.T) {
	for _, mode := range []string{"deny", "all"} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			n.start(policyYAML, true, "--log-decisions="+mode)
			n.check(probe{"c", "b", netsim.TCP, false, false}, probe{"a", "b", netsim.TCP, false, true})
			var denied, allowed *logLine
			n.eventually("decision lines", 5*time.Second, func() bool {
				denied, allowed = nil, nil
				for _, l := range n.decisions() {
					switch {
					case l.Verdict == "deny" && l.Src == "10.99.1.3" && l.Dst == "10.99.1.2":
						denied = &l
					case l.Verdict == "allow":
						allowed = &l
					}
				}
				return denied != nil && (mode == "deny" || allowed != nil)
			})
			if d := denied; d.SrcPod != "z/c" || d.DstPod != "y/b" || d.Protocol != "TCP" || d.DstPort != 80 || d.Direction != "ingress" ||
				d.Tier != "NetworkPolicy" || d.Policy == nil || d.Policy.Name != "from-x" || d.Reason == "" {
				t.Errorf("denied line %+v", *d)
			}
			if d := denied; d.Answered != "decider" && d.Answered != "cache" {
				t.Errorf("denied line answered by %q", d.Answered)
			}
			if mode == "deny" && allowed != nil {
				t.Errorf("deny mode logged an allowed connection: %+v", *allowed)
			}
			if mode == "all" && (allowed.SrcPod != "x/a" || allowed.DstPod != "y/b" || allowed.Policy == nil || allowed.Policy.Name != "from-x") {
				t.Errorf("allowed line %+v", *allowed)
			}
			t.Logf("queuer decision log:\n%s", strings.Join(jsonLines(n.queuer.Log()), "\n"))
		})
	}
}

func jsonLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "{") {
			out = append(out, l)
		}
	}
	return out
}
