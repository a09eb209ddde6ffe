package engine

// This file is the one definition of the cluster that the side-by-side
// benchmark against kube-network-policies (hack/bench-knp) gives to both
// engines: hack/bench-knp/run.sh copies it, package clause rewritten, into
// a copy of kube-network-policies' pkg/networkpolicy. It must therefore use
// only the Kubernetes API types, no name of this package.
//
// The cluster is NetworkPolicy-only (kube-network-policies evaluates
// AdminNetworkPolicies through a different path), and pods carry
// status.podIPs as the apiserver sets them (kube-network-policies' IP index
// reads them). Each policy selects one app in its namespace, allows ingress
// from two apps of a team's namespaces on port 80 and the named port
// "http", and from an ipBlock with an except; egress to one app on a port
// range.

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// cmpObjects is what cmpCluster builds.
type cmpObjects struct {
	Namespaces      []*corev1.Namespace
	Pods            []*corev1.Pod
	NetworkPolicies []*networkingv1.NetworkPolicy
}

// cmpCluster builds pods pods in pods/100 namespaces and policies
// NetworkPolicies, deterministically.
func cmpCluster(pods, policies int) cmpObjects {
	rng := rand.New(rand.NewPCG(1, 2))
	var in cmpObjects
	nNS := max(1, pods/100)
	for i := range nNS {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   fmt.Sprintf("ns-%d", i),
			Labels: map[string]string{"team": fmt.Sprintf("team-%d", i%20), "kubernetes.io/metadata.name": fmt.Sprintf("ns-%d", i)},
		}})
	}
	for i := range pods {
		ns := fmt.Sprintf("ns-%d", i%nNS)
		ip := cmpIP(i).String()
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%d", i), Labels: map[string]string{
				"app": fmt.Sprintf("app-%d", i%10), "version": fmt.Sprintf("v%d", i%3), "pod-template-hash": fmt.Sprintf("%x", i),
			}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%50), Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
			}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
		in.Pods = append(in.Pods, p)
	}
	tcp := corev1.ProtocolTCP
	for i := range policies {
		ns := fmt.Sprintf("ns-%d", i%nNS)
		port80, portHTTP := intstr.FromInt32(80), intstr.FromString("http")
		end := int32(9100)
		port9000 := intstr.FromInt32(9000)
		in.NetworkPolicies = append(in.NetworkPolicies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", rng.IntN(10))}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", rng.IntN(20))}},
						PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{fmt.Sprintf("app-%d", rng.IntN(10)), fmt.Sprintf("app-%d", rng.IntN(10))}}}},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port80}, {Protocol: &tcp, Port: &portHTTP}},
				}, {
					From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/12", Except: []string{"172.16.1.0/24"}}}},
				}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", rng.IntN(10))}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port9000, EndPort: &end}},
				}},
			},
		})
	}
	return in
}

// cmpIP is pod i's address.
func cmpIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// cmpTuple is one connection of the benchmark.
type cmpTuple struct {
	Src, Dst netip.Addr
	DstPort  uint16
}

// cmpTuples draws 1024 TCP connections: between random pods, and one in
// eight from an address inside the policies' ipBlock.
func cmpTuples(pods int) []cmpTuple {
	rng := rand.New(rand.NewPCG(3, 4))
	ports := []uint16{80, 8080, 443, 9000}
	out := make([]cmpTuple, 1024)
	for i := range out {
		src := cmpIP(rng.IntN(pods))
		if i%8 == 0 {
			src = netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(4)), 7})
		}
		out[i] = cmpTuple{Src: src, Dst: cmpIP(rng.IntN(pods)), DstPort: ports[rng.IntN(len(ports))]}
	}
	return out
}

// cmpSizes are the cluster sizes compared.
var cmpSizes = []struct{ pods, policies int }{
	{1000, 100}, {1000, 1000},
	{10000, 100}, {10000, 1000}, {10000, 10000},
}
