package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tollgate/tollgate/test/bench"
)

// queuerPprof is the queuer's pprof address inside the node namespace.
const queuerPprof = "127.0.0.1:6061"

// profileTollgate runs a Tollgate variant (its profiling build) under the
// new-tuple load of the largest shape, untimed, and takes CPU profiles of
// the queuer and the decider meanwhile. It writes them and their top
// functions to out and returns where.
func (e *env) profileTollgate(ctx context.Context, variant, out string) (string, error) {
	bench.Step("profiling %s under new connections (not part of the figures)", variant)
	var n *node
	for _, x := range e.nodes {
		if x.variant == variant {
			n = x
		}
	}
	if n == nil {
		return "", fmt.Errorf("profile: no node runs %s", variant)
	}
	if err := resetNode(n); err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	deciderPprof := l.Addr().String()
	l.Close()
	t, ok := e.enforcer(n).(*bench.Tollgate)
	if !ok {
		return "", fmt.Errorf("profile: %s is not a Tollgate variant", variant)
	}
	t.DeciderPprof, t.QueuerPprof = deciderPprof, queuerPprof
	n.enf = t
	if err := t.Start(ctx); err != nil {
		return "", err
	}
	defer func() {
		t.Stop()
		_ = resetNode(n)
	}()
	if _, err := e.checkVerdicts(ctx, n); err != nil {
		return "", err
	}
	n.resetPorts()
	sh := e.cfg.shapes[len(e.cfg.shapes)-1]
	secs := 10
	var wg sync.WaitGroup
	var loaded loadResult
	wg.Go(func() { loaded = e.load(ctx, n, fresh, sh, time.Duration(secs+1)*time.Second) })
	time.Sleep(300 * time.Millisecond)
	stamp := variant + "-" + time.Now().Format("20060102-150405")
	type target struct{ name, ns, addr, bin string }
	targets := []target{{"queuer", n.node.NS, queuerPprof, e.bins.Queuer}, {"decider", "", deciderPprof, e.bins.Decider}}
	errs := make([]error, len(targets))
	files := make([]string, len(targets))
	var pw sync.WaitGroup
	for i, tg := range targets {
		pw.Go(func() {
			body, err := bench.HTTPGet(tg.ns, tg.addr, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), time.Duration(secs+20)*time.Second)
			if err != nil {
				errs[i] = fmt.Errorf("%s profile: %w", tg.name, err)
				return
			}
			files[i] = filepath.Join(out, fmt.Sprintf("profile-%s-%s.pb.gz", tg.name, stamp))
			errs[i] = os.WriteFile(files[i], []byte(body), 0o644)
		})
	}
	pw.Wait()
	wg.Wait()
	var b strings.Builder
	fmt.Fprintf(&b, "CPU profiles of %s under the new-tuple load, %s, %d s, %.0f conn/s (%d connections, %d failed)\n",
		variant, sh, secs, float64(loaded.conns)/loaded.elapsed.Seconds(), loaded.conns, loaded.fails)
	for i, tg := range targets {
		if errs[i] != nil {
			return "", errs[i]
		}
		top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=30", tg.bin, files[i]).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("pprof %s: %w\n%s", tg.name, err, top)
		}
		txt := strings.TrimSuffix(files[i], ".pb.gz") + ".txt"
		if err := os.WriteFile(txt, top, 0o644); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s: %s (top: %s)\n", tg.name, files[i], txt)
	}
	fmt.Print(b.String())
	return b.String(), nil
}
