package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// install is one decoded install manifest.
type install struct {
	sa      *corev1.ServiceAccount
	role    *rbacv1.ClusterRole
	binding *rbacv1.ClusterRoleBinding
	ds      *appsv1.DaemonSet
}

// tokenDir is where client-go's rest.InClusterConfig reads the token, the CA
// bundle and the namespace.
const tokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// deciderGID is the fixed uid and gid of the decider, which owns the socket.
const deciderGID = 65532

func ptr[T any](v T) *T { return &v }

// loadInstall decodes flavour f and requires exactly one object of each kind
// Tollgate ships, and nothing else.
func loadInstall(t *testing.T, f Flavour) install {
	t.Helper()
	objs, err := Objects(f)
	if err != nil {
		t.Fatal(err)
	}
	var in install
	for _, obj := range objs {
		dup := false
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			dup, in.sa = in.sa != nil, o
		case *rbacv1.ClusterRole:
			dup, in.role = in.role != nil, o
		case *rbacv1.ClusterRoleBinding:
			dup, in.binding = in.binding != nil, o
		case *appsv1.DaemonSet:
			dup, in.ds = in.ds != nil, o
		default:
			t.Fatalf("%s: unexpected object %T", f, obj)
		}
		if dup {
			t.Fatalf("%s: more than one %T", f, obj)
		}
	}
	if in.sa == nil || in.role == nil || in.binding == nil || in.ds == nil {
		t.Fatalf("%s: want a ServiceAccount, ClusterRole, ClusterRoleBinding and DaemonSet, got %d objects", f, len(objs))
	}
	return in
}

// container returns the pod template's container called name.
func container(t *testing.T, ds *appsv1.DaemonSet, name string) *corev1.Container {
	t.Helper()
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == name {
			return c
		}
	}
	t.Fatalf("DaemonSet %s has no container %q", ds.Name, name)
	return nil
}

// flagValue returns the value of --name=value or --name value in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// asJSON renders v for failure messages.
func asJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(b)
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    []string // kinds, in order
		wantErr string
	}{
		{
			name: "documents and comment-only documents",
			yaml: "# header\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n---\n# only a comment\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: b\n",
			want: []string{"*v1.ServiceAccount", "*v1.ClusterRole"},
		},
		{
			name:    "unknown field",
			yaml:    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\nautomountToken: false\n",
			wantErr: "unknown field",
		},
		{
			name:    "misplaced field",
			yaml:    "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: a\nspec:\n  hostNetwork: true\n",
			wantErr: "unknown field",
		},
		{
			name:    "duplicate field",
			yaml:    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n",
			wantErr: "already set",
		},
		{
			name:    "unknown kind",
			yaml:    "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: a\n",
			wantErr: "no kind",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Decode([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range objs {
				got = append(got, fmt.Sprintf("%T", o))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Decode kinds = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFlavourFiles(t *testing.T) {
	seen := map[string]Flavour{}
	for _, f := range Flavours {
		name, err := f.File()
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("flavours %s and %s share %s", other, f, name)
		}
		seen[name] = f
	}
	if _, err := Flavour("calico").File(); err == nil {
		t.Error("an unknown flavour has a file")
	}
	if _, err := Objects(Flavour("calico")); err == nil {
		t.Error("an unknown flavour has objects")
	}
}

func TestClusterRoleIsReadOnlyAndExact(t *testing.T) {
	base := []string{"/pods", "/namespaces", "/nodes", "networking.k8s.io/networkpolicies"}
	want := map[Flavour][]string{
		NetworkPolicy: base,
		AdminNetworkPolicy: append(slices.Clone(base),
			"policy.networking.k8s.io/adminnetworkpolicies",
			"policy.networking.k8s.io/baselineadminnetworkpolicies"),
		ClusterNetworkPolicy: append(slices.Clone(base),
			"policy.networking.k8s.io/clusternetworkpolicies"),
	}
	for _, f := range Flavours {
		t.Run(string(f), func(t *testing.T) {
			role := loadInstall(t, f).role
			if role.AggregationRule != nil {
				t.Error("ClusterRole aggregates other roles")
			}
			var got []string
			for i, r := range role.Rules {
				if verbs := slices.Sorted(slices.Values(r.Verbs)); !slices.Equal(verbs, []string{"get", "list", "watch"}) {
					t.Errorf("rule %d: verbs %v, want exactly get, list, watch", i, r.Verbs)
				}
				if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
					t.Errorf("rule %d: unexpected resourceNames %v or nonResourceURLs %v", i, r.ResourceNames, r.NonResourceURLs)
				}
				for _, g := range r.APIGroups {
					if f == NetworkPolicy && g == "policy.networking.k8s.io" {
						t.Errorf("rule %d: the NetworkPolicy-only install grants policy.networking.k8s.io", i)
					}
					for _, res := range r.Resources {
						got = append(got, g+"/"+res)
					}
				}
			}
			slices.Sort(got)
			w := slices.Sorted(slices.Values(want[f]))
			if !slices.Equal(got, w) {
				t.Errorf("ClusterRole grants %v, want exactly %v", got, w)
			}
			for _, g := range got {
				if strings.Contains(g, "*") {
					t.Errorf("wildcard grant %q", g)
				}
			}
		})
	}
}

func TestBindingTiesRoleToDeciderIdentity(t *testing.T) {
	for _, f := range Flavours {
		t.Run(string(f), func(t *testing.T) {
			in := loadInstall(t, f)
			wantRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: in.role.Name}
			if in.binding.RoleRef != wantRef {
				t.Errorf("roleRef = %+v, want %+v", in.binding.RoleRef, wantRef)
			}
			wantSubjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: in.sa.Name, Namespace: in.sa.Namespace}}
			if !reflect.DeepEqual(in.binding.Subjects, wantSubjects) {
				t.Errorf("subjects = %s, want %s", asJSON(in.binding.Subjects), asJSON(wantSubjects))
			}
			if in.sa.Namespace != "kube-system" || in.ds.Namespace != "kube-system" {
				t.Errorf("ServiceAccount in %q, DaemonSet in %q, want both in kube-system", in.sa.Namespace, in.ds.Namespace)
			}
			if got := in.ds.Spec.Template.Spec.ServiceAccountName; got != in.sa.Name {
				t.Errorf("pod serviceAccountName = %q, want %q", got, in.sa.Name)
			}
		})
	}
}

