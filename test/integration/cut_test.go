package integration

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// echoServer listens on port in host's namespace and echoes lines back. It
// returns the server side of each connection it accepts, in order.
func echoServer(t *testing.T, host netsim.Host, addr string) <-chan net.Conn {
	t.Helper()
	accepted := make(chan net.Conn, 16)
	var l net.Listener
	if err := netsim.RunInNS(host.Netns(), func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c:
			default:
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return accepted
}

// session is an open TCP connection from one pod.
type session struct {
	conn net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, from netsim.Host, to string) *session {
	t.Helper()
	var c net.Conn
	if err := netsim.RunInNS(from.Netns(), func() (err error) {
		c, err = net.DialTimeout("tcp", to, time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &session{conn: c, r: bufio.NewReader(c)}
}

// ping sends a line and reports whether it came back within 200ms.
func (s *session) ping() bool {
	_ = s.conn.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := s.conn.Write([]byte("ping\n")); err != nil {
		return false
	}
	line, err := s.r.ReadString('\n')
	return err == nil && line == "ping\n"
}

const allowBoth = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: echo, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}, {namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 82}]}]
`

const allowZOnly = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: echo, namespace: "y"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 82}]}]
`

// TestPolicyChangeCutsEstablishedFlows: an open connection that a new policy
// denies stops working within a second; one the policy still allows goes on.
func TestPolicyChangeCutsEstablishedFlows(t *testing.T) {
	n := newNode(t)
	n.start(allowBoth, true)
	accepted := echoServer(t, n.pods["b"], "10.99.1.2:82")

	fromX := dial(t, n.pods["a"], "10.99.1.2:82")
	serverX := <-accepted
	fromZ := dial(t, n.pods["c"], "10.99.1.2:82")
	if !fromX.ping() || !fromZ.ping() {
		t.Fatal("echo sessions do not work before the policy change")
	}

	// Replace the policy atomically (rename), as a ConfigMap update would.
	tmp := filepath.Join(n.dir, "policy.yaml.new")
	if err := os.WriteFile(tmp, []byte(allowZOnly), 0o644); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	if err := os.Rename(tmp, filepath.Join(n.manifests, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	var cut time.Duration
	for deadline := changed.Add(3 * time.Second); time.Now().Before(deadline); {
		if !fromX.ping() {
			cut = time.Since(changed)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cut == 0 {
		t.Fatal("the connection from x/a is still open 3s after the policy denied it")
	}
	t.Logf("established flow cut %v after the policy change", cut.Round(time.Millisecond))
	if cut > time.Second {
		t.Errorf("cut took %v, want within 1s", cut)
	}
	for i := range 5 {
		if fromX.ping() {
			t.Errorf("ping %d from x/a got through after the cut", i)
		}
		if !fromZ.ping() {
			t.Errorf("ping %d from z/c failed: an allowed flow was cut", i)
		}
	}

	// The next generation flushes the kernel's verdict sets. The server
	// side of the cut connection then speaks first: conntrack has no entry
	// for it any more and picks the packet up as a new connection from
	// y/b to x/a, which policy allows. The cut must hold anyway: had that
	// packet re-opened the flow, x/a's packets would be replies of an
	// established y/b -> x/a connection and reach y/b again.
	n.write("unrelated.yaml", selectsNothing)
	n.eventually("the next generation", 10*time.Second, func() bool {
		return n.metric("tollgate_decider_generation") >= 3
	})
	_ = serverX.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = serverX.Write([]byte("push\n"))
	_ = fromX.conn.SetReadDeadline(time.Now().Add(time.Second))
	if data, err := fromX.r.ReadString('\n'); err == nil {
		t.Errorf("x/a received %q from y/b on the cut connection after the verdict sets were flushed", data)
	}

	// A change that touches only x/a (a policy selecting it) re-decides the
	// flows with x/a at one end and leaves the z/c -> y/b flow alone.
	examined := n.metric("tollgate_conntrack_flows_examined_total")
	skipped := n.metric("tollgate_conntrack_flows_skipped_total")
	runs := n.metric("tollgate_conntrack_cut_runs_total")
	n.write("egress-x.yaml", egressFromXA)
	n.eventually("a re-evaluation after the x/a change", 10*time.Second, func() bool {
		return n.metric("tollgate_conntrack_cut_runs_total") > runs
	})
	if got := n.metric("tollgate_conntrack_flows_skipped_total") - skipped; got < 1 {
		t.Errorf("the z/c -> y/b flow was not skipped after a change that does not touch it (skipped +%v)", got)
	}
	t.Logf("after a change touching x/a only: examined +%v, skipped +%v",
		n.metric("tollgate_conntrack_flows_examined_total")-examined, n.metric("tollgate_conntrack_flows_skipped_total")-skipped)
	if !fromZ.ping() {
		t.Error("z/c -> y/b stopped working after an unrelated change")
	}
}

// TestCutEstablishedOff: with --cut-established=false a policy change
// leaves established connections alone (new ones still get the new
// verdict), which is what the flag promises.
func TestCutEstablishedOff(t *testing.T) {
	n := newNode(t)
	n.start(allowBoth, true, "--cut-established=false")
	echoServer(t, n.pods["b"], "10.99.1.2:82")
	fromX := dial(t, n.pods["a"], "10.99.1.2:82")
	if !fromX.ping() {
		t.Fatal("echo session does not work before the policy change")
	}
	n.write("policy.yaml", allowZOnly)
	n.eventually("the new generation", 10*time.Second, func() bool { return n.metric("tollgate_decider_generation") >= 2 })
	// Two seconds: well past the ≈ 300 ms a cut takes when the flag is on.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if !fromX.ping() {
			t.Fatal("the established x/a session was cut although --cut-established=false")
		}
	}
	// New connections follow the policy.
	if ok, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 82, netsim.TCP, 500*time.Millisecond); ok {
		t.Error("a new x/a -> y/b:82 connection got through after the policy denied it")
	}
}

// selectsNothing is a policy that selects no pod: a new generation that
// changes no verdict.
const selectsNothing = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nothing, namespace: z}
spec:
  podSelector: {matchLabels: {pod: none}}
