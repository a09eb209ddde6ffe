# The local cluster: a control plane and two kubelet nodes on this machine
# (test/localcluster), Tollgate's images built from the Dockerfile with
# buildah and loaded into the nodes, and the end-to-end suite on real pods
# (test/e2enode). Root on Debian; see README.md, "A real cluster".

CLUSTER_DIR     ?= $(CACHE)/cluster
KUBE_COMPONENTS := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
kube_bin         = $(CACHE)/$(1)/$(KUBE_VERSION)/$(1)
CLUSTER_BIN     := $(CACHE)/bin/tollgate-cluster
PAUSE_IMAGE     := registry.k8s.io/pause:3.10.1
# The test pods' image: one static binary serving and probing TCP, UDP and
# SCTP (test/e2enode/netserver), FROM scratch.
E2E_SERVER_IMAGE ?= tollgate-e2e-netserver:e2e
# Debian packages the cluster and the image builds need, as "command or
# file:package" pairs.
CLUSTER_DEPS    := containerd:containerd runc:runc ctr:containerd /usr/lib/cni/bridge:containernetworking-plugins \
	buildah:buildah mmdebstrap:mmdebstrap nsenter:util-linux gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
IMAGE_SH         = CACHE=$(CACHE) CLUSTER_DIR=$(CLUSTER_DIR) KUBE_VERSION=$(KUBE_VERSION) hack/image/image.sh

.PHONY: cluster-deps
cluster-deps: e2e-deps ## Install the Debian packages of the local cluster and image builds (as root).
	@missing=""; \
	for pair in $(CLUSTER_DEPS); do \
		what="$${pair%%:*}"; \
		if [ "$${what#/}" != "$$what" ]; then [ -e "$$what" ] && continue; \
		else command -v "$$what" >/dev/null 2>&1 && continue; fi; \
		missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

.PHONY: kube-binaries
kube-binaries: ## Build (once per version) every Kubernetes component the local cluster runs.
	KUBE_VERSION=$(KUBE_VERSION) CACHE=$(CACHE) hack/kube-apiserver/build.sh $(KUBE_COMPONENTS)

.PHONY: $(CLUSTER_BIN)
$(CLUSTER_BIN):
	@mkdir -p $(dir $@)
	go build -o $@ ./hack/cluster

.PHONY: cluster-up
cluster-up: cluster-deps kube-binaries $(CLUSTER_BIN) ## Start the local two-node cluster (kubeconfig: $(CLUSTER_DIR)/control-plane/admin.kubeconfig).
	$(IMAGE_SH) pause
	$(CLUSTER_BIN) up -dir $(CLUSTER_DIR) -sandbox-image $(PAUSE_IMAGE) \
		$(foreach c,$(KUBE_COMPONENTS),-$(c) $(call kube_bin,$(c)))
	$(IMAGE_SH) import $(PAUSE_IMAGE)

.PHONY: cluster-down
cluster-down: $(CLUSTER_BIN) ## Stop the local cluster and remove everything it left (idempotent).
	$(CLUSTER_BIN) down -dir $(CLUSTER_DIR)

.PHONY: e2e-images
e2e-images: image ## Build the test images and load them, with Tollgate's, into the running cluster.
	@mkdir -p $(CACHE)/e2e
	CGO_ENABLED=0 go build -trimpath -o $(CACHE)/e2e/netserver ./test/e2enode/netserver
	$(IMAGE_SH) binary $(E2E_SERVER_IMAGE) $(CACHE)/e2e/netserver
	$(IMAGE_SH) import $(DECIDER_IMAGE) $(QUEUER_IMAGE) $(E2E_SERVER_IMAGE)

E2E_NODE_ENV = TOLLGATE_CLUSTER_DIR=$(CLUSTER_DIR) TOLLGATE_DECIDER_IMAGE=$(DECIDER_IMAGE) \
	TOLLGATE_QUEUER_IMAGE=$(QUEUER_IMAGE) TOLLGATE_E2E_SERVER_IMAGE=$(E2E_SERVER_IMAGE)

# e2e-node-run runs the suite against a cluster that is up; SHORT=1 runs the
# short version.
.PHONY: e2e-node-run
e2e-node-run: ## Run test/e2enode against the running local cluster (SHORT=1 for the short version, RUN=<regexp>).
	@mkdir -p $(CACHE)
	$(E2E_NODE_ENV) go test -json -count=1 -timeout 40m $(if $(SHORT),-short) ./test/e2enode/ $(if $(RUN),-run '$(RUN)') 2>&1 | \
		go run ./hack/noskip -v | tee $(CACHE)/e2e-node.log | \
		grep -E --line-buffered '^(=== RUN|\s*--- |PASS|FAIL|ok|SKIP)|_test\.go:[0-9]+: |setup:' ; \
		st=("$${PIPESTATUS[@]}"); rc=$$(( st[0] | st[1] )); \
		[ $$rc = 0 ] || echo "full output: $(CACHE)/e2e-node.log"; exit $$rc

# One cycle: up, images, suite, down (always, keeping the suite's exit code).
# $(1): arguments of e2e-node-run; $(2): more image targets; $(3): a further
# run against the same cluster (make arguments), after the suite.
define e2e_node_cycle
	@start=$$(date +%s); rc=0; \
	$(MAKE) --no-print-directory cluster-up || rc=$$?; \
	[ $$rc != 0 ] || $(MAKE) --no-print-directory e2e-images $(2) || rc=$$?; \
	[ $$rc != 0 ] || $(MAKE) --no-print-directory e2e-node-run $(1) || rc=$$?; \
	[ $$rc != 0 ] || [ -z "$(strip $(3))" ] || $(MAKE) --no-print-directory $(3) || rc=$$?; \
	$(MAKE) --no-print-directory cluster-down || { [ $$rc != 0 ] || rc=1; }; \
	echo "e2e-node: exit $$rc after $$(( $$(date +%s) - start ))s"; exit $$rc
endef

.PHONY: e2e-node
e2e-node: ## Real cluster: up, images from the Dockerfile, every install flavour and its cases on kubelet pods, down (root). RUN=<regexp> picks tests.
	$(call e2e_node_cycle,)

.PHONY: e2e-node-short
e2e-node-short: referee-build ## The short version of e2e-node, and a few cases of each upstream suite (part of make test).
	$(call e2e_node_cycle,SHORT=1,referee-images,conformance-upstream-run SHORT=1)
