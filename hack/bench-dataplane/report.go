package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tollgate/tollgate/test/bench"
)

// key names one cell of one round.
type key struct {
	policies, round          int
	variant, workload, shape string
}

// table indexes cells.
type table map[key]cell

// index keys the cells, leaving out those that ran out of fresh ports
// (their connections were not all new).
func index(cells []cell) table {
	t := table{}
	for _, c := range cells {
		if !c.Exhausted {
			t[key{c.Policies, c.Round, c.Variant, c.Workload, c.Shape}] = c
		}
	}
	return t
}

// over collects f of the cell of every round in which it (and, through f's
// ok, whatever it compares with) was measured.
func (t table) over(rounds int, k key, f func(c cell, k key) (float64, bool)) bench.Spread {
	var xs []float64
	for r := range rounds {
		k.round = r
		c, ok := t[k]
		if !ok {
			continue
		}
		if v, ok := f(c, k); ok {
			xs = append(xs, v)
		}
	}
	return bench.SpreadOf(xs)
}

// ratioTo returns f for the ratio of a cell's conn/s to variant other's in
// the same round.
func (t table) ratioTo(other string) func(cell, key) (float64, bool) {
	return func(c cell, k key) (float64, bool) {
		k.variant = other
		o, ok := t[k]
		if !ok || o.ConnPerSec == 0 {
			return 0, false
		}
		return c.ConnPerSec / o.ConnPerSec, true
	}
}

func connPerSec(c cell, _ key) (float64, bool) { return c.ConnPerSec, true }
func p50(c cell, _ key) (float64, bool)        { return bench.Millis(c.P50), c.Conns > 0 }
func p99(c cell, _ key) (float64, bool)        { return bench.Millis(c.P99), c.Conns > 0 }
func queuedPerConn(c cell, _ key) (float64, bool) {
	return float64(c.Queued) / float64(max(1, c.Conns)), c.Conns > 0
}
func cores(c cell, _ key) (float64, bool) {
	s := 0.0
	for _, v := range c.CPU {
		s += v
	}
	return s, len(c.CPU) > 0
}

// cpuPerConn is the enforcer's CPU time per completed connection, in µs:
// what each connection costs it, whatever else the machine is doing.
func cpuPerConn(c cell, k key) (float64, bool) {
	cpu, ok := cores(c, k)
	if !ok || c.ConnPerSec == 0 {
		return 0, false
	}
	return cpu / c.ConnPerSec * 1e6, true
}

// markdown renders the run as the generated section of docs/performance.md.
func markdown(cfg config, m *bench.Machine, res results) string {
	t := index(res.Cells)
	var b strings.Builder
	target := "make bench-dataplane"
	if cfg.profile {
		target += " BENCH_FLAGS=--profile"
	}
	fmt.Fprintf(&b, "Command: `%s` (`%s`). %s\n\n", target, commandLine(cfg), m.Markdown())
	fmt.Fprintf(&b, "Busy CPU of the whole machine during the timed runs: %s (median, range).\n\n", busy(res.Cells))
	if n := exhausted(res.Cells); n > 0 {
		fmt.Fprintf(&b, "%d timed runs ran out of fresh ports for the new-tuple workload and are left out.\n\n", n)
	}
	writeChecks(&b, cfg, res)
	for _, p := range cfg.policies {
		fmt.Fprintf(&b, "#### %d NetworkPolicies\n\n", p)
		b.WriteString("Medians over rounds, range in brackets; \"× none\" is each round's ratio to the no-enforcement run of the same workload and load. " +
			"Connect is the client's connect() time (SYN to SYN-ACK). Queued is packets the node's queues received per connection; CPU is that of the enforcer's processes (children included): cores, and µs per connection.\n\n")
		b.WriteString("| workload | load | variant | conn/s | × none | connect p50 ms | p99 ms | queued/conn | CPU cores | CPU µs/conn |\n")
		b.WriteString("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, wl := range workloads {
			for _, sh := range cfg.shapes {
				for _, v := range cfg.variants {
					k := key{policies: p, variant: v, workload: wl, shape: sh.String()}
					rate := t.over(cfg.rounds, k, connPerSec)
					if rate.N == 0 {
						continue
					}
					ratio := "1"
					if v != "none" {
						ratio = t.over(cfg.rounds, k, t.ratioTo("none")).Format("%.2f")
					}
					fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", wl, sh, v,
						rate.Format("%.0f"), ratio, t.over(cfg.rounds, k, p50).Format("%.3f"),
						t.over(cfg.rounds, k, p99).Format("%.3f"), t.over(cfg.rounds, k, queuedPerConn).Format("%.2f"),
						t.over(cfg.rounds, k, cores).Format("%.2f"), t.over(cfg.rounds, k, cpuPerConn).Format("%.0f"))
				}
			}
		}
		b.WriteString("\n")
		writeTargets(&b, cfg, t, p)
		writeTollgateCost(&b, cfg, t, p)
	}
	if res.Profile != "" {
		fmt.Fprintf(&b, "Profiles taken in this run (files on the machine that ran it):\n\n```\n%s```\n", res.Profile)
	}
	return b.String()
}