`

// egressFromXA selects x/a only and allows all its egress.
const egressFromXA = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{}]
`

// selectsZC selects z/c only.
const selectsZC = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-c, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{}]
`

// TestKernelCacheSurvivesUnrelatedChange: a new generation drops from the
// kernel's verdict cache only the verdicts that involve an address whose
// verdict inputs changed; a repeated allowed connection between unaffected
// pods is still answered in the kernel, without a trip to userspace.
func TestKernelCacheSurvivesUnrelatedChange(t *testing.T) {
	n := newNode(t)
	n.start(policyYAML, true)
	n.check(probe{"a", "b", netsim.TCP, false, true}, probe{"c", "b", netsim.TCP, false, false})
	sets := func() string {
		out, err := netsim.Exec(n.node.Netns(), "nft", "list", "table", "inet", "tollgate")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ab, cb := "10.99.1.1 . 10.99.1.2 . tcp . 80", "10.99.1.3 . 10.99.1.2 . tcp . 80"
	n.eventually("both verdicts in the kernel", 5*time.Second, func() bool {
		s := sets()
		return strings.Contains(s, ab) && strings.Contains(s, cb)
	})

	// A policy that selects z/c: only verdicts involving 10.99.1.3 change.
	n.write("only-c.yaml", selectsZC)
	n.eventually("generation 2", 10*time.Second, func() bool { return n.metric("tollgate_decider_generation") >= 2 })
	s := sets()
	if !strings.Contains(s, ab) {
		t.Errorf("the x/a -> y/b verdict left the kernel cache although neither pod changed:\n%s", s)
	}
	if strings.Contains(s, cb) {
		t.Errorf("the z/c -> y/b verdict stayed in the kernel cache although z/c changed:\n%s", s)
	}
	before := n.queued()
	n.check(probe{"a", "b", netsim.TCP, false, true})
	if after := n.queued(); after != before {
		t.Errorf("x/a -> y/b went to userspace (%d queued packets) after an unrelated change", after-before)
	}
	n.check(probe{"c", "b", netsim.TCP, false, false})
}
