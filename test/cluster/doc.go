// Package cluster runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver on loopback, with RBAC, an admin token, ServiceAccount token
// issuing, and optionally the network-policy-api CRDs.
//
// There is no kubelet, scheduler or controller manager: tests create Nodes and
// Pods themselves and set their status with SetNodeStatus and SetPodStatus.
// The ServiceAccount admission plugin is disabled because nothing creates the
// "default" ServiceAccount of new namespaces.
//
// kube-apiserver is built by hack/kube-apiserver/build.sh (make kube-apiserver)
// and found through $TOLLGATE_KUBE_APISERVER or that script. etcd comes from
// the system (Debian's etcd-server).
package cluster
