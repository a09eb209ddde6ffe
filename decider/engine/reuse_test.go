package engine

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
)

// snapshotView is what a snapshot answers about the test cluster beside
// decisions: the policies, warnings, stats and pods, and the policies that
// select each pod.
type snapshotView struct {
	Policies    []PolicyInfo
	Warnings    []string
	ByPolicy    map[PolicyRef]int
	Stats       Stats
	Pods        []PodInfo
	PodPolicies []PodPolicies
	Selected    []netip.Addr
	Domains     []netip.Addr
}

func viewOf(s *Snapshot) snapshotView {
	v := snapshotView{Policies: s.Policies(), Warnings: s.Warnings(), ByPolicy: s.WarningsByPolicy(), Stats: s.Stats(),
		Pods: s.Pods(), Selected: s.SelectedPodIPs(""), Domains: s.DomainPodIPs("")}
	for _, p := range v.Pods {
		pp, _ := s.PodPolicies(p.Ref)
		v.PodPolicies = append(v.PodPolicies, pp)
	}
	return v
}

// diffViews describes the first difference between two views, or returns
// "" when they are the same.
func diffViews(got, want snapshotView) string {
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range g.NumField() {
		if !reflect.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			return fmt.Sprintf("%s:\n got  %+v\n want %+v", g.Type().Field(i).Name, g.Field(i).Interface(), w.Field(i).Interface())
		}
	}
	return ""
}

// decided is a decision with its policy ids.
type decided struct {
	Decision
	PolicyIDs
}

// sameDecisions describes the first tuple that a and b decide differently,
// decisions and policy ids, or returns "".
func sameDecisions(a, b *Snapshot, tuples []Tuple) string {
	for _, t := range tuples {
		d1, id1 := a.DecideIDs(t)
		d2, id2 := b.DecideIDs(t)
		if d1 != d2 || id1 != id2 {
			return fmt.Sprintf("%+v:\n got  %+v %+v\n want %+v %+v", t, d1, id1, d2, id2)
		}
	}
	return ""
}

// ungrouped returns in with every pod given a label of its own, under a key
// of its own that no selector of the tests reads: no two pods share a label
// set, so the compiler does the work for each pod on its own.
func ungrouped(in Input) Input {
	in.Pods = slices.Clone(in.Pods)
	for i, p := range in.Pods {
		if p == nil {
			continue
		}
		p = p.DeepCopy()
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		p.Labels[fmt.Sprintf("test.tollgate.dev/own-%d", i)] = "yes"
		in.Pods[i] = p
	}
	return in
}

// checkReuse compiles seed's input and then steps random changes of it with
// one Compiler, and fails unless every reusing compile answers as a fresh
// Compile of the same input does, the snapshot before it still answers as
// it did (checked on every fifth tuple), and the decisions are those of
// the input with no two pods sharing a label set (ungrouped).
func checkReuse(t *testing.T, seed uint64, steps int, tuples []Tuple) {
	g := gen{rand.New(rand.NewPCG(seed, ^seed))}
	var some []Tuple
	for i := 0; i < len(tuples); i += 5 {
		some = append(some, tuples[i])
	}
	record := func(s *Snapshot) []decided {
		out := make([]decided, len(some))
		for i, t := range some {
			out[i].Decision, out[i].PolicyIDs = s.DecideIDs(t)
		}
		return out
	}
	var c Compiler
	in := genInput(seed)
	prev := c.Compile(in)
	prevView, prevDecided := viewOf(prev), record(prev)
	for step := range steps {
		in = mutate(g, in)
		got, want := c.Compile(in), Compile(in)
		gotView := viewOf(got)
		if d := cmp.Or(sameDecisions(got, want, tuples), diffViews(gotView, viewOf(want))); d != "" {
			t.Fatalf("step %d: reusing compile differs from a fresh one: %s", step, d)
		}
		if d := sameDecisions(want, Compile(ungrouped(in)), tuples); d != "" {
			t.Fatalf("step %d: pods that share a label set are decided as if they did not: %s", step, d)
		}
		if d := diffViews(viewOf(prev), prevView); d != "" || !slices.Equal(record(prev), prevDecided) {
			t.Fatalf("step %d: the compile changed the snapshot before it: %s", step, d)
		}
		prev, prevView, prevDecided = got, gotView, record(got)
	}
}

// TestCompilerLeavesEarlierSnapshotsAlone compiles while another goroutine
// reads the snapshot before, as the decider does: under -race, any write
// the Compiler makes to what the earlier snapshot shares is reported.
func TestCompilerLeavesEarlierSnapshotsAlone(t *testing.T) {
	tuples := allTuples()[:400]
	for seed := range uint64(8) {
		g := gen{rand.New(rand.NewPCG(seed, ^seed))}
		var c Compiler
		in := genInput(seed)
		snap := c.Compile(in)
		for range 4 {
			var wg sync.WaitGroup
			wg.Go(func() {
				for _, tup := range tuples {
					snap.DecideIDs(tup)
					snap.Trace(tup)
				}
				for _, p := range snap.Pods() {
					snap.PodPolicies(p.Ref)
				}
			})
			in = mutate(g, in)
			next := c.Compile(in)
			wg.Wait()
			snap = next
		}
	}
}