func TestOnlyTheDeciderHoldsAToken(t *testing.T) {
	for _, f := range Flavours {
		t.Run(string(f), func(t *testing.T) {
			in := loadInstall(t, f)
			pod := in.ds.Spec.Template.Spec
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("pod automountServiceAccountToken is not false")
			}
			if in.sa.AutomountServiceAccountToken == nil || *in.sa.AutomountServiceAccountToken {
				t.Error("ServiceAccount automountServiceAccountToken is not false")
			}
			if len(pod.InitContainers) > 0 || len(pod.EphemeralContainers) > 0 {
				t.Error("unexpected init or ephemeral containers")
			}

			// Every volume that can carry credentials.
			credentials := map[string]bool{}
			var token *corev1.ProjectedVolumeSource
			for _, v := range pod.Volumes {
				if v.Secret != nil {
					credentials[v.Name] = true
				}
				if v.Projected == nil {
					continue
				}
				for _, s := range v.Projected.Sources {
					if s.ServiceAccountToken != nil || s.Secret != nil {
						credentials[v.Name] = true
					}
					if s.ServiceAccountToken != nil {
						if token != nil {
							t.Fatal("more than one service account token volume")
						}
						token = v.Projected
					}
				}
			}
			if token == nil {
				t.Fatal("no projected service account token volume")
			}
			want := &corev1.ProjectedVolumeSource{
				DefaultMode: ptr(int32(0o444)),
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
					{ConfigMap: &corev1.ConfigMapProjection{
						LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
						Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
					}},
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
						{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}},
					}}},
				},
			}
			if !reflect.DeepEqual(token, want) {
				t.Errorf("token volume = %s\nwant %s", asJSON(token), asJSON(want))
			}

			for _, c := range pod.Containers {
				var mounted []string
				for _, m := range c.VolumeMounts {
					if credentials[m.Name] {
						mounted = append(mounted, m.MountPath)
						if !m.ReadOnly {
							t.Errorf("container %s mounts credentials %s writable", c.Name, m.Name)
						}
					}
					if c.Name != "decider" && strings.HasPrefix(m.MountPath, "/var/run/secrets") {
						t.Errorf("container %s mounts %s", c.Name, m.MountPath)
					}
				}
				wantMounted := []string(nil)
				if c.Name == "decider" {
					wantMounted = []string{tokenDir}
				}
				if !slices.Equal(mounted, wantMounted) {
					t.Errorf("container %s mounts credentials at %v, want %v", c.Name, mounted, wantMounted)
				}
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
						t.Errorf("container %s reads secret into %s", c.Name, e.Name)
					}
				}
				if len(c.EnvFrom) > 0 {
					t.Errorf("container %s has envFrom", c.Name)
				}
			}
		})
	}
}

