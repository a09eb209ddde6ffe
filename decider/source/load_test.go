package source

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tollgate/tollgate/decider/engine"
)

func namespaceLabels(in engine.Input) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, ns := range in.Namespaces {
		out[ns.Name] = ns.Labels
	}
	return out
}

func TestLoadDir(t *testing.T) {
	tests := []struct {
		dir          string
		wantPods     []string
		wantPolicies []string
		wantNS       map[string]map[string]string
		wantNodes    int
		// wantWarnings are substrings, each matching one warning, in
		// order; the file and document are checked too.
		wantWarnings []Warning
	}{
		{
			dir:          "multidoc",
			wantPods:     []string{"default/b", "x/a"},
			wantPolicies: []string{"NetworkPolicy/y/allow-http"},
			wantNS: map[string]map[string]string{
				"x":       {"ns": "x", namespaceNameLabel: "x"},
				"default": {namespaceNameLabel: "default"},
				"y":       {namespaceNameLabel: "y"},
			},
		},
		{
			dir:          "list",
			wantPods:     []string{"x/a"},
			wantPolicies: []string{"NetworkPolicy/x/deny", "NetworkPolicy/x/typed-list-item"},
			wantNS:       map[string]map[string]string{"x": {namespaceNameLabel: "x"}},
			wantWarnings: []Warning{{File: "list.yaml", Doc: 1, Message: "list item 1: unknown kind apps/v1 Deployment; skipped"}},
		},
		{
			dir:       "json",
			wantPods:  []string{"z/c"},
			wantNS:    map[string]map[string]string{"z": {"ns": "z", namespaceNameLabel: "z"}},
			wantNodes: 1,
		},
		{
			dir:      "unknownkind",
			wantPods: []string{"x/a"},
			wantNS:   map[string]map[string]string{"x": {namespaceNameLabel: "x"}},
			wantWarnings: []Warning{
				{File: "things.yaml", Doc: 1, Message: "unknown kind v1 Service; skipped"},
				{File: "things.yaml", Doc: 2, Message: `Pod x/a: unknown field "spec.containers[0].bogusField"; ignored`},
				{File: "things.yaml", Doc: 3, Message: "no apiVersion or kind; skipped"},
				{File: "things.yaml", Doc: 4, Message: "Pod without metadata.name; skipped"},
			},
		},
		{
			dir:          "adminpolicies",
			wantPolicies: []string{"AdminNetworkPolicy/deny-z-to-x", "BaselineAdminNetworkPolicy/default", "ClusterNetworkPolicy/cnp"},
			wantNS:       map[string]map[string]string{},
		},
		{
			dir:      "ignored",
			wantPods: []string{"default/only"},
			wantNS:   map[string]map[string]string{"default": {namespaceNameLabel: "default"}},
		},
		{
			dir:      "duplicate",
			wantPods: []string{"x/p"},
			wantNS:   map[string]map[string]string{"x": {namespaceNameLabel: "x"}},
			wantWarnings: []Warning{
				{File: "b.yaml", Doc: 1, Message: "Pod x/p is also declared in " + filepath.Join("testdata", "duplicate", "a.yaml") + " (document 1); this later one is used"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			dir := filepath.Join("testdata", tt.dir)
			in, warnings, err := LoadDir(dir)
			if err != nil {
				t.Fatalf("LoadDir: %v", err)
			}
			if got := podNames(in); !slices.Equal(got, tt.wantPods) {
				t.Errorf("pods = %v, want %v", got, tt.wantPods)
			}
			if got := policyNames(in); !slices.Equal(got, tt.wantPolicies) {
				t.Errorf("policies = %v, want %v", got, tt.wantPolicies)
			}
			if got := namespaceLabels(in); !equalJSON(t, got, tt.wantNS) {
				t.Errorf("namespaces = %v, want %v", got, tt.wantNS)
			}
			if len(in.Nodes) != tt.wantNodes {
				t.Errorf("%d nodes, want %d", len(in.Nodes), tt.wantNodes)
			}
			if len(warnings) != len(tt.wantWarnings) {
				t.Fatalf("warnings = %v, want %v", warnings, tt.wantWarnings)
			}
			for i, w := range tt.wantWarnings {
				w.File = filepath.Join(dir, w.File)
				if warnings[i] != w {
					t.Errorf("warning %d = %+v, want %+v", i, warnings[i], w)
				}
			}
		})
	}
}

func TestLoadDirErrors(t *testing.T) {
	tests := []struct {
		dir      string
		wantFile string
		wantLine int
		wantDoc  int
		wantMsg  string
	}{
		{"malformed", "b-bad.yaml", 11, 2, "mapping values are not allowed"},
		{"decodeerror", "pod.yaml", 7, 2, "Pod: "},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			_, _, err := LoadDir(filepath.Join("testdata", tt.dir))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("LoadDir error = %v, want a *ParseError", err)
			}
			if filepath.Base(pe.File) != tt.wantFile || pe.Line != tt.wantLine || pe.Doc != tt.wantDoc {
				t.Errorf("error at %s:%d doc %d, want %s:%d doc %d (%v)", pe.File, pe.Line, pe.Doc, tt.wantFile, tt.wantLine, tt.wantDoc, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), tt.wantFile) {
				t.Errorf("error %q does not name the file or say %q", err, tt.wantMsg)
			}
		})
	}
	if _, _, err := LoadDir(filepath.Join("testdata", "does-not-exist")); err == nil {
		t.Errorf("LoadDir of a missing directory succeeded")
	}
}

