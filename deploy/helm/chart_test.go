// Package helm holds the tests of the Helm chart in tollgate/ (with
// default values it renders the objects of deploy/install*.yaml, and every
// value lands where it should) and of the two ways to deploy a decider
// plugin: the chart's values and a kustomize overlay.
package helm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/deploy"
)

// helmLabels are the labels the chart adds to every object's metadata (not
// to pods) for Helm's bookkeeping: the one deliberate difference from the
// kustomize manifests, besides the image tag (see imageTag).
var helmLabels = []string{"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"}

// flavourValues are the values that select each install flavour.
var flavourValues = map[deploy.Flavour][]string{
	deploy.NetworkPolicy:        nil,
	deploy.AdminNetworkPolicy:   {"--set", "policyAPIs.adminNetworkPolicy=true"},
	deploy.ClusterNetworkPolicy: {"--set", "policyAPIs.clusterNetworkPolicy=true"},
}

// helmBinary finds helm: $TOLLGATE_HELM, or on PATH (make puts its pinned
// helm there). Without one the test is skipped, except under CI=true.
func helmBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TOLLGATE_HELM"); p != "" {
		return p
	}
	p, err := exec.LookPath("helm")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("helm is not on PATH (make helm installs it): %v", err)
		}
		t.Skipf("skipping: helm is not on PATH (make helm installs it)")
	}
	return p
}

// render runs helm template for the release "tollgate" in kube-system and
// returns the rendered YAML.
func render(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := template(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func template(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), append([]string{"template", "tollgate", "tollgate", "--namespace", "kube-system"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template %v: %w\n%s", args, err, stderr.String())
	}
	return out, nil
}

// objects decodes multi-document YAML into generic objects keyed by
// kind/namespace/name.
func objects(t *testing.T, data []byte) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		if obj == nil {
			continue
		}
		md, _ := obj["metadata"].(map[string]any)
		k := fmt.Sprintf("%v/%v/%v", obj["kind"], md["namespace"], md["name"])
		if _, dup := out[k]; dup {
			t.Fatalf("%s rendered twice", k)
		}
		out[k] = obj
	}
}

// diff lists the paths where a and b differ.
func diff(path string, a, b any) []string {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		var keys []string
		for k := range av {
			keys = append(keys, k)
		}
		for k := range bv {
			if _, ok := av[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			out = append(out, diff(path+"."+k, av[k], bv[k])...)
		}
		return out
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			break
		}
		var out []string
		for i := range av {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), av[i], bv[i])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	return []string{fmt.Sprintf("%s: %v != %v", path, a, b)}
}

// chart returns Chart.yaml's fields.
func chart(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("tollgate", "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// containers returns the pod template's containers of a generic DaemonSet.
func containers(ds map[string]any) []any {
	spec := ds["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	return spec["containers"].([]any)
}

// splitImage splits an image reference into repository and tag (empty
// without one); a registry's port is part of the repository.
func splitImage(image string) (repo, tag string) {
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return image, ""
	}
	return image[:i], image[i+1:]
}

// imageTag removes the tag from every container image of the DaemonSet
// (repository only) and returns the tags by container name.
func imageTag(ds map[string]any) map[string]string {
	tags := map[string]string{}
	for _, c := range containers(ds) {
		c := c.(map[string]any)
		repo, tag := splitImage(c["image"].(string))
		c["image"] = repo
		tags[c["name"].(string)] = tag
	}
	return tags
}

// TestDefaultsMatchInstallManifests: with default values (and the one
// value that picks the flavour) the chart renders the objects of each
// deploy/install*.yaml, field for field, but for
//   - helmLabels on each object's metadata, and
//   - the image tags: the chart's default to its appVersion, the
//     manifests' to what the kustomization sets (TestAppVersion).
func TestDefaultsMatchInstallManifests(t *testing.T) {
	appVersion := fmt.Sprint(chart(t)["appVersion"])
	for _, f := range deploy.Flavours {
		t.Run(string(f), func(t *testing.T) {
			manifest, err := deploy.Manifest(f)
			if err != nil {
				t.Fatal(err)
			}
			want := objects(t, manifest)
			got := objects(t, render(t, flavourValues[f]...))
			for k, obj := range got {
				labels := obj["metadata"].(map[string]any)["labels"].(map[string]any)
				for _, l := range helmLabels {
					if _, ok := labels[l]; !ok {
						t.Errorf("%s: no %s label", k, l)
					}
					delete(labels, l)
				}
				if obj["kind"] == "DaemonSet" {
					for name, tag := range imageTag(obj) {
						if tag != appVersion {
							t.Errorf("%s: container %s image tag %q, want the chart's appVersion %q", k, name, tag, appVersion)
						}
					}
					imageTag(want[k])
				}
			}
			for k := range want {
				if _, ok := got[k]; !ok {
					t.Errorf("the chart does not render %s", k)
				}
			}
			for k, obj := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("the chart renders %s, which the manifest lacks", k)
					continue
				}
				for _, d := range diff(k, want[k], obj) {
					t.Errorf("manifest != chart at %s", d)
				}
			}
		})
	}
}

