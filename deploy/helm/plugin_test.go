package helm

import (
	"os"
	"os/exec"
	"reflect"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/tollgate/tollgate/deploy"
)

// The two ways README.md shows to run the allowlist decider plugin in place
// of Tollgate's decider: Helm values and a kustomize overlay.
const (
	pluginValues  = "../../examples/deciders/allowlist/deploy/values.yaml"
	pluginOverlay = "../../examples/deciders/allowlist/deploy"
)

// checkPluginDecider: ds runs the allowlist plugin in its decider container
// (image, command, arguments, probes; no metrics port), mounted as mounts
// says, with the security context, queuer and pod security context of
// base, and with the volumes named in volumes (no API token).
func checkPluginDecider(t *testing.T, ds, base *appsv1.DaemonSet, mounts []corev1.VolumeMount, volumes []string) {
	t.Helper()
	d := container(t, ds, "decider")
	probe := []string{"node", "/app/main.js", "healthcheck", "--socket", "/run/tollgate/decider.sock"}
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"image", d.Image, "REGISTRY/tollgate-allowlist-decider:0.1.0"},
		{"command", d.Command, []string{"node", "/app/main.js"}},
		{"args", d.Args, []string{"--policy=/etc/tollgate-allowlist/policy.json", "--socket=/run/tollgate/decider.sock"}},
		{"startup probe", d.StartupProbe.Exec.Command, probe},
		{"readiness probe", d.ReadinessProbe.Exec.Command, probe},
		{"liveness probe", d.LivenessProbe.Exec.Command, probe},
		{"ports", len(d.Ports), 0},
		{"mounts", d.VolumeMounts, mounts},
		{"decider security context", d.SecurityContext, container(t, base, "decider").SecurityContext},
		{"queuer", container(t, ds, "queuer"), container(t, base, "queuer")},
		{"pod security context", ds.Spec.Template.Spec.SecurityContext, base.Spec.Template.Spec.SecurityContext},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.what, c.got, c.want)
		}
	}
	var names []string
	for _, v := range ds.Spec.Template.Spec.Volumes {
		names = append(names, v.Name)
	}
	if !slices.Equal(names, volumes) {
		t.Errorf("volumes %v, want %v (no token volume)", names, volumes)
	}
}

// TestPluginValues: the plugin's Helm values swap the decider container and
// drop the RBAC, and leave the queuer as it was.
func TestPluginValues(t *testing.T) {
	ds, kinds := daemonSet(t, "-f", pluginValues)
	base, _ := daemonSet(t)
	if slices.Contains(kinds, "*v1.ClusterRole") || slices.Contains(kinds, "*v1.ClusterRoleBinding") {
		t.Errorf("rbac.create=false still renders RBAC: %v", kinds)
	}
	checkPluginDecider(t, ds, base,
		[]corev1.VolumeMount{{Name: "socket", MountPath: "/run/tollgate"}, {Name: "allowlist", MountPath: "/etc/tollgate-allowlist", ReadOnly: true}},
		[]string{"socket", "xtables-lock", "allowlist"})
}

// TestPluginOverlay: the kustomize overlay does the same to deploy/base,
// with the policy in a generated ConfigMap.
func TestPluginOverlay(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kubectl (for kustomize) is not on PATH: %v", err)
		}
		t.Skip("skipping: kubectl (for kustomize) is not on PATH")
	}
	out, err := exec.Command(kubectl, "kustomize", pluginOverlay).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", pluginOverlay, err, out)
	}
	objs, err := deploy.Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	var cm *corev1.ConfigMap
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *corev1.ConfigMap:
			cm = o
		case *corev1.ServiceAccount:
		default:
			t.Errorf("the overlay renders a %T, want only the ServiceAccount, the ConfigMap and the DaemonSet", o)
		}
	}
	if ds == nil || cm == nil || cm.Data["policy.json"] == "" {
		t.Fatalf("no DaemonSet, or no ConfigMap with policy.json:\n%s", out)
	}
	base, err := deploy.Objects(deploy.NetworkPolicy)
	if err != nil {
		t.Fatal(err)
	}
	var baseDS *appsv1.DaemonSet
	for _, o := range base {
		if d, ok := o.(*appsv1.DaemonSet); ok {
			baseDS = d
		}
	}
	checkPluginDecider(t, ds, baseDS,
		[]corev1.VolumeMount{{Name: "allowlist", MountPath: "/etc/tollgate-allowlist", ReadOnly: true}, {Name: "socket", MountPath: "/run/tollgate"}},
		[]string{"allowlist", "socket", "xtables-lock"})
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name != cm.Name {
			t.Errorf("volume %s names ConfigMap %s, the overlay generates %s", v.Name, v.ConfigMap.Name, cm.Name)
		}
	}
}
