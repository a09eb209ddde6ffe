package netsim

import (
	"fmt"
	"net/netip"
)

// dnatTable is the nft table AddDNAT fills, named after what it imitates.
const dnatTable = "kubeproxy-sim"

// AddDNAT makes node translate connections to vip:port into podIP:podPort,
// as kube-proxy does for a ClusterIP Service: a dnat rule in the nat
// prerouting hook (traffic from pods and other nodes) and the output hook
// (traffic from the node itself), in table inet kubeproxy-sim.
func (t *Topology) AddDNAT(node *Node, proto Proto, vip netip.Addr, port uint16, podIP netip.Addr, podPort uint16) error {
	l4, err := proto.nftName()
	if err != nil {
		return err
	}
	if vip.Is4() != podIP.Is4() {
		return fmt.Errorf("dnat %s to %s: address families differ", vip, podIP)
	}
	family, target := "ip", podIP.String()
	if vip.Is6() {
		family, target = "ip6", "["+podIP.String()+"]"
	}
	t.mu.Lock()
	create := !node.dnatTable
	node.dnatTable = true
	t.mu.Unlock()
	script := ""
	if create {
		script += fmt.Sprintf("add table inet %s\n", dnatTable)
		script += fmt.Sprintf("add chain inet %s prerouting { type nat hook prerouting priority -100; }\n", dnatTable)
		script += fmt.Sprintf("add chain inet %s output { type nat hook output priority -100; }\n", dnatTable)
	}
	rule := fmt.Sprintf("%s daddr %s meta l4proto %s th dport %d dnat %s to %s:%d", family, vip, l4, port, family, target, podPort)
	script += fmt.Sprintf("add rule inet %s prerouting %s\n", dnatTable, rule)
	script += fmt.Sprintf("add rule inet %s output %s\n", dnatTable, rule)
	if _, err := execInput(node.NS, script, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("add dnat %s/%s:%d -> %s:%d on node %s: %w", proto, vip, port, podIP, podPort, node.Name, err)
	}
	// Nodes have no default route, so the node's own connections to the VIP
	// would fail before reaching the output hook; a route via lo gives them a
	// first route, and the dnat rule reroutes them.
	if err := IPBatch(node.NS, fmt.Sprintf("route replace %s dev lo", vip)); err != nil {
		return fmt.Errorf("route vip %s on node %s: %w", vip, node.Name, err)
	}
	return nil
}