// TestAppVersion: the image tag the manifests name is the chart's
// appVersion, so that both install the same release. The unversioned
// placeholder "latest" (images built by make image) is the exception.
func TestAppVersion(t *testing.T) {
	appVersion := fmt.Sprint(chart(t)["appVersion"])
	manifest, err := deploy.Manifest(deploy.NetworkPolicy)
	if err != nil {
		t.Fatal(err)
	}
	for k, obj := range objects(t, manifest) {
		if obj["kind"] != "DaemonSet" {
			continue
		}
		for name, tag := range imageTag(obj) {
			if tag != appVersion && tag != "latest" {
				t.Errorf("%s: deploy/install.yaml gives the %s container image tag %q, but the chart's appVersion is %q: set appVersion in deploy/helm/tollgate/Chart.yaml to %q",
					k, name, tag, appVersion, tag)
			}
		}
	}
}

// daemonSet renders the chart with args and decodes it strictly into the
// Kubernetes types, returning the DaemonSet and every object's kind.
func daemonSet(t *testing.T, args ...string) (*appsv1.DaemonSet, []string) {
	t.Helper()
	objs, err := deploy.Decode(render(t, args...))
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, fmt.Sprintf("%T", o))
		if d, ok := o.(*appsv1.DaemonSet); ok {
			ds = d
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet rendered")
	}
	return ds, kinds
}

func container(t *testing.T, ds *appsv1.DaemonSet, name string) corev1.Container {
	t.Helper()
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

// TestValues: each value documented in values.yaml lands where it should.
func TestValues(t *testing.T) {
	ds, _ := daemonSet(t,
		"--set", "decider.image.repository=registry.example/d,decider.image.tag=1.2.3,decider.image.pullPolicy=Always",
		"--set", "queuer.image.repository=registry.example/q,queuer.image.tag=4.5.6",
		"--set", "queuer.failOpen=false,queuer.queues=4",
		"--set", "decider.resources.limits.memory=1Gi,queuer.resources.requests.cpu=100m",
		"--set", "metrics.enabled=false,metrics.queuerPort=9999",
		"--set", "decider.extraArgs={--crd-check-interval=1m}",
		"--set", "queuer.extraArgs={--cut-established=false}",
		"--set", "tolerations[0].key=only-this,tolerations[0].operator=Exists",
		"--set", "nodeSelector.kubernetes\\.io/os=linux,priorityClassName=",
	)
	d, q := container(t, ds, "decider"), container(t, ds, "queuer")
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"decider image", d.Image, "registry.example/d:1.2.3"},
		{"decider pull policy", d.ImagePullPolicy, corev1.PullAlways},
		{"queuer image", q.Image, "registry.example/q:4.5.6"},
		{"queuer pull policy", q.ImagePullPolicy, corev1.PullIfNotPresent},
		{"decider args", d.Args, []string{"--socket=/run/tollgate/decider.sock", "--metrics-bind-address=", "--crd-check-interval=1m"}},
		{"decider ports", len(d.Ports), 0},
		{"queuer args", q.Args, []string{"--decider-socket=/run/tollgate/decider.sock", "--metrics-bind-address=:9999", "--fail-open=false", "--queues=4", "--cut-established=false"}},
		{"queuer port", q.Ports[0].ContainerPort, int32(9999)},
		{"decider memory limit", d.Resources.Limits.Memory().String(), "1Gi"},
		{"queuer cpu request", q.Resources.Requests.Cpu().String(), "100m"},
		{"tolerations", ds.Spec.Template.Spec.Tolerations, []corev1.Toleration{{Key: "only-this", Operator: corev1.TolerationOpExists}}},
		{"node selector", ds.Spec.Template.Spec.NodeSelector, map[string]string{"kubernetes.io/os": "linux"}},
		{"priority class", ds.Spec.Template.Spec.PriorityClassName, ""},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.what, c.got, c.want)
		}
	}
}

// TestSchemaRejectsMistakes: values.schema.json turns a misspelled or
// out-of-range value into an error instead of a silently ignored setting.
func TestSchemaRejectsMistakes(t *testing.T) {
	for _, set := range []string{
		"decider.kubeApiAccess=false", // kubeAPIAccess
		"queuer.failopen=false",       // failOpen
		"queuer.queues=-1",
		"metrics.deciderPort=70000",
		"decider.image.pullPolicy=Sometimes",
		"policyAPI.adminNetworkPolicy=true", // policyAPIs
	} {
		if _, err := template(t, "--set", set); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("--set %s: %v, want a schema error", set, err)
		}
	}
}

func TestSplitImage(t *testing.T) {
	for _, tc := range []struct{ image, repo, tag string }{
		{"tollgate-decider", "tollgate-decider", ""},
		{"tollgate-decider:latest", "tollgate-decider", "latest"},
		{"registry.example:5000/tollgate/tollgate-decider:v0.2.0", "registry.example:5000/tollgate/tollgate-decider", "v0.2.0"},
		{"registry.example:5000/tollgate-decider", "registry.example:5000/tollgate-decider", ""},
	} {
		if repo, tag := splitImage(tc.image); repo != tc.repo || tag != tc.tag {
			t.Errorf("splitImage(%q) = %q, %q; want %q, %q", tc.image, repo, tag, tc.repo, tc.tag)
		}
	}
}
