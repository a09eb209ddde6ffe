// Package faults injects faults into a running Tollgate and checks that it
// behaves as documented: the apiserver stopped and restarted, a CRD
// installed and removed under a running decider, the NFQUEUE queue
// overflowing, and the queuer killed and restarted. Every test runs the real
// decider and queuer binaries, with real packets in simulated nodes
// (test/netsim) or against a real etcd and kube-apiserver (test/cluster).
// The tests need root; the package holds no code besides them.
package faults
