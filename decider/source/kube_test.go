package source

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
	policyfake "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned/fake"

	"github.com/tollgate/tollgate/decider/engine"
)

var (
	gvV1alpha1 = v1alpha1.GroupVersion.String()
	gvV1alpha2 = v1alpha2.GroupVersion.String()
)

// fakeDiscovery serves a settable set of resources per group version; an
// unknown group version is NotFound, as on a real server.
type fakeDiscovery struct {
	mu     sync.Mutex
	served map[string][]string
	err    error
}

func newFakeDiscovery() *fakeDiscovery { return &fakeDiscovery{served: map[string][]string{}} }

func (f *fakeDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	rs, ok := f.served[gv]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{}, gv)
	}
	list := &metav1.APIResourceList{GroupVersion: gv}
	for _, r := range rs {
		list.APIResources = append(list.APIResources, metav1.APIResource{Name: r})
	}
	return list, nil
}

func (f *fakeDiscovery) set(gv string, resources ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if resources == nil {
		delete(f.served, gv)
		return
	}
	f.served[gv] = resources
}

func (f *fakeDiscovery) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// watchRecorder makes a fake clientset's watches through its tracker and
// remembers which resources are watched, so tests create objects only once
// an informer can see them (a fake watch has no resource versions, so an
// object created between list and watch would be lost).
type watchRecorder struct {
	mu      sync.Mutex
	watched map[string]int
}

func recordWatches(fake *k8stesting.Fake, tracker k8stesting.ObjectTracker) *watchRecorder {
	r := &watchRecorder{watched: map[string]int{}}
	fake.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := action.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := tracker.Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		r.mu.Lock()
		r.watched[action.GetResource().Resource]++
		r.mu.Unlock()
		return true, w, nil
	})
	return r
}

func (r *watchRecorder) count(resource string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.watched[resource]
}

// eventually polls cond every 5ms for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type kubeFixture struct {
	kube    *Kube
	kc      *kubefake.Clientset
	pc      *policyfake.Clientset
	disc    *fakeDiscovery
	kw, pw  *watchRecorder
	logs    *logRecorder
	changes atomic.Int64
}

