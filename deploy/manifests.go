// Package deploy holds Tollgate's Kubernetes installation: the kustomize
// sources (base/ and overlays/), the rendered install manifests that
// operators apply, and the tests that hold both to the design (least
// privilege, the decider/queuer split). The rendered manifests are embedded,
// so tools such as the e2e harness apply exactly what operators apply.
package deploy

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

//go:embed install.yaml install-anp.yaml install-cnp.yaml cleanup.yaml
var rendered embed.FS

// Flavour selects an install manifest by the policy APIs it enables.
type Flavour string

const (
	// NetworkPolicy enables NetworkPolicy (networking.k8s.io/v1) only.
	NetworkPolicy Flavour = "networkpolicy"
	// AdminNetworkPolicy adds AdminNetworkPolicy and
	// BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1).
	AdminNetworkPolicy Flavour = "anp"
	// ClusterNetworkPolicy adds ClusterNetworkPolicy
	// (policy.networking.k8s.io/v1alpha2).
	ClusterNetworkPolicy Flavour = "cnp"
)

// Flavours lists every flavour, in the order the README presents them.
var Flavours = []Flavour{NetworkPolicy, AdminNetworkPolicy, ClusterNetworkPolicy}

// File returns the name of the flavour's rendered manifest inside deploy/.
func (f Flavour) File() (string, error) {
	switch f {
	case NetworkPolicy:
		return "install.yaml", nil
	case AdminNetworkPolicy:
		return "install-anp.yaml", nil
	case ClusterNetworkPolicy:
		return "install-cnp.yaml", nil
	}
	return "", fmt.Errorf("unknown install flavour %q", string(f))
}

// Manifest returns the rendered install manifest of flavour f, as committed
// and as `make manifests` renders it.
func Manifest(f Flavour) ([]byte, error) {
	name, err := f.File()
	if err != nil {
		return nil, err
	}
	data, err := rendered.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading embedded %s: %w", name, err)
	}
	return data, nil
}

// Objects decodes the rendered install manifest of flavour f into typed
// Kubernetes objects (see Decode).
func Objects(f Flavour) ([]runtime.Object, error) {
	data, err := Manifest(f)
	if err != nil {
		return nil, err
	}
	objs, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decoding the %s install manifest: %w", f, err)
	}
	return objs, nil
}

// CleanupFile is the uninstall helper inside deploy/: a DaemonSet that runs
// `queuer cleanup` on every node once Tollgate's own DaemonSet is gone.
const CleanupFile = "cleanup.yaml"

// CleanupObjects decodes the rendered cleanup manifest (see Decode).
func CleanupObjects() ([]runtime.Object, error) {
	data, err := rendered.ReadFile(CleanupFile)
	if err != nil {
		return nil, fmt.Errorf("reading embedded %s: %w", CleanupFile, err)
	}
	objs, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decoding %s: %w", CleanupFile, err)
	}
	return objs, nil
}

// strict decodes YAML or JSON into the built-in Kubernetes types and rejects
// unknown and duplicate fields.
var strict = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
	json.SerializerOptions{Yaml: true, Strict: true})

// Decode splits multi-document YAML and decodes each non-empty document into
// its typed object (*appsv1.DaemonSet, *rbacv1.ClusterRole, ...). Unknown
// kinds, unknown fields and duplicate fields are errors naming the document.
func Decode(data []byte) ([]runtime.Object, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for i := 1; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading YAML document %d: %w", i, err)
		}
		if isBlank(doc) {
			continue
		}
		obj, _, err := strict.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", i, err)
		}
		objs = append(objs, obj)
	}
}

// isBlank reports whether a YAML document holds nothing but comments and
// whitespace.
func isBlank(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}
