# Fuzzing. `go test -fuzz` takes one package and one target at a time.
# FuzzLoad (decider/source) is left out of the timed runs: its coverage map
# spans client-go's decoders and the fuzzer crawls; its seed corpus and
# TestLoadDirMutations run with the unit tests instead.
FUZZ_TARGETS := decider/engine:FuzzEngine decider/api:FuzzDecide queuer/packet:FuzzParse
FUZZTIME     ?= 2m

.PHONY: fuzz-short
fuzz-short: ## Run every fuzz target for a few seconds (part of make test).
	@set -eo pipefail; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} (./$${t%%:*}) for 5s"; \
		go test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime 5s -fuzzminimizetime 1x ./$${t%%:*}/ | tail -1; \
	done

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 2m) each.
	@set -eo pipefail; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} (./$${t%%:*}) for $(FUZZTIME)"; \
		go test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1x ./$${t%%:*}/ | tail -1; \
	done
