#!/usr/bin/env bash
# Container images without a Docker daemon or a registry: buildah (vfs
# storage under $CACHE/buildah, no daemon) builds them, and `import` loads
# them into the containerd of every node of the local cluster
# (make cluster-up). Nothing is ever pulled: every image a Dockerfile starts
# FROM is first made here under the exact name it uses.
#
# Usage: hack/image/image.sh COMMAND ...
#   base                         make the base images ./Dockerfile names:
#                                debian:bookworm-slim (an mmdebstrap rootfs),
#                                golang:1.26-bookworm (that rootfs plus the
#                                local Go toolchain) and
#                                gcr.io/distroless/static-debian12:nonroot
#   tollgate DECIDER QUEUER VERSION
#                                build both targets of ./Dockerfile, unchanged
#   pause                        registry.k8s.io/pause:$PAUSE_TAG from the
#                                kubernetes module's build/pause (pause.c and
#                                its Dockerfile)
#   binary NAME BINARY [ARG...]  a FROM-scratch image whose entrypoint is one
#                                static binary (plus ARGs)
#   rootfs NAME TAR [ARG...]     an image from a root filesystem tarball,
#                                entrypoint ARGs (none: the tarball's /bin/sh)
#   import NAME...               load images into every node's containerd
#                                (namespace k8s.io) under NAME as kubelet
#                                resolves it (docker.io/library/... for short
#                                names)
#   prune                        drop dangling layers left by rebuilds
#
# Environment: CACHE (default <repo>/.cache), CLUSTER_DIR (default
# $CACHE/cluster, for import), KUBE_VERSION (default v1.35.3, for pause),
# PAUSE_TAG (default 3.10.1, kubelet 1.35's default sandbox image).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CACHE:-${REPO_ROOT}/.cache}"
CLUSTER_DIR="${CLUSTER_DIR:-${CACHE}/cluster}"
KUBE_VERSION="${KUBE_VERSION:-v1.35.3}"
PAUSE_TAG="${PAUSE_TAG:-3.10.1}"
IMAGES="${CACHE}/images"
SUITE=bookworm

GOLANG_IMAGE=docker.io/library/golang:1.26-bookworm
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
DISTROLESS_IMAGE=gcr.io/distroless/static-debian12:nonroot

# bh runs buildah on the cache's own storage, so that nothing lands in
# /var/lib/containers and no two users of the machine share state by accident.
bh() {
	buildah --storage-driver vfs --root "${CACHE}/buildah/root" --runroot "${CACHE}/buildah/runroot" "$@"
}

# has_image reports whether image $1 is in the storage.
has_image() {
	bh inspect --type image "$1" >/dev/null 2>&1
}

