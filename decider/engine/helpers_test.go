package engine

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"
)

// The test cluster follows the upstream e2e model: namespaces x, y, z, each
// with pods a, b, c that serve ports 80 and 81 over TCP, UDP and SCTP under
// the upstream port names (serve-80-tcp, ...). Pod x/a has 10.0.1.1 and
// fd00::1:1, y/b has 10.0.2.2 and fd00::2:2, and so on. Node n1 has IP
// 192.168.0.1 and label zone=a.
var testNamespaces = []string{"x", "y", "z"}
var testPods = []string{"a", "b", "c"}

func podIP(ns, name string, v6 bool) netip.Addr {
	ni := strings.Index("xyz", ns) + 1
	pi := strings.Index("abc", name) + 1
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00::%d:%d", ni, pi))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.0.%d.%d", ni, pi))
}

func testCluster() Input {
	var in Input
	for _, ns := range testNamespaces {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"ns": ns, namespaceNameLabel: ns}}})
		for _, p := range testPods {
			in.Pods = append(in.Pods, testPod(ns, p, podIP(ns, p, false), podIP(ns, p, true)))
		}
	}
	in.Nodes = []*corev1.Node{{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"zone": "a"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.168.0.1"},
			{Type: corev1.NodeHostName, Address: "n1"},
		}},
	}}
	return in
}

func testPod(ns, name string, ips ...netip.Addr) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		for _, port := range []int32{80, 81} {
			ports = append(ports, corev1.ContainerPort{
				Name:          fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))),
				ContainerPort: port, Protocol: proto,
			})
		}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0].String()
	}
	return p
}

// withPolicies decodes YAML documents (NetworkPolicy, AdminNetworkPolicy,
// BaselineAdminNetworkPolicy, ClusterNetworkPolicy) into in.
func withPolicies(t testing.TB, in Input, docs string) Input {
	t.Helper()
	for _, doc := range strings.Split(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("decode: %v\n%s", err, doc)
		}
		var obj any
		switch tm.Kind {
		case "NetworkPolicy":
			np := &networkingv1.NetworkPolicy{}
			in.NetworkPolicies, obj = append(in.NetworkPolicies, np), np
		case "AdminNetworkPolicy":
			p := &v1alpha1.AdminNetworkPolicy{}
			in.AdminNetworkPolicies, obj = append(in.AdminNetworkPolicies, p), p
		case "BaselineAdminNetworkPolicy":
			p := &v1alpha1.BaselineAdminNetworkPolicy{}
			in.BaselineAdminNetworkPolicies, obj = append(in.BaselineAdminNetworkPolicies, p), p
		case "ClusterNetworkPolicy":
			p := &v1alpha2.ClusterNetworkPolicy{}
			in.ClusterNetworkPolicies, obj = append(in.ClusterNetworkPolicies, p), p
		case "Pod":
			p := &corev1.Pod{}
			in.Pods, obj = append(in.Pods, p), p
		default:
			t.Fatalf("unknown kind %q", tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("decode %s: %v\n%s", tm.Kind, err, doc)
		}
	}
	return in
}

// probe is one expected verdict, written "x/a -> y/b:80/TCP" where either
// side may also be a literal IP, and ":80/TCP" may be omitted for ICMP
// ("x/a -> y/b/ICMP"). A "6:" prefix uses the pods' IPv6 addresses.
type probe struct {
	conn  string
	allow bool
}

func parseProbe(t testing.TB, s string) Tuple {
	t.Helper()
	v6 := strings.HasPrefix(s, "6:")
	s = strings.TrimPrefix(s, "6:")
	via := strings.HasSuffix(s, " via-service")
	s = strings.TrimSuffix(s, " via-service")
	from, to, ok := strings.Cut(s, " -> ")
	if !ok {
		t.Fatalf("bad probe %q", s)
	}
	addr := func(e string) netip.Addr {
		if ip, err := netip.ParseAddr(e); err == nil {
			return ip
		}
		ns, name, ok := strings.Cut(e, "/")
		if !ok {
			t.Fatalf("bad endpoint %q", e)
		}
		return podIP(ns, name, v6)
	}
	tup := Tuple{Src: addr(from), ViaService: via}
	rest, proto, _ := cutLast(to, "/")
	switch proto {
	case "TCP":
		tup.Proto = ProtocolTCP
	case "UDP":
		tup.Proto = ProtocolUDP
	case "SCTP":
		tup.Proto = ProtocolSCTP
	case "ICMP":
		tup.Proto = ProtocolICMP
	default:
		t.Fatalf("bad protocol in %q", s)
	}
	if tup.Proto != ProtocolICMP {
		host, port, ok := cutLast(rest, ":")
		if !ok {
			t.Fatalf("missing port in %q", s)
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			t.Fatalf("bad port in %q", s)
		}
		rest, tup.DstPort = host, uint16(n)
	}
	tup.Dst = addr(strings.Trim(rest, "[]"))
	return tup
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func checkProbes(t *testing.T, snap *Snapshot, probes []probe) {
	t.Helper()
	for _, p := range probes {
		d := snap.Decide(parseProbe(t, p.conn))
		if d.Allowed != p.allow {
			t.Errorf("%s: allowed=%v, want %v\n  egress:  %+v\n  ingress: %+v", p.conn, d.Allowed, p.allow, d.Egress, d.Ingress)
		}
	}
}
