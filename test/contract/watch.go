package contract

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// noSuchNode is a node name no decider knows.
const noSuchNode = "tollgate-contract-no-such-node"

// watcher reads one Watch stream in the background.
type watcher struct {
	cancel context.CancelFunc
	msgs   chan *tollgatev1.WatchResponse
	err    chan error
}

// watch opens a Watch stream for node.
func (k *kit) watch(node string) (*watcher, error) {
	ctx, cancel := context.WithCancel(k.ctx)
	floor := k.gens.floor()
	s, err := k.api.Watch(ctx, &tollgatev1.WatchRequest{NodeName: node})
	if err != nil {
		cancel()
		return nil, err
	}
	w := &watcher{cancel: cancel, msgs: make(chan *tollgatev1.WatchResponse, 64), err: make(chan error, 1)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				w.err <- err
				return
			}
			k.gens.observe(floor, m.GetGeneration(), fmt.Sprintf("Watch(%q)", node))
			select {
			case w.msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return w, nil
}

// next waits up to limit for the stream's next message.
func (w *watcher) next(limit time.Duration) (*tollgatev1.WatchResponse, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case m := <-w.msgs:
		return m, nil
	case err := <-w.err:
		return nil, fmt.Errorf("the stream ended: %w", err)
	case <-t.C:
		return nil, fmt.Errorf("no message within %v", limit)
	}
}

func (w *watcher) close() { w.cancel() }

// addrs decodes a list of addresses, checking that each is 4 bytes (size
// 4), 16 bytes (size 16) or either (size 0), and that the list is sorted
// (IPv4 before IPv6, then by bytes) without repeats.
func addrs(c *checker, what string, raw [][]byte, size int) []netip.Addr {
	var out []netip.Addr
	for _, b := range raw {
		a, ok := netip.AddrFromSlice(b)
		if !ok || size != 0 && len(b) != size {
			c.errorf("%s: a %d-byte address %v", what, len(b), b)
			continue
		}
		out = append(out, a)
	}
	for i := 1; i < len(out); i++ {
		if out[i-1].Compare(out[i]) >= 0 {
			c.errorf("%s not sorted, or with repeats: %v", what, out)
			break
		}
	}
	return out
}

// sameSelected checks a message's selected addresses against a state's.
func (k *kit) sameSelected(c *checker, what string, m *tollgatev1.WatchResponse, s *State) {
	got4 := addrs(c, what+": selected_ipv4", m.GetSelectedIpv4(), 4)
	got6 := addrs(c, what+": selected_ipv6", m.GetSelectedIpv6(), 16)
	want4, want6 := k.e.selected(s)
	slices.SortFunc(want4, netip.Addr.Compare)
	slices.SortFunc(want6, netip.Addr.Compare)
	if !slices.Equal(got4, want4) {
		c.errorf("%s: selected_ipv4 = %v, want %v", what, got4, want4)
	}
	if !slices.Equal(got6, want6) {
		c.errorf("%s: selected_ipv6 = %v, want %v", what, got6, want6)
	}
}

func checkWatchInitial(k *kit, c *checker) {
	limit := k.opts.CallTimeout
	w, err := k.watch(k.e.Node)
	if err != nil {
		c.errorf("Watch(%q): %v", k.e.Node, describe(err))
		return
	}
	defer w.close()
	first, err := w.next(limit)
	if err != nil {
		c.errorf("Watch(%q): first message: %v", k.e.Node, describe(err))
		return
	}
	if first.GetGeneration() == 0 || !first.GetChangedAll() {
		c.errorf("first message: generation %d, changed_all %v; want a generation and changed_all", first.GetGeneration(), first.GetChangedAll())
	}
	if first.GetInstance() == "" {
		c.notef("instance is empty: allowed, but the queuer then drops its caches on every new Watch stream")
	}
	k.sameSelected(c, "first message", first, &k.e.State)

	ctx, cancel := k.call()
	r, err := k.api.Decide(ctx, k.goodRequest())
	cancel()
	switch {
	case err != nil:
		c.errorf("Decide: %v", describe(err))
	case r.GetGeneration() != first.GetGeneration():
		c.errorf("Decide answered at generation %d, Watch announced %d (the decider must not change while the kit runs)",
			r.GetGeneration(), first.GetGeneration())
	}

	// A second stream, open at the same time, starts the same way.
	w2, err := k.watch(k.e.Node)
	if err != nil {
		c.errorf("a second Watch(%q): %v", k.e.Node, describe(err))
		return
	}
	defer w2.close()
	if m, err := w2.next(limit); err != nil {
		c.errorf("a second Watch(%q): %v", k.e.Node, describe(err))
	} else if m.GetGeneration() != first.GetGeneration() || m.GetInstance() != first.GetInstance() || !m.GetChangedAll() {
		c.errorf("a second stream starts with generation %d, instance %q, changed_all %v; want %d, %q, true",
			m.GetGeneration(), m.GetInstance(), m.GetChangedAll(), first.GetGeneration(), first.GetInstance())
	}

	// A node without pods has nothing selected.
	w3, err := k.watch(noSuchNode)
	if err != nil {
		c.errorf("Watch(%q): %v", noSuchNode, describe(err))
		return
	}
	defer w3.close()
	if m, err := w3.next(limit); err != nil {
		c.errorf("Watch(%q): %v", noSuchNode, describe(err))
	} else if n := len(m.GetSelectedIpv4()) + len(m.GetSelectedIpv6()); n != 0 || m.GetGeneration() != first.GetGeneration() {
		c.errorf("Watch(%q), a node without pods: %d addresses at generation %d; want none at %d", noSuchNode, n, m.GetGeneration(), first.GetGeneration())
	}
}

