#!/usr/bin/env bash
# Builds the upstream test suites that referee Tollgate on the local cluster
# (`make conformance-upstream`), each from its Go module as released, into
# $CACHE/referee/bin:
#
#   netpol.test    Kubernetes' "[sig-network] Netpol" e2e specs: the driver in
#                  testdata/netpol compiled with `go test -c` inside the
#                  wrapper module of hack/kube-apiserver/build.sh, so against
#                  the same k8s.io/kubernetes release as the cluster
#   ginkgo         the Ginkgo CLI of that module, to run netpol.test in
#                  parallel processes
#   agnhost        k8s.io/kubernetes/test/images/agnhost of that release, the
#                  binary of the test images (hack/referee/images.sh)
#   npapi-VERSION.test
#                  sigs.k8s.io/network-policy-api/conformance at VERSION
#                  (v0.2.0: ClusterNetworkPolicy; v0.1.7: AdminNetworkPolicy
#                  and BaselineAdminNetworkPolicy), compiled with `go test -c`
#                  from a copy of the module in which, on a kernel without
#                  SCTP sockets, base/manifests.yaml has no SCTP server
#                  containers: their `agnhost porter` exits, and without
#                  Ready pods no test of the suite runs (docs/conformance.md
#                  has the evidence). Nothing else of the module is changed.
#
# A binary is rebuilt when the inputs that made it (versions, the function
# here that builds it, the driver, the kernel's SCTP support) change. Builds take the lock of hack/kube-apiserver/build.sh's
# cache, so they never run beside another Kubernetes build.
#
# Usage: hack/referee/build.sh
#   KUBE_VERSION     kubernetes release (default v1.35.3)
#   NPAPI_VERSIONS   network-policy-api releases (default "v0.2.0 v0.1.7")
#   CACHE            cache directory (default <repo>/.cache)
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.3}"
NPAPI_VERSIONS="${NPAPI_VERSIONS:-v0.2.0 v0.1.7}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CACHE:-${REPO_ROOT}/.cache}"
REF="${CACHE}/referee"
BIN="${REF}/bin"
HERE="${REPO_ROOT}/hack/referee"

export GOWORK=off
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0

mkdir -p "${BIN}" "${CACHE}/kube-apiserver/${KUBE_VERSION}"
exec 9>"${CACHE}/kube-apiserver/${KUBE_VERSION}/.lock"
flock 9

# stamp prints a digest of the inputs named by its arguments (strings and
# files), to tell whether a cached binary is still what they would build.
stamp() {
	local a
	for a in "$@"; do
		if [[ -f "${a}" ]]; then
			sha256sum "${a}"
		else
			echo "${a}"
		fi
	done | sha256sum | cut -d' ' -f1
}

# fresh reports whether every binary named after the stamp exists and was
# built from inputs with stamp $1.
fresh() {
	local want=$1
	shift
	local b
	for b in "$@"; do
		[[ -x "${BIN}/${b}" && "$(cat "${BIN}/${b}.stamp" 2>/dev/null)" == "${want}" ]] || return 1
	done
}

# install_bin moves the freshly built binaries from directory $1 into BIN
# and records stamp $2 for each.
install_bin() {
	local dir=$1 st=$2
	shift 2
	local b
	for b in "$@"; do
		mv "${dir}/${b}" "${BIN}/${b}"
		echo "${st}" >"${BIN}/${b}.stamp"
		echo "built ${BIN}/${b}"
	done
}

build_kube() {
	local st
	st=$(stamp "${KUBE_VERSION}" "$(declare -f build_kube)" "${REPO_ROOT}/hack/kube-apiserver/build.sh" "${HERE}/testdata/netpol/netpol_test.go")
	if fresh "${st}" netpol.test ginkgo agnhost; then
		echo "netpol.test, ginkgo and agnhost (${KUBE_VERSION}) are up to date in ${BIN}"
		return
	fi
	local src="${REF}/src/kubernetes-${KUBE_VERSION}"
	rm -rf "${src}"
	KUBE_VERSION="${KUBE_VERSION}" CACHE="${CACHE}" "${REPO_ROOT}/hack/kube-apiserver/build.sh" wrapper "${src}"
	mkdir -p "${src}/netpol" "${src}/out"
	cp "${HERE}/testdata/netpol/netpol_test.go" "${src}/netpol/"
	local start=${SECONDS}
	echo "building netpol.test, ginkgo and agnhost from k8s.io/kubernetes ${KUBE_VERSION} (a few minutes after the apiserver's build)"
	(
		cd "${src}"
		# -mod=mod fills go.sum and the indirect requirements from the
		# kubernetes go.mod, as for the apiserver.
		go test -mod=mod -c -trimpath -o out/netpol.test ./netpol
		go build -mod=mod -trimpath -o out/ginkgo github.com/onsi/ginkgo/v2/ginkgo
		go build -mod=mod -trimpath -ldflags "-s -w" -o out/agnhost k8s.io/kubernetes/test/images/agnhost
	)
	install_bin "${src}/out" "${st}" netpol.test ginkgo agnhost
	rm -rf "${src}"
	echo "built in $((SECONDS - start))s"
}

build_npapi() {
	local version=$1 name="npapi-$1.test"
	local st
	# The SCTP servers are stripped only where the kernel lacks SCTP.
	local sctp
	sctp=$(cd "${REPO_ROOT}" && go run ./hack/referee kernel-sctp)
	st=$(stamp "${version}" "$(declare -f build_npapi)" "${HERE}/sctp.go" "kernel-sctp=${sctp}")
	if fresh "${st}" "${name}"; then
		echo "${name} is up to date in ${BIN}"
		return
	fi
	local dir="${REF}/src/npapi-${version}"
	rm -rf "${dir}"
	mkdir -p "${dir}/out"
	local mod
	mod=$(go mod download -json "sigs.k8s.io/network-policy-api@${version}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	if [[ -z "${mod}" || ! -d "${mod}/conformance" ]]; then
		echo "no conformance suite in sigs.k8s.io/network-policy-api@${version}" >&2
		exit 1
	fi
	# The module's own copy, writable, with the SCTP servers taken out of
	# the base manifests and the SCTP probes logged instead of made.
	cp -r "${mod}" "${dir}/network-policy-api"
	chmod -R u+w "${dir}/network-policy-api"
	local manifests="${dir}/network-policy-api/conformance/base/manifests.yaml"
	(cd "${REPO_ROOT}" && go run ./hack/referee strip-sctp "${manifests}" "${manifests}")
	(cd "${REPO_ROOT}" && go run ./hack/referee skip-sctp-probes "${dir}/network-policy-api/conformance/utils/kubernetes/helper.go")
	cat >"${dir}/go.mod" <<-EOF
		// Generated by hack/referee/build.sh; do not edit.
		module tollgate.local/npapi-conformance

		go 1.24

		require sigs.k8s.io/network-policy-api ${version}

		replace sigs.k8s.io/network-policy-api => ./network-policy-api
	EOF
	local start=${SECONDS}
	echo "building ${name} (sigs.k8s.io/network-policy-api/conformance ${version})"
	(
		cd "${dir}"
		go test -mod=mod -c -trimpath -o "out/${name}" sigs.k8s.io/network-policy-api/conformance
	)
	install_bin "${dir}/out" "${st}" "${name}"
	rm -rf "${dir}"
	echo "built in $((SECONDS - start))s"
}

build_kube
for v in ${NPAPI_VERSIONS}; do
	build_npapi "${v}"
done
