package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CRDSet names a group of network-policy-api CRDs taken from the Go module
// cache (downloaded through the Go proxy when missing).
type CRDSet string

const (
	// AdminNetworkPolicyCRDs are AdminNetworkPolicy and BaselineAdminNetworkPolicy
	// (policy.networking.k8s.io/v1alpha1) from network-policy-api v0.1.7. The
	// experimental channel is used: it adds namedPort, nodes and domainNames peers.
	AdminNetworkPolicyCRDs CRDSet = "anp"
	// ClusterNetworkPolicyCRDs is ClusterNetworkPolicy
	// (policy.networking.k8s.io/v1alpha2) from network-policy-api v0.2.0,
	// experimental channel (adds nodes and domainNames peers).
	ClusterNetworkPolicyCRDs CRDSet = "cnp"
)

// crdSource says where a CRD set comes from.
type crdSource struct {
	module  string
	version string
	// names are the CRD object names (<plural>.<group>), one per file
	// config/crd/experimental/<group>_<plural>.yaml in the module.
	names []string
}

var crdSources = map[CRDSet]crdSource{
	AdminNetworkPolicyCRDs: {
		module:  "sigs.k8s.io/network-policy-api",
		version: "v0.1.7",
		names: []string{
			"adminnetworkpolicies.policy.networking.k8s.io",
			"baselineadminnetworkpolicies.policy.networking.k8s.io",
		},
	},
	ClusterNetworkPolicyCRDs: {
		module:  "sigs.k8s.io/network-policy-api",
		version: "v0.2.0",
		names:   []string{"clusternetworkpolicies.policy.networking.k8s.io"},
	},
}

// CRDFiles returns the paths of the CRD manifests of set in the module cache.
func CRDFiles(ctx context.Context, set CRDSet) ([]string, error) {
	src, ok := crdSources[set]
	if !ok {
		return nil, fmt.Errorf("unknown CRD set %q", set)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	mod := src.module + "@" + src.version
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Env = append(cmd.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s: %w", mod, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("parse go mod download output for %s: %w", mod, err)
	}
	if info.Error != "" || info.Dir == "" {
		return nil, fmt.Errorf("go mod download %s: %s", mod, info.Error)
	}
	var files []string
	for _, name := range src.names {
		plural, group, _ := strings.Cut(name, ".")
		files = append(files, filepath.Join(info.Dir, "config/crd/experimental", group+"_"+plural+".yaml"))
	}
	return files, nil
}

// InstallCRDs applies the CRDs of set and waits until they are Established.
func (c *Cluster) InstallCRDs(ctx context.Context, set CRDSet) error {
	files, err := CRDFiles(ctx, set)
	if err != nil {
		return err
	}
	// Server-side apply: the CRDs are too large for the last-applied annotation.
	args := []string{"apply", "--server-side", "--force-conflicts"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	if _, err := c.Kubectl(args...); err != nil {
		return fmt.Errorf("install %s CRDs: %w", set, err)
	}
	for _, name := range crdSources[set].names {
		if err := c.waitEstablished(ctx, name, time.Minute); err != nil {
			return fmt.Errorf("wait for %s CRDs: %w", set, err)
		}
	}
	return nil
}

// waitEstablished polls the CRD called name until its Established
// condition is True, for at most limit. It does not use `kubectl wait
// --for=condition=Established`, which fails at once ("accessor error") when
// it reads a CRD whose status has no conditions yet.
func (c *Cluster) waitEstablished(ctx context.Context, name string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last string
	for {
		out, err := c.Kubectl("get", "crd/"+name, "-o", `jsonpath={.status.conditions[?(@.type=="Established")].status}`)
		if err == nil && strings.TrimSpace(out) == "True" {
			return nil
		}
		last = strings.TrimSpace(out)
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("crd/%s not Established after %s (last: %q)", name, limit, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("crd/%s: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RemoveCRDs deletes the CRDs of set (and so every object of their kinds) and
// waits until they are gone.
func (c *Cluster) RemoveCRDs(ctx context.Context, set CRDSet) error {
	src, ok := crdSources[set]
	if !ok {
		return fmt.Errorf("unknown CRD set %q", set)
	}
	args := []string{"delete", "--ignore-not-found", "--wait", "--timeout=60s"}
	for _, name := range src.names {
		args = append(args, "crd/"+name)
	}
	if _, err := c.Kubectl(args...); err != nil {
		return fmt.Errorf("remove %s CRDs: %w", set, err)
	}
	return nil
}
