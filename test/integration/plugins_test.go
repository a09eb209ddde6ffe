package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/exampledeciders"
	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/netsim"
)

// plugin is an example decider of examples/deciders and the verdicts its
// contract/base.json and contract/changed.json give on this node's pods
// (x/a, y/b, z/c at 10.99.1.1-3).
type plugin struct {
	name    string
	command func(t *testing.T, dir string, args ...string) *exec.Cmd
	base    []probe
	changed []probe
}

var plugins = []plugin{
	{
		name: "allowlist",
		command: func(t *testing.T, _ string, args ...string) *exec.Cmd {
			cmd, err := exampledeciders.Allowlist(append(args, "--poll-interval-ms", "200")...)
			if err != nil {
				t.Fatal(err)
			}
			return cmd
		},
		// y/b accepts TCP, UDP and SCTP 80 from x/a only; z/c may reach
		// the pod network only.
		base: []probe{
			{"a", "b", netsim.TCP, false, true}, {"c", "b", netsim.TCP, false, false},
			{"a", "b", netsim.UDP, false, true}, {"c", "b", netsim.UDP, false, false},
			{"a", "b", netsim.SCTP, false, true}, {"c", "b", netsim.SCTP, false, false},
			{"a", "b", netsim.TCP, true, true}, {"c", "b", netsim.TCP, true, false},
			{"c", "a", netsim.TCP, false, true}, {"b", "a", netsim.TCP, false, true},
		},
		// y/b accepts z/c instead; x/a accepts nothing.
		changed: []probe{
			{"a", "b", netsim.TCP, false, false}, {"c", "b", netsim.TCP, false, true},
			{"a", "b", netsim.UDP, false, false}, {"c", "b", netsim.UDP, false, true},
			{"a", "b", netsim.TCP, true, false}, {"c", "b", netsim.TCP, true, true},
			{"c", "a", netsim.TCP, false, false}, {"b", "a", netsim.TCP, false, false},
		},
	},
	{
		name: "minimal",
		command: func(t *testing.T, dir string, args ...string) *exec.Cmd {
			bin, err := exampledeciders.BuildMinimal(dir)
			if err != nil {
				t.Fatal(err)
			}
			return exec.Command(bin, args...)
		},
		// y/b accepts port 80 of any protocol from x/a only.
		base: []probe{
			{"a", "b", netsim.TCP, false, true}, {"c", "b", netsim.TCP, false, false},
			{"a", "b", netsim.UDP, false, true}, {"c", "b", netsim.UDP, false, false},
			{"a", "b", netsim.TCP, true, true}, {"c", "b", netsim.TCP, true, false},
			{"a", "c", netsim.TCP, false, true},
		},
		// y/b accepts z/c instead; z/c accepts nothing.
		changed: []probe{
			{"a", "b", netsim.TCP, false, false}, {"c", "b", netsim.TCP, false, true},
			{"a", "b", netsim.UDP, false, false}, {"c", "b", netsim.UDP, false, true},
			{"a", "b", netsim.TCP, true, false}, {"c", "b", netsim.TCP, true, true},
			{"a", "c", netsim.TCP, false, false},
		},
	},
}

// TestPluginsEnforce: the unchanged queuer enforces the verdicts of two
// deciders that share no code with Tollgate's (one in Node.js), on real
// packets, and follows their policy changes: a verdict cached in the
// kernel before a change must not survive it, which holds only if the
// decider's Watch says what changed.
func TestPluginsEnforce(t *testing.T) {
	for _, pl := range plugins {
		t.Run(pl.name, func(t *testing.T) {
			n := newNode(t)
			dir := t.TempDir()
			_, policy, err := exampledeciders.Contract(pl.name, dir)
			if err != nil {
				t.Fatal(err)
			}
			n.decider = proc.ForTest(t, pl.name, pl.command(t, dir, "--policy", policy, "--socket", n.socket, "--node-name", "node-1"))
			n.eventually(pl.name+" decider healthy", 20*time.Second, func() bool {
				// Tollgate's healthcheck is a plain gRPC health client.
				return exec.Command(filepath.Join(binDir, "decider"), "healthcheck", "--socket", n.socket).Run() == nil
			})
			// Fail closed: a decider that does not answer shows as denials.
			n.startQueuer(false)
			n.eventually("y/b selected", 20*time.Second, func() bool { return n.selected("10.99.1.2") })
			n.check(pl.base...)
			if n.queued() == 0 {
				t.Fatal("no packet was queued: the queuer never asked the decider")
			}

			replace := func(from string) {
				t.Helper()
				b, err := os.ReadFile(filepath.Join(dir, from))
				if err != nil {
					t.Fatal(err)
				}
				tmp := policy + ".new"
				if err := os.WriteFile(tmp, b, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, policy); err != nil {
					t.Fatal(err)
				}
			}
			replace("changed.json")
			n.eventually("the changed policy enforced", 10*time.Second, func() bool {
				ok, _ := netsim.Probe(n.pods["c"], n.pods["b"].IPv4, 80, netsim.TCP, 300*time.Millisecond)
				return ok
			})
			n.check(pl.changed...)
			replace("base.json")
			n.eventually("the first policy enforced again", 10*time.Second, func() bool {
				ok, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 80, netsim.TCP, 300*time.Millisecond)
				return ok
			})
			n.check(pl.base...)
		})
	}
}
