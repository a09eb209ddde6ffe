// Package kubenode runs real Kubernetes nodes on this machine, for the local
// cluster of `make cluster-up`: each node is a network namespace of its own
// with its own containerd (root, state, socket, runc root), CNI
// configuration (bridge + host-local + portmap from Debian's
// containernetworking-plugins), kubelet (root dir, cert dir, pod logs, and
// a cgroup root under which its QoS and pod cgroups live) and kube-proxy
// (iptables mode).
//
// containerd, kubelet and kube-proxy are started with
// `nsenter --net=/var/run/netns/NODE`, not `ip netns exec`, which would
// remount /sys and hide the cgroup hierarchies from the kubelet. Everything
// they add to netfilter (KUBE-* chains, Tollgate's table) therefore lands in
// the node's namespace, never in the host's.
//
// The host keeps one veth per node (host end named Config.HostVeth), through
// which the nodes reach the apiserver; ConnectNodes joins two nodes with a
// veth of their own and routes each one's pod CIDR and node IP to the other.
// Sweep removes everything a node leaves behind, however it ended: its
// processes and their containers, the pods' cni-* network namespaces, the
// kubelet's and containerd's mounts, cgroups, log links and the namespace.
package kubenode
