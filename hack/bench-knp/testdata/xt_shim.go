package dataplane

// Added by Tollgate's hack/bench-knp/agent.sh to the copy of
// kube-network-policies it builds for the dataplane and scale benchmarks;
// it is not part of kube-network-policies.
//
// The benchmark machine's kernel has no nft queue expression
// (CONFIG_NFT_QUEUE is not set), so the agent's ruleset would be refused
// as a whole. agent.sh replaces every queue statement of the controller by
// xtQueue: the packet gets a mark bit and leaves the chain with accept, and
// an iptables rule the benchmark installs (table mangle, a later priority
// on the same hook) queues marked packets to the same queue number with the
// xt NFQUEUE target: the path Tollgate takes on this kernel too.

import (
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// xtMark is the packet-mark bit that stands for "queue this packet". The
// benchmark's iptables rules match it (test/bench.KNPMark).
const xtMark uint32 = 0x00040000

// xtQueue is "meta mark set meta mark | xtMark accept", four expressions
// that take the place of one queue expression in a rule.
var xtQueue = []expr.Any{
	&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
	&expr.Bitwise{
		SourceRegister: 1,
		DestRegister:   1,
		Len:            4,
		Mask:           binaryutil.NativeEndian.PutUint32(^xtMark),
		Xor:            binaryutil.NativeEndian.PutUint32(xtMark),
	},
	&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	&expr.Verdict{Kind: expr.VerdictAccept},
}
