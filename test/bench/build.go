package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binaries are the programs a benchmark runs.
type Binaries struct {
	// Decider and Queuer are Tollgate's binaries.
	Decider, Queuer string
	// AcceptAll is hack/bench-dataplane/nfqaccept.
	AcceptAll string
	// KNPStandard and KNPNPA are kube-network-policies' standard and
	// npa-v1alpha2 agents (hack/bench-knp/agent.sh); empty unless asked for.
	KNPStandard, KNPNPA string
}

// pprofOverlay is a file added to package main of the decider and queuer
// when building with profiling: it serves net/http/pprof on
// $TOLLGATE_BENCH_PPROF. The sources of both commands stay untouched.
const pprofOverlay = `package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("TOLLGATE_BENCH_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
`

// EnvPprof names the variable that makes a profiling build serve pprof.
const EnvPprof = "TOLLGATE_BENCH_PPROF"

// BuildOptions say what Build builds.
type BuildOptions struct {
	// Root is the repository root; Dir receives the binaries.
	Root, Dir string
	// Profile adds the pprof listener (EnvPprof) to the decider and queuer.
	Profile bool
	// KNP also builds kube-network-policies' agents, with Cache as $CACHE.
	KNP   bool
	Cache string
}

// Build builds the binaries.
func Build(ctx context.Context, o BuildOptions) (Binaries, error) {
	b := Binaries{
		Decider:   filepath.Join(o.Dir, "decider"),
		Queuer:    filepath.Join(o.Dir, "queuer"),
		AcceptAll: filepath.Join(o.Dir, "nfqaccept"),
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return b, err
	}
	var overlay []string
	if o.Profile {
		file, err := writeOverlay(o.Root, o.Dir)
		if err != nil {
			return b, err
		}
		overlay = []string{"-overlay", file}
	}
	for _, t := range []struct {
		out, pkg string
		overlay  bool
	}{
		{b.Decider, "./decider", true},
		{b.Queuer, "./queuer", true},
		{b.AcceptAll, "./hack/bench-dataplane/nfqaccept", false},
	} {
		args := []string{"build", "-o", t.out}
		if t.overlay {
			args = append(args, overlay...)
		}
		cmd := exec.CommandContext(ctx, "go", append(args, t.pkg)...)
		cmd.Dir = o.Root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("build %s: %w\n%s", t.pkg, err, out)
		}
	}
	if o.KNP {
		cmd := exec.CommandContext(ctx, filepath.Join(o.Root, "hack/bench-knp/agent.sh"))
		cmd.Env = append(os.Environ(), "CACHE="+o.Cache)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return b, fmt.Errorf("build kube-network-policies agents (hack/bench-knp/agent.sh): %w", err)
		}
		dir := strings.TrimSpace(string(out))
		b.KNPStandard, b.KNPNPA = filepath.Join(dir, "standard"), filepath.Join(dir, "npa-v1alpha2")
	}
	return b, nil
}

// writeOverlay writes the pprof file and a go build -overlay description
// that adds it to the decider's and queuer's package main.
func writeOverlay(root, dir string) (string, error) {
	src := filepath.Join(dir, "zz_bench_pprof.go")
	if err := os.WriteFile(src, []byte(pprofOverlay), 0o644); err != nil {
		return "", fmt.Errorf("write pprof overlay: %w", err)
	}
	replace := map[string]string{}
	for _, pkg := range []string{"decider", "queuer"} {
		replace[filepath.Join(root, pkg, "zz_bench_pprof.go")] = src
	}
	b, err := json.Marshal(map[string]any{"Replace": replace})
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return "", fmt.Errorf("write overlay: %w", err)
	}
	return file, nil
}

// RepoRoot walks up from the working directory to the directory holding
// go.mod of this module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 64 {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/tollgate/tollgate\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("repository root (go.mod of github.com/tollgate/tollgate) not found above the working directory")
}