func TestDeciderSecurityContext(t *testing.T) {
	for _, f := range Flavours {
		t.Run(string(f), func(t *testing.T) {
			in := loadInstall(t, f)
			decider := container(t, in.ds, "decider")
			want := &corev1.SecurityContext{
				RunAsNonRoot:             ptr(true),
				RunAsUser:                ptr(int64(deciderGID)),
				RunAsGroup:               ptr(int64(deciderGID)),
				AllowPrivilegeEscalation: ptr(false),
				ReadOnlyRootFilesystem:   ptr(true),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			}
			if !reflect.DeepEqual(decider.SecurityContext, want) {
				t.Errorf("decider securityContext = %s\nwant %s", asJSON(decider.SecurityContext), asJSON(want))
			}
		})
	}
}

func TestQueuerSecurityContext(t *testing.T) {
	for _, f := range Flavours {
		t.Run(string(f), func(t *testing.T) {
			in := loadInstall(t, f)
			pod := in.ds.Spec.Template.Spec
			sc := container(t, in.ds, "queuer").SecurityContext
			if sc == nil {
				t.Fatal("queuer has no securityContext")
			}
			wantCaps := &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}}
			if !reflect.DeepEqual(sc.Capabilities, wantCaps) {
				t.Errorf("queuer capabilities = %s, want %s", asJSON(sc.Capabilities), asJSON(wantCaps))
			}
			checks := []struct {
				what string
				got  *bool
				want bool
			}{
				{"privileged", sc.Privileged, false},
				{"allowPrivilegeEscalation", sc.AllowPrivilegeEscalation, false},
				{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem, true},
			}
			for _, c := range checks {
				if c.got == nil || *c.got != c.want {
					t.Errorf("queuer %s = %v, want %v set explicitly", c.what, asJSON(c.got), c.want)
				}
			}
			if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
				t.Errorf("queuer runAsUser = %s, want 0 (added capabilities need uid 0)", asJSON(sc.RunAsUser))
			}
			seccomp := sc.SeccompProfile
			if seccomp == nil && pod.SecurityContext != nil {
				seccomp = pod.SecurityContext.SeccompProfile
			}
			if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("queuer seccomp = %s, want RuntimeDefault", asJSON(seccomp))
			}
			for _, m := range container(t, in.ds, "queuer").VolumeMounts {
				if m.MountPath == "/lib/modules" {
					t.Error("queuer mounts /lib/modules, but it never loads modules")
				}
			}
		})
	}
}

func TestQueuerReachesDeciderSocket(t *testing.T) {
	in := loadInstall(t, NetworkPolicy)
	pod := in.ds.Spec.Template.Spec
	decider, queuer := container(t, in.ds, "decider"), container(t, in.ds, "queuer")

	socket, ok := flagValue(decider.Args, "socket")
	if !ok {
		t.Fatal("decider has no --socket")
	}
	if got, ok := flagValue(queuer.Args, "decider-socket"); !ok || got != socket {
		t.Fatalf("queuer --decider-socket = %q, want the decider's %q", got, socket)
	}
	volumeAt := func(c *corev1.Container) string {
		for _, m := range c.VolumeMounts {
			if m.MountPath == path.Dir(socket) {
				return m.Name
			}
		}
		t.Fatalf("container %s does not mount %s", c.Name, path.Dir(socket))
		return ""
	}
	name := volumeAt(decider)
	if volumeAt(queuer) != name {
		t.Fatalf("decider and queuer mount different volumes at %s", path.Dir(socket))
	}
	for _, v := range pod.Volumes {
		if v.Name == name && v.EmptyDir == nil {
			t.Errorf("socket volume %s is not an emptyDir", name)
		}
	}

	// The decider creates the socket 0660 as its uid:gid; the queuer has no
	// CAP_DAC_OVERRIDE, so it must be in the decider's group.
	gid := *decider.SecurityContext.RunAsGroup
	groups := []int64{}
	if queuer.SecurityContext != nil && queuer.SecurityContext.RunAsGroup != nil {
		groups = append(groups, *queuer.SecurityContext.RunAsGroup)
	} else if pod.SecurityContext != nil && pod.SecurityContext.RunAsGroup != nil {
		groups = append(groups, *pod.SecurityContext.RunAsGroup)
	}
	if pod.SecurityContext != nil {
		groups = append(groups, pod.SecurityContext.SupplementalGroups...)
	}
	if !slices.Contains(groups, gid) {
		t.Errorf("queuer groups %v do not include the decider's group %d", groups, gid)
	}
}

