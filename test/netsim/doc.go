// Package netsim simulates Kubernetes nodes and pods with Linux network
// namespaces, for end-to-end tests that need real packets. It needs root and
// the ip and nft commands.
//
// Each node is a namespace with forwarding on and its node IP on its
// loopback device; each pod is a namespace joined to its node by a veth pair
// ("routed veth", as Calico does): the pod's eth0 carries its /32 and /128
// addresses and default routes via the link-local gateways 169.254.1.1 and
// fe80::1, which live on the node's end of the pair, and the node has host
// routes to the pod. ConnectNodes joins two nodes with a veth link and routes
// each node's pod CIDRs and node IP to the other.
//
// Small TCP, UDP and SCTP servers run inside pod namespaces as goroutines on
// sockets opened there, and Probe opens connections from any namespace.
// SCTP is emulated on raw sockets (INIT answered by INIT-ACK) when the kernel
// has no SCTP stack, so netfilter and conntrack still see real SCTP packets.
package netsim
