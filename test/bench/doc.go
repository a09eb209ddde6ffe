// Package bench holds what the whole-path benchmarks share (make
// bench-dataplane, make bench-scale; hack/bench-dataplane and
// hack/bench-scale): the synthetic cluster loaded into a real
// kube-apiserver, starting and stopping the enforcers under test (Tollgate's
// decider and queuer, an accept-all NFQUEUE program, kube-network-policies'
// own agent), timed TCP connects from pod network namespaces, process
// memory and CPU from /proc, summary statistics, and the generated sections
// of docs/performance.md.
//
// Nodes and pods are test/netsim namespaces; the control plane is
// test/cluster. Everything here needs root and cleans up what it starts.
package bench
