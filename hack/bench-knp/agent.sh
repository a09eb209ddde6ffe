#!/usr/bin/env bash
# Builds kube-network-policies' own node agents, the `standard` and
# `npa-v1alpha2` commands of KNP_VERSION (default v1.1.1), for the dataplane
# and scale benchmarks (make bench-dataplane, make bench-scale), and prints
# the directory holding the two binaries.
#
#   hack/bench-knp/agent.sh            # build once, then reuse
#
# The module comes from the Go module proxy, as in hack/bench-knp/run.sh,
# and is copied under $CACHE/bench-knp/agent-<version> (ignored); nothing of
# it enters this repository. One change is made to the copy, because this
# kernel lacks the nft queue expression the agent's ruleset uses (without it
# the agent's whole ruleset is refused and nothing is enforced):
#   - every `queue` statement of pkg/dataplane/controller.go becomes
#     "mark the packet and accept" (testdata/xt_shim.go), and the two base
#     chains holding them (postrouting, input) move to priority mangle - 10,
#     so that an iptables mangle rule on the same hook, which the benchmark
#     installs, queues the marked packets with the xt NFQUEUE target.
# The policy evaluation, the packet handling and the informers are theirs,
# unchanged. The script fails if the edit does not apply exactly as expected.
set -euo pipefail

KNP_VERSION=${KNP_VERSION:-v1.1.1}
root=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${CACHE:-$root/.cache}
work=$CACHE/bench-knp
out=$work/agent-$KNP_VERSION
shim=$root/hack/bench-knp/testdata/xt_shim.go
# Rebuild when this script or the shim changes.
stamp=$(cat "$0" "$shim" | sha256sum | cut -c1-16)
if [ -x "$out/bin/standard" ] && [ -x "$out/bin/npa-v1alpha2" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$out/bin"
	exit 0
fi
mkdir -p "$work"
exec 9>"$work/.agent.lock"
flock 9

dir=$(cd "$work" && go mod download -json "sigs.k8s.io/kube-network-policies@$KNP_VERSION" |
	sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "could not download kube-network-policies $KNP_VERSION" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
cp -r "$dir" "$out/src"
chmod -R u+w "$out/src"
ctl=$out/src/pkg/dataplane/controller.go
cp "$shim" "$out/src/pkg/dataplane/zz_tollgate_xt_shim.go"
sed -i \
	-e 's/^\(\t*\)queue,$/\1xtQueue[0], xtQueue[1], xtQueue[2], xtQueue[3],/' \
	-e 's/\*nftables\.ChainPriorityNATSource - 5)/*nftables.ChainPriorityMangle - 10)/' \
	-e 's/\*nftables\.ChainPriorityNATSource + 1)/*nftables.ChainPriorityMangle - 10)/' \
	"$ctl"
# v1.1.1 has 13 queue statements (5 postrouting, 3 input, 5 in the DNS
# workaround's prerouting chain, which the benchmark turns off) and one
# chain each at srcnat - 5 and srcnat + 1.
queued=$(grep -c 'xtQueue\[0\]' "$ctl" || true)
moved=$(grep -c 'ChainPriorityMangle - 10' "$ctl" || true)
left=$(grep -c '^\s*queue,$' "$ctl" || true)
if [ "$queued" != 13 ] || [ "$moved" != 2 ] || [ "$left" != 0 ]; then
	echo "agent.sh: the xt shim did not apply as expected to $KNP_VERSION (queue statements replaced: $queued, chains moved: $moved, left: $left)" >&2
	exit 1
fi
echo "building kube-network-policies $KNP_VERSION agents (standard, npa-v1alpha2) with the xt shim" >&2
for c in standard npa-v1alpha2; do
	(cd "$out/src" && GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$out/bin/$c" "./cmd/kube-network-policies/$c") >&2
done
echo "$stamp" >"$out/stamp"
echo "$out/bin"
