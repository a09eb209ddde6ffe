# Tollgate developer entry points. `make demo` and `make test` work on a fresh
# Debian machine as root: they install what they lack into .cache/ (ignored).

SHELL := /bin/bash
.DEFAULT_GOAL := build

CACHE   ?= $(CURDIR)/.cache
TOOLBIN := $(CACHE)/bin
BIN     := $(CURDIR)/bin
export PATH := $(TOOLBIN):$(PATH)
export GOFLAGS := -buildvcs=false

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION            := v1.9.4
KUSTOMIZE_VERSION          := v5.8.3

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/tollgate/tollgate/internal/version.Version=$(VERSION)

.PHONY: build
build: ## Build bin/decider and bin/queuer.
	@mkdir -p $(BIN)
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/decider ./decider
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/queuer ./queuer

# ---- tools ---------------------------------------------------------------
$(TOOLBIN)/buf:
	GOBIN=$(TOOLBIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLBIN)/protoc-gen-go:
	GOBIN=$(TOOLBIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLBIN)/protoc-gen-go-grpc:
	GOBIN=$(TOOLBIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLBIN)/grpcurl:
	GOBIN=$(TOOLBIN) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
$(TOOLBIN)/kustomize:
	GOBIN=$(TOOLBIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

.PHONY: tools
tools: $(TOOLBIN)/buf $(TOOLBIN)/protoc-gen-go $(TOOLBIN)/protoc-gen-go-grpc $(TOOLBIN)/grpcurl

# ---- generated code --------------------------------------------------------
.PHONY: proto
proto: $(TOOLBIN)/buf $(TOOLBIN)/protoc-gen-go $(TOOLBIN)/protoc-gen-go-grpc ## Regenerate proto/ Go code.
	buf generate

.PHONY: verify-proto
verify-proto: proto ## Fail if the committed generated code drifts from the .proto files.
	@git diff --exit-code -- proto/ || { echo "generated protobuf code drifted: run 'make proto' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- proto/)" || { git status --porcelain -- proto/; echo "untracked generated files: run 'make proto' and commit"; exit 1; }

# ---- checks and tests -------------------------------------------------------
GO_PACKAGES = $(shell go list ./... | grep -v -e /test/e2e -e /test/conformance -e /test/faults)

.PHONY: lint
lint: $(TOOLBIN)/buf ## gofmt, go vet and buf lint.
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	buf lint

.PHONY: verify
verify: verify-proto verify-manifests ## Generated code and manifests match their sources; modules verified.
	go mod verify

# Test runs pipe `go test -json` through hack/noskip, which prints the usual
# report and fails when a test skipped: make test must not pass by skipping
# a test it is meant to run. So the unit tests get what they need first.
.PHONY: unit
unit: e2e-deps kube-apiserver $(TOOLBIN)/grpcurl ## Unit and integration tests of every package, with the race detector (root).
	set -o pipefail; go test -json -race -count=1 -timeout 20m $(GO_PACKAGES) | go run ./hack/noskip

.PHONY: conformance
conformance: e2e-deps kube-apiserver ## The whole system on two simulated nodes against a real apiserver (root). RUN=<regexp> picks cases.
	@mkdir -p $(CACHE)
	go test -json -count=1 -timeout 30m ./test/conformance/ $(if $(RUN),-run '$(RUN)') 2>&1 | go run ./hack/noskip -v | \
		tee $(CACHE)/conformance.log | \
		grep -E --line-buffered '^(=== RUN|\s*--- |PASS|FAIL|ok|SKIP)|_test\.go:[0-9]+: |mismatch|observed|reachable|setup:' ; \
		st=("$${PIPESTATUS[@]}"); rc=$$(( st[0] | st[1] )); \
		[ $$rc = 0 ] || echo "full output: $(CACHE)/conformance.log"; exit $$rc

.PHONY: faults
faults: e2e-deps kube-apiserver ## Fault injection with real processes: apiserver outage, CRDs, queue overflow, queuer kill (root). V=1 for every step.
	set -o pipefail; go test -json -race -count=1 -timeout 15m ./test/faults/ | go run ./hack/noskip $(if $(V),-v)

.PHONY: test
test: e2e-deps tools plugins-deps kube-apiserver lint verify plugins-check unit fuzz-short faults conformance e2e-node-short ## Everything CI runs.

.PHONY: demo
demo: e2e-deps build ## Real packets, real verdicts: the example policies on a simulated node (as root).
	go run ./hack/demo --bin $(BIN)

.PHONY: bench
bench: ## Engine benchmarks (see docs/performance.md).
	go test -run '^$$' -bench . -benchmem ./decider/engine/

.PHONY: contract
contract: ## The decider conformance kit (cmd/tollgate-contract) against SOCKET, EXPECT=<expectations file> (default: deploy/examples loaded); without SOCKET, against Tollgate's decider and the example plugins.
	$(if $(SOCKET),go run ./cmd/tollgate-contract --socket $(SOCKET) $(if $(EXPECT),--expect $(EXPECT)) $(if $(NODE),--node $(NODE)),go test -count=1 -v ./test/contract/)

.PHONY: bench-knp
bench-knp: ## Side by side with kube-network-policies v1.1.1 (fetched from the module proxy): same objects, same verdicts checked, then ns/op and ratio.
	hack/bench-knp/run.sh

# Each area keeps its own targets in hack/mk/<area>.mk.
-include hack/mk/*.mk
