package conntrack

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tollgate/tollgate/internal/testenv"
)

// Helpers for the root tests: network namespaces, commands inside them, and
// TCP connections whose ends live in different namespaces.

// needRoot skips t unless it runs as root with the tools it needs.
func needRoot(t testing.TB, tools ...string) {
	t.Helper()
	testenv.NeedRoot(t, "to create network namespaces")
	for _, tool := range tools {
		testenv.LookPath(t, tool)
	}
}

// newNetNS creates a network namespace named tg-ct-<random>-<suffix> and
// deletes it when t ends.
func newNetNS(t testing.TB, prefix, suffix string) string {
	t.Helper()
	name := prefix + "-" + suffix
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// randomPrefix returns "tg-ct-" plus a short random hex string.
func randomPrefix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "tg-ct-" + hex.EncodeToString(b)
}

// sh runs a command (bounded to 10 s) and fails t if it fails.
func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := shErr(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// shErr runs a command (bounded to 10 s) and returns its combined output.
func shErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// nftIn loads an nft script into namespace ns.
func nftIn(t testing.TB, ns, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v: %s\nscript:\n%s", ns, err, out, script)
	}
}

// inNetNS runs fn on an OS thread switched into namespace ns. Sockets that
// fn opens belong to ns and keep working from any thread afterwards.
func inNetNS(t testing.TB, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime then ends it rather than
			// reuse a thread in the wrong namespace.
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// dialIn opens a conntrack Client in namespace ns, closed when t ends.
func dialIn(t testing.TB, ns string) *Client {
	t.Helper()
	var c *Client
	var err error
	inNetNS(t, ns, func() { c, err = Dial() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// listenIn starts a TCP listener on addr in namespace ns. Accepted
// connections are sent on the returned channel; everything is closed when t
// ends.
func listenIn(t *testing.T, ns, addr string) <-chan net.Conn {
	t.Helper()
	var ln net.Listener
	var err error
	inNetNS(t, ns, func() { ln, err = net.Listen("tcp4", addr) })
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 8)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	return conns
}

// tcpPair is one TCP connection: the client end (in one namespace) and the
// accepted server end (in another).
type tcpPair struct {
	client, server net.Conn
}

// connectIn dials addr from namespace ns and waits for the server end on
// accepted.
func connectIn(t *testing.T, ns, addr string, accepted <-chan net.Conn) tcpPair {
	t.Helper()
	var c net.Conn
	var err error
	inNetNS(t, ns, func() {
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err = d.Dial("tcp4", addr)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case s := <-accepted:
		t.Cleanup(func() { s.Close() })
		return tcpPair{client: c, server: s}
	case <-time.After(2 * time.Second):
		t.Fatal("server did not accept")
		return tcpPair{}
	}
}

// delivers writes a line on from and reports whether it arrives on to within
// wait.
func delivers(from, to net.Conn, wait time.Duration) bool {
	msg := fmt.Sprintf("ping %d\n", time.Now().UnixNano())
	if _, err := from.Write([]byte(msg)); err != nil {
		return false
	}
	to.SetReadDeadline(time.Now().Add(wait))
	defer to.SetReadDeadline(time.Time{})
	got, err := bufio.NewReader(io.LimitReader(to, int64(len(msg)))).ReadString('\n')
	return err == nil && got == msg
}