// TestParseErrorLines checks the reported line for YAML and JSON syntax
// errors in various places of a file.
func TestParseErrorLines(t *testing.T) {
	tests := []struct {
		name, file, content string
		wantLine            int
	}{
		{"first line of file", "a.yaml", "kind: @Pod\n", 1},
		{"later line of first doc", "a.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n   x: 1\n", 5},
		{"first line of third doc", "a.yaml", "a: 1\n---\nb: 2\n---\nc: @\n", 5},
		{"crlf", "a.yaml", "a: 1\r\n---\r\nb: 2\r\n  c: 3\r\n", 4},
		{"json", "a.json", "{\n  \"kind\": \"Pod\",\n  \"metadata\": {\"name\": \"a\",}\n}\n", 3},
		{"json second value", "a.json", "{\"kind\": \"Pod\"}\n{\n\"kind\" \"Pod\"}\n", 3},
		{"json truncated: the last line, not one past it", "a.json", "{\"kind\": \"Pod\",\n\"metadata\": {\n", 2},
		{"yaml unterminated quote at the end", "a.yaml", "kind: Pod\nmetadata: {name: 'a\n", 2},
		{"json not an object", "a.json", "\n[1, 2]\n", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseFiles([]manifestFile{{path: tt.file, data: []byte(tt.content)}})
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error = %v, want a *ParseError", err)
			}
			if pe.Line != tt.wantLine {
				t.Errorf("line %d, want %d (%v)", pe.Line, tt.wantLine, err)
			}
		})
	}
}

func TestYAMLBooleanHint(t *testing.T) {
	_, _, err := parseFiles([]manifestFile{{path: "ns.yaml", data: []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: y\n")}})
	if err == nil || !strings.Contains(err.Error(), "quote YAML strings") || !strings.Contains(err.Error(), "ns.yaml:1:") {
		t.Errorf("error = %v, want the file, line and a hint to quote", err)
	}
}

func TestLoadDirDefaults(t *testing.T) {
	in, _, err := LoadDir(filepath.Join("testdata", "multidoc"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range in.Pods {
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				if port.Protocol != corev1.ProtocolTCP {
					t.Errorf("pod %s port %s protocol %q, want TCP", p.Name, port.Name, port.Protocol)
				}
			}
		}
	}
	np := in.NetworkPolicies[0]
	if got := np.Spec.PolicyTypes; !slices.Equal(got, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("policyTypes = %v", got)
	}
	if p := np.Spec.Ingress[0].Ports[0].Protocol; p == nil || *p != corev1.ProtocolTCP {
		t.Errorf("ingress port protocol = %v, want TCP", p)
	}
	if p := np.Spec.Egress[0].Ports[0].Protocol; p == nil || *p != corev1.ProtocolUDP {
		t.Errorf("egress port protocol = %v, want UDP kept", p)
	}

	in, _, err = LoadDir(filepath.Join("testdata", "adminpolicies"))
	if err != nil {
		t.Fatal(err)
	}
	anp := in.AdminNetworkPolicies[0]
	if anp.Namespace != "" {
		t.Errorf("cluster-scoped AdminNetworkPolicy kept namespace %q", anp.Namespace)
	}
	ports := *anp.Spec.Ingress[0].Ports
	if ports[0].PortNumber.Protocol != corev1.ProtocolTCP || ports[1].PortRange.Protocol != corev1.ProtocolUDP {
		t.Errorf("AdminNetworkPolicy ports = %+v %+v", ports[0].PortNumber, ports[1].PortRange)
	}
	if p := (*in.BaselineAdminNetworkPolicies[0].Spec.Egress[0].Ports)[0].PortRange.Protocol; p != corev1.ProtocolTCP {
		t.Errorf("BaselineAdminNetworkPolicy port range protocol = %q, want TCP", p)
	}
	if got := in.ClusterNetworkPolicies[0].Spec.Ingress[0].Protocols[0].TCP.DestinationPort.Number; got != 80 {
		t.Errorf("ClusterNetworkPolicy port = %d", got)
	}
}

func TestDefaultNetworkPolicy(t *testing.T) {
	udp := corev1.ProtocolUDP
	port := intstr.FromInt32(80)
	tests := []struct {
		name      string
		spec      networkingv1.NetworkPolicySpec
		wantTypes []networkingv1.PolicyType
	}{
		{"empty", networkingv1.NetworkPolicySpec{}, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		{"ingress only", networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		{"egress rules", networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &port}}}}}, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}},
		{"explicit kept", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}, Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp}}}}}, []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np"}, Spec: tt.spec}
			DefaultNetworkPolicy(np)
			if !slices.Equal(np.Spec.PolicyTypes, tt.wantTypes) {
				t.Errorf("policyTypes = %v, want %v", np.Spec.PolicyTypes, tt.wantTypes)
			}
			for _, r := range np.Spec.Ingress {
				for _, p := range r.Ports {
					if p.Protocol == nil {
						t.Errorf("ingress port without protocol")
					}
				}
			}
			for _, r := range np.Spec.Egress {
				for _, p := range r.Ports {
					if p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
						t.Errorf("egress port protocol = %v, want TCP", p.Protocol)
					}
				}
			}
		})
	}
}

