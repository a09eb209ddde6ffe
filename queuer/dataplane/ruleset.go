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
	setDNS4      = "dns4"
	setDNS6      = "dns6"
	setStale4    = "stale4"
	setStale6    = "stale6"

	chainForward        = "forward"
	chainInput          = "input"
	chainForwardVerdict = "forward-verdict"
	chainInputVerdict   = "input-verdict"
	chainClassify       = "classify"
	chainDecide4        = "decide4"
	chainDecide6        = "decide6"
	chainToQueue        = "to-queue"
	chainLearn          = "learn"
	chainOutput         = "output"
	chainOutputVerdict  = "output-verdict"
	chainDNSReplies     = "dns-replies"

	// counterQueued counts the packets the table hands to NFQUEUE, so that
	// packets the kernel answers without the queuer (queue full in fail-open
	// mode, nobody listening) can be told apart from those it read.
	counterQueued = "queued"
)

// Packet-mark bits of the queue path. They avoid the bits of kube-proxy
// (0x4000, 0x8000), Calico (0xffff0000), Cilium (0x0f00) and Istio (0x539).
//
// XTMark is the bit that the nft table sets on packets it queues and that,
// in ModeXT, the iptables rule matches. The queuer answers a packet with
// NF_ACCEPT and a mark whose VerdictMask bits say what the kernel verdict
// cache should learn: MarkLearnAllow (add the tuple to allowN, let the
// packet on) or MarkLearnDeny (add it to denyN, drop the packet). The
// chains at VerdictPriority do that, then clear the bits; any other value
// (XTMark alone, or nothing) only has its bits cleared.
//
// DNSMark is the bit that, in ModeXT, the nft table sets on DNS answers
// for pods whose answers are learned, and the iptables rule of the DNS
// queue matches.
const (
	XTMark         uint32 = 0x00002000
	MarkLearnAllow uint32 = 0x00001000
	MarkLearnDeny  uint32 = 0x00003000
	VerdictMask    uint32 = 0x00003000
	DNSMark        uint32 = 0x00000040
)

// CtMarkJudged is the conntrack-mark bit set on every connection whose new
// packets reach decide4/decide6: the connections of selected pods. The
// flow cutter lists only the entries that carry it (the kernel filters the
// dump), so a policy change costs in proportion to the flows of selected
// pods, not to the whole conntrack table.
const CtMarkJudged uint32 = 0x00100000

// chainPriority runs our base chains just before the iptables mangle chains
// (priority mangle, -150), so that in ModeXT the mark is set before the
// iptables rule that tests it. Forward and input run after prerouting DNAT
// whatever their priority, so the chains see post-DNAT addresses.
const chainPriority = knftables.BaseChainPriority("mangle - 10")

// VerdictPriority runs the learn chains after the queue in both modes: a
// packet the queuer accepts resumes at the next hook entry, after our
// classify chain (ModeNFT) or after iptables' mangle chain (ModeXT).
const VerdictPriority = knftables.BaseChainPriority("mangle + 10")

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

// CutTTL is how long the cut sets remember a cut flow at most. It outlasts
// TCP's retransmissions of an established connection (tcp_retries2 = 15,
// about 15.4 minutes), the packets that would otherwise reach the ruleset as
// new connections once conntrack forgot the flow. The queuer removes a cut
// sooner when policy allows the flow again.
const CutTTL = 20 * time.Minute

// desiredObject reports whether Setup defines the object of this kind
// ("chain", "set", ...) and name.
func desiredObject(kind, name string) bool {
	switch kind {
	case "chain":
		switch name {
		case chainForward, chainInput, chainForwardVerdict, chainInputVerdict,
			chainClassify, chainDecide4, chainDecide6, chainToQueue, chainLearn,
			chainOutput, chainOutputVerdict, chainDNSReplies:
			return true
		}
	case "counter":
		return name == counterQueued
	case "set":
		switch name {
		case setSelected4, setSelected6, setAllow4, setDeny4, setAllow6, setDeny6, setCut4, setCut6, setDNS4, setDNS6,
			setStale4, setStale6:
			return true
		}
	}
	return false
}