// startKube runs a Kube over fake clients holding objs (core kinds go to
// the kubernetes clientset, policy kinds to the policy clientset) and
// stops it at the end of the test. It does not wait for the sync.
func startKube(t *testing.T, disc *fakeDiscovery, objs ...runtime.Object) *kubeFixture {
	t.Helper()
	var core, policy []runtime.Object
	for _, o := range objs {
		switch o.(type) {
		case *v1alpha1.AdminNetworkPolicy, *v1alpha1.BaselineAdminNetworkPolicy, *v1alpha2.ClusterNetworkPolicy:
			policy = append(policy, o)
		default:
			core = append(core, o)
		}
	}
	f := &kubeFixture{
		kc:   kubefake.NewClientset(core...),
		pc:   policyfake.NewSimpleClientset(policy...),
		disc: disc,
	}
	f.kw = recordWatches(&f.kc.Fake, f.kc.Tracker())
	f.pw = recordWatches(&f.pc.Fake, f.pc.Tracker())
	f.logs = &logRecorder{}
	f.kube = newKube(f.kc, f.pc, disc, KubeOptions{CRDCheckInterval: 20 * time.Millisecond, Logger: slog.New(f.logs)})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.kube.Run(ctx, func() { f.changes.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return f
}

// synced waits for the initial sync and for the watches of the given
// resources.
func (f *kubeFixture) synced(t *testing.T, coreResources, policyResources []string) {
	t.Helper()
	eventually(t, "HasSynced", f.kube.HasSynced)
	for _, r := range coreResources {
		eventually(t, "watch on "+r, func() bool { return f.kw.count(r) > 0 })
	}
	for _, r := range policyResources {
		eventually(t, "watch on "+r, func() bool { return f.pw.count(r) > 0 })
	}
}

var coreResources = []string{"pods", "namespaces", "nodes", "networkpolicies"}

func podNames(in engine.Input) []string {
	var out []string
	for _, p := range in.Pods {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	slices.Sort(out)
	return out
}

func policyNames(in engine.Input) []string {
	var out []string
	for _, p := range in.NetworkPolicies {
		out = append(out, "NetworkPolicy/"+p.Namespace+"/"+p.Name)
	}
	for _, p := range in.AdminNetworkPolicies {
		out = append(out, "AdminNetworkPolicy/"+p.Name)
	}
	for _, p := range in.BaselineAdminNetworkPolicies {
		out = append(out, "BaselineAdminNetworkPolicy/"+p.Name)
	}
	for _, p := range in.ClusterNetworkPolicies {
		out = append(out, "ClusterNetworkPolicy/"+p.Name)
	}
	slices.Sort(out)
	return out
}

func testPod(ns, name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "img"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func TestKubeAddUpdateDelete(t *testing.T) {
	ctx := context.Background()
	disc := newFakeDiscovery()
	disc.set(gvV1alpha1, "adminnetworkpolicies", "baselineadminnetworkpolicies")
	f := startKube(t, disc,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"ns": "x"}}},
		testPod("x", "a", "10.0.0.1", map[string]string{"pod": "a"}),
		&v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "anp-1"}, Spec: v1alpha1.AdminNetworkPolicySpec{Priority: 5}},
	)
	f.synced(t, coreResources, []string{"adminnetworkpolicies", "baselineadminnetworkpolicies"})
	if f.changes.Load() == 0 {
		t.Errorf("changed was not called after the initial sync")
	}

	in := f.kube.Input()
	if got := podNames(in); !slices.Equal(got, []string{"x/a"}) {
		t.Errorf("initial pods = %v", got)
	}
	if got := policyNames(in); !slices.Equal(got, []string{"AdminNetworkPolicy/anp-1"}) {
		t.Errorf("initial policies = %v", got)
	}
	if len(in.Namespaces) != 1 || in.Namespaces[0].Labels["ns"] != "x" {
		t.Errorf("initial namespaces = %v", in.Namespaces)
	}

	// Add.
	before := f.changes.Load()
	if _, err := f.kc.CoreV1().Pods("x").Create(ctx, testPod("x", "b", "10.0.0.2", map[string]string{"pod": "b"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny"}}
	if _, err := f.kc.NetworkingV1().NetworkPolicies("x").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.2"}}}}
	if _, err := f.kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	banp := &v1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := f.pc.PolicyV1alpha1().BaselineAdminNetworkPolicies().Create(ctx, banp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "added objects", func() bool {
		in := f.kube.Input()
		return slices.Equal(podNames(in), []string{"x/a", "x/b"}) &&
			slices.Equal(policyNames(in), []string{"AdminNetworkPolicy/anp-1", "BaselineAdminNetworkPolicy/default", "NetworkPolicy/x/deny"}) &&
			len(in.Nodes) == 1 && len(in.Nodes[0].Status.Addresses) == 1
	})
	// The informer updates its store before it runs the handlers, so the
	// call may come a moment after the objects show.
	eventually(t, "changed called for additions", func() bool { return f.changes.Load() > before })

	// Update.
	before = f.changes.Load()
	upd := testPod("x", "b", "10.0.0.2", map[string]string{"pod": "b", "role": "db"})
	if _, err := f.kc.CoreV1().Pods("x").Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	anp := &v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "anp-1"}, Spec: v1alpha1.AdminNetworkPolicySpec{Priority: 7}}
	if _, err := f.pc.PolicyV1alpha1().AdminNetworkPolicies().Update(ctx, anp, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "updated objects", func() bool {
		in := f.kube.Input()
		labelled := false
		for _, p := range in.Pods {
			if p.Name == "b" && p.Labels["role"] == "db" {
				labelled = true
			}
		}
		return labelled && len(in.AdminNetworkPolicies) == 1 && in.AdminNetworkPolicies[0].Spec.Priority == 7
	})
	// The informer updates its store before it runs the handlers, so the
	// call may come a moment after the objects show.
	eventually(t, "changed called for updates", func() bool { return f.changes.Load() > before })

	// Delete.
	before = f.changes.Load()
	if err := f.kc.CoreV1().Pods("x").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.pc.PolicyV1alpha1().AdminNetworkPolicies().Delete(ctx, "anp-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted objects", func() bool {
		in := f.kube.Input()
		return slices.Equal(podNames(in), []string{"x/b"}) &&
			slices.Equal(policyNames(in), []string{"BaselineAdminNetworkPolicy/default", "NetworkPolicy/x/deny"})
	})
	// The informer updates its store before it runs the handlers, so the
	// call may come a moment after the objects show.
	eventually(t, "changed called for deletions", func() bool { return f.changes.Load() > before })
}

