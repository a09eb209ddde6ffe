package dataplane

import (
	"fmt"
	"time"

	"sigs.k8s.io/knftables"
)

// Names of the objects in table inet tollgate.
const (
	setSelected4 = "selected4"
	setSelected6 = "selected6"
	setAllow4    = "allow4"
	setDeny4     = "deny4"
	setAllow6    = "allow6"
	setDeny6     = "deny6"
	setCut4      = "cut4"
	setCut6      = "cut6"

	chainForward  = "forward"
	chainInput    = "input"
	chainClassify = "classify"
	chainDecide4  = "decide4"
	chainDecide6  = "decide6"
	chainToQueue  = "to-queue"

	// counterQueued counts the packets the table hands to NFQUEUE, so that
	// packets the kernel answers without the queuer (queue full in fail-open
	// mode, nobody listening) can be told apart from those it read.
	counterQueued = "queued"
)

// XTMark is the packet-mark bit that, in ModeXT, the nft table sets on
// packets to be queued and the iptables rules match. It avoids the bits of
// kube-proxy (0x4000, 0x8000), Calico (0xffff0000), Cilium (0x0f00) and
// Istio (0x539).
const XTMark uint32 = 0x00002000

// chainPriority runs our base chains just before the iptables mangle chains
// (priority mangle, -150), so that in ModeXT the mark is set before the
// iptables rule that tests it. Forward and input run after prerouting DNAT
// whatever their priority, so the chains see post-DNAT addresses.
const chainPriority = knftables.BaseChainPriority("mangle - 10")

// ndTypes are the ICMPv6 neighbour-discovery messages that always pass.
const ndTypes = "{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }"

// tuple4 and tuple6 are the verdict-cache keys: source, destination,
// protocol, destination port.
const (
	tuple4     = "ip saddr . ip daddr . meta l4proto . th dport"
	tuple6     = "ip6 saddr . ip6 daddr . meta l4proto . th dport"
	tupleType4 = "ipv4_addr . ipv4_addr . inet_proto . inet_service"
	tupleType6 = "ipv6_addr . ipv6_addr . inet_proto . inet_service"

	flow4     = "ip saddr . ip daddr . meta l4proto . th sport . th dport"
	flow6     = "ip6 saddr . ip6 daddr . meta l4proto . th sport . th dport"
	flowType4 = "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service"
	flowType6 = "ipv6_addr . ipv6_addr . inet_proto . inet_service . inet_service"
)

// CutTTL is how long the cut sets remember a cut flow. It outlasts TCP's
// retransmissions of an established connection (tcp_retries2 = 15, about
// 15.4 minutes), the packets that would otherwise reach the ruleset as
// new connections once conntrack forgot the flow.
const CutTTL = 20 * time.Minute

// desiredObject reports whether Setup defines the object of this kind
// ("chain", "set", ...) and name.
func desiredObject(kind, name string) bool {
	switch kind {
	case "chain":
		switch name {
		case chainForward, chainInput, chainClassify, chainDecide4, chainDecide6, chainToQueue:
			return true
		}
	case "counter":
		return name == counterQueued
	case "set":
		switch name {
		case setSelected4, setSelected6, setAllow4, setDeny4, setAllow6, setDeny6, setCut4, setCut6:
			return true
		}
	}
	return false
}

// queueStatement is the body of the to-queue chain for the mode.
func queueStatement(cfg Config, mode Mode) string {
	if mode == ModeXT {
		return fmt.Sprintf("meta mark set meta mark | 0x%08x", XTMark)
	}
	s := fmt.Sprintf("queue num %d", cfg.FirstQueue)
	var flags string
	if cfg.QueueCount > 1 {
		s = fmt.Sprintf("queue num %d-%d", cfg.FirstQueue, int(cfg.FirstQueue)+int(cfg.QueueCount)-1)
		flags = "fanout"
	}
	if cfg.FailOpen {
		if flags != "" {
			flags += ","
		}
		flags += "bypass"
	}
	if flags != "" {
		s += " " + flags
	}
	return s
}