// queueStatement is the body of the to-queue chain for the mode.
func queueStatement(cfg Config, mode Mode) string {
	mark := fmt.Sprintf("meta mark set meta mark | 0x%08x", XTMark)
	if mode == ModeXT {
		return mark
	}
	s := mark + " queue num " + fmt.Sprint(cfg.FirstQueue)
	var flags string
	if cfg.QueueCount > 1 {
		s = fmt.Sprintf("%s queue num %d-%d", mark, cfg.FirstQueue, int(cfg.FirstQueue)+int(cfg.QueueCount)-1)
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

// dnsQueueStatement sends a DNS answer to the DNS queue: in ModeXT by the
// mark the iptables rule matches. The queue always has the bypass flag: an
// answer is let through unlearned when no queuer reads it.
func dnsQueueStatement(cfg Config, mode Mode) string {
	mark := fmt.Sprintf("meta mark set meta mark | 0x%08x", DNSMark)
	if mode == ModeXT {
		return mark
	}
	return fmt.Sprintf("%s queue num %d bypass", mark, cfg.DNSQueue)
}

// writeRuleset adds to tx the whole desired state of the table. stale lists
// objects of an existing table to delete. The selected-pod, verdict and cut
// sets keep their elements; with recreate, the verdict sets are deleted and
// made anew (an existing set keeps its old timeout when added again, so a
// changed timeout needs that). Everything else is rebuilt.
func writeRuleset(tx *knftables.Transaction, cfg Config, mode Mode, stale map[string][]string, recreate bool) {
	tx.Add(&knftables.Table{
		Comment: knftables.PtrTo("Tollgate: queue new connections of policy-selected pods"),
	})

	hook := func(name string, h knftables.BaseChainHook, prio knftables.BaseChainPriority) *knftables.Chain {
		return &knftables.Chain{
			Name:     name,
			Type:     knftables.PtrTo(knftables.FilterType),
			Hook:     knftables.PtrTo(h),
			Priority: knftables.PtrTo(prio),
			Policy:   knftables.PtrTo(knftables.AcceptPolicy),
		}
	}
	chains := []*knftables.Chain{
		hook(chainForward, knftables.ForwardHook, chainPriority),
		hook(chainInput, knftables.InputHook, chainPriority),
		hook(chainForwardVerdict, knftables.ForwardHook, VerdictPriority),
		hook(chainInputVerdict, knftables.InputHook, VerdictPriority),
		hook(chainOutput, knftables.OutputHook, chainPriority),
		hook(chainOutputVerdict, knftables.OutputHook, VerdictPriority),
		{Name: chainClassify},
		{Name: chainDecide4},
		{Name: chainDecide6},
		{Name: chainToQueue},
		{Name: chainLearn},
		{Name: chainDNSReplies},
	}
	for _, c := range chains {
		// Adding an existing chain changes nothing, and flushing keeps its
		// hook: base chains are never recreated, so no packet waiting in a
		// queue is lost and no hook is ever missing.
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
	tx.Add(&knftables.Set{Name: setDNS4, Type: "ipv4_addr",
		Comment: knftables.PtrTo("IPv4 addresses of local pods whose DNS answers are learned")})
	tx.Add(&knftables.Set{Name: setDNS6, Type: "ipv6_addr",
		Comment: knftables.PtrTo("IPv6 addresses of local pods whose DNS answers are learned")})
	// The cut sets outlive generations and queuer restarts: a flow cut
	// before either stays cut until policy allows it again.
	for _, c := range []struct{ name, typ string }{{setCut4, flowType4}, {setCut6, flowType6}} {
		tx.Add(&knftables.Set{Name: c.name, Type: c.typ,
			Flags:   []knftables.SetFlag{knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(CutTTL),
			Size:    knftables.PtrTo(uint64(cfg.CutSetSize)),
			Comment: knftables.PtrTo("flows cut after a policy change: src . dst . proto . sport . dport")})
	}
	// The verdict sets are the kernel tier of the verdict cache, learned by
	// the learn chain from the queuer's answers; they survive a queuer
	// restart, so that the node keeps its cached verdicts meanwhile.
	for _, v := range []struct{ name, typ string }{
		{setAllow4, tupleType4}, {setDeny4, tupleType4}, {setAllow6, tupleType6}, {setDeny6, tupleType6},
	} {
		set := &knftables.Set{Name: v.name, Type: v.typ,
			Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(cfg.VerdictTTL / time.Second * time.Second),
			Size:    knftables.PtrTo(uint64(cfg.VerdictCacheSize))}
		tx.Add(set)
		if recreate {
			tx.Delete(set)
			tx.Add(set)
		}
	}
	// The stale sets hold the addresses whose cached verdicts a policy
	// change made stale, until the queuer has deleted those verdicts
	// (deleting elements waits for the kernel's RCU grace period, adding
	// them does not). They time out with the verdict sets' timeout, so an
	// address leaves them no sooner than a verdict cached before the
	// change could still answer.
	for _, v := range []struct{ name, typ string }{{setStale4, "ipv4_addr"}, {setStale6, "ipv6_addr"}} {
		set := &knftables.Set{Name: v.name, Type: v.typ,
			Flags:   []knftables.SetFlag{knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(cfg.VerdictTTL / time.Second * time.Second),
			Comment: knftables.PtrTo("addresses whose cached verdicts are stale: their packets skip the verdict sets")}
		tx.Add(set)
		if recreate {
			tx.Delete(set)
			tx.Add(set)
		}
	}

	rule := func(chain, text string) {
		tx.Add(&knftables.Rule{Chain: chain, Rule: text})
	}
	// The mark bits are Tollgate's on this node: a packet that enters with
	// any of them already set (the kernel sends MLD reports with a stray
	// mark; another agent may use a bit) has them cleared first. Otherwise
	// the iptables rules of ModeXT would queue it, and the learn chain
	// would take a foreign 0x1000 for a verdict and cache an allow that no
	// decider gave.
	for _, c := range []string{chainForward, chainInput, chainOutput} {
		rule(c, fmt.Sprintf("meta mark & 0x%08x != 0 meta mark set meta mark & 0x%08x",
			VerdictMask|DNSMark, ^(VerdictMask|DNSMark)))
	}
	rule(chainForward, "jump "+chainClassify)
	rule(chainInput, "jump "+chainClassify)
	rule(chainOutput, "jump "+chainDNSReplies)

	// DNS answers to pods whose answers are learned go to the DNS queue
	// (ahead of everything: they are replies of established flows). Only
	// replies: an unsolicited packet from port 53 is an ordinary new
	// connection. The output hook catches answers from the node itself
	// (NodeLocal DNSCache, host-network resolvers).
	for _, d := range []struct{ family, set string }{{"ip", setDNS4}, {"ip6", setDNS6}} {
		rule(chainDNSReplies, fmt.Sprintf("ct direction reply %s daddr @%s meta l4proto { tcp, udp } th sport 53 %s",
			d.family, d.set, dnsQueueStatement(cfg, mode)))
	}
	rule(chainClassify, "jump "+chainDNSReplies)
	rule(chainClassify, "ct state established,related accept")
	rule(chainClassify, "icmpv6 type "+ndTypes+" accept")
	rule(chainClassify, "ip saddr @"+setSelected4+" goto "+chainDecide4)
	rule(chainClassify, "ip daddr @"+setSelected4+" goto "+chainDecide4)
	rule(chainClassify, "ip6 saddr @"+setSelected6+" goto "+chainDecide6)
	rule(chainClassify, "ip6 daddr @"+setSelected6+" goto "+chainDecide6)

	for _, d := range []struct{ chain, family, flow, tuple, cut, stale, allow, deny string }{
		{chainDecide4, "ip", flow4, tuple4, setCut4, setStale4, setAllow4, setDeny4},
		{chainDecide6, "ip6", flow6, tuple6, setCut6, setStale6, setAllow6, setDeny6},
	} {
		// Every connection judged here is one of a selected pod: the flow
		// cutter finds them by this bit. Untracked and invalid packets
		// have no entry; the statement then ends this rule only.
		rule(d.chain, fmt.Sprintf("ct mark set ct mark | 0x%08x", CtMarkJudged))
		// A cut flow's packets after conntrack forgot it: any but a fresh
		// TCP SYN (a new connection that happens to reuse the ports) is
		// dropped, whichever end speaks first.
		rule(d.chain, d.flow+" @"+d.cut+" meta l4proto != tcp drop")
		rule(d.chain, d.flow+" @"+d.cut+" tcp flags & (syn | ack) != syn drop")
		// A verdict cached before the last policy change may be stale
		// until the queuer has deleted it: ask the queue.
		rule(d.chain, d.family+" saddr @"+d.stale+" goto "+chainToQueue)
		rule(d.chain, d.family+" daddr @"+d.stale+" goto "+chainToQueue)
		rule(d.chain, d.tuple+" @"+d.allow+" accept")
		rule(d.chain, d.tuple+" @"+d.deny+" drop")
		rule(d.chain, "goto "+chainToQueue)
	}

	rule(chainToQueue, "counter name "+counterQueued+" "+queueStatement(cfg, mode))

	// After the queue: learn what the queuer's mark says, then clear our
	// bits so that nothing after us sees them. Packets without them leave
	// at once. `update` adds the tuple or, if a concurrent miss of the same
	// tuple learned it first, renews its timeout; when the set is full it
	// learns nothing and the rule ends there.
	for _, c := range []string{chainForwardVerdict, chainInputVerdict, chainOutputVerdict} {
		rule(c, fmt.Sprintf("meta mark & 0x%08x != 0 jump %s", VerdictMask|DNSMark, chainLearn))
	}
	learn := func(bits uint32, family, set, tuple string) {
		rule(chainLearn, fmt.Sprintf("meta mark & 0x%08x == 0x%08x meta nfproto %s update @%s { %s }",
			VerdictMask, bits, family, set, tuple))
	}
	learn(MarkLearnAllow, "ipv4", setAllow4, tuple4)
	learn(MarkLearnAllow, "ipv6", setAllow6, tuple6)
	learn(MarkLearnDeny, "ipv4", setDeny4, tuple4)
	learn(MarkLearnDeny, "ipv6", setDeny6, tuple6)
	rule(chainLearn, fmt.Sprintf("meta mark & 0x%08x == 0x%08x drop", VerdictMask, MarkLearnDeny))
	rule(chainLearn, fmt.Sprintf("meta mark set meta mark & 0x%08x", ^(VerdictMask|DNSMark)))
}
