#!/usr/bin/env bash
# Runs fuzz targets one after the other (go test -fuzz takes one at a time).
#
# usage: hack/fuzz.sh FUZZTIME package:FuzzTarget:count...
#   FUZZTIME  "count" for each target's own execution count, or any
#             -fuzztime value: a count such as 100000x, or a duration (2m).
#
# On failure it prints the output without progress lines (the failing input
# and the file it was written to) and exits 1. A duration run may instead
# end in a bare "context deadline exceeded" with no input written: that is
# Go's fuzz coordinator racing its own deadline (golang/go#75804, fixed in Go
# 1.27), not a finding; it is reported as such and the run goes on. Counts
# never take that path.
set -euo pipefail
fuzztime=$1
shift
for target in "$@"; do
	IFS=: read -r pkg name count <<<"$target"
	t=$fuzztime
	[ "$t" = count ] && t=${count}x
	echo "fuzz $name (./$pkg) for $t"
	if out=$(go test -run '^$' -fuzz "^$name\$" -fuzztime "$t" -fuzzminimizetime 1x "./$pkg/" 2>&1); then
		echo "$out" | tail -1
		continue
	fi
	if [[ $t != *x ]] && grep -qx '    context deadline exceeded' <<<"$out" &&
		! grep -q 'Failing input written to' <<<"$out"; then
		echo "$out" | grep -v '^fuzz: elapsed' | tail -5
		echo "  no failing input: Go's fuzz coordinator race at the end of -fuzztime (golang/go#75804), not a finding"
		continue
	fi
	echo "$out" | grep -v '^fuzz: elapsed' | tail -60
	exit 1
done
