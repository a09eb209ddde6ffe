package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/tollgate/tollgate/test/cluster"
)

// The synthetic cluster, shaped like the engine benchmark's
// (decider/engine/bench_test.go): namespaces bench-0.. labelled with one of
// 20 teams; pods labelled with one of ten apps; background NetworkPolicies
// spread evenly over the namespaces, each selecting one app, with an
// ingress rule (namespace selector AND pod selector, an ipBlock with an
// except, a numbered and a named port) and, for apps a3..a9, an egress rule
// with a port range. No background policy admits a pod labelled
// role=client or role=other, so the verdicts a benchmark expects between its
// own pods depend only on the policies it adds itself.

// NamespaceName is the name of synthetic namespace i.
func NamespaceName(i int) string { return fmt.Sprintf("bench-%d", i) }

// Namespace returns synthetic namespace i.
func Namespace(i int) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   NamespaceName(i),
		Labels: map[string]string{"team": fmt.Sprintf("t%d", i%20), "bench": "yes"},
	}}
}

// App is the app label value number i of the ten.
func App(i int) string { return fmt.Sprintf("a%d", i%10) }

// ownerUID is the UID of the (absent) ReplicaSet that owns every pod.
const ownerUID = "5a7e0000-0000-4000-8000-000000000001"

// Pod returns a pod object shaped like one of a Deployment's: one container
// with two named ports (http 8080, metrics 9100), environment, resources, a
// readiness probe, the default tolerations and an owner reference. Its
// status is set separately (Loader.Pods).
func Pod(ns, name, node string, labels map[string]string) *corev1.Pod {
	tolerate := func(key string) corev1.Toleration {
		secs := int64(300)
		return corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &secs}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   ns,
			Name:        name,
			Labels:      labels,
			Annotations: map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: ns + "-app", UID: ownerUID,
				Controller: new(true), BlockOwnerDeletion: new(true),
			}},
		},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.example/bench/app:1.0",
				Args:  []string{"--listen=:8080", "--metrics=:9100"},
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: 9100, Protocol: corev1.ProtocolTCP},
				},
				Env: []corev1.EnvVar{
					{Name: "LOG_LEVEL", Value: "info"}, {Name: "REGION", Value: "bench-1"},
					{Name: "CACHE_SIZE", Value: "512"}, {Name: "FEATURES", Value: "a,b,c"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")},
				}},
			}},
			Tolerations: []corev1.Toleration{tolerate("node.kubernetes.io/not-ready"), tolerate("node.kubernetes.io/unreachable")},
		},
	}
}

// BackgroundPodIP is the IPv4 address of background pod i: 10.100.0.1 on,
// one /16 after another.
func BackgroundPodIP(i int) netip.Addr {
	n := i + 1
	return netip.AddrFrom4([4]byte{10, byte(100 + n>>16), byte(n >> 8), byte(n)})
}

// BackgroundPod returns background pod i of a cluster of namespaces
// namespaces, on node, with its address.
func BackgroundPod(i, namespaces int, node string) PodWithIPs {
	ns := i % namespaces
	app := (i / namespaces) % 10
	labels := map[string]string{"app": App(app), "role": "bg", "pod-template-hash": fmt.Sprintf("h%d", app)}
	return PodWithIPs{
		Pod: Pod(NamespaceName(ns), fmt.Sprintf("bg-%d", i), node, labels),
		IPs: []string{BackgroundPodIP(i).String()},
	}
}

// BackgroundPolicy returns background NetworkPolicy k of a cluster of
// namespaces namespaces.
func BackgroundPolicy(k, namespaces int) *networkingv1.NetworkPolicy {
	app := (k / namespaces) % 10
	tcp := corev1.ProtocolTCP
	port := func(p intstr.IntOrString) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p}
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: NamespaceName(k % namespaces), Name: fmt.Sprintf("bg-%d", k)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": App(app)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{
						NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
							Key: "team", Operator: metav1.LabelSelectorOpIn,
							Values: []string{fmt.Sprintf("t%d", k%20), fmt.Sprintf("t%d", (k+7)%20)},
						}}},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": fmt.Sprintf("peer-%d", k%50)}},
					},
					{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/16", Except: []string{fmt.Sprintf("172.16.%d.0/24", k%256)}}},
				},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(int32(9000 + k%100))), port(intstr.FromString("http"))},
			}},
		},
	}
	if app >= 3 {
		end := int32(5440)
		p := intstr.FromInt32(5432)
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p, EndPort: &end}},
		}}
	}
	return np
}

// PodWithIPs is a pod object and the addresses its status gets.
type PodWithIPs struct {
	Pod *corev1.Pod
	IPs []string
}

// Loader creates objects in a real apiserver through many concurrent
// requests.
type Loader struct {
	// Client is an admin client with a high rate limit.
	Client kubernetes.Interface
	// Workers is how many requests are in flight.
	Workers int
}

// NewLoader returns a loader for c.
func NewLoader(c *cluster.Cluster) (*Loader, error) {
	cfg := c.RESTConfig()
	cfg.QPS, cfg.Burst = 5000, 10000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("loader client: %w", err)
	}
	return &Loader{Client: client, Workers: 32}, nil
}

// Namespaces creates the namespaces.
func (l *Loader) Namespaces(ctx context.Context, nss []*corev1.Namespace) error {
	return l.each(ctx, len(nss), "namespaces", func(ctx context.Context, i int) error {
		_, err := l.Client.CoreV1().Namespaces().Create(ctx, nss[i], metav1.CreateOptions{})
		return err
	})
}

// Pods creates the pods and sets each one's status as a kubelet would:
// Running, Ready, with its IPs.
func (l *Loader) Pods(ctx context.Context, pods []PodWithIPs) error {
	return l.each(ctx, len(pods), "pods", func(ctx context.Context, i int) error {
		p := pods[i]
		created, err := l.Client.CoreV1().Pods(p.Pod.Namespace).Create(ctx, p.Pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		setRunning(created, p.IPs)
		_, err = l.Client.CoreV1().Pods(p.Pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
}

// setRunning fills the status a kubelet reports for a running, ready pod.
func setRunning(p *corev1.Pod, ips []string) {
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.StartTime = &now
	p.Status.PodIPs = nil
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
}

// Policies creates the NetworkPolicies.
func (l *Loader) Policies(ctx context.Context, nps []*networkingv1.NetworkPolicy) error {
	return l.each(ctx, len(nps), "network policies", func(ctx context.Context, i int) error {
		_, err := l.Client.NetworkingV1().NetworkPolicies(nps[i].Namespace).Create(ctx, nps[i], metav1.CreateOptions{})
		return err
	})
}

// each calls fn for 0..n-1 on Workers goroutines and stops at the first
// error.
func (l *Loader) each(ctx context.Context, n int, what string, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, l.Workers) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(fmt.Errorf("create %s (item %d): %w", what, i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// Timed runs fn and reports how long it took.
func Timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}
