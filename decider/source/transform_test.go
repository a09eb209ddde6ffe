package source

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// equalJSON compares two values by their JSON encoding.
func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}

func TestTransformPassesOtherTypes(t *testing.T) {
	tomb := cache.DeletedFinalStateUnknown{Key: "x/a", Obj: &corev1.Pod{}}
	for name, f := range map[string]cache.TransformFunc{
		"pod": transformPod, "namespace": transformNamespace, "node": transformNode, "policy": transformPolicy,
	} {
		got, err := f(tomb)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, ok := got.(cache.DeletedFinalStateUnknown); !ok {
			t.Errorf("%s: tombstone became %T", name, got)
		}
	}
}

func TestTransformPolicyIdempotent(t *testing.T) {
	cnp := &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "c", Annotations: map[string]string{"a": "b"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec:       v1alpha2.ClusterNetworkPolicySpec{Tier: v1alpha2.BaselineTier, Priority: 4},
		Status:     v1alpha2.ClusterNetworkPolicyStatus{Conditions: []metav1.Condition{{Type: "Ready"}}},
	}
	want := &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "c"},
		Spec:       v1alpha2.ClusterNetworkPolicySpec{Tier: v1alpha2.BaselineTier, Priority: 4},
	}
	for i := range 2 {
		got, err := transformPolicy(cnp)
		if err != nil {
			t.Fatal(err)
		}
		if !equalJSON(t, got, want) {
			t.Errorf("round %d: %+v, want %+v", i, got, want)
		}
	}
}

func TestSameContent(t *testing.T) {
	pod := func(rv string, labels map[string]string, ip string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", ResourceVersion: rv, Labels: labels},
			Status:     corev1.PodStatus{PodIP: ip},
		}
	}
	np := func(rv string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "np", ResourceVersion: rv},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: types},
		}
	}
	tests := []struct {
		name     string
		old, new any
		want     bool
	}{
		{"pod version only", pod("1", map[string]string{"a": "b"}, "10.0.0.1"), pod("2", map[string]string{"a": "b"}, "10.0.0.1"), true},
		{"pod labels", pod("1", map[string]string{"a": "b"}, "10.0.0.1"), pod("2", map[string]string{"a": "c"}, "10.0.0.1"), false},
		{"pod IP", pod("1", nil, "10.0.0.1"), pod("2", nil, "10.0.0.2"), false},
		{"policy version only", np("1", networkingv1.PolicyTypeIngress), np("2", networkingv1.PolicyTypeIngress), true},
		{"policy spec", np("1", networkingv1.PolicyTypeIngress), np("2", networkingv1.PolicyTypeEgress), false},
		{"different types", pod("1", nil, ""), np("1"), false},
		{"unknown type", "a", "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oldJSON, _ := json.Marshal(tt.old)
			if got := sameContent(tt.old, tt.new); got != tt.want {
				t.Errorf("sameContent = %v, want %v", got, tt.want)
			}
			// The comparison must not touch the cached objects.
			if after, _ := json.Marshal(tt.old); string(after) != string(oldJSON) {
				t.Errorf("sameContent modified its argument: %s -> %s", oldJSON, after)
			}
		})
	}
}
