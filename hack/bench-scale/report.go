package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tollgate/tollgate/test/bench"
)

// markdown renders the run as the generated section of docs/performance.md.
func markdown(cfg config, m *bench.Machine, res results) string {
	var b strings.Builder
	target := "make bench-scale"
	if cfg.profile {
		target += " BENCH_FLAGS=--profile"
	}
	fmt.Fprintf(&b, "Command: `%s` (`%s`). %s\n\n", target, commandLine(cfg), m.Markdown())
	b.WriteString("Objects loaded through the apiserver (pods: create, then a status update as a kubelet's):")
	for _, l := range res.Load {
		fmt.Fprintf(&b, " %d %s in %s (%.0f/s);", l.N, l.What, l.Took.Round(time.Second), float64(l.N)/l.Took.Seconds())
	}
	b.WriteString("\n\nVerdicts checked before each enforcer's changes (client c admitted by policy `base`, x blocked, c on another port blocked):\n\n")
	for _, c := range res.Checks {
		fmt.Fprintf(&b, "- %s\n", c)
	}
	b.WriteString("\n")
	writeChanges(&b, cfg, res.Changes)
	writeMemory(&b, res.Memory)
	for _, m := range res.Memory {
		if m.Profile != "" {
			fmt.Fprintf(&b, "Decider heap profile at %d pods (on the machine that ran it): %s\n\n", m.Pods, m.Profile)
		}
	}
	return b.String()
}

// writeChanges tabulates the change latencies per enforcer and kind.
func writeChanges(b *strings.Builder, cfg config, chs []change) {
	fmt.Fprintf(b, "#### Policy change → enforced, %d pods, %d NetworkPolicies\n\n", cfg.pods, cfg.policies+2)
	fmt.Fprintf(b, "From the apiserver's answer to the start of the first probe connection (one every %s, "+
		"each given %s to be answered) that gets the new verdict. Flaps: probes in the following second "+
		"that still got the old one.\n\n", cfg.interval, cfg.timeout)
	b.WriteString("\"Snapshot builds\" is, for Tollgate, the decider's own build time (gather objects, compile, work out what changed) between a change and its enforcement, p50 (p99); " +
		"\"queuer apply\" the queuer's time from the announcement's arrival to its caches and sets updated (one nft transaction), p50 (p99).\n\n")
	b.WriteString("| enforcer | changes | p50 ms | p99 ms | max ms | not enforced | flaps | snapshot builds ms | queuer apply ms | per kind: p50 (max) ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, enf := range cfg.enforcers {
		var all, builds, applies []time.Duration
		kinds := map[string][]time.Duration{}
		var order []string
		missed, flaps := 0, 0
		for _, c := range chs {
			if c.Enforcer != enf {
				continue
			}
			all = append(all, c.Latency)
			if _, ok := kinds[c.Kind]; !ok {
				order = append(order, c.Kind)
			}
			kinds[c.Kind] = append(kinds[c.Kind], c.Latency)
			flaps += c.Flaps
			if c.Compiles > 0 {
				builds = append(builds, c.Compile)
				applies = append(applies, c.Apply)
			}
			if c.Missed {
				missed++
			}
		}
		if len(all) == 0 {
			continue
		}
		var per []string
		for _, k := range order {
			per = append(per, fmt.Sprintf("%s %.0f (%.0f)", k, bench.Millis(bench.Percentile(kinds[k], 50)), bench.Millis(slices.Max(kinds[k]))))
		}
		build, apply := "–", "–"
		if len(builds) > 0 {
			build = fmt.Sprintf("%.0f (%.0f)", bench.Millis(bench.Percentile(builds, 50)), bench.Millis(bench.Percentile(builds, 99)))
			apply = fmt.Sprintf("%.0f (%.0f)", bench.Millis(bench.Percentile(applies, 50)), bench.Millis(bench.Percentile(applies, 99)))
		}
		fmt.Fprintf(b, "| %s | %d | %.1f | %.1f | %.1f | %d | %d | %s | %s | %s |\n", enf, len(all),
			bench.Millis(bench.Percentile(all, 50)), bench.Millis(bench.Percentile(all, 99)), bench.Millis(slices.Max(all)),
			missed, flaps, build, apply, strings.Join(per, "; "))
	}
	b.WriteString("\n")
}

// writeMemory tabulates memory per enforcer, process and size.
func writeMemory(b *strings.Builder, mem []memory) {
	b.WriteString("#### Memory with the objects loaded\n\n" +
		"RSS and its peak from /proc, Go heap in use from the process's own metrics (go_memstats_heap_inuse_bytes), " +
		"read after the enforcer was ready and had settled; \"ready\" is how long it took to start on these objects.\n\n" +
		"\"After GC\" is the decider's heap in use after a forced collection (its live heap; profiling runs only).\n\n" +
		"\"RSS later\" is read again after the round of changes that followed (10k pods only).\n\n" +
		"| pods | policies | enforcer | process | RSS MB | peak RSS MB | Go heap in use MB | after GC MB | RSS later MB | ready s |\n| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, m := range mem {
		gc := "–"
		if m.HeapAfterGC > 0 {
			gc = fmt.Sprintf("%.0f", float64(m.HeapAfterGC)/1e6)
		}
		later := "–"
		if m.RSSLater > 0 {
			later = fmt.Sprintf("%.0f", float64(m.RSSLater)/1e6)
		}
		fmt.Fprintf(b, "| %d | %d | %s | %s | %.0f | %.0f | %.0f | %s | %s | %.1f |\n", m.Pods, m.Policies, m.Enforcer, m.Process,
			float64(m.RSS)/1e6, float64(m.HWM)/1e6, float64(m.HeapInuse)/1e6, gc, later, m.Ready.Seconds())
	}
	b.WriteString("\n")
}
