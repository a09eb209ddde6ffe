package networkpolicy

// kube-network-policies' side of hack/bench-knp. run.sh copies this file,
// and decider/engine/cmp_cluster_test.go (the shared cluster), into a copy
// of kube-network-policies' pkg/networkpolicy. It wires the per-packet path
// the way its standard command does (an informer-backed pod IP resolver, a
// pod info provider, StandardNetworkPolicy in a PolicyEngine), filling the
// informers' indexers directly instead of starting them.

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/kube-network-policies/pkg/api"
	"sigs.k8s.io/kube-network-policies/pkg/network"
	"sigs.k8s.io/kube-network-policies/pkg/podinfo"
)

type cmpSetup struct {
	engine   *PolicyEngine
	np       *StandardNetworkPolicy
	provider *podinfo.InformerProvider
	packets  []*network.Packet
}

func newCmpSetup(tb testing.TB, pods, policies int) *cmpSetup {
	tb.Helper()
	o := cmpCluster(pods, policies)
	factory := informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)
	nsInf := factory.Core().V1().Namespaces()
	podInf := factory.Core().V1().Pods()
	npInf := factory.Networking().V1().NetworkPolicies()
	resolver, err := podinfo.NewInformerResolver(podInf.Informer())
	if err != nil {
		tb.Fatal(err)
	}
	provider := podinfo.NewInformerProvider(podInf, nsInf, nil, []podinfo.IPResolver{resolver})
	np := NewStandardNetworkPolicy("node-0", nsInf, podInf, npInf)
	for _, x := range o.Namespaces {
		if err := nsInf.Informer().GetIndexer().Add(x); err != nil {
			tb.Fatal(err)
		}
	}
	for _, x := range o.Pods {
		if err := podInf.Informer().GetIndexer().Add(x); err != nil {
			tb.Fatal(err)
		}
	}
	for _, x := range o.NetworkPolicies {
		if err := npInf.Informer().GetIndexer().Add(x); err != nil {
			tb.Fatal(err)
		}
	}
	s := &cmpSetup{engine: NewPolicyEngine(provider, []api.PolicyEvaluator{np}), np: np, provider: provider}
	for i, t := range cmpTuples(pods) {
		s.packets = append(s.packets, &network.Packet{
			ID: uint32(i), SrcIP: net.IP(t.Src.AsSlice()), DstIP: net.IP(t.Dst.AsSlice()),
			Proto: v1.ProtocolTCP, SrcPort: 40000 + i, DstPort: int(t.DstPort),
		})
	}
	return s
}

// BenchmarkCmpEvaluatePacket is the call its dataplane makes per queued
// packet: both ends' pod info by IP, the egress pipeline, then ingress.
func BenchmarkCmpEvaluatePacket(b *testing.B) {
	for _, sz := range cmpSizes {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			s := newCmpSetup(b, sz.pods, sz.policies)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := s.engine.EvaluatePacket(ctx, s.packets[i%len(s.packets)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCmpDumpVerdicts writes the verdicts to
// $VERDICT_DIR/theirs-<pods>-<policies>.txt in the format of
// decider/engine's BenchmarkCmpDumpVerdicts.
func BenchmarkCmpDumpVerdicts(b *testing.B) {
	out := os.Getenv("VERDICT_DIR")
	if out == "" {
		b.Skip("VERDICT_DIR unset")
	}
	dir := func(v api.Verdict) string {
		switch v {
		case api.VerdictAccept:
			return "A"
		case api.VerdictDeny:
			return "D"
		}
		return "-" // no NetworkPolicy selects that end
	}
	ctx := context.Background()
	for b.Loop() {
		for _, sz := range cmpSizes {
			s := newCmpSetup(b, sz.pods, sz.policies)
			f, err := os.Create(filepath.Join(out, fmt.Sprintf("theirs-%d-%d.txt", sz.pods, sz.policies)))
			if err != nil {
				b.Fatal(err)
			}
			for i, p := range s.packets {
				ok, err := s.engine.EvaluatePacket(ctx, p)
				if err != nil {
					b.Fatal(err)
				}
				src, _ := s.provider.GetPodInfoByIP(p.SrcIP.String())
				dst, _ := s.provider.GetPodInfoByIP(p.DstIP.String())
				eg, _ := s.np.EvaluateEgress(ctx, p, src, dst)
				in, _ := s.np.EvaluateIngress(ctx, p, src, dst)
				fmt.Fprintf(f, "%d %s %s %d allowed=%v egress=%s ingress=%s\n", i, p.SrcIP, p.DstIP, p.DstPort, ok, dir(eg), dir(in))
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
