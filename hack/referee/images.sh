#!/usr/bin/env bash
# Builds the agnhost image the upstream suites run (hack/referee/agnhost)
# from the binary of hack/referee/build.sh, under the names they ask for,
# and loads it into every node of the running local cluster with
# hack/image/image.sh. Nothing is pulled: FROM debian:bookworm-slim is the
# image `hack/image/image.sh base` makes, in the same buildah storage.
#
# Usage: hack/referee/images.sh
#   CACHE, CLUSTER_DIR as for hack/image/image.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CACHE:-${REPO_ROOT}/.cache}"
export CACHE
IMAGE_SH="${REPO_ROOT}/hack/image/image.sh"
AGNHOST="${CACHE}/referee/bin/agnhost"

# The names the suites ask for: Kubernetes' e2e tests at v1.35.3
# (test/utils/image/manifest.go) and network-policy-api's conformance
# manifests (conformance/base/manifests.yaml, v0.1.7 and v0.2.0).
IMAGES=(registry.k8s.io/e2e-test-images/agnhost:2.59 registry.k8s.io/e2e-test-images/agnhost:2.45)

if [[ ! -x "${AGNHOST}" ]]; then
	echo "no ${AGNHOST}: run hack/referee/build.sh first" >&2
	exit 1
fi

# bh runs buildah on image.sh's storage.
bh() {
	buildah --storage-driver vfs --root "${CACHE}/buildah/root" --runroot "${CACHE}/buildah/runroot" "$@"
}

# The image is rebuilt when the binary or the Dockerfile changes.
digest=$(cat "${AGNHOST}" "${REPO_ROOT}/hack/referee/agnhost/Dockerfile" | sha256sum | cut -d' ' -f1)
have=$(bh inspect --type image --format '{{index .OCIv1.Config.Labels "tollgate.referee-digest"}}' "${IMAGES[0]}" 2>/dev/null || true)
if [[ "${have}" != "${digest}" ]]; then
	"${IMAGE_SH}" base
	dir=$(mktemp -d)
	trap 'rm -rf "${dir}"' EXIT
	cp "${REPO_ROOT}/hack/referee/agnhost/Dockerfile" "${AGNHOST}" "${dir}/"
	bh bud --quiet --isolation chroot --label tollgate.referee-digest="${digest}" -t "${IMAGES[0]}" "${dir}" >/dev/null
	echo "built ${IMAGES[0]}"
fi
for name in "${IMAGES[@]:1}"; do
	bh tag "${IMAGES[0]}" "${name}"
done
"${IMAGE_SH}" import "${IMAGES[@]}"
