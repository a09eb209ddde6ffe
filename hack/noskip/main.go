// Command noskip reads `go test -json` on standard input, prints what
// `go test` would (each package's result, the output of failed tests; with
// -v every line), and fails when a test did not pass by running: a test or
// subtest that skipped, or a test binary that skipped all its tests from
// TestMain (a "SKIP" line of the package, as testenv.SkipMain prints). make
// test must not pass by skipping a test it is meant to run. Packages
// without test files are not skips.
//
//	go test -json ./... | go run ./hack/noskip [-v]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	verbose := flag.Bool("v", false, "print every line of output")
	flag.Parse()
	os.Exit(filter(os.Stdin, os.Stdout, *verbose))
}

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action     string
	Package    string
	ImportPath string // build events
	Test       string
	Output     string
}

// filter copies the report of in to out and returns the exit code: 1 when
// a test failed or did not run, 0 otherwise.
func filter(in io.Reader, out io.Writer, verbose bool) int {
	type key struct{ pkg, test string }
	buffered := map[key][]string{}
	var skipped []string
	failed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			fmt.Fprintln(out, sc.Text()) // not an event: pass it on
			continue
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "build-output":
			fmt.Fprint(out, e.Output)
		case "build-fail":
			failed = true
		case "output":
			switch {
			case verbose:
				fmt.Fprint(out, e.Output)
			case e.Test != "":
				buffered[k] = append(buffered[k], e.Output)
			case e.Output != "PASS\n" && !strings.HasPrefix(e.Output, "=== "):
				fmt.Fprint(out, e.Output)
			}
			if e.Test == "" && strings.HasPrefix(e.Output, "SKIP") {
				skipped = append(skipped, e.Package+": "+strings.TrimSpace(e.Output))
			}
		case "fail":
			failed = true
			if !verbose && e.Test != "" {
				fmt.Fprint(out, strings.Join(buffered[k], ""))
			}
			delete(buffered, k)
		case "skip":
			if e.Test != "" { // a package's skip means no test files
				skipped = append(skipped, e.Package+" "+e.Test+": "+reason(buffered[k]))
			}
			delete(buffered, k)
		case "pass":
			delete(buffered, k)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "noskip: reading go test -json:", err)
		return 1
	}
	if len(skipped) > 0 {
		fmt.Fprintf(out, "SKIPPED %d; make test must not pass by skipping a test it is meant to run:\n", len(skipped))
		for _, s := range skipped {
			fmt.Fprintln(out, "SKIPPED "+s)
		}
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

// reason is a skipped test's output on one line, without the lines that
// only announce it.
func reason(output []string) string {
	var parts []string
	for _, l := range output {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- SKIP") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " | ")
}
