#!/usr/bin/env bash
# buf breaking against the last released proto (a committed buf image), and
# a check that the check works: on a scratch copy of the module, an added
# field must pass and a renamed field must fail.
#
#   hack/proto/breaking.sh BASELINE
set -euo pipefail
cd "$(dirname "$0")/../.."
baseline=$(realpath "$1")

buf breaking --against "$baseline"
echo "buf breaking: no breaking change against $1"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
proto=tollgate/v1/decider.proto
mutate() { # name, sed expression: a scratch module with one change
	rm -rf "$scratch/m" && mkdir -p "$scratch/m/proto/tollgate/v1"
	cp buf.yaml "$scratch/m/"
	sed -e "$2" "proto/$proto" > "$scratch/m/proto/$proto"
	if cmp -s "proto/$proto" "$scratch/m/proto/$proto"; then
		echo "breaking.sh: the $1 self-check did not change $proto" >&2
		exit 1
	fi
}
mutate "added field" 's/^  bool via_service = 6;$/  bool via_service = 6;\n  \/\/ note is a field a later v1 might add.\n  string note = 99;/'
(cd "$scratch/m" && buf breaking --against "$baseline") >/dev/null ||
	{ echo "breaking.sh: buf breaking rejected an added field, which v1 allows" >&2; exit 1; }
mutate "renamed field" 's/^  string src_ip = 1;$/  string source_ip = 1;/'
if (cd "$scratch/m" && buf breaking --against "$baseline") >/dev/null 2>&1; then
	echo "breaking.sh: buf breaking missed a renamed field" >&2
	exit 1
fi
echo "buf breaking: self-check passed (an added field passes, a renamed one fails)"
