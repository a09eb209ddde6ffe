# Whole-path benchmarks (issue 16): real packets through each enforcer a user
# could pick, on a simulated node against a real kube-apiserver, side by side
# with kube-network-policies' own agent (hack/bench-knp/agent.sh builds it
# from the Go module proxy). As root. Extra flags: BENCH_FLAGS='--rounds 5'.
# See docs/performance.md.
BENCH_FLAGS ?=

.PHONY: bench-dataplane
bench-dataplane: e2e-deps kube-apiserver ## New conn/s and first-packet latency through none, an accept-all NFQUEUE program, Tollgate and kube-network-policies' agents, 10 and 1,000 policies; regenerates docs/performance.md.
	CACHE=$(CACHE) go run ./hack/bench-dataplane --doc docs/performance.md $(BENCH_FLAGS)

.PHONY: bench-scale
bench-scale: e2e-deps kube-apiserver ## Policy change to enforced packet at 10k pods / 10k policies, memory at 10k and 100k pods, beside kube-network-policies' agent; regenerates docs/performance.md.
	CACHE=$(CACHE) go run ./hack/bench-scale --doc docs/performance.md $(BENCH_FLAGS)

.PHONY: bench-smoke
bench-smoke: e2e-deps kube-apiserver ## Each whole-path benchmark at a tiny size, so that none rots (part of make test; measures nothing).
	CACHE=$(CACHE) go run ./hack/bench-dataplane --smoke
	CACHE=$(CACHE) go run ./hack/bench-scale --smoke

test: bench-smoke
