package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// kubectlTimeout bounds every kubectl invocation.
const kubectlTimeout = 2 * time.Minute

// Kubectl runs kubectl as the admin user and returns its combined output.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return c.KubectlWithInput("", args...)
}

// KubectlWithInput runs kubectl as the admin user with stdin set to input
// (e.g. `apply -f -`) and returns its combined output.
func (c *Cluster) KubectlWithInput(input string, args ...string) (string, error) {
	return c.KubectlAs(c.kubeconfig, input, args...)
}

// KubectlAs runs kubectl with the given kubeconfig and stdin.
func (c *Cluster) KubectlAs(kubeconfig, input string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	full := append([]string{
		"--kubeconfig=" + kubeconfig,
		"--cache-dir=" + filepath.Join(c.dir, "kubectl-cache"),
	}, args...)
	cmd := exec.CommandContext(ctx, "kubectl", full...)
	if input != "" {
		cmd.Stdin = strings.NewReader(input)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}