// portOf returns the container port a probe or flag refers to.
func portOf(t *testing.T, c *corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, p.String())
	return 0
}

// bindPort returns the port of a --metrics-bind-address flag.
func bindPort(t *testing.T, c *corev1.Container) int32 {
	t.Helper()
	addr, ok := flagValue(c.Args, "metrics-bind-address")
	if !ok {
		t.Fatalf("container %s has no --metrics-bind-address", c.Name)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("container %s: %v", c.Name, err)
	}
	n, err := strconv.ParseInt(port, 10, 32)
	if err != nil {
		t.Fatalf("container %s: metrics port %q: %v", c.Name, port, err)
	}
	return int32(n)
}

func TestProbesAndPorts(t *testing.T) {
	in := loadInstall(t, NetworkPolicy)
	decider, queuer := container(t, in.ds, "decider"), container(t, in.ds, "queuer")
	socket, _ := flagValue(decider.Args, "socket")

	if len(decider.Command) == 0 {
		t.Fatal("decider has no command")
	}
	health := []string{decider.Command[0], "healthcheck", "--socket", socket}
	for name, p := range map[string]*corev1.Probe{"startup": decider.StartupProbe, "readiness": decider.ReadinessProbe, "liveness": decider.LivenessProbe} {
		if p == nil || p.Exec == nil {
			t.Errorf("decider %s probe is not an exec probe", name)
			continue
		}
		if !slices.Equal(p.Exec.Command, health) {
			t.Errorf("decider %s probe runs %v, want %v", name, p.Exec.Command, health)
		}
	}
	if r, l := decider.ReadinessProbe, decider.LivenessProbe; r != nil && l != nil {
		if l.FailureThreshold <= r.FailureThreshold || l.PeriodSeconds <= r.PeriodSeconds {
			t.Errorf("decider liveness (period %d, threshold %d) must be more patient than readiness (period %d, threshold %d)",
				l.PeriodSeconds, l.FailureThreshold, r.PeriodSeconds, r.FailureThreshold)
		}
	}

	metrics := bindPort(t, queuer)
	for name, tc := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"liveness": {queuer.LivenessProbe, "/healthz"}, "readiness": {queuer.ReadinessProbe, "/readyz"}} {
		if tc.probe == nil || tc.probe.HTTPGet == nil {
			t.Errorf("queuer %s probe is not an HTTP probe", name)
			continue
		}
		if tc.probe.HTTPGet.Path != tc.path || portOf(t, queuer, tc.probe.HTTPGet.Port) != metrics {
			t.Errorf("queuer %s probe = %s, want %s on the metrics port %d", name, asJSON(tc.probe.HTTPGet), tc.path, metrics)
		}
	}

	// hostNetwork: ports are the node's, so they must be distinct and named.
	wantPorts := map[string]corev1.ContainerPort{
		"decider": {Name: "decider-metrics", ContainerPort: bindPort(t, decider), Protocol: corev1.ProtocolTCP},
		"queuer":  {Name: "metrics", ContainerPort: metrics, Protocol: corev1.ProtocolTCP},
	}
	seen := map[int32]string{}
	for _, c := range in.ds.Spec.Template.Spec.Containers {
		want := []corev1.ContainerPort{wantPorts[c.Name]}
		if !reflect.DeepEqual(c.Ports, want) {
			t.Errorf("container %s ports = %s, want %s", c.Name, asJSON(c.Ports), asJSON(want))
		}
		for _, p := range c.Ports {
			if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
				t.Errorf("container %s port name %q: %v", c.Name, p.Name, errs)
			}
			if other, dup := seen[p.ContainerPort]; dup {
				t.Errorf("port %d used by %s and %s", p.ContainerPort, other, c.Name)
			}
			seen[p.ContainerPort] = c.Name
		}
	}
}

