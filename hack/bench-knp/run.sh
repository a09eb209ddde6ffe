#!/usr/bin/env bash
# Side-by-side benchmark: Tollgate's engine against kube-network-policies'
# per-packet NetworkPolicy evaluation, on the same synthetic cluster and the
# same 1024 connections (decider/engine/cmp_cluster_test.go), in one run.
#
#   hack/bench-knp/run.sh            # 3 interleaved rounds
#   ROUNDS=5 hack/bench-knp/run.sh
#
# kube-network-policies comes from the Go module proxy at KNP_VERSION and is
# copied under .cache/bench-knp (ignored); nothing of it enters this
# repository. The script first checks that both engines give the same
# verdict for every connection at every size, and deny the same directions,
# and refuses to report a ratio otherwise. It prints medians per size and the ratio.
set -euo pipefail

KNP_VERSION=${KNP_VERSION:-v1.1.1}
ROUNDS=${ROUNDS:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$root/.cache/bench-knp
mkdir -p "$work"

dir=$(cd "$work" && go mod download -json "sigs.k8s.io/kube-network-policies@$KNP_VERSION" |
	sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "could not download kube-network-policies $KNP_VERSION" >&2; exit 1; }
knp=$work/kube-network-policies-$KNP_VERSION
if [ ! -d "$knp" ]; then
	cp -r "$dir" "$knp.tmp" && chmod -R u+w "$knp.tmp" && mv "$knp.tmp" "$knp"
fi
pkg=$knp/pkg/networkpolicy
sed 's/^package engine$/package networkpolicy/' "$root/decider/engine/cmp_cluster_test.go" >"$pkg/zz_tollgate_cluster_test.go"
cp "$root/hack/bench-knp/testdata/knp_cmp_test.go" "$pkg/zz_tollgate_cmp_test.go"

echo "building both benchmark binaries"
(cd "$root" && go test -c -o "$work/ours.test" ./decider/engine)
(cd "$knp" && go test -c -o "$work/theirs.test" ./pkg/networkpolicy)

echo "comparing verdicts"
verdicts=$work/verdicts
rm -rf "$verdicts" && mkdir -p "$verdicts"
(cd "$root/decider/engine" && VERDICT_DIR=$verdicts "$work/ours.test" -test.run '^$' -test.bench '^BenchmarkCmpDumpVerdicts$' -test.benchtime 1x >/dev/null)
(cd "$pkg" && VERDICT_DIR=$verdicts "$work/theirs.test" -test.run '^$' -test.bench '^BenchmarkCmpDumpVerdicts$' -test.benchtime 1x >/dev/null)
# kube-network-policies' per-direction answers are Accept, Deny or Next
# (pass to the next evaluator), and an allowed direction comes back as
# Accept or Next; so a direction compares as denied or not, and the
# connection's verdict exactly.
norm() { sed -e 's/=A\b/=ok/g; s/=-/=ok/g' "$1"; }
for ours in "$verdicts"/ours-*.txt; do
	theirs=${ours/ours-/theirs-}
	if ! diff -q <(norm "$ours") <(norm "$theirs") >/dev/null; then
		echo "verdicts differ: $ours $theirs" >&2
		diff <(norm "$ours") <(norm "$theirs") | head -20 >&2
		exit 1
	fi
	echo "  $(basename "$ours" .txt | sed 's/ours-//'): 1024 connections, same verdicts ($(grep -c 'allowed=true' "$ours") allowed)"
done

out=$work/results-$(date +%Y%m%d-%H%M%S).txt
echo "benchmarking, $ROUNDS interleaved rounds (raw output: $out)"
for round in $(seq "$ROUNDS"); do
	for sz in 1000/100 1000/1000 10000/100 10000/1000 10000/10000; do
		p=${sz%/*} q=${sz#*/}
		(cd "$root/decider/engine" && "$work/ours.test" -test.run '^$' -test.bench "^BenchmarkCmpDecide/^pods=$p\$/^policies=$q\$" -test.benchtime 200000x -test.benchmem) | grep '^Benchmark' | sed 's/^/ours /'
		(cd "$pkg" && "$work/theirs.test" -test.run '^$' -test.bench "^BenchmarkCmpEvaluatePacket/^pods=$p\$/^policies=$q\$" -test.benchtime 5000x -test.benchmem) | grep '^Benchmark' | sed 's/^/theirs /'
	done
done >"$out"

awk '
	{ side=$1; split($2, a, "/"); key=a[2] "/" a[3]; sub(/-[0-9]+$/, "", key)
	  for (i=1; i<=NF; i++) { if ($(i+1)=="ns/op") ns=$i; if ($(i+1)=="allocs/op") al=$i }
	  v[side, key] = v[side, key] " " ns; allocs[side, key] = al; keys[key] = 1 }
	function median(s,   n, x, i, j, t) { n = split(s, x, " ")
	  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] + 0 < x[i] + 0) { t = x[i]; x[i] = x[j]; x[j] = t }
	  return x[int((n + 1) / 2)] }
	END { printf "%-26s %14s %8s %16s %8s %9s\n", "size", "tollgate ns/op", "allocs", "knp ns/op", "allocs", "ratio"
	  n = split("pods=1000/policies=100 pods=1000/policies=1000 pods=10000/policies=100 pods=10000/policies=1000 pods=10000/policies=10000", order, " ")
	  for (i = 1; i <= n; i++) { k = order[i]; o = median(v["ours", k]); t = median(v["theirs", k])
	    printf "%-26s %14.0f %8s %16.0f %8s %8.0fx\n", k, o, allocs["ours", k], t, allocs["theirs", k], t / o } }
' "$out"
