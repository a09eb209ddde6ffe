# Decider plugins, the stable contract and the Helm chart: the example
# plugins' npm packages, buf breaking against the released proto, helm lint
# and the chart's equivalence with deploy/install*.yaml.

HELM_VERSION   := v4.3.2
# The image of the last released tollgate.v1 proto (buf build output).
PROTO_BASELINE := proto/tollgate/v1/baseline.json
ALLOWLIST_DIR  := examples/deciders/allowlist
CHART          := deploy/helm/tollgate

$(TOOLBIN)/helm:
	GOBIN=$(TOOLBIN) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

# make tools installs helm with the others.
tools: $(TOOLBIN)/helm

.PHONY: helm
helm: $(TOOLBIN)/helm ## Install the pinned helm into .cache/bin.

# npm ci only when package.json or the lockfile changed since the last
# install; npm's download cache lives in .cache/npm.
$(ALLOWLIST_DIR)/node_modules/.package-lock.json: $(ALLOWLIST_DIR)/package.json $(ALLOWLIST_DIR)/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		echo "installing: nodejs npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(ALLOWLIST_DIR) && npm_config_cache=$(CACHE)/npm npm ci --no-audit --no-fund --prefer-offline --loglevel=error
	@touch $@

.PHONY: plugins-deps
plugins-deps: $(TOOLBIN)/helm $(ALLOWLIST_DIR)/node_modules/.package-lock.json ## Helm, Node.js and the allowlist plugin's npm packages (part of make test).

.PHONY: plugins-js-test
plugins-js-test: $(ALLOWLIST_DIR)/node_modules/.package-lock.json ## The allowlist plugin's own tests (node --test).
	@set -o pipefail; cd $(ALLOWLIST_DIR) && node --test test/*.test.js 2>&1 | tail -9

.PHONY: proto-breaking
proto-breaking: $(TOOLBIN)/buf ## buf breaking against the released proto ($(PROTO_BASELINE)), with a self-check.
	hack/proto/breaking.sh $(PROTO_BASELINE)

.PHONY: proto-baseline
proto-baseline: $(TOOLBIN)/buf ## At a release only: make the current proto the baseline of proto-breaking.
	buf build --exclude-source-info -o $(PROTO_BASELINE)

.PHONY: helm-lint
helm-lint: $(TOOLBIN)/helm ## helm lint --strict with default values, every policy API, and the plugin example's values.
	helm lint --strict $(CHART)
	helm lint --strict $(CHART) --set policyAPIs.adminNetworkPolicy=true,policyAPIs.clusterNetworkPolicy=true,queuer.failOpen=false,metrics.enabled=false
	helm lint --strict $(CHART) -f $(ALLOWLIST_DIR)/deploy/values.yaml

.PHONY: helm-verify
helm-verify: $(TOOLBIN)/helm ## The chart renders deploy/install*.yaml with default values; every value lands where it should.
	go test -count=1 ./deploy/helm/

.PHONY: plugins-check
plugins-check: proto-breaking helm-lint helm-verify plugins-js-test ## The checks above (part of make test).