func TestKubeStripsObjects(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "x", Name: "a", Labels: map[string]string{"pod": "a"},
			Annotations:     map[string]string{"big": "annotation"},
			OwnerReferences: []metav1.OwnerReference{{Name: "rs"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-1",
			Containers: []corev1.Container{{
				Name: "c", Image: "img", Command: []string{"serve"},
				Env:   []corev1.EnvVar{{Name: "A", Value: "b"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP, HostPort: 8080}},
			}},
			InitContainers: []corev1.Container{
				{Name: "sidecar", Image: "img", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}}},
				{Name: "init", Image: "img", Ports: []corev1.ContainerPort{{Name: "setup", ContainerPort: 1, Protocol: corev1.ProtocolTCP}}},
			},
			Volumes: []corev1.Volume{{Name: "v"}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			HostIP: "172.18.0.2", HostIPs: []corev1.HostIP{{IP: "172.18.0.2"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "np", Annotations: map[string]string{"a": "b"}},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	anp := &v1alpha1.AdminNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "anp", Annotations: map[string]string{"a": "b"}},
		Spec:       v1alpha1.AdminNetworkPolicySpec{Priority: 3},
		Status:     v1alpha1.AdminNetworkPolicyStatus{Conditions: []metav1.Condition{{Type: "Ready"}}},
	}
	ns := &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"ns": "x"}, Annotations: map[string]string{"a": "b"}},
		Spec:       corev1.NamespaceSpec{Finalizers: []corev1.FinalizerName{"kubernetes"}},
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"zone": "a"}, Annotations: map[string]string{"a": "b"}},
		Spec:       corev1.NodeSpec{PodCIDR: "10.0.0.0/24"},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.2"}},
			Images:    []corev1.ContainerImage{{Names: []string{"img"}}},
		},
	}
	disc := newFakeDiscovery()
	disc.set(gvV1alpha1, "adminnetworkpolicies")
	f := startKube(t, disc, pod, np, anp, ns, node)
	f.synced(t, nil, nil)
	in := f.kube.Input()
	if len(in.Pods) != 1 || len(in.NetworkPolicies) != 1 || len(in.AdminNetworkPolicies) != 1 || len(in.Namespaces) != 1 || len(in.Nodes) != 1 {
		t.Fatalf("Input = %+v", in)
	}

	// The fake clientset records managed fields; they must be gone too.
	got := in.Pods[0]
	if got.Annotations != nil || got.ManagedFields != nil || got.OwnerReferences != nil || got.Spec.Volumes != nil || got.Status.Conditions != nil {
		t.Errorf("pod metadata/spec/status not stripped: %+v", got)
	}
	if got.Labels["pod"] != "a" || got.Spec.NodeName != "node-1" || got.Status.Phase != corev1.PodRunning ||
		len(got.Status.PodIPs) != 2 || got.Status.HostIP != "172.18.0.2" || len(got.Status.HostIPs) != 1 {
		t.Errorf("pod lost fields the engine needs: %+v", got)
	}
	wantCtr := []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}}}
	if !equalJSON(t, got.Spec.Containers, wantCtr) {
		t.Errorf("containers = %+v, want %+v", got.Spec.Containers, wantCtr)
	}
	wantInit := []corev1.Container{{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}}}}
	if !equalJSON(t, got.Spec.InitContainers, wantInit) {
		t.Errorf("init containers = %+v, want %+v", got.Spec.InitContainers, wantInit)
	}
	if p := in.NetworkPolicies[0]; p.Annotations != nil || p.ManagedFields != nil || len(p.Spec.PolicyTypes) != 1 {
		t.Errorf("network policy = %+v", p)
	}
	if p := in.AdminNetworkPolicies[0]; p.Annotations != nil || p.Status.Conditions != nil || p.Spec.Priority != 3 {
		t.Errorf("admin network policy = %+v", p)
	}
	if n := in.Namespaces[0]; n.Annotations != nil || n.ManagedFields != nil || n.Spec.Finalizers != nil || n.Labels["ns"] != "x" {
		t.Errorf("namespace = %+v", n)
	}
	if n := in.Nodes[0]; n.Annotations != nil || n.Spec.PodCIDR != "" || n.Status.Images != nil || n.Labels["zone"] != "a" || len(n.Status.Addresses) != 1 {
		t.Errorf("node = %+v", n)
	}
}

