package source

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
)

// Objects read from files have not been through an API server, so the
// defaults it would apply, where they change what a policy means, are
// applied here. The Kube source gets defaulted objects and needs none of
// this.

// applyDefaults defaults obj in place.
func applyDefaults(obj metav1.Object) {
	switch o := obj.(type) {
	case *corev1.Pod:
		defaultPod(o)
	case *networkingv1.NetworkPolicy:
		DefaultNetworkPolicy(o)
	case *v1alpha1.AdminNetworkPolicy:
		for i := range o.Spec.Ingress {
			defaultAdminPorts(o.Spec.Ingress[i].Ports)
		}
		for i := range o.Spec.Egress {
			defaultAdminPorts(o.Spec.Egress[i].Ports)
		}
	case *v1alpha1.BaselineAdminNetworkPolicy:
		for i := range o.Spec.Ingress {
			defaultAdminPorts(o.Spec.Ingress[i].Ports)
		}
		for i := range o.Spec.Egress {
			defaultAdminPorts(o.Spec.Egress[i].Ports)
		}
	}
}

// DefaultNetworkPolicy applies the API server's defaults to np in place:
// every port without a protocol is TCP, and policyTypes, when empty, is
// Ingress, plus Egress if the policy has egress rules.
func DefaultNetworkPolicy(np *networkingv1.NetworkPolicy) {
	tcp := corev1.ProtocolTCP
	defaultPorts := func(ports []networkingv1.NetworkPolicyPort) {
		for i := range ports {
			if ports[i].Protocol == nil {
				p := tcp
				ports[i].Protocol = &p
			}
		}
	}
	for i := range np.Spec.Ingress {
		defaultPorts(np.Spec.Ingress[i].Ports)
	}
	for i := range np.Spec.Egress {
		defaultPorts(np.Spec.Egress[i].Ports)
	}
	if len(np.Spec.PolicyTypes) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
}

// defaultPod makes container ports without a protocol TCP.
func defaultPod(p *corev1.Pod) {
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range cs {
			for j := range cs[i].Ports {
				if cs[i].Ports[j].Protocol == "" {
					cs[i].Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}

// defaultAdminPorts makes AdminNetworkPolicy and BaselineAdminNetworkPolicy
// port numbers and ranges without a protocol TCP, as their CRDs do.
func defaultAdminPorts(ports *[]v1alpha1.AdminNetworkPolicyPort) {
	if ports == nil {
		return
	}
	for _, p := range *ports {
		if p.PortNumber != nil && p.PortNumber.Protocol == "" {
			p.PortNumber.Protocol = corev1.ProtocolTCP
		}
		if p.PortRange != nil && p.PortRange.Protocol == "" {
			p.PortRange.Protocol = corev1.ProtocolTCP
		}
	}
}
