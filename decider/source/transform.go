package source

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// The transform functions below run in the informers before objects enter
// their caches, so the decider keeps only what the engine reads. Objects of
// other types (tombstones) pass through unchanged.

// stripMeta keeps the identity, labels and deletion timestamp of an object.
func stripMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Labels:            m.Labels,
		DeletionTimestamp: m.DeletionTimestamp,
	}
}

// transformPod reduces a pod to what policy needs: identity, labels,
// deletion timestamp, node, host networking, the named container ports of
// containers and sidecars (restartable init containers), phase and IPs.
func transformPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: stripMeta(&p.ObjectMeta),
		Spec: corev1.PodSpec{
			NodeName:       p.Spec.NodeName,
			HostNetwork:    p.Spec.HostNetwork,
			Containers:     stripContainers(p.Spec.Containers, false),
			InitContainers: stripContainers(p.Spec.InitContainers, true),
		},
		Status: corev1.PodStatus{
			Phase:   p.Status.Phase,
			PodIP:   p.Status.PodIP,
			PodIPs:  p.Status.PodIPs,
			HostIP:  p.Status.HostIP,
			HostIPs: p.Status.HostIPs,
		},
	}, nil
}

// stripContainers keeps the name and ports (name, number, protocol) of the
// containers that declare ports; with sidecarsOnly, only of init containers
// that restart always (sidecars), whose restart policy it keeps.
func stripContainers(cs []corev1.Container, sidecarsOnly bool) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		if len(c.Ports) == 0 {
			continue
		}
		if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			continue
		}
		ports := make([]corev1.ContainerPort, len(c.Ports))
		for i, p := range c.Ports {
			ports[i] = corev1.ContainerPort{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: p.Protocol}
		}
		sc := corev1.Container{Name: c.Name, Ports: ports}
		if sidecarsOnly {
			sc.RestartPolicy = c.RestartPolicy
		}
		out = append(out, sc)
	}
	return out
}

// transformNamespace keeps a namespace's name and labels.
func transformNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: stripMeta(&ns.ObjectMeta)}, nil
}

// transformNode keeps a node's name, labels and addresses.
func transformNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		ObjectMeta: stripMeta(&n.ObjectMeta),
		Status:     corev1.NodeStatus{Addresses: n.Status.Addresses},
	}, nil
}

// transformPolicy drops managed fields, annotations and status from a
// policy; the spec is kept whole. It modifies the object in place, which
// informers allow for freshly decoded objects, and is idempotent.
func transformPolicy(obj any) (any, error) {
	switch p := obj.(type) {
	case *networkingv1.NetworkPolicy:
		p.ObjectMeta = stripMeta(&p.ObjectMeta)
	case *v1alpha1.AdminNetworkPolicy:
		p.ObjectMeta = stripMeta(&p.ObjectMeta)
		p.Status = v1alpha1.AdminNetworkPolicyStatus{}
	case *v1alpha1.BaselineAdminNetworkPolicy:
		p.ObjectMeta = stripMeta(&p.ObjectMeta)
		p.Status = v1alpha1.BaselineAdminNetworkPolicyStatus{}
	case *v1alpha2.ClusterNetworkPolicy:
		p.ObjectMeta = stripMeta(&p.ObjectMeta)
		p.Status = v1alpha2.ClusterNetworkPolicyStatus{}
	}
	return obj, nil
}

// sameContent reports whether two transformed versions of one object differ
// only in resource version, as when a pod's status conditions change: such
// updates do not matter to policy and need no rebuild.
func sameContent(oldObj, newObj any) bool {
	switch o := oldObj.(type) {
	case *corev1.Pod:
		n, ok := newObj.(*corev1.Pod)
		return ok && equalIgnoringVersion(*o, *n, func(x *corev1.Pod) *metav1.ObjectMeta { return &x.ObjectMeta })
	case *corev1.Namespace:
		n, ok := newObj.(*corev1.Namespace)
		return ok && equalIgnoringVersion(*o, *n, func(x *corev1.Namespace) *metav1.ObjectMeta { return &x.ObjectMeta })
	case *corev1.Node:
		n, ok := newObj.(*corev1.Node)
		return ok && equalIgnoringVersion(*o, *n, func(x *corev1.Node) *metav1.ObjectMeta { return &x.ObjectMeta })
	case *networkingv1.NetworkPolicy:
		n, ok := newObj.(*networkingv1.NetworkPolicy)
		return ok && equalIgnoringVersion(*o, *n, func(x *networkingv1.NetworkPolicy) *metav1.ObjectMeta { return &x.ObjectMeta })
	case *v1alpha1.AdminNetworkPolicy:
		n, ok := newObj.(*v1alpha1.AdminNetworkPolicy)
		return ok && equalIgnoringVersion(*o, *n, func(x *v1alpha1.AdminNetworkPolicy) *metav1.ObjectMeta { return &x.ObjectMeta })
	case *v1alpha1.BaselineAdminNetworkPolicy:
		n, ok := newObj.(*v1alpha1.BaselineAdminNetworkPolicy)
		return ok && equalIgnoringVersion(*o, *n, func(x *v1alpha1.BaselineAdminNetworkPolicy) *metav1.ObjectMeta { return &x.ObjectMeta })
	case *v1alpha2.ClusterNetworkPolicy:
		n, ok := newObj.(*v1alpha2.ClusterNetworkPolicy)
		return ok && equalIgnoringVersion(*o, *n, func(x *v1alpha2.ClusterNetworkPolicy) *metav1.ObjectMeta { return &x.ObjectMeta })
	}
	return false
}

// equalIgnoringVersion compares a and b, shallow copies of two objects,
// after clearing the resource version in the copies' metadata.
func equalIgnoringVersion[T any](a, b T, meta func(*T) *metav1.ObjectMeta) bool {
	meta(&a).ResourceVersion = ""
	meta(&b).ResourceVersion = ""
	return equality.Semantic.DeepEqual(a, b)
}
