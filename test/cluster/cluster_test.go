package cluster

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestCRDFiles(t *testing.T) {
	tests := []struct {
		set   CRDSet
		files []string
	}{
		{AdminNetworkPolicyCRDs, []string{
			"policy.networking.k8s.io_adminnetworkpolicies.yaml",
			"policy.networking.k8s.io_baselineadminnetworkpolicies.yaml",
		}},
		{ClusterNetworkPolicyCRDs, []string{"policy.networking.k8s.io_clusternetworkpolicies.yaml"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.set), func(t *testing.T) {
			files, err := CRDFiles(context.Background(), tt.set)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(data), "policy.networking.k8s.io/channel: experimental") {
					t.Errorf("%s is not from the experimental channel", f)
				}
				names = append(names, filepath.Base(f))
			}
			if !slices.Equal(names, tt.files) {
				t.Errorf("files = %v, want %v", names, tt.files)
			}
		})
	}
	if _, err := CRDFiles(context.Background(), "nope"); err == nil {
		t.Error("unknown CRD set: want an error")
	}
}

func TestCluster(t *testing.T) {
	c := StartForTest(t, Options{CRDs: []CRDSet{AdminNetworkPolicyCRDs, ClusterNetworkPolicyCRDs}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := c.Client()

	t.Run("version", func(t *testing.T) {
		v, err := client.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		if v.Major != "1" || !strings.HasPrefix(v.GitVersion, "v1.") {
			t.Errorf("server version = %+v, want a v1.x release", v)
		}
	})

	t.Run("pod status", func(t *testing.T) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CreateNode(ctx, "node-1", map[string]string{"kubernetes.io/os": "linux"}, []string{"172.30.0.1", "fd00:30::1"}); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", Labels: map[string]string{"pod": "a"}},
			Spec: corev1.PodSpec{
				NodeName: "node-1",
				Containers: []corev1.Container{{
					Name: "c", Image: "none",
					Ports: []corev1.ContainerPort{{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
				}},
			},
		}
		created, err := client.CoreV1().Pods("x").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ips := []string{"10.244.1.10", "fd00:10:244:1::10"}
		if _, err := c.SetPodStatus(ctx, created, ips, corev1.PodRunning); err != nil {
			t.Fatal(err)
		}
		list, err := client.CoreV1().Pods("x").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 {
			t.Fatalf("listed %d pods, want 1", len(list.Items))
		}
		got := list.Items[0].Status
		var gotIPs []string
		for _, ip := range got.PodIPs {
			gotIPs = append(gotIPs, ip.IP)
		}
		if got.Phase != corev1.PodRunning || got.PodIP != ips[0] || !slices.Equal(gotIPs, ips) {
			t.Errorf("status = phase %s podIP %s podIPs %v, want Running %v", got.Phase, got.PodIP, gotIPs, ips)
		}
		out, err := c.Kubectl("get", "pod", "-n", "x", "a", "-o", "jsonpath={.status.podIPs[1].ip}")
		if err != nil {
			t.Fatal(err)
		}
		if out != ips[1] {
			t.Errorf("kubectl sees podIPs[1] = %q, want %q", out, ips[1])
		}
	})

	t.Run("policies via kubectl", func(t *testing.T) {
		for _, f := range []string{"testdata/anp.yaml", "testdata/cnp.yaml"} {
			if out, err := c.Kubectl("apply", "-f", f); err != nil {
				t.Fatalf("apply %s: %v\n%s", f, err, out)
			}
		}
		out, err := c.Kubectl("get", "adminnetworkpolicies,clusternetworkpolicies", "-o", "name")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"adminnetworkpolicy.policy.networking.k8s.io/deny-from-y", "clusternetworkpolicy.policy.networking.k8s.io/pass-to-nodes"} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl get output lacks %s:\n%s", want, out)
			}
		}
		// The schema is enforced: an ANP without priority is refused.
		bad := "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: bad}\nspec: {subject: {namespaces: {}}}\n"
		if _, err := c.KubectlWithInput(bad, "apply", "-f", "-"); err == nil {
			t.Error("ANP without priority was accepted")
		}
	})

	t.Run("service account token and RBAC", func(t *testing.T) {
		token, err := c.ServiceAccountToken("x", "reader", 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		sa, err := kubernetes.NewForConfig(c.RESTConfigForToken(token))
		if err != nil {
			t.Fatal(err)
		}
		// Authenticated, but RBAC grants nothing yet.
		if _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("list pods without a binding: err = %v, want Forbidden", err)
		}
		bogus, err := kubernetes.NewForConfig(c.RESTConfigForToken("not-a-token"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bogus.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
			t.Fatalf("list pods with a bogus token: err = %v, want Unauthorized", err)
		}

		role := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
		}
		if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "pod-reader"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "x", Name: "reader"}},
		}
		if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The RBAC authorizer learns about the binding through an informer.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if err == nil {
				break
			}
			if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
				t.Fatalf("list pods with a binding: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		kubeconfig, err := c.WriteKubeconfigForToken(token)
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.KubectlAs(kubeconfig, "", "get", "pods", "-A", "-o", "name")
		if err != nil || strings.TrimSpace(out) != "pod/a" {
			t.Errorf("kubectl get pods as the service account = %q, %v; want pod/a", out, err)
		}
		if _, err := c.KubectlAs(kubeconfig, "", "delete", "pod", "-n", "x", "a"); err == nil || !strings.Contains(err.Error(), "Forbidden") {
			t.Errorf("delete pod as a read-only service account: err = %v, want Forbidden", err)
		}
	})

	t.Run("apiserver restart keeps state", func(t *testing.T) {
		c.StopAPIServer()
		if _, err := client.CoreV1().Namespaces().Get(ctx, "x", metav1.GetOptions{}); err == nil {
			t.Fatal("apiserver still answers after StopAPIServer")
		}
		if err := c.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		// Same address, certificate and token: the old client works again.
		pod, err := client.CoreV1().Pods("x").Get(ctx, "a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.Status.PodIP != "10.244.1.10" {
			t.Errorf("pod IP after restart = %q, want 10.244.1.10", pod.Status.PodIP)
		}
		if err := c.StartAPIServer(ctx); err == nil {
			t.Error("starting a running apiserver: want an error")
		}
	})

	t.Run("CRD removal", func(t *testing.T) {
		if err := c.RemoveCRDs(ctx, ClusterNetworkPolicyCRDs); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kubectl("get", "clusternetworkpolicies"); err == nil {
			t.Error("clusternetworkpolicies still served after removing the CRD")
		}
		if err := c.InstallCRDs(ctx, ClusterNetworkPolicyCRDs); err != nil {
			t.Fatal(err)
		}
	})
}