func TestKubeCRDAppearsAndDisappears(t *testing.T) {
	disc := newFakeDiscovery() // nothing of network-policy-api is served
	f := startKube(t, disc,
		&v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "anp-1"}},
		&v1alpha2.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cnp-1"}, Spec: v1alpha2.ClusterNetworkPolicySpec{Tier: v1alpha2.AdminTier}},
	)
	f.synced(t, coreResources, nil)
	if got := policyNames(f.kube.Input()); len(got) != 0 {
		t.Errorf("policies while no CRD is served = %v", got)
	}
	// Several discovery rounds pass; nothing of the kinds is watched, and
	// each missing kind was logged once.
	time.Sleep(60 * time.Millisecond)
	for _, kind := range []string{"kind=AdminNetworkPolicy", "kind=BaselineAdminNetworkPolicy", "kind=ClusterNetworkPolicy"} {
		if n := f.logs.count("not served", kind+" "); n != 1 {
			t.Errorf("%s: logged as not served %d times, want 1", kind, n)
		}
	}
	for _, r := range []string{"adminnetworkpolicies", "baselineadminnetworkpolicies", "clusternetworkpolicies"} {
		if n := f.pw.count(r); n != 0 {
			t.Errorf("%s watched %d times while not served", r, n)
		}
	}

	// v1alpha2 appears: ClusterNetworkPolicy is picked up, v1alpha1 stays off.
	before := f.changes.Load()
	disc.set(gvV1alpha2, "clusternetworkpolicies")
	eventually(t, "ClusterNetworkPolicy picked up", func() bool {
		return f.kube.HasSynced() && slices.Equal(policyNames(f.kube.Input()), []string{"ClusterNetworkPolicy/cnp-1"})
	})
	eventually(t, "changed after the new kind synced", func() bool { return f.changes.Load() > before })

	// v1alpha1 appears with only AdminNetworkPolicy.
	disc.set(gvV1alpha1, "adminnetworkpolicies")
	eventually(t, "AdminNetworkPolicy picked up", func() bool {
		return slices.Equal(policyNames(f.kube.Input()), []string{"AdminNetworkPolicy/anp-1", "ClusterNetworkPolicy/cnp-1"})
	})
	if n := f.pw.count("baselineadminnetworkpolicies"); n != 0 {
		t.Errorf("baselineadminnetworkpolicies watched while not served")
	}

	// v1alpha2 goes away: its objects are dropped and a change is announced.
	before = f.changes.Load()
	disc.set(gvV1alpha2)
	eventually(t, "ClusterNetworkPolicy dropped", func() bool {
		return slices.Equal(policyNames(f.kube.Input()), []string{"AdminNetworkPolicy/anp-1"})
	})
	eventually(t, "changed after the drop", func() bool { return f.changes.Load() > before })

	// And comes back: a fresh informer lists it again.
	disc.set(gvV1alpha2, "clusternetworkpolicies")
	eventually(t, "ClusterNetworkPolicy back", func() bool {
		return slices.Equal(policyNames(f.kube.Input()), []string{"AdminNetworkPolicy/anp-1", "ClusterNetworkPolicy/cnp-1"})
	})
}

func TestKubeDiscoveryFailureDelaysSync(t *testing.T) {
	disc := newFakeDiscovery()
	disc.set(gvV1alpha1, "adminnetworkpolicies")
	disc.setErr(errors.New("connection refused"))
	f := startKube(t, disc, &v1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "anp-1"}})
	time.Sleep(100 * time.Millisecond)
	if f.kube.HasSynced() {
		t.Fatalf("HasSynced before discovery ever answered")
	}
	if f.changes.Load() != 0 {
		t.Errorf("changed called before the initial sync")
	}
	// The first retry is after one second.
	disc.setErr(nil)
	eventually(t, "sync after discovery recovered", f.kube.HasSynced)
	if got := policyNames(f.kube.Input()); !slices.Equal(got, []string{"AdminNetworkPolicy/anp-1"}) {
		t.Errorf("policies = %v", got)
	}
}

func TestKubeRunTwice(t *testing.T) {
	f := startKube(t, newFakeDiscovery())
	f.synced(t, nil, nil)
	if err := f.kube.Run(context.Background(), func() {}); err == nil {
		t.Errorf("second Run returned nil")
	}
}