func TestLoadDirEmpty(t *testing.T) {
	dir := t.TempDir()
	in, warnings, err := LoadDir(dir)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("LoadDir(empty) = %v, %v", warnings, err)
	}
	if len(in.Pods)+len(in.Namespaces)+len(in.NetworkPolicies) != 0 {
		t.Errorf("objects from an empty directory: %+v", in)
	}
	// A symbolic link to a file is followed; one to a directory is not a
	// manifest.
	target := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(target, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: linked}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "pod.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), filepath.Join(dir, "dir.yaml")); err != nil {
		t.Fatal(err)
	}
	in, _, err = LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := podNames(in); !slices.Equal(got, []string{"default/linked"}) {
		t.Errorf("pods = %v", got)
	}
}

// TestLoadExamples checks that the example manifests the demo and the
// README use load cleanly and hold what deploy/examples/README.md says.
func TestLoadExamples(t *testing.T) {
	in, warnings, err := LoadDir(filepath.Join("..", "..", "deploy", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	wantPods := []string{"x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"}
	if got := podNames(in); !slices.Equal(got, wantPods) {
		t.Errorf("pods = %v", got)
	}
	for i, p := range in.Pods {
		if len(p.Status.PodIPs) != 2 || p.Status.Phase != corev1.PodRunning || p.Spec.NodeName != "node-1" || p.Labels["pod"] != p.Name {
			t.Errorf("pod %s/%s: %+v", p.Namespace, p.Name, p)
		}
		if want := fmt.Sprintf("10.244.1.%d", i+1); p.Status.PodIP != want {
			t.Errorf("pod %s/%s IP %s, want %s", p.Namespace, p.Name, p.Status.PodIP, want)
		}
	}
	wantNS := map[string]map[string]string{}
	for _, ns := range []string{"x", "y", "z"} {
		wantNS[ns] = map[string]string{"ns": ns, namespaceNameLabel: ns}
	}
	if got := namespaceLabels(in); !equalJSON(t, got, wantNS) {
		t.Errorf("namespaces = %v", got)
	}
	if len(in.Nodes) != 1 || in.Nodes[0].Status.Addresses[0].Address != "172.18.0.2" {
		t.Errorf("nodes = %+v", in.Nodes)
	}
	wantPolicies := []string{
		"AdminNetworkPolicy/deny-from-z-to-x", "BaselineAdminNetworkPolicy/default",
		"NetworkPolicy/y/allow-x-to-b", "NetworkPolicy/y/default-deny-ingress", "NetworkPolicy/z/allow-y-to-a",
	}
	if got := policyNames(in); !slices.Equal(got, wantPolicies) {
		t.Errorf("policies = %v", got)
	}
}
