# End-to-end test infrastructure: a real control plane (etcd + kube-apiserver)
# and network-namespace simulated nodes. See test/cluster and test/netsim.

KUBE_VERSION        ?= v1.35.3
KUBE_APISERVER      := $(CACHE)/kube-apiserver/$(KUBE_VERSION)/kube-apiserver
# Debian packages the harness and the root tests need, as "command:package"
# pairs (socat: the dataplane's packet test; iptables also brings the
# iptables-nft commands the dataplane tests use).
E2E_DEPS            := etcd:etcd-server nft:nftables iptables:iptables conntrack:conntrack ip:iproute2 \
	sctp_test:lksctp-tools socat:socat

.PHONY: e2e-deps
e2e-deps: ## Install the system packages the e2e harness needs (Debian, as root).
	@missing=""; \
	for pair in $(E2E_DEPS); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

.PHONY: kube-apiserver
kube-apiserver: ## Build (once per version) the kube-apiserver used by the e2e harness.
	KUBE_VERSION=$(KUBE_VERSION) CACHE=$(CACHE) hack/kube-apiserver/build.sh

.PHONY: test-harness
test-harness: e2e-deps kube-apiserver ## Test the e2e harness packages themselves (needs root).
	set -o pipefail; TOLLGATE_KUBE_APISERVER=$(KUBE_APISERVER) go test -json -count=1 ./test/cluster/... ./test/netsim/... | \
		go run ./hack/noskip
