# Fuzzing. `go test -fuzz` takes one package and one target at a time: the
# engine against random policies and changes, Decide requests (served, and
# validated against an oracle), the manifest loader, and the packet parser.
FUZZ_TARGETS := decider/engine:FuzzEngine decider/engine:FuzzChangedIPs decider/engine:FuzzCompilerReuse \
	decider/api:FuzzDecide decider/api:FuzzDecideRequest \
	decider/source:FuzzLoad decider/source:FuzzLoadDir queuer/packet:FuzzParse
FUZZTIME     ?= 2m

.PHONY: fuzz-short
fuzz-short: ## Run every fuzz target for a few seconds (part of make test).
	@set -eo pipefail; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} (./$${t%%:*}) for 5s"; \
		out=$$(go test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime 5s -fuzzminimizetime 1x ./$${t%%:*}/ 2>&1) || \
			{ echo "$$out" | grep -v '^fuzz: elapsed' | tail -60; exit 1; }; \
		echo "$$out" | tail -1; \
	done

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 2m) each.
	@set -eo pipefail; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} (./$${t%%:*}) for $(FUZZTIME)"; \
		out=$$(go test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1x ./$${t%%:*}/ 2>&1) || \
			{ echo "$$out" | grep -v '^fuzz: elapsed' | tail -60; exit 1; }; \
		echo "$$out" | tail -1; \
	done
