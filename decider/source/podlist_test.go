package source

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// fullPodList is a list of pods with everything the transform strips.
func fullPodList(n int) *corev1.PodList {
	l := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "4242", Continue: "next-page"}}
	l.Kind, l.APIVersion = "PodList", "v1"
	for i := range n {
		always := corev1.ContainerRestartPolicyAlways
		l.Items = append(l.Items, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p%d", i), UID: "u", ResourceVersion: "7",
				Labels: map[string]string{"app": fmt.Sprint(i % 3)}, Annotations: map[string]string{"big": "x"},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{}}`)}}}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{
				{Name: "web", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
					Env: []corev1.EnvVar{{Name: "A", Value: "B"}}},
				{Name: "no-ports", Image: "busybox"},
			}, InitContainers: []corev1.Container{{Name: "sidecar", RestartPolicy: &always,
				Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.0.0.%d", i+1),
				PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.0.0.%d", i+1)}}, HostIP: "192.168.0.1",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		})
	}
	return l
}

func encodeProtobuf(t *testing.T, obj runtime.Object) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(obj, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkStripped compares the list got, as the reflector reads lists, with
// want stripped the informer's way.
func checkStripped(t *testing.T, got runtime.Object, want *corev1.PodList) {
	t.Helper()
	want = stripPodList(want.DeepCopy())
	lm, err := meta.ListAccessor(got)
	if err != nil {
		t.Fatal(err)
	}
	items, err := meta.ExtractListWithAlloc(got)
	if err != nil {
		t.Fatal(err)
	}
	if lm.GetResourceVersion() != want.ResourceVersion || lm.GetContinue() != want.Continue || len(items) != len(want.Items) {
		t.Fatalf("list: rv %q continue %q, %d items; want %q %q %d", lm.GetResourceVersion(), lm.GetContinue(), len(items),
			want.ResourceVersion, want.Continue, len(want.Items))
	}
	for i := range want.Items {
		p, ok := items[i].(*corev1.Pod)
		if !ok || !equality.Semantic.DeepEqual(*p, want.Items[i]) {
			t.Fatalf("pod %d:\n got  %+v\n want %+v", i, items[i], want.Items[i])
		}
		if p.Annotations != nil || p.ManagedFields != nil || p.Spec.Containers[0].Image != "" {
			t.Errorf("pod not stripped: %+v", p)
		}
	}
}

func TestDecodePodList(t *testing.T) {
	full := fullPodList(50)
	b := encodeProtobuf(t, full)
	got, err := decodePodList(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	checkStripped(t, got, full)

	empty, err := decodePodList(bufio.NewReader(bytes.NewReader(encodeProtobuf(t, &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "9"}}))))
	if err != nil || len(empty.Items) != 0 || empty.ResourceVersion != "9" {
		t.Errorf("empty list: %+v, %v", empty, err)
	}

	// A truncated answer is an error, never a shorter list: only the
	// envelope's empty trailing fields may be missing.
	small := encodeProtobuf(t, fullPodList(3))
	for n := range len(small) {
		if l, err := decodePodList(bufio.NewReader(bytes.NewReader(small[:n]))); err == nil && (len(l.Items) != 3 || l.Continue != "next-page") {
			t.Fatalf("cut at %d of %d bytes: %d pods and no error", n, len(small), len(l.Items))
		}
	}
}

// TestPodListWatch lists through a REST client from a server that answers
// in protobuf or, as one that does not speak it would, in JSON.
func TestPodListWatch(t *testing.T) {
	full := fullPodList(20)
	for _, format := range []string{"protobuf", "json"} {
		t.Run(format, func(t *testing.T) {
			var query string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/api/v1/pods" {
					http.NotFound(w, r)
					return
				}
				query = r.URL.RawQuery
				if format == "protobuf" {
					w.Header().Set("Content-Type", "application/vnd.kubernetes.protobuf")
					_, _ = w.Write(encodeProtobuf(t, full))
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, json.SerializerOptions{}).Encode(full, w)
			}))
			defer srv.Close()
			cfg := &rest.Config{Host: srv.URL}
			cfg.ContentType = runtime.ContentTypeProtobuf
			cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
			kc, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			obj, err := podListWatch(kc).List(metav1.ListOptions{ResourceVersion: "0", Limit: 500})
			if err != nil {
				t.Fatal(err)
			}
			checkStripped(t, obj, full)
			if query != "limit=500&resourceVersion=0" {
				t.Errorf("query %q: the reflector's options must reach the server", query)
			}
		})
	}
}
