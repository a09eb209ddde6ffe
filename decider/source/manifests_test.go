package source

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// logRecorder is a slog.Handler that keeps every record as one line.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}

// count returns how many lines contain all of subs.
func (r *logRecorder) count(subs ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.lines {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all {
			n++
		}
	}
	return n
}

type manifestsFixture struct {
	m       *Manifests
	logs    *logRecorder
	changes atomic.Int64
}

// startManifests runs a Manifests source on dir until the test ends.
func startManifests(t *testing.T, dir string, opts ManifestsOptions) *manifestsFixture {
	t.Helper()
	f := &manifestsFixture{logs: &logRecorder{}}
	opts.Logger = slog.New(f.logs)
	f.m = NewManifests(dir, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.m.Run(ctx, func() { f.changes.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return f
}

func podYAML(names ...string) string {
	var docs []string
	for _, n := range names {
		docs = append(docs, fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: x\n", n))
	}
	return strings.Join(docs, "---\n")
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile writes content the way many editors do: to a new file that
// is then renamed over the old one.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func hasPods(m *Manifests, want ...string) func() bool {
	return func() bool { return slices.Equal(podNames(m.Input()), want) }
}

func TestManifestsPicksUpChanges(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), podYAML("a"))
	f := startManifests(t, dir, ManifestsOptions{RescanInterval: -1, Debounce: 10 * time.Millisecond})
	eventually(t, "initial load", f.m.HasSynced)
	if got := podNames(f.m.Input()); !slices.Equal(got, []string{"x/a"}) {
		t.Fatalf("pods = %v", got)
	}
	eventually(t, "changed called for the initial load", func() bool { return f.changes.Load() > 0 })
	if n := f.changes.Load(); n != 1 {
		t.Errorf("changed called %d times after the initial load, want 1", n)
	}

	// A new file.
	writeFile(t, filepath.Join(dir, "b.yaml"), podYAML("b"))
	eventually(t, "new file", hasPods(f.m, "x/a", "x/b"))

	// A file replaced by rename.
	replaceFile(t, filepath.Join(dir, "a.yaml"), podYAML("a", "a2"))
	eventually(t, "renamed-over file", hasPods(f.m, "x/a", "x/a2", "x/b"))

	// A file removed.
	if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "removed file", hasPods(f.m, "x/a", "x/a2"))

	// A malformed file: the last good state stays, the error names file
	// and line, and nothing is published.
	before := settled(t, &f.changes)
	replaceFile(t, filepath.Join(dir, "c.yaml"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: c\n   namespace: x\n")
	eventually(t, "error logged", func() bool { return f.logs.count("ERROR", "c.yaml:5:") == 1 })
	if got := podNames(f.m.Input()); !slices.Equal(got, []string{"x/a", "x/a2"}) {
		t.Errorf("pods after a malformed file = %v, want the last good state", got)
	}
	if f.changes.Load() != before {
		t.Errorf("changed called for a failed read")
	}

	// Fixing it publishes the whole directory again.
	replaceFile(t, filepath.Join(dir, "c.yaml"), podYAML("c"))
	eventually(t, "fixed file", hasPods(f.m, "x/a", "x/a2", "x/c"))
	// The new input is in place a moment before changed is called.
	eventually(t, "changed called for the fix", func() bool { return f.changes.Load() > before })
	if f.changes.Load() != before+1 {
		t.Errorf("changed called %d times for the fix, want 1", f.changes.Load()-before)
	}
}

func TestManifestsConfigMapSwap(t *testing.T) {
	// A ConfigMap volume: files are links into ..data, itself a link to a
	// timestamped directory that is swapped atomically.
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..v1")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(v1, "pods.yaml"), podYAML("a"))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/pods.yaml", filepath.Join(dir, "pods.yaml")); err != nil {
		t.Fatal(err)
	}
	f := startManifests(t, dir, ManifestsOptions{RescanInterval: -1, Debounce: 10 * time.Millisecond})
	eventually(t, "initial load", hasPods(f.m, "x/a"))

	v2 := filepath.Join(dir, "..v2")
	if err := os.Mkdir(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(v2, "pods.yaml"), podYAML("b"))
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(v1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "swapped data", hasPods(f.m, "x/b"))
}

func TestManifestsRescan(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), podYAML("a"))
	// Events would wait an hour: only the rescan can see changes.
	f := startManifests(t, dir, ManifestsOptions{RescanInterval: 10 * time.Millisecond, Debounce: time.Hour})
	eventually(t, "initial load", hasPods(f.m, "x/a"))

	// Rescans of unchanged content publish nothing. (Files are replaced
	// by rename so that no rescan sees one half-written.)
	replaceFile(t, filepath.Join(dir, "a.yaml"), podYAML("a"))
	time.Sleep(60 * time.Millisecond)
	if n := f.changes.Load(); n != 1 {
		t.Errorf("changed called %d times for unchanged content, want 1", n)
	}

	replaceFile(t, filepath.Join(dir, "a.yaml"), podYAML("b"))
	eventually(t, "rescan picked up the change", hasPods(f.m, "x/b"))

	// A malformed file is reported once, not at every rescan.
	replaceFile(t, filepath.Join(dir, "a.yaml"), "a: [\n")
	eventually(t, "error logged", func() bool { return f.logs.count("ERROR", "a.yaml") > 0 })
	time.Sleep(60 * time.Millisecond)
	if n := f.logs.count("ERROR", "a.yaml"); n != 1 {
		t.Errorf("malformed file logged %d times, want 1", n)
	}
}

func TestManifestsInitialLoadFails(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), "kind: [\n")
	f := startManifests(t, dir, ManifestsOptions{RescanInterval: -1, Debounce: 10 * time.Millisecond})
	eventually(t, "error logged", func() bool { return f.logs.count("ERROR", "a.yaml:") > 0 })
	if f.m.HasSynced() || f.changes.Load() != 0 {
		t.Fatalf("synced or published after a failed first read")
	}
	replaceFile(t, filepath.Join(dir, "a.yaml"), podYAML("a"))
	eventually(t, "load after the fix", f.m.HasSynced)
	if got := podNames(f.m.Input()); !slices.Equal(got, []string{"x/a"}) {
		t.Errorf("pods = %v", got)
	}
}

func TestManifestsMissingDirectory(t *testing.T) {
	m := NewManifests(filepath.Join(t.TempDir(), "missing"), ManifestsOptions{Logger: slog.New(&logRecorder{})})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Run(ctx, func() {}); err == nil {
		t.Errorf("Run on a missing directory returned nil")
	}
}

func TestManifestsInputIsACopy(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), podYAML("a", "b"))
	f := startManifests(t, dir, ManifestsOptions{RescanInterval: -1})
	eventually(t, "initial load", f.m.HasSynced)
	in := f.m.Input()
	in.Pods[0] = nil
	if got := podNames(f.m.Input()); !slices.Equal(got, []string{"x/a", "x/b"}) {
		t.Errorf("changing a returned slice changed the source: %v", got)
	}
}

// settled waits until n has not moved for 100 ms (the input is published
// a moment before changed is called) and returns it.
func settled(t *testing.T, n *atomic.Int64) int64 {
	t.Helper()
	last := n.Load()
	eventually(t, "changed calls to settle", func() bool {
		time.Sleep(100 * time.Millisecond)
		now := n.Load()
		same := now == last
		last = now
		return same
	})
	return last
}
