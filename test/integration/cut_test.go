package integration

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// echoServer listens on port in host's namespace and echoes lines back.
func echoServer(t *testing.T, host netsim.Host, addr string) {
	t.Helper()
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
	n.write("policy.yaml", allowBoth)
	n.startDecider()
	n.startQueuer(true)
	n.eventually("y/b selected", 20*time.Second, func() bool { return n.selected("10.99.1.2") })
	echoServer(t, n.pods["b"], "10.99.1.2:82")

	fromX := dial(t, n.pods["a"], "10.99.1.2:82")
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
}