// TestCompilerReuseCovers: the inputs FuzzCompilerReuse steps through take
// every path of reuse, often: namespaces whose compiled pods are reused
// next to namespaces compiled again, policies reused and compiled again
// after a namespace relabel, pods sharing their label set's lists, and
// slots handed on from policies gone.
func TestCompilerReuseCovers(t *testing.T) {
	seen := map[string]int{}
	for seed := range uint64(300) {
		g := gen{rand.New(rand.NewPCG(seed, ^seed))}
		var c Compiler
		in := genInput(seed)
		c.Compile(in)
		for range 3 {
			prevRecords, prevNPs, prevCluster := c.records, c.nps, c.cluster
			free := len(c.free)
			relabelled := false
			in = mutate(g, in)
			prevNS := c.namespaces
			c.Compile(in)
			if len(prevNS) == len(c.namespaces) {
				for i, ns := range c.namespaces {
					if ns != prevNS[i] {
						relabelled = true
					}
				}
			}
			reused, recompiled := 0, 0
			for i, r := range c.records {
				if i < len(prevRecords) && r == prevRecords[i] {
					reused++
					continue
				}
				if len(r.pods) > 0 {
					recompiled++
				}
				for j, p := range r.pods {
					if slices.ContainsFunc(r.pods[:j], func(q *pod) bool { return maps.Equal(p.labels, q.labels) }) {
						seen["label set shared by two pods, compiled"]++
					}
				}
			}
			if reused > 0 && recompiled > 0 {
				seen["namespaces reused beside namespaces compiled"]++
			}
			if relabelled {
				seen["namespace relabelled"]++
				kept, again := 0, 0
				for np, p := range c.nps {
					switch prevNPs[np] {
					case p:
						kept++
					case nil:
					default:
						again++
					}
				}
				for obj, p := range c.cluster {
					if q := prevCluster[obj]; q != nil && q != p {
						again++
					}
				}
				if kept > 0 && again > 0 {
					seen["relabel: some policies reused, some compiled again"]++
				}
			}
			if free > 0 && len(c.free) < free {
				seen["slot handed on"]++
			}
		}
	}
	for _, what := range []string{"namespaces reused beside namespaces compiled", "namespace relabelled",
		"relabel: some policies reused, some compiled again", "label set shared by two pods, compiled", "slot handed on"} {
		if seen[what] < 10 {
			t.Errorf("%s: %d times in 300 seeds", what, seen[what])
		}
	}
	t.Log(seen)
}

// TestCompilerReuseSteps runs checkReuse with longer chains of changes
// than the fuzz target takes.
func TestCompilerReuseSteps(t *testing.T) {
	tuples := allTuples()
	for seed := range uint64(10) {
		checkReuse(t, 1000+seed, 8, tuples)
	}
}

// TestCompilerReuseRepeatsAndClaims steps one Compiler through inputs that
// take its shortcuts' slow paths: a pod and a NetworkPolicy given twice
// (the same object), then once again, and one given twice in place of
// another; two pods claiming one address, then
// the claim settled. Each reusing compile must answer as a fresh one.
func TestCompilerReuseRepeatsAndClaims(t *testing.T) {
	tuples := allTuples()
	base := usable(genInput(1), func(string, ...any) {})
	if len(base.Pods) < 2 || len(base.NetworkPolicies) == 0 {
		t.Fatalf("genInput(1) has %d pods and %d NetworkPolicies; the test needs 2 and 1", len(base.Pods), len(base.NetworkPolicies))
	}
	twice := base
	twice.Pods = append(slices.Clone(base.Pods), base.Pods[0])
	twice.NetworkPolicies = append(slices.Clone(base.NetworkPolicies), base.NetworkPolicies[0])
	// swapped gives pods[0] twice in place of another pod of its namespace:
	// as many pods there as before, all of them known.
	swapped := base
	for j, p := range base.Pods[1:] {
		if p.Namespace == base.Pods[0].Namespace {
			swapped.Pods = append(slices.Delete(slices.Clone(base.Pods), j+1, j+2), base.Pods[0])
			break
		}
	}
	if len(swapped.Pods) != len(base.Pods) || &swapped.Pods[0] == &base.Pods[0] {
		t.Fatal("genInput(1) has no two pods in one namespace")
	}
	claimed := base
	claimed.Pods = slices.Clone(base.Pods)
	p := base.Pods[1].DeepCopy()
	p.Status.PodIPs = base.Pods[0].Status.PodIPs
	p.Status.PodIP = base.Pods[0].Status.PodIP
	claimed.Pods[1] = p
	var c Compiler
	for i, in := range []Input{base, twice, base, twice, claimed, base, swapped, base, claimed, claimed, base} {
		got, want := c.Compile(in), Compile(in)
		if d := cmp.Or(sameDecisions(got, want, tuples), diffViews(viewOf(got), viewOf(want))); d != "" {
			t.Fatalf("input %d: reusing compile differs from a fresh one: %s", i, d)
		}
	}
	if len(Compile(claimed).Warnings()) == 0 {
		t.Fatal("two pods on one address: no warning; the test does not test the conflict")
	}
}