// command returns a function running argv in the expectations' directory.
func (k *kit) command(argv []string) func(context.Context) error {
	return func(ctx context.Context) error {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = k.e.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

func checkWatchChange(k *kit, c *checker) {
	ch := k.e.Change
	if ch == nil {
		c.skip = "the expectations have no change (add change: with a command and the state after it)"
		return
	}
	run, revert := k.opts.Change, k.opts.Revert
	if run == nil {
		run = k.command(ch.Run)
		if len(ch.Revert) > 0 {
			revert = k.command(ch.Revert)
		}
	}
	w, err := k.watch(k.e.Node)
	if err != nil {
		c.errorf("Watch(%q): %v", k.e.Node, describe(err))
		return
	}
	defer w.close()
	m0, err := w.next(k.opts.CallTimeout)
	if err != nil {
		c.errorf("Watch(%q): first message: %v", k.e.Node, describe(err))
		return
	}
	before, after := k.e.probes(&k.e.State), k.e.probes(&ch.State)

	if err := run(k.ctx); err != nil {
		c.errorf("change: %v", err)
		return
	}
	last, ok := k.transition(c, "change", w, m0, before, after, &ch.State, ch.timeout)
	if !ok {
		return
	}
	w2, err := k.watch(k.e.Node)
	if err != nil {
		c.errorf("Watch after the change: %v", describe(err))
		return
	}
	defer w2.close()
	if m, err := w2.next(k.opts.CallTimeout); err != nil {
		c.errorf("a new Watch after the change: %v", describe(err))
	} else if !m.GetChangedAll() || m.GetGeneration() < last.GetGeneration() || m.GetInstance() != m0.GetInstance() {
		c.errorf("a new stream after the change starts with changed_all %v, generation %d, instance %q; want true, %d or more, %q",
			m.GetChangedAll(), m.GetGeneration(), m.GetInstance(), last.GetGeneration(), m0.GetInstance())
	}
	if revert == nil {
		c.notef("no revert command: the decider stays changed")
		return
	}
	if err := revert(k.ctx); err != nil {
		c.errorf("revert: %v", err)
		return
	}
	k.transition(c, "revert", w, last, after, before, &k.e.State, ch.timeout)
}

// transition waits until Decide gives the verdicts of to and Watch has
// announced the generation that gave them, then checks the messages since
// prev: higher generations, the same instance, the new selected addresses,
// and every connection whose verdict changed from `from` to `to` has an end
// listed in changed (or a message set changed_all). It returns the last
// message.
func (k *kit) transition(c *checker, label string, w *watcher, prev *tollgatev1.WatchResponse, from, to []probe, s *State, limit time.Duration) (*tollgatev1.WatchResponse, bool) {
	deadline := time.Now().Add(limit)
	var gen uint64
	for {
		var wrong []string
		gen = 0
		for _, p := range to {
			r, err := k.decide(p)
			switch {
			case err != nil:
				wrong = append(wrong, fmt.Sprintf("%s: %v", p.what, describe(err)))
			case r.GetVerdict() != verdictOf(p.allow):
				wrong = append(wrong, fmt.Sprintf("%s: %v, want %v", p.what, r.GetVerdict(), verdictOf(p.allow)))
			default:
				gen = max(gen, r.GetGeneration())
			}
		}
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			c.errorf("%s: after %v Decide still answers as before: %s", label, limit, strings.Join(wrong, "; "))
			return nil, false
		}
		time.Sleep(100 * time.Millisecond)
	}
	var msgs []*tollgatev1.WatchResponse
	last := prev
	for last.GetGeneration() < gen {
		m, err := w.next(time.Until(deadline) + time.Second)
		if err != nil {
			c.errorf("%s: Decide answers at generation %d, but Watch did not announce it: %v", label, gen, err)
			return nil, false
		}
		msgs, last = append(msgs, m), m
	}
	if len(msgs) == 0 {
		c.errorf("%s: Decide gives the new verdicts at generation %d, which Watch had announced before the change", label, gen)
		return nil, false
	}
	all := false
	changed := map[netip.Addr]bool{}
	g := prev.GetGeneration()
	for _, m := range msgs {
		what := fmt.Sprintf("%s: message at generation %d", label, m.GetGeneration())
		if m.GetGeneration() <= g {
			c.errorf("%s: follows generation %d; want a higher one", what, g)
		}
		if m.GetInstance() != prev.GetInstance() {
			c.errorf("%s: instance %q, was %q (the same process must keep its instance)", what, m.GetInstance(), prev.GetInstance())
		}
		addrs(c, what+": selected_ipv4", m.GetSelectedIpv4(), 4)
		addrs(c, what+": selected_ipv6", m.GetSelectedIpv6(), 16)
		for _, a := range addrs(c, what+": changed", m.GetChanged(), 0) {
			changed[a] = true
		}
		all = all || m.GetChangedAll()
		g = m.GetGeneration()
	}
	k.sameSelected(c, label+": last message", last, s)
	was := map[key]bool{}
	for _, p := range from {
		was[p.key()] = p.allow
	}
	missed := 0
	for _, p := range to {
		if before, ok := was[p.key()]; ok && before != p.allow && !all && !changed[p.src] && !changed[p.dst] {
			c.errorf("%s: %s went from %v to %v, but neither address was listed in changed", label, p.what, verdictOf(before), verdictOf(p.allow))
			missed++
		}
	}
	switch {
	case all:
		c.notef("%s: generation %d -> %d in %d message(s), with changed_all (allowed; the queuer then drops every cached verdict)",
			label, prev.GetGeneration(), last.GetGeneration(), len(msgs))
	case missed == 0:
		c.notef("%s: generation %d -> %d in %d message(s), %d addresses listed in changed",
			label, prev.GetGeneration(), last.GetGeneration(), len(msgs), len(changed))
	}
	return last, true
}
