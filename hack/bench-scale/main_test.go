package main

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tollgate/tollgate/test/bench"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{args: nil},
		{args: []string{"--smoke"}},
		{args: []string{"--enforcers", "cilium"}, err: "unknown"},
		{args: []string{"--pods", "1000", "--big-pods", "10"}, err: "--big-pods"},
		{args: []string{"--node-pods", "0"}, err: "--node-pods"},
	} {
		_, err := parseFlags(tc.args)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("parseFlags(%v) = %v, want %q", tc.args, err, tc.err)
		}
	}
}

// TestCycle applies the change cycle to a fake apiserver: every change
// flips the verdict, and the cycle ends where it began, so rounds repeat.
func TestCycle(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: probeNS, Labels: map[string]string{"access": "yes"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: probeNS, Name: "c", Labels: map[string]string{"role": "allowed"}}},
		denyAll(), base(servePort),
	)
	e := &env{loader: &bench.Loader{Client: client}}
	ctx := context.Background()
	allowed := true
	for i, st := range e.cycle() {
		if st.allowed == allowed {
			t.Errorf("change %d (%s) does not flip the verdict", i, st.kind)
		}
		if err := st.apply(ctx); err != nil {
			t.Fatalf("change %d (%s): %v", i, st.kind, err)
		}
		allowed = st.allowed
	}
	if !allowed {
		t.Error("the cycle does not end allowed")
	}
	pod, err := client.CoreV1().Pods(probeNS).Get(ctx, "c", metav1.GetOptions{})
	if err != nil || pod.Labels["role"] != "allowed" {
		t.Errorf("client pod after the cycle: %v, %v", pod.Labels, err)
	}
	np, err := client.NetworkingV1().NetworkPolicies(probeNS).Get(ctx, "base", metav1.GetOptions{})
	if err != nil || np.Spec.Ingress[0].Ports[0].Port.IntValue() != servePort {
		t.Errorf("base after the cycle: %v, %v", np, err)
	}
}