// exhausted counts the cells that ran out of fresh ports.
func exhausted(cells []cell) int {
	n := 0
	for _, c := range cells {
		if c.Exhausted {
			n++
		}
	}
	return n
}

// busy summarises the machine's busy fraction over all cells.
func busy(cells []cell) string {
	var xs []float64
	for _, c := range cells {
		xs = append(xs, 100*c.Busy)
	}
	s := bench.SpreadOf(xs)
	return s.Format("%.0f%%")
}

// writeChecks summarises the verdict probes.
func writeChecks(b *strings.Builder, cfg config, res results) {
	b.WriteString("In every phase, before and after the timed runs, each variant's verdicts were probed and had to match " +
		"the policies (for none and accept-all: everything passes); a disagreement stops the run. What they gave:\n\n| probe | policy says |")
	for _, v := range cfg.variants {
		fmt.Fprintf(b, " %s |", v)
	}
	b.WriteString("\n| --- | --- |" + strings.Repeat(" --- |", len(cfg.variants)) + "\n")
	var probes []probeResult
	for _, c := range res.Checks {
		if enforcing(c.Variant) {
			probes = c.Probes
			break
		}
	}
	for i, p := range probes {
		fmt.Fprintf(b, "| %s | %s |", p.Desc, verdictWord(p.Want))
		for _, v := range cfg.variants {
			got := map[string]bool{}
			for _, c := range res.Checks {
				if c.Variant == v && i < len(c.Probes) {
					got[verdictWord(c.Probes[i].Got)] = true
				}
			}
			var words []string
			for _, w := range []string{"allowed", "denied"} {
				if got[w] {
					words = append(words, w)
				}
			}
			fmt.Fprintf(b, " %s |", strings.Join(words, ", "))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(b, "\n%d checks in all.\n\n", len(res.Checks))
}

// writeTargets compares Tollgate with the targets.
func writeTargets(b *strings.Builder, cfg config, t table, p int) {
	if !slices.Contains(cfg.variants, "tollgate") {
		return
	}
	b.WriteString("| target | load: measured (median, range) |\n| --- | --- |\n")
	row := func(name string, f func(sh shape) bench.Spread, format string) {
		var parts []string
		for _, sh := range cfg.shapes {
			if s := f(sh); s.N > 0 {
				parts = append(parts, fmt.Sprintf("%s: %s", sh, s.Format(format)))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(b, "| %s | %s |\n", name, strings.Join(parts, "; "))
		}
	}
	at := func(variant, wl string, sh shape) key {
		return key{policies: p, variant: variant, workload: wl, shape: sh.String()}
	}
	exact := slices.Contains(cfg.variants, exactVariant)
	row("repeated tuples ≥ 0.90× none", func(sh shape) bench.Spread {
		return t.over(cfg.rounds, at("tollgate", repeated, sh), t.ratioTo("none"))
	}, "%.2f×")
	row("new tuples ≥ 0.80× accept-all", func(sh shape) bench.Spread {
		return t.over(cfg.rounds, at("tollgate", fresh, sh), t.ratioTo("accept-all"))
	}, "%.2f×")
	if exact {
		row("new tuples ≥ 0.80× accept-all, "+exactVariant+" (every one to the decider)", func(sh shape) bench.Spread {
			return t.over(cfg.rounds, at(exactVariant, fresh, sh), t.ratioTo("accept-all"))
		}, "%.2f×")
	}
	for _, knp := range []string{"knp-standard", "knp-npa-v1alpha2"} {
		if !slices.Contains(cfg.variants, knp) {
			continue
		}
		for _, wl := range workloads {
			row(fmt.Sprintf("%s tuples: ahead of %s (Tollgate ÷ it)", wl, knp), func(sh shape) bench.Spread {
				return t.over(cfg.rounds, at("tollgate", wl, sh), t.ratioTo(knp))
			}, "%.2f×")
		}
		if exact {
			row(fmt.Sprintf("new tuples: %s ÷ %s", exactVariant, knp), func(sh shape) bench.Spread {
				return t.over(cfg.rounds, at(exactVariant, fresh, sh), t.ratioTo(knp))
			}, "%.2f×")
		}
	}
	p99Over := func(base string) func(c cell, k key) (float64, bool) {
		return func(c cell, k key) (float64, bool) {
			k.variant = base
			n, ok := t[k]
			if !ok || c.Conns == 0 || n.Conns == 0 {
				return 0, false
			}
			return bench.Millis(c.P99 - n.P99), true
		}
	}
	p99Added := p99Over("none")
	// Only the variant without port ranges makes every new tuple a
	// decider round trip.
	rtt := "tollgate"
	if exact {
		rtt = exactVariant
	}
	row("p99 connect added by a decider round trip ≤ 0.200 ms (new tuples, "+rtt+", p99 − none's p99)", func(sh shape) bench.Spread {
		return t.over(cfg.rounds, at(rtt, fresh, sh), p99Added)
	}, "%.3f ms")
	if slices.Contains(cfg.variants, "accept-all") {
		row("p99 connect added by the decider round trip beyond queueing (new tuples, "+rtt+", p99 − accept-all's p99)", func(sh shape) bench.Spread {
			return t.over(cfg.rounds, at(rtt, fresh, sh), p99Over("accept-all"))
		}, "%.3f ms")
	}
	if exact {
		row("p99 connect added on new tuples, tollgate (p99 − none's p99)", func(sh shape) bench.Spread {
			return t.over(cfg.rounds, at("tollgate", fresh, sh), p99Added)
		}, "%.3f ms")
	}
	if slices.Contains(cfg.variants, exact1CPUVariant) && slices.Contains(cfg.variants, "accept-all") {
		row("new tuples, "+exact1CPUVariant+" (decider and queuer on one CPU) × accept-all", func(sh shape) bench.Spread {
			return t.over(cfg.rounds, at(exact1CPUVariant, fresh, sh), t.ratioTo("accept-all"))
		}, "%.2f×")
		row("p99 connect added by the decider round trip beyond queueing, "+exact1CPUVariant, func(sh shape) bench.Spread {
			return t.over(cfg.rounds, at(exact1CPUVariant, fresh, sh), p99Over("accept-all"))
		}, "%.3f ms")
	}
	b.WriteString("\n")
}

// exactVariant is Tollgate without port-range answers; exact1CPUVariant
// the same with its two processes on one CPU.
const (
	exactVariant     = "tollgate-exact"
	exact1CPUVariant = "tollgate-exact-1cpu"
)

// writeTollgateCost reports the queuer's and decider's CPU per 1,000 new
// connections a second and their memory.
func writeTollgateCost(b *strings.Builder, cfg config, t table, p int) {
	if !slices.Contains(cfg.variants, "tollgate") {
		return
	}
	b.WriteString("Tollgate's processes under the new-tuple load: CPU in cores per 1,000 new conn/s " +
		"(queuer with the nft processes it starts, their share in brackets), and RSS at the end of the run.\n\n" +
		"| variant | load | queuer CPU / 1k conn/s | nft share | decider CPU / 1k conn/s | queuer RSS MB | decider RSS MB |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	per1k := func(proc string, child bool) func(cell, key) (float64, bool) {
		return func(c cell, _ key) (float64, bool) {
			m := c.CPU
			if child {
				m = c.ChildCPU
			}
			v, ok := m[proc]
			if !ok || c.ConnPerSec == 0 {
				return 0, false
			}
			return v / (c.ConnPerSec / 1000), true
		}
	}
	rss := func(proc string) func(cell, key) (float64, bool) {
		return func(c cell, _ key) (float64, bool) {
			v, ok := c.RSS[proc]
			return float64(v) / 1e6, ok
		}
	}
	for _, v := range []string{"tollgate", exactVariant, exact1CPUVariant} {
		if !slices.Contains(cfg.variants, v) {
			continue
		}
		for _, sh := range cfg.shapes {
			k := key{policies: p, variant: v, workload: fresh, shape: sh.String()}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s |\n", v, sh,
				t.over(cfg.rounds, k, per1k("queuer", false)).Format("%.2f"),
				t.over(cfg.rounds, k, per1k("queuer", true)).Format("%.2f"),
				t.over(cfg.rounds, k, per1k("decider", false)).Format("%.2f"),
				t.over(cfg.rounds, k, rss("queuer")).Format("%.0f"),
				t.over(cfg.rounds, k, rss("decider")).Format("%.0f"))
		}
	}
	b.WriteString("\n")
}
