# The referees: Kubernetes' "[sig-network] Netpol" e2e specs and
# network-policy-api's conformance suites (ClusterNetworkPolicy at v0.2.0,
# AdminNetworkPolicy and BaselineAdminNetworkPolicy at v0.1.7), run against
# Tollgate on the local cluster of cluster.mk. hack/referee builds and runs
# them; docs/conformance.md is what the last full run found.

REFEREE_DIR    := $(CACHE)/referee
REFEREE_BIN    := $(REFEREE_DIR)/bin
# Ginkgo processes for the Netpol specs: each runs one spec (9 pods) at a time.
NETPOL_PROCS   ?= 2
REFEREE_SUITES ?= netpol,cnp,anp

.PHONY: referee-build
referee-build: ## Build the upstream suites and agnhost from their Go modules (cached in $(REFEREE_BIN)).
	CACHE=$(CACHE) KUBE_VERSION=$(KUBE_VERSION) hack/referee/build.sh

.PHONY: referee-images
referee-images: referee-build ## Build the agnhost test image and load it into the running cluster.
	CACHE=$(CACHE) CLUSTER_DIR=$(CLUSTER_DIR) hack/referee/images.sh

# conformance-upstream-run runs the suites against a cluster that is up,
# with Tollgate's images and agnhost loaded. SHORT=1 runs the few cases of
# each that `make test` runs and leaves docs/ alone.
.PHONY: conformance-upstream-run
conformance-upstream-run:
	go run ./hack/referee run -kubeconfig $(CLUSTER_DIR)/control-plane/admin.kubeconfig -bin $(REFEREE_BIN) \
		-netpol-procs $(NETPOL_PROCS) -version $(IMAGE_TAG) -suites $(REFEREE_SUITES) -out $(REFEREE_DIR)/run \
		$(if $(SHORT),-short,-reports docs/conformance -doc docs/conformance.md -command 'make conformance-upstream')

.PHONY: conformance-upstream
conformance-upstream: ## The upstream suites on the real cluster: build, up, images, every suite, down; writes docs/conformance.md (root, about 2 hours).
	@start=$$(date +%s); rc=0; \
	$(MAKE) --no-print-directory referee-build || rc=$$?; \
	[ $$rc != 0 ] || $(MAKE) --no-print-directory cluster-up || rc=$$?; \
	[ $$rc != 0 ] || $(MAKE) --no-print-directory e2e-images referee-images || rc=$$?; \
	[ $$rc != 0 ] || $(MAKE) --no-print-directory conformance-upstream-run || rc=$$?; \
	$(MAKE) --no-print-directory cluster-down || { [ $$rc != 0 ] || rc=1; }; \
	echo "conformance-upstream: exit $$rc after $$(( $$(date +%s) - start ))s"; exit $$rc
