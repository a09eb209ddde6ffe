package exampledeciders

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInstalled(t *testing.T) {
	dir := t.TempDir()
	touch := func(name string, at time.Time) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	touch("package.json", t0)
	touch("package-lock.json", t0)
	if Installed(dir) {
		t.Error("installed without node_modules")
	}
	touch("node_modules/.package-lock.json", t0.Add(time.Minute))
	if !Installed(dir) {
		t.Error("not installed after npm ci")
	}
	touch("package-lock.json", t0.Add(2*time.Minute))
	if Installed(dir) {
		t.Error("installed although the lockfile changed since")
	}
}

func TestContractCopies(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"allowlist", "minimal"} {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		expect, policy, err := Contract(name, d)
		if err != nil {
			t.Fatal(err)
		}
		base, _ := os.ReadFile(filepath.Join(d, "base.json"))
		live, _ := os.ReadFile(policy)
		if _, err := os.Stat(expect); err != nil || len(base) == 0 || string(base) != string(live) {
			t.Errorf("%s: expectations %v, policy.json a copy of base.json: %v", name, err, string(base) == string(live))
		}
	}
}