func TestPodRunsOnEveryNode(t *testing.T) {
	in := loadInstall(t, NetworkPolicy)
	ds := in.ds
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("hostNetwork is false: the queuer must program the node's network namespace")
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy = %q, want %q", pod.DNSPolicy, corev1.DNSClusterFirstWithHostNet)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q", pod.PriorityClassName)
	}
	if !slices.Contains(pod.Tolerations, corev1.Toleration{Operator: corev1.TolerationOpExists}) {
		t.Errorf("tolerations %s do not tolerate every taint", asJSON(pod.Tolerations))
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds <= 0 {
		t.Error("no terminationGracePeriodSeconds")
	}
	wantUpdate := appsv1.DaemonSetUpdateStrategy{
		Type:          appsv1.RollingUpdateDaemonSetStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: ptr(intstr.FromInt32(1))},
	}
	if !reflect.DeepEqual(ds.Spec.UpdateStrategy, wantUpdate) {
		t.Errorf("updateStrategy = %s, want %s", asJSON(ds.Spec.UpdateStrategy), asJSON(wantUpdate))
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Fatalf("selector %s: %v", asJSON(ds.Spec.Selector), err)
	}
	if !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %s does not match the template labels %v", sel, ds.Spec.Template.Labels)
	}

	nodeName := corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
	}}
	for _, c := range pod.Containers {
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return reflect.DeepEqual(e, nodeName) }) {
			t.Errorf("container %s lacks NODE_NAME from spec.nodeName", c.Name)
		}
		image, tag, _ := strings.Cut(c.Image, ":")
		if path.Base(image) != "tollgate-"+c.Name {
			t.Errorf("container %s runs image %q, want tollgate-%s", c.Name, c.Image, c.Name)
		}
		// IfNotPresent with a moving tag runs whatever a node cached first.
		if !regexp.MustCompile(`^v?\d+\.\d+\.\d+$`).MatchString(tag) {
			t.Errorf("container %s runs image %q: want a release version tag (X.Y.Z), not %q", c.Name, c.Image, tag)
		}
		if c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("container %s imagePullPolicy = %q", c.Name, c.ImagePullPolicy)
		}
		r := c.Resources
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if q, ok := r.Requests[res]; !ok || q.IsZero() {
				t.Errorf("container %s has no %s request", c.Name, res)
			}
		}
		limit, ok := r.Limits[corev1.ResourceMemory]
		if !ok {
			t.Errorf("container %s has no memory limit", c.Name)
		} else if req := r.Requests[corev1.ResourceMemory]; limit.Cmp(req) < 0 {
			t.Errorf("container %s memory limit %s below request %s", c.Name, limit.String(), req.String())
		}
	}
}

// TestFlavoursDifferOnlyInRBAC: the overlays add ClusterRole rules and
// nothing else; the pod is the same everywhere.
func TestFlavoursDifferOnlyInRBAC(t *testing.T) {
	base := loadInstall(t, NetworkPolicy)
	for _, f := range Flavours[1:] {
		t.Run(string(f), func(t *testing.T) {
			in := loadInstall(t, f)
			for _, pair := range [][2]any{{base.ds, in.ds}, {base.sa, in.sa}, {base.binding, in.binding}} {
				if !reflect.DeepEqual(pair[0], pair[1]) {
					t.Errorf("%T differs from the NetworkPolicy install", pair[1])
				}
			}
			if !reflect.DeepEqual(in.role.Rules[:len(base.role.Rules)], base.role.Rules) {
				t.Error("ClusterRole does not start with the NetworkPolicy install's rules")
			}
			if !reflect.DeepEqual(in.role.ObjectMeta, base.role.ObjectMeta) {
				t.Error("ClusterRole metadata differs from the NetworkPolicy install")
			}
		})
	}
}
