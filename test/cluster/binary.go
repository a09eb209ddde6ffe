package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvKubeAPIServer names the environment variable that overrides where the
// kube-apiserver binary is.
const EnvKubeAPIServer = "TOLLGATE_KUBE_APISERVER"

// ErrNoKubeAPIServer is returned (wrapped) when the kube-apiserver binary has
// not been built yet.
var ErrNoKubeAPIServer = errors.New("kube-apiserver binary not built (run `make kube-apiserver`)")

// KubeAPIServerPath returns the path of the cached kube-apiserver binary:
// $TOLLGATE_KUBE_APISERVER if set, otherwise the path the repository's build
// script caches it at. It fails with ErrNoKubeAPIServer if the file is missing.
func KubeAPIServerPath() (string, error) {
	path := os.Getenv(EnvKubeAPIServer)
	if path == "" {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		out, err := exec.Command(filepath.Join(root, "hack/kube-apiserver/build.sh"), "print-path").Output()
		if err != nil {
			return "", fmt.Errorf("ask build script for the kube-apiserver path: %w", err)
		}
		path = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrNoKubeAPIServer, path, err)
	}
	return path, nil
}

// repoRoot walks up from the working directory to the directory holding the
// kube-apiserver build script.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack/kube-apiserver/build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("hack/kube-apiserver/build.sh not found above the working directory")
		}
		dir = parent
	}
}
