package api

import (
	"context"
	"net/netip"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/resolved"
	"github.com/tollgate/tollgate/decider/state"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// dnsCluster is cluster() plus a ClusterNetworkPolicy that lets the pods of
// y reach *.allowed.test and nothing else outside.
func dnsCluster() engine.Input {
	in := cluster(false)
	in.Namespaces = []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "y"}}}
	in.ClusterNetworkPolicies = []*v1alpha2.ClusterNetworkPolicy{{
		ObjectMeta: metav1.ObjectMeta{Name: "allowlist"},
		Spec: v1alpha2.ClusterNetworkPolicySpec{
			Tier: v1alpha2.AdminTier, Priority: 1,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
			Egress: []v1alpha2.ClusterNetworkPolicyEgressRule{
				{Action: v1alpha2.ClusterNetworkPolicyRuleActionAccept, To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{DomainNames: []v1alpha2.DomainName{"*.allowed.test"}}}},
				{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny, To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Networks: []v1alpha2.CIDR{"0.0.0.0/0", "::/0"}}}},
			},
		},
	}}
	return in
}

// TestLearn: an answer a governed pod received is in force from the
// generation Learn names, Watch lists the pods whose answers to report and
// the pod as changed, and the explanation names the domain.
func TestLearn(t *testing.T) {
	st := state.New()
	keeper := resolved.NewKeeper(resolved.New(resolved.Options{}), st, "n1")
	client, _, _, _ := startServerWith(t, st, Options{NodeName: "n1", Instance: "i1", DNS: keeper})
	ctx := context.Background()
	st.Publish(dnsCluster())

	watch, err := client.Watch(ctx, &tollgatev1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetDnsIpv4()) != 2 || len(first.GetDnsIpv6()) != 1 {
		t.Fatalf("dns pods %v %v, want y/a and y/b", first.GetDnsIpv4(), first.GetDnsIpv6())
	}

	req := &tollgatev1.DecideRequest{SrcIp: "10.0.0.1", DstIp: "203.0.113.5", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 443}
	if resp, err := client.Decide(ctx, req); err != nil || resp.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
		t.Fatalf("before any answer: %v %v, want deny", resp, err)
	}
	resp, err := client.Learn(ctx, &tollgatev1.LearnRequest{PodAddr: []byte{10, 0, 0, 1}, Resolutions: []*tollgatev1.Resolution{
		{Names: []string{"www.allowed.test"}, Addresses: [][]byte{{203, 0, 113, 5}}, TtlSeconds: 60},
	}})
	if err != nil || resp.GetGeneration() != first.GetGeneration()+1 {
		t.Fatalf("Learn = %v, %v; want generation %d", resp, err, first.GetGeneration()+1)
	}
	next, err := watch.Recv()
	if err != nil || next.GetGeneration() != resp.GetGeneration() || next.GetChangedAll() || len(next.GetChanged()) != 2 {
		t.Fatalf("Watch after Learn: %v, %v; want both addresses of the pod listed as changed", next, err)
	}
	d, err := client.Decide(ctx, req)
	if err != nil || d.GetVerdict() != tollgatev1.Verdict_VERDICT_ALLOW || d.GetExplanations()[0].GetDomain() != "www.allowed.test" {
		t.Fatalf("after the answer: %v %v, want allow by www.allowed.test", d, err)
	}
	// An answer learned through the pod's IPv4 address holds for its IPv6
	// address too.
	req6 := &tollgatev1.DecideRequest{SrcIp: "fd00::1", DstIp: "2001:db8::5", Protocol: tollgatev1.Protocol_PROTOCOL_TCP, DstPort: 443}
	if d, _ := client.Decide(ctx, req6); d.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
		t.Fatalf("IPv6 before its answer: %v", d)
	}
	resp, err = client.Learn(ctx, &tollgatev1.LearnRequest{PodAddr: []byte{10, 0, 0, 1}, Resolutions: []*tollgatev1.Resolution{
		{Names: []string{"v6.allowed.test"}, Addresses: [][]byte{netip.MustParseAddr("2001:db8::5").AsSlice()}, TtlSeconds: 60},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := client.Decide(ctx, req6); d.GetVerdict() != tollgatev1.Verdict_VERDICT_ALLOW {
		t.Errorf("the pod's IPv6 address does not get the answer learned through its IPv4 one: %v", d)
	}
	// Another pod did not resolve it; an ungoverned address is ignored.
	req.SrcIp = "10.0.0.2"
	if d, _ := client.Decide(ctx, req); d.GetVerdict() != tollgatev1.Verdict_VERDICT_DENY {
		t.Error("y/b reaches an address only y/a resolved")
	}
	if r, err := client.Learn(ctx, &tollgatev1.LearnRequest{PodAddr: []byte{10, 9, 9, 9}}); err != nil || r.GetGeneration() != resp.GetGeneration() {
		t.Errorf("Learn for a pod that is not governed: %v, %v", r, err)
	}
	if _, err := client.Learn(ctx, &tollgatev1.LearnRequest{PodAddr: []byte{1, 2, 3}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a bad pod_addr: %v, want InvalidArgument", err)
	}
}
