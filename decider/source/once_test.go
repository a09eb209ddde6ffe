package source

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	policyfake "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned/fake"
)

var quiet = slog.New(slog.DiscardHandler)

func TestKubeOnce(t *testing.T) {
	disc := newFakeDiscovery()
	disc.set(gvV1alpha1, "adminnetworkpolicies")
	kc := kubefake.NewClientset(testPod("x", "a", "10.0.0.1", map[string]string{"pod": "a"}),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}})
	pc := policyfake.NewSimpleClientset(&v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "anp-1"}})
	k := newKube(kc, pc, disc, KubeOptions{CRDCheckInterval: 20 * time.Millisecond, Logger: quiet})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := k.Once(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := podNames(in); !slices.Equal(got, []string{"x/a"}) {
		t.Errorf("pods = %v", got)
	}
	if got := policyNames(in); !slices.Equal(got, []string{"AdminNetworkPolicy/anp-1"}) {
		t.Errorf("policies = %v", got)
	}
	// The transforms ran: a container without ports is of no use to policy.
	if len(in.Pods) == 1 && len(in.Pods[0].Spec.Containers) != 0 {
		t.Errorf("pod not transformed: %+v", in.Pods[0].Spec.Containers)
	}
}

func TestKubeOnceTimesOut(t *testing.T) {
	disc := newFakeDiscovery()
	disc.setErr(errors.New("connection refused"))
	k := newKube(kubefake.NewClientset(), policyfake.NewSimpleClientset(), disc, KubeOptions{CRDCheckInterval: 20 * time.Millisecond, Logger: quiet})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := k.Once(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Once = %v, want a deadline error", err)
	}
}

func TestLoadPathFileAndBytes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.txt") // any name
	doc := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	in, _, err := LoadPath(path)
	if err != nil || len(in.NetworkPolicies) != 1 {
		t.Fatalf("LoadPath(file) = %d policies, %v", len(in.NetworkPolicies), err)
	}
	if in, _, err := LoadPath(dir); err != nil || len(in.NetworkPolicies) != 0 {
		t.Errorf("LoadPath(dir) reads only manifest extensions: %d policies, %v", len(in.NetworkPolicies), err)
	}
	_, _, err = LoadBytes("<stdin>", []byte(doc+"---\nkind: Pod\napiVersion: v1\nmetadata: {name: [\n"))
	var pe *ParseError
	if !errors.As(err, &pe) || pe.File != "<stdin>" || pe.Line != 8 || !strings.HasPrefix(err.Error(), "<stdin>:8:") {
		t.Errorf("LoadBytes error = %v, want one at <stdin>:8", err)
	}
	if _, _, err := LoadPath(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadPath of a missing file succeeded")
	}
}
