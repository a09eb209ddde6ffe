package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func cmpInput(pods, policies int) Input {
	o := cmpCluster(pods, policies)
	return Input{Pods: o.Pods, Namespaces: o.Namespaces, NetworkPolicies: o.NetworkPolicies}
}

func cmpEngineTuples(pods int) []Tuple {
	st := cmpTuples(pods)
	out := make([]Tuple, len(st))
	for i, t := range st {
		out[i] = Tuple{Src: t.Src, Dst: t.Dst, Proto: ProtocolTCP, DstPort: t.DstPort}
	}
	return out
}

// BenchmarkCmpDecide is this engine's side of hack/bench-knp: one full
// verdict (egress of the source, ingress of the destination) per op on the
// cmpCluster.
func BenchmarkCmpDecide(b *testing.B) {
	for _, sz := range cmpSizes {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			snap := Compile(cmpInput(sz.pods, sz.policies))
			tuples := cmpEngineTuples(sz.pods)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				snap.Decide(tuples[i%len(tuples)])
			}
		})
	}
}

// BenchmarkCmpDumpVerdicts writes this engine's verdicts on the cmpCluster
// to $VERDICT_DIR/ours-<pods>-<policies>.txt, one line per tuple, for
// hack/bench-knp to compare with kube-network-policies'. Each direction is
// A (allowed), D (denied) or - (no policy selects that end).
func BenchmarkCmpDumpVerdicts(b *testing.B) {
	out := os.Getenv("VERDICT_DIR")
	if out == "" {
		b.Skip("VERDICT_DIR unset: run through hack/bench-knp/run.sh")
	}
	dir := func(e Explanation) string {
		switch {
		case !e.Evaluated:
			return "-"
		case e.Allowed:
			return "A"
		}
		return "D"
	}
	for b.Loop() {
		for _, sz := range cmpSizes {
			snap := Compile(cmpInput(sz.pods, sz.policies))
			f, err := os.Create(filepath.Join(out, fmt.Sprintf("ours-%d-%d.txt", sz.pods, sz.policies)))
			if err != nil {
				b.Fatal(err)
			}
			for i, t := range cmpEngineTuples(sz.pods) {
				d := snap.Decide(t)
				fmt.Fprintf(f, "%d %s %s %d allowed=%v egress=%s ingress=%s\n", i, t.Src, t.Dst, t.DstPort, d.Allowed, dir(d.Egress), dir(d.Ingress))
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
