// Package testenv lets a test say that its environment lacks something it
// needs (root, a command, a built binary). On a developer's machine the test
// is skipped; where CI=true, as .ci/run sets it, the test fails instead:
// make test must not pass by skipping a test it is meant to run.
package testenv

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"testing"
)

// Strict reports whether skipping is forbidden: the environment variable
// CI is "true".
func Strict() bool { return os.Getenv("CI") == "true" }

// Skip skips t with the message, or fails it when Strict.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("%s; CI=true forbids skipping", msg)
	}
	t.Skipf("skipping: %s", msg)
}

// NeedRoot calls Skip unless the test runs as root; why says what for, as
// in "to create network namespaces".
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root %s", why)
	}
}

// LookPath returns the path of the command name, or calls Skip naming the
// make target that installs the test tools.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "%s is not installed (make e2e-deps): %v", name, err)
	}
	return p
}

// SkipMain is Skip for a whole test binary, from TestMain: it prints a
// SKIP line and returns 0, or, when Strict, prints the message to standard
// error and returns 1. Its result is TestMain's exit code.
func SkipMain(format string, args ...any) int {
	return skipMain(os.Stdout, os.Stderr, fmt.Sprintf(format, args...))
}

func skipMain(stdout, stderr io.Writer, msg string) int {
	if Strict() {
		fmt.Fprintf(stderr, "%s; CI=true forbids skipping\n", msg)
		return 1
	}
	fmt.Fprintf(stdout, "SKIP: %s\n", msg)
	return 0
}

// Capture runs fn with a testing.TB that records, instead of ending t,
// how fn skips or fails (Skipf, Fatalf) and returns those messages, for
// tests of helpers that call Skip.
func Capture(t testing.TB, fn func(testing.TB)) (skipped, failed string) {
	rec := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() { // fn may end with runtime.Goexit
		defer close(done)
		fn(rec)
	}()
	<-done
	return rec.skipped, rec.failed
}

type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
