package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// State is the outcome of one test case.
type State string

// The outcomes a case can have. A case that the suite never reached (its
// setup failed, say) is NotRun; it counts as a failure. NoSCTP is a case
// that passed with some of its probes, SCTP ones, not made (the suite is
// patched so on a kernel without SCTP, see skipSCTPProbes): it does not
// count as passed.
const (
	Passed  State = "passed"
	NoSCTP  State = "passed, SCTP probes not run"
	Failed  State = "failed"
	Skipped State = "skipped"
	NotRun  State = "not run"
)

// Case is one test case of a suite and what became of it.
type Case struct {
	Name     string
	State    State
	Duration time.Duration
	// Failure is the suite's own account of a failure, shortened.
	Failure string
}

// maxFailureLines bounds the failure text kept per case.
const maxFailureLines = 12

// ginkgoReport is the part of a Ginkgo JSON report (--json-report) read
// here: one element per suite run.
type ginkgoReport struct {
	SuiteSucceeded bool
	SpecReports    []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
		RunTime                 time.Duration
		Failure                 struct {
			Message string
		}
	}
}

// parseGinkgo reads the specs (the It nodes) of a Ginkgo JSON report.
// Ginkgo's interrupted, aborted, panicked and timed-out states are failures;
// pending specs count as skipped.
func parseGinkgo(data []byte) ([]Case, error) {
	var reports []ginkgoReport
	if err := json.Unmarshal(data, &reports); err != nil {
		return nil, fmt.Errorf("parse Ginkgo JSON report: %w", err)
	}
	var cases []Case
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" {
				continue
			}
			c := Case{
				Name:     strings.Join(append(append([]string{}, s.ContainerHierarchyTexts...), s.LeafNodeText), " "),
				Duration: s.RunTime,
			}
			switch s.State {
			case "passed":
				c.State = Passed
			case "skipped", "pending":
				c.State = Skipped
			default:
				c.State = Failed
				c.Failure = shorten(s.State + ": " + s.Failure.Message)
			}
			cases = append(cases, c)
		}
	}
	sortCases(cases)
	return cases, nil
}

// testEvent is one line of `go tool test2json` output.
type testEvent struct {
	Action  string
	Test    string
	Elapsed float64
	Output  string
}

// parseTest2JSON reads the subtests of test top from `go tool test2json`
// output: each direct subtest (top/NAME) is a case, named NAME. A failure's
// text is the output of the subtest and of its own subtests. It also
// returns the output of top itself when top failed outside its subtests
// (a setup failure), which then applies to every case that did not run.
func parseTest2JSON(r io.Reader, top string) (cases []Case, topFailure string, err error) {
	byName := map[string]*Case{}
	var order []string
	output := map[string]*strings.Builder{}
	topFailed := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var ev testEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return nil, "", fmt.Errorf("parse test2json line %q: %w", line, err)
		}
		if ev.Test == top {
			if ev.Action == "output" {
				appendOutput(output, top, ev.Output)
			}
			if ev.Action == "fail" {
				topFailed = true
			}
			continue
		}
		rest, ok := strings.CutPrefix(ev.Test, top+"/")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, "/")
		c := byName[name]
		if c == nil {
			c = &Case{Name: name, State: NotRun}
			byName[name] = c
			order = append(order, name)
		}
		switch ev.Action {
		case "output":
			appendOutput(output, name, ev.Output)
		case "pass", "fail", "skip":
			if rest != name {
				continue // a nested subtest: its output already counts
			}
			c.State = map[string]State{"pass": Passed, "fail": Failed, "skip": Skipped}[ev.Action]
			c.Duration = time.Duration(ev.Elapsed * float64(time.Second))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, "", fmt.Errorf("read test2json output: %w", err)
	}
	for _, name := range order {
		c := byName[name]
		if c.State == Failed || c.State == Skipped {
			c.Failure = shorten(interesting(output[name]))
		}
		if n := sctpProbesNotRun(output[name]); n > 0 && c.State == Passed {
			c.State = NoSCTP
			c.Failure = fmt.Sprintf("%d SCTP probes not run", n)
		}
		cases = append(cases, *c)
	}
	if topFailed {
		topFailure = shorten(interesting(output[top]))
	}
	sortCases(cases)
	return cases, topFailure, nil
}

func appendOutput(output map[string]*strings.Builder, name, text string) {
	b := output[name]
	if b == nil {
		b = &strings.Builder{}
		output[name] = b
	}
	b.WriteString(text)
}

// sctpProbesNotRun counts the SCTP probes a case's output says the
// patched suite did not make.
func sctpProbesNotRun(b *strings.Builder) int {
	if b == nil {
		return 0
	}
	return strings.Count(b.String(), sctpProbeMarker)
}

// interesting keeps the lines of a Go test's output that say why it failed
// or was skipped, each once (a poll that keeps failing repeats itself).
func interesting(b *strings.Builder) string {
	if b == nil {
		return ""
	}
	var keep []string
	seen := map[string]bool{}
	for _, line := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(line)
		switch {
		case seen[t]:
			continue
		case t == "",
			strings.HasPrefix(t, "=== RUN"), strings.HasPrefix(t, "=== PAUSE"), strings.HasPrefix(t, "=== CONT"),
			strings.HasPrefix(t, "--- PASS"), strings.HasPrefix(t, "--- FAIL"), strings.HasPrefix(t, "--- SKIP"):
			continue
		case strings.Contains(t, "Error") || strings.Contains(t, "FAILED") || strings.Contains(t, "Skipping") ||
			strings.Contains(t, "Expected") || strings.Contains(t, "timed out") || strings.Contains(t, "Messages:"):
			keep = append(keep, t)
			seen[t] = true
		}
	}
	return strings.Join(keep, "\n")
}

// shorten keeps the first maxFailureLines non-empty lines of s.
func shorten(s string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if len(lines) == maxFailureLines {
			lines = append(lines, "…")
			break
		}
		lines = append(lines, strings.TrimRight(l, " \t"))
	}
	return strings.Join(lines, "\n")
}

func sortCases(cases []Case) {
	sort.SliceStable(cases, func(i, j int) bool { return cases[i].Name < cases[j].Name })
}

// Counts tallies cases by state.
type Counts struct{ Passed, NoSCTP, Failed, Skipped, NotRun int }

// count tallies cases.
func count(cases []Case) Counts {
	var n Counts
	for _, c := range cases {
		switch c.State {
		case Passed:
			n.Passed++
		case NoSCTP:
			n.NoSCTP++
		case Failed:
			n.Failed++
		case Skipped:
			n.Skipped++
		default:
			n.NotRun++
		}
	}
	return n
}