# label prints label $2 of image $1 (empty when absent).
label() {
	bh inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# debian_rootfs prints the path of a cached minimal bookworm root filesystem
# (mmdebstrap, from Debian's archive as apt would reach it), making it once.
debian_rootfs() {
	local tar="${IMAGES}/${SUITE}-minbase.tar"
	if [[ ! -s "${tar}" ]]; then
		mkdir -p "${IMAGES}"
		echo "mmdebstrap: ${SUITE} minbase root filesystem (once; about a minute)" >&2
		mmdebstrap --quiet --variant=minbase --format=tar --include=ca-certificates \
			--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
			"${SUITE}" "${tar%.tar}.partial.tar" >&2
		mv "${tar%.tar}.partial.tar" "${tar}"
	fi
	echo "${tar}"
}

# commit_tar NAME TAR CONFIG... makes image NAME from a root filesystem
# tarball; CONFIG are `buildah config` options.
commit_tar() {
	local name=$1 tar=$2
	shift 2
	local ctr
	ctr=$(bh from --quiet scratch)
	bh add --quiet "${ctr}" "${tar}" / >/dev/null
	if [[ $# -gt 0 ]]; then
		bh config "$@" "${ctr}"
	fi
	bh commit --quiet --rm "${ctr}" "${name}" >/dev/null
	echo "made ${name}"
}

cmd_base() {
	local rootfs
	rootfs=$(debian_rootfs)
	local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	if ! has_image "${DEBIAN_IMAGE}"; then
		commit_tar "${DEBIAN_IMAGE}" "${rootfs}" --env PATH="${path}" --cmd bash
	fi

	# The golang image: the same rootfs and the Go toolchain of this machine,
	# laid out and configured as the official image is. Rebuilt when the
	# local toolchain changes.
	local goroot go_version
	goroot=$(go env GOROOT)
	go_version=$(go env GOVERSION)
	if [[ "${go_version}" != go1.26* ]]; then
		echo "the Dockerfile builds FROM golang:1.26-bookworm; the local toolchain is ${go_version}" >&2
		exit 1
	fi
	if [[ "$(label "${GOLANG_IMAGE}" tollgate.go-version)" != "${go_version}" ]]; then
		local ctr
		ctr=$(bh from --quiet "${DEBIAN_IMAGE}")
		bh copy --quiet "${ctr}" "${goroot}" /usr/local/go >/dev/null
		bh run --isolation chroot "${ctr}" -- mkdir -p /go/bin /go/src
		bh config --env GOLANG_VERSION="${go_version#go}" --env GOTOOLCHAIN=local --env GOPATH=/go \
			--env PATH="/go/bin:/usr/local/go/bin:${path}" --workingdir /go \
			--label tollgate.go-version="${go_version}" "${ctr}"
		bh commit --quiet --rm "${ctr}" "${GOLANG_IMAGE}" >/dev/null
		echo "made ${GOLANG_IMAGE} (${go_version})"
	fi

	# A distroless-like static image: users root, nonroot (65532) and
	# nobody, /tmp, a home for nonroot, CA certificates; no shell, no
	# package manager.
	if ! has_image "${DISTROLESS_IMAGE}"; then
		local dir
		dir=$(mktemp -d)
		mkdir -p "${dir}/etc/ssl/certs" "${dir}/tmp" "${dir}/home/nonroot" "${dir}/root"
		chmod 1777 "${dir}/tmp"
		chmod 0700 "${dir}/root"
		chown 65532:65532 "${dir}/home/nonroot"
		printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
			'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
			'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"${dir}/etc/passwd"
		printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"${dir}/etc/group"
		printf '%s\n' 'PRETTY_NAME="Distroless"' 'NAME="Debian GNU/Linux"' 'ID="debian"' 'VERSION_ID="12"' \
			'HOME_URL="https://github.com/GoogleContainerTools/distroless"' >"${dir}/etc/os-release"
		tar -xOf "${rootfs}" ./etc/ssl/certs/ca-certificates.crt >"${dir}/etc/ssl/certs/ca-certificates.crt"
		tar -C "${dir}" --numeric-owner -cf "${dir}.tar" .
		commit_tar "${DISTROLESS_IMAGE}" "${dir}.tar" --env PATH="${path}" \
			--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
			--user 65532:65532 --workingdir /home/nonroot
		rm -rf "${dir}" "${dir}.tar"
	fi
}

cmd_tollgate() {
	local decider=$1 queuer=$2 version=$3
	cmd_base
	# The host's Go module and build caches are mounted into the RUN steps:
	# the build stage then downloads and compiles only what changed. So is
	# the host's CA bundle: the RUN steps reach the package registries
	# through whatever this machine trusts (a TLS-inspecting proxy, say),
	# while the images keep Debian's own bundle. The mounts are not part of
	# any layer, and the final stages copy only binaries out of the build
	# stage.
	local mounts=(-v "$(go env GOMODCACHE):/go/pkg/mod" -v "$(go env GOCACHE):/root/.cache/go-build"
		-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
	local target name
	for target in decider queuer; do
		name=${decider}
		[[ "${target}" == queuer ]] && name=${queuer}
		echo "buildah bud --target ${target} -t ${name}"
		local start=${SECONDS}
		bh bud --quiet --isolation chroot "${mounts[@]}" \
			--build-arg VERSION="${version}" --target "${target}" -t "${name}" \
			-f "${REPO_ROOT}/Dockerfile" "${REPO_ROOT}" >/dev/null
		echo "built ${name} in $((SECONDS - start))s"
	done
	cmd_prune
}

cmd_pause() {
	local name="registry.k8s.io/pause:${PAUSE_TAG}"
	if has_image "${name}"; then
		return
	fi
	local src
	src="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')/build/pause"
	local dir
	dir=$(mktemp -d)
	mkdir -p "${dir}/bin"
	cp "${src}/Dockerfile" "${dir}/"
	# The flags of build/pause/Makefile.
	gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_TAG}-${KUBE_VERSION}" \
		-o "${dir}/bin/pause-linux-amd64" "${src}/linux/pause.c"
	bh bud --quiet --build-arg BASE=scratch --build-arg ARCH=amd64 -t "${name}" "${dir}" >/dev/null
	rm -rf "${dir}"
	echo "made ${name}"
}

cmd_binary() {
	local name=$1 binary=$2
	shift 2
	local dir
	dir=$(mktemp -d)
	install -m 0755 "${binary}" "${dir}/$(basename "${binary}")"
	tar -C "${dir}" --numeric-owner --owner=0 --group=0 -cf "${dir}.tar" .
	local entry
	entry=$(printf '"/%s"' "$(basename "${binary}")")
	for a in "$@"; do
		entry+=$(printf ',"%s"' "${a}")
	done
	commit_tar "${name}" "${dir}.tar" --entrypoint "[${entry}]" --cmd ''
	rm -rf "${dir}" "${dir}.tar"
}

cmd_rootfs() {
	local name=$1 tar=$2
	shift 2
	local opts=()
	if [[ $# -gt 0 ]]; then
		local entry
		entry=$(printf '"%s",' "$@")
		opts=(--entrypoint "[${entry%,}]" --cmd '')
	fi
	commit_tar "${name}" "${tar}" "${opts[@]}"
}

# normalize prints image reference $1 the way kubelet and containerd's CRI
# resolve it: short names live on docker.io, one-word names in library/.
normalize() {
	local ref=$1 first=${1%%/*}
	if [[ "${ref}" != */* ]]; then
		ref="docker.io/library/${ref}"
	elif [[ "${first}" != *.* && "${first}" != *:* && "${first}" != localhost ]]; then
		ref="docker.io/${ref}"
	fi
	[[ "${ref##*/}" == *:* || "${ref}" == *@* ]] || ref="${ref}:latest"
	echo "${ref}"
}

cmd_import() {
	local sockets=()
	local s
	for s in "${CLUSTER_DIR}"/nodes/*/containerd.sock; do
		[[ -S "${s}" ]] && sockets+=("${s}")
	done
	if [[ ${#sockets[@]} -eq 0 ]]; then
		echo "image import: no node of a running cluster under ${CLUSTER_DIR} (make cluster-up)" >&2
		exit 1
	fi
	local name ref id archive
	archive=$(mktemp -u "${IMAGES}/import-XXXXXX.tar")
	mkdir -p "${IMAGES}"
	for name in "$@"; do
		ref=$(normalize "${name}")
		# By id: pushed by name, the archive would also carry buildah's
		# own name for it (localhost/...).
		id=$(bh inspect --type image --format '{{.FromImageID}}' "${name}")
		rm -f "${archive}"
		bh push --quiet "${id}" "docker-archive:${archive}:${ref}" >/dev/null
		for s in "${sockets[@]}"; do
			ctr --address "${s}" --namespace k8s.io images import "${archive}" >/dev/null
		done
		echo "imported ${ref} into ${#sockets[@]} nodes"
	done
	rm -f "${archive}"
}

cmd_prune() {
	bh rmi --prune >/dev/null 2>&1 || true
}

main() {
	local cmd=${1:-}
	shift || true
	case "${cmd}" in
	base) cmd_base ;;
	tollgate) cmd_tollgate "$@" ;;
	pause) cmd_pause ;;
	binary) cmd_binary "$@" ;;
	rootfs) cmd_rootfs "$@" ;;
	import) cmd_import "$@" ;;
	prune) cmd_prune ;;
	*)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
		exit 2
		;;
	esac
}

main "$@"
