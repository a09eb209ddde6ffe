// Package exampledeciders prepares the example decider plugins of
// examples/deciders for tests: the Node.js allowlist (its npm packages
// installed once, with npm ci) and the Go minimal decider (built from
// source), each with a scratch copy of its conformance-kit files.
package exampledeciders

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// Root walks up from the working directory to the repository root, the
// directory holding go.mod and examples/deciders.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "examples", "deciders")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no repository root (go.mod with examples/deciders) above the working directory")
		}
		dir = parent
	}
}

// Dir returns the directory of the example decider name.
func Dir(name string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "examples", "deciders", name), nil
}

// Allowlist returns a command running the Node.js allowlist decider with
// args. It first installs the decider's npm packages (npm ci) when
// node_modules is missing or older than package.json or
// package-lock.json; a lock keeps test binaries running in parallel from
// installing at once. npm's own settings apply (make sets its cache).
func Allowlist(args ...string) (*exec.Cmd, error) {
	dir, err := Dir("allowlist")
	if err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("the allowlist decider needs Node.js 18 or later (make plugins-deps installs it): %w", err)
	}
	if err := installPackages(dir); err != nil {
		return nil, err
	}
	cmd := exec.Command(node, append([]string{filepath.Join(dir, "main.js")}, args...)...)
	cmd.Dir = dir
	return cmd, nil
}

// installPackages runs npm ci in dir unless node_modules is up to date.
func installPackages(dir string) error {
	sum := sha256.Sum256([]byte(dir))
	lockPath := filepath.Join(os.TempDir(), "tollgate-npm-"+hex.EncodeToString(sum[:8])+".lock")
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("npm lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("npm lock %s: %w", lockPath, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if Installed(dir) {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("the allowlist decider's packages need npm (make plugins-deps installs it): %w", err)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci in %s: %w\n%s", dir, err, out)
	}
	return nil
}

// Installed reports whether dir's node_modules was installed after the
// last change of package.json and package-lock.json.
func Installed(dir string) bool {
	done, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json"))
	if err != nil {
		return false
	}
	for _, f := range []string{"package.json", "package-lock.json"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.ModTime().After(done.ModTime()) {
			return false
		}
	}
	return true
}

// BuildMinimal builds the Go minimal decider into dir and returns the
// binary's path.
func BuildMinimal(dir string) (string, error) {
	bin := filepath.Join(dir, "minimal-decider")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/tollgate/tollgate/examples/deciders/minimal")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the minimal decider: %w\n%s", err, out)
	}
	return bin, nil
}

// Contract copies the conformance-kit files of the example decider name
// (its contract/ directory) into dir, starts the live policy.json as a
// copy of base.json, and returns the paths of the expectations file and
// of policy.json, the file to start the decider on. The kit's change and
// revert commands rewrite policy.json in dir, never the repository's.
func Contract(name, dir string) (expectations, policy string, err error) {
	src, err := Dir(name)
	if err != nil {
		return "", "", err
	}
	for _, f := range []string{"expectations.yaml", "base.json", "changed.json"} {
		b, err := os.ReadFile(filepath.Join(src, "contract", f))
		if err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return "", "", err
		}
		if f == "base.json" {
			if err := os.WriteFile(filepath.Join(dir, "policy.json"), b, 0o644); err != nil {
				return "", "", err
			}
		}
	}
	return filepath.Join(dir, "expectations.yaml"), filepath.Join(dir, "policy.json"), nil
}