// writeRuleset adds to tx the whole desired state of the table. stale lists
// objects of an existing table to delete. The selected-pod sets keep their
// elements; everything else is rebuilt.
func writeRuleset(tx *knftables.Transaction, cfg Config, mode Mode, stale map[string][]string) {
	tx.Add(&knftables.Table{
		Comment: knftables.PtrTo("Tollgate: queue new connections of policy-selected pods"),
	})

	hook := func(name string, h knftables.BaseChainHook) *knftables.Chain {
		return &knftables.Chain{
			Name:     name,
			Type:     knftables.PtrTo(knftables.FilterType),
			Hook:     knftables.PtrTo(h),
			Priority: knftables.PtrTo(chainPriority),
			Policy:   knftables.PtrTo(knftables.AcceptPolicy),
		}
	}
	chains := []*knftables.Chain{
		hook(chainForward, knftables.ForwardHook),
		hook(chainInput, knftables.InputHook),
		{Name: chainClassify},
		{Name: chainDecide4},
		{Name: chainDecide6},
		{Name: chainToQueue},
	}
	for _, c := range chains {
		tx.Add(c)
		tx.Flush(c)
	}
	for _, name := range stale["chain"] {
		tx.Flush(&knftables.Chain{Name: name})
	}
	for _, name := range stale["chain"] {
		tx.Delete(&knftables.Chain{Name: name})
	}
	for _, name := range stale["set"] {
		tx.Delete(&knftables.Set{Name: name})
	}
	for _, name := range stale["map"] {
		tx.Delete(&knftables.Map{Name: name})
	}

	// Added, never recreated: an adopted table keeps counting.
	tx.Add(&knftables.Counter{Name: counterQueued,
		Comment: knftables.PtrTo("packets sent to NFQUEUE")})
	tx.Add(&knftables.Set{Name: setSelected4, Type: "ipv4_addr",
		Comment: knftables.PtrTo("IPv4 addresses of local policy-selected pods")})
	tx.Add(&knftables.Set{Name: setSelected6, Type: "ipv6_addr",
		Comment: knftables.PtrTo("IPv6 addresses of local policy-selected pods")})
	// The cut sets outlive generations and queuer restarts: a flow cut
	// before either stays cut.
	for _, c := range []struct{ name, typ string }{{setCut4, flowType4}, {setCut6, flowType6}} {
		tx.Add(&knftables.Set{Name: c.name, Type: c.typ,
			Flags:   []knftables.SetFlag{knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(CutTTL),
			Comment: knftables.PtrTo("flows cut after a policy change: src . dst . proto . sport . dport")})
	}
	// Recreate the verdict sets: a plain add would keep an old timeout, and
	// old verdicts belong to a decider generation we no longer know.
	verdictSet := func(name, typ string) *knftables.Set {
		return &knftables.Set{Name: name, Type: typ,
			Flags:   []knftables.SetFlag{knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(cfg.VerdictTTL / time.Second * time.Second)}
	}
	for _, s := range []*knftables.Set{
		verdictSet(setAllow4, tupleType4), verdictSet(setDeny4, tupleType4),
		verdictSet(setAllow6, tupleType6), verdictSet(setDeny6, tupleType6),
	} {
		tx.Add(s)
		tx.Delete(s)
		tx.Add(s)
	}

	rule := func(chain, text string) {
		tx.Add(&knftables.Rule{Chain: chain, Rule: text})
	}
	rule(chainForward, "jump "+chainClassify)
	rule(chainInput, "jump "+chainClassify)

	rule(chainClassify, "ct state established,related accept")
	rule(chainClassify, "icmpv6 type "+ndTypes+" accept")
	rule(chainClassify, "ct state untracked accept")
	rule(chainClassify, "ip saddr @"+setSelected4+" goto "+chainDecide4)
	rule(chainClassify, "ip daddr @"+setSelected4+" goto "+chainDecide4)
	rule(chainClassify, "ip6 saddr @"+setSelected6+" goto "+chainDecide6)
	rule(chainClassify, "ip6 daddr @"+setSelected6+" goto "+chainDecide6)

	// A cut flow's packets after conntrack forgot it: any but a fresh TCP
	// SYN (a new connection that happens to reuse the ports) is dropped,
	// whichever end speaks first.
	rule(chainDecide4, flow4+" @"+setCut4+" meta l4proto != tcp drop")
	rule(chainDecide4, flow4+" @"+setCut4+" tcp flags & (syn | ack) != syn drop")
	rule(chainDecide4, tuple4+" @"+setAllow4+" accept")
	rule(chainDecide4, tuple4+" @"+setDeny4+" drop")
	rule(chainDecide4, "goto "+chainToQueue)
	rule(chainDecide6, flow6+" @"+setCut6+" meta l4proto != tcp drop")
	rule(chainDecide6, flow6+" @"+setCut6+" tcp flags & (syn | ack) != syn drop")
	rule(chainDecide6, tuple6+" @"+setAllow6+" accept")
	rule(chainDecide6, tuple6+" @"+setDeny6+" drop")
	rule(chainDecide6, "goto "+chainToQueue)

	rule(chainToQueue, "counter name "+counterQueued+" "+queueStatement(cfg, mode))
}
