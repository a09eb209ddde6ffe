package source

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tollgate/tollgate/decider/engine"
)

// Defaults for ManifestsOptions.
const (
	DefaultRescanInterval = 10 * time.Second
	DefaultDebounce       = 50 * time.Millisecond
)

// ManifestsOptions tune the Manifests source.
type ManifestsOptions struct {
	// RescanInterval is how often the directory is read again even without
	// file events, in case an event was missed. Zero means
	// DefaultRescanInterval; negative turns rescans off.
	RescanInterval time.Duration
	// Debounce is how long to wait after a file event before reading, so
	// that a burst of events (an editor saving, a ConfigMap update) costs
	// one read. Zero means DefaultDebounce.
	Debounce time.Duration
	// Logger receives the source's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Manifests serves the objects in a directory of manifest files (see
// LoadDir for what is read; the directory is not read recursively) and
// reads them again when they change.
//
// The directory is watched with fsnotify and re-read as a whole after any
// event in it, which covers editors that write a new file and rename it
// over the old one as well as ConfigMap mounts that swap a symbolic link.
// A periodic rescan catches anything the watch misses. A read that fails
// (malformed YAML, for example) is logged and changes nothing: the last
// good state stays until the files are fixed. Content that did not change
// is not published again.
type Manifests struct {
	dir      string
	rescan   time.Duration
	debounce time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	started bool
	in      engine.Input
	synced  bool
	// tried is the fingerprint of the last content read, good or bad, so
	// unchanged content is neither published nor complained about again.
	tried    [sha256.Size]byte
	hasTried bool
	// dirErr is the last directory read error, logged once per streak.
	dirErr string
}

// NewManifests returns a source for the manifests in dir. Nothing is read
// until Run.
func NewManifests(dir string, opts ManifestsOptions) *Manifests {
	m := &Manifests{dir: dir, rescan: opts.RescanInterval, debounce: opts.Debounce, log: opts.Logger}
	if m.rescan == 0 {
		m.rescan = DefaultRescanInterval
	}
	if m.debounce <= 0 {
		m.debounce = DefaultDebounce
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	return m
}

// Run reads the directory, then watches it until ctx ends, calling changed
// after every successful read whose content differs from the last one. It
// fails only when the directory cannot be watched at start-up (for example
// because it does not exist). A first read that fails leaves HasSynced
// false until the files are fixed. Run may be called only once.
func (m *Manifests) Run(ctx context.Context, changed func()) error {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return errors.New("source: Manifests.Run called more than once")
	}
	m.started = true
	m.mu.Unlock()

	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch manifests: %w", err)
	}
	defer w.Close()
	dir := filepath.Clean(m.dir)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch manifests directory %s: %w", dir, err)
	}
	m.reload(changed)

	var rescan <-chan time.Time
	if m.rescan > 0 {
		t := time.NewTicker(m.rescan)
		defer t.Stop()
		rescan = t.C
	}
	// pending fires once, debounce after the first event of a burst.
	// (Since Go 1.23 a stopped timer delivers no stale tick, so Reset
	// after Stop is safe.)
	pending := time.NewTimer(time.Hour)
	pending.Stop()
	waiting := false

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			m.log.Debug("manifests event", "event", ev.String())
			if !waiting {
				pending.Reset(m.debounce)
				waiting = true
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Typically a queue overflow: events were lost, so read again.
			m.log.Warn("watching manifests directory", "dir", dir, "err", err)
			if !waiting {
				pending.Reset(m.debounce)
				waiting = true
			}
		case <-pending.C:
			waiting = false
			m.reload(changed)
		case <-rescan:
			// The directory may have been removed and created again, which
			// ends its watch.
			if !slices.Contains(w.WatchList(), dir) {
				if err := w.Add(dir); err == nil {
					m.log.Info("watching manifests directory again", "dir", dir)
				}
			}
			m.reload(changed)
		}
	}
}

// reload reads the directory and publishes its content if it is good and
// new.
func (m *Manifests) reload(changed func()) {
	files, err := readDir(m.dir)
	if err != nil {
		m.mu.Lock()
		repeated := m.dirErr == err.Error()
		m.dirErr = err.Error()
		m.mu.Unlock()
		if !repeated {
			m.log.Error("manifests not read; keeping the last good state", "dir", m.dir, "err", err)
		}
		return
	}
	sum := fingerprint(files)
	m.mu.Lock()
	m.dirErr = ""
	same := m.hasTried && sum == m.tried
	m.tried, m.hasTried = sum, true
	m.mu.Unlock()
	if same {
		return
	}

	in, warnings, err := parseFiles(files)
	if err != nil {
		m.log.Error("manifests not loaded; keeping the last good state", "dir", m.dir, "err", err)
		return
	}
	for _, w := range warnings {
		m.log.Warn("manifest problem", "file", w.File, "document", w.Doc, "problem", w.Message)
	}
	m.mu.Lock()
	m.in = in
	m.synced = true
	m.mu.Unlock()
	m.log.Info("manifests loaded", "dir", m.dir, "files", len(files),
		"pods", len(in.Pods), "namespaces", len(in.Namespaces), "nodes", len(in.Nodes),
		"networkPolicies", len(in.NetworkPolicies), "adminNetworkPolicies", len(in.AdminNetworkPolicies),
		"baselineAdminNetworkPolicies", len(in.BaselineAdminNetworkPolicies),
		"clusterNetworkPolicies", len(in.ClusterNetworkPolicies), "warnings", len(warnings))
	changed()
}

// HasSynced reports whether the directory has been read successfully once.
func (m *Manifests) HasSynced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.synced
}

// Input returns the objects of the last good read. The slices are copies;
// the objects are shared and must not be modified.
func (m *Manifests) Input() engine.Input {
	m.mu.Lock()
	defer m.mu.Unlock()
	return engine.Input{
		Pods:                         slices.Clone(m.in.Pods),
		Namespaces:                   slices.Clone(m.in.Namespaces),
		Nodes:                        slices.Clone(m.in.Nodes),
		NetworkPolicies:              slices.Clone(m.in.NetworkPolicies),
		AdminNetworkPolicies:         slices.Clone(m.in.AdminNetworkPolicies),
		BaselineAdminNetworkPolicies: slices.Clone(m.in.BaselineAdminNetworkPolicies),
		ClusterNetworkPolicies:       slices.Clone(m.in.ClusterNetworkPolicies),
	}
}

// Compile-time checks that both sources implement Source.
var (
	_ Source = (*Kube)(nil)
	_ Source = (*Manifests)(nil)
)
