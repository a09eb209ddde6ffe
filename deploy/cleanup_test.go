package deploy

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestCleanupManifest holds the uninstall helper to what it must do and no
// more: one DaemonSet in kube-system on every node's network namespace,
// whose init container runs `queuer cleanup` from the very image the
// install manifests run, with CAP_NET_ADMIN only, and whose idle container
// runs unprivileged.
func TestCleanupManifest(t *testing.T) {
	objs, err := CleanupObjects()
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("%d objects, want one DaemonSet", len(objs))
	}
	ds, ok := objs[0].(*appsv1.DaemonSet)
	if !ok {
		t.Fatalf("object is a %T, want a DaemonSet", objs[0])
	}
	if ds.Namespace != "kube-system" || ds.Name != "tollgate-cleanup" {
		t.Errorf("DaemonSet %s/%s, want kube-system/tollgate-cleanup", ds.Namespace, ds.Name)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("hostNetwork=%v automountServiceAccountToken=%v, want the node's namespace and no token", pod.HostNetwork, pod.AutomountServiceAccountToken)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("tolerations %v, want every taint tolerated", pod.Tolerations)
	}
	install, err := Objects(NetworkPolicy)
	if err != nil {
		t.Fatal(err)
	}
	var queuerImage string
	for _, o := range install {
		if d, ok := o.(*appsv1.DaemonSet); ok {
			for _, c := range d.Spec.Template.Spec.Containers {
				if c.Name == "queuer" {
					queuerImage = c.Image
				}
			}
		}
	}
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("%d init containers and %d containers, want one of each", len(pod.InitContainers), len(pod.Containers))
	}
	clean, idle := pod.InitContainers[0], pod.Containers[0]
	if clean.Image != queuerImage || idle.Image != queuerImage {
		t.Errorf("images %q and %q, want the install manifests' queuer image %q", clean.Image, idle.Image, queuerImage)
	}
	if !slices.Equal(clean.Command, []string{"/usr/local/bin/queuer", "cleanup"}) {
		t.Errorf("init container runs %q, want queuer cleanup", clean.Command)
	}
	sc := clean.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) || sc.Privileged == nil || *sc.Privileged ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("cleanup security context %s, want every capability dropped but NET_ADMIN, unprivileged", asJSON(sc))
	}
	sc = idle.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
		t.Errorf("idle container security context %s, want non-root without capabilities", asJSON(sc))
	}
}
