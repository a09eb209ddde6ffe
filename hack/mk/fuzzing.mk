# Fuzzing. `go test -fuzz` takes one package and one target at a time: the
# engine against random policies and changes, Decide requests (served, and
# validated against an oracle), the manifest loader, and the packet parser.
#
# `make test` runs each target for a fixed number of executions
# (`-fuzztime=Nx`), not for a duration: at the end of a duration Go's fuzz
# coordinator can fail a run that found nothing with a bare "context deadline
# exceeded" (golang/go#75804, fixed in Go 1.27; this repo is on 1.26), which
# a loaded machine makes likely. A count sets no deadline, so that path is
# never taken, and the work done no longer depends on the machine's speed.
# A real finding still fails the run, with its input (hack/fuzz.sh).
#
# Each count is sized for about 5-10 s on the 2-core machine while other
# builds load it. Measured there with go1.26.8 (load average 6-14, empty
# fuzz cache; execs/s): FuzzEngine ~720, FuzzChangedIPs ~660,
# FuzzCompilerReuse ~230, FuzzDecide ~3100, FuzzDecideRequest ~3500,
# FuzzLoad ~360, FuzzLoadDir ~200, FuzzParse ~115000. Inputs cached by
# earlier runs (GOCACHE/fuzz) are replayed first and count towards N, and
# replay is slower than fuzzing, so a machine with a large cached corpus
# spends a few seconds more and explores less.
FUZZ_TARGETS := decider/engine:FuzzEngine:4000 decider/engine:FuzzChangedIPs:3000 \
	decider/engine:FuzzCompilerReuse:1500 decider/engine:FuzzDomainMatch:50000 \
	decider/api:FuzzDecide:25000 decider/api:FuzzDecideRequest:25000 \
	decider/source:FuzzLoad:1500 decider/source:FuzzLoadDir:1200 \
	queuer/packet:FuzzParse:600000 queuer/dns:FuzzParseAnswer:250000
FUZZTIME     ?= 2m

.PHONY: fuzz-short
fuzz-short: ## Run every fuzz target for a fixed number of executions, about 5-10 s each (part of make test).
	@hack/fuzz.sh count $(FUZZ_TARGETS)

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each: a duration (default 2m) or a count (100000x).
	@hack/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)
