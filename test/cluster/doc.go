// Package cluster runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver (on loopback unless Options.BindAddress says otherwise),
// with RBAC, an admin token and further token users, ServiceAccount token
// issuing, and optionally the network-policy-api CRDs.
//
// By default there is no kubelet, scheduler or controller manager: tests
// create Nodes and Pods themselves and set their status with SetNodeStatus
// and SetPodStatus, and the ServiceAccount admission plugin is disabled
// because nothing creates the "default" ServiceAccount of new namespaces.
// With Options.ControllerManager and Options.Scheduler it runs those too,
// as the local cluster of test/localcluster does for its kubelet nodes.
// Connect attaches to an apiserver started elsewhere.
//
// kube-apiserver is built by hack/kube-apiserver/build.sh (make kube-apiserver)
// and found through $TOLLGATE_KUBE_APISERVER or that script. etcd comes from
// the system (Debian's etcd-server).
package cluster
