# Tollgate images. Two targets from one build, so that only the queuer carries
# the nftables/iptables userland and only the queuer runs as root:
#
#   docker build --target decider -t tollgate-decider --build-arg VERSION=v0.1.0 .
#   docker build --target queuer  -t tollgate-queuer  --build-arg VERSION=v0.1.0 .
#
# `make image` runs both. deploy/deploy_test.go checks this file as text.

# ---- build: both static binaries, plus grpcurl for the decider image ------
FROM golang:1.26-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Dependencies first: this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG VERSION=dev
RUN go build -trimpath -ldflags "-X github.com/tollgate/tollgate/internal/version.Version=${VERSION}" -o /out/decider ./decider \
 && go build -trimpath -ldflags "-X github.com/tollgate/tollgate/internal/version.Version=${VERSION}" -o /out/queuer ./queuer
# grpcurl lets operators query the decider inside its pod:
#   kubectl -n kube-system exec ds/tollgate -c decider -- grpcurl -plaintext -unix /run/tollgate/decider.sock list
ARG GRPCURL_VERSION=v1.9.4
RUN GOBIN=/out go install -trimpath github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}

# ---- decider: no shell, no package manager, non-root ----------------------
FROM gcr.io/distroless/static-debian12:nonroot AS decider
ARG VERSION=dev
LABEL org.opencontainers.image.title="tollgate-decider" \
      org.opencontainers.image.description="Tollgate decider: compiles Kubernetes network policies and answers connection verdicts over a Unix socket" \
      org.opencontainers.image.source="https://github.com/tollgate/tollgate" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/decider /usr/local/bin/decider
COPY --from=build /out/grpcurl /usr/local/bin/grpcurl
# The same fixed uid/gid as deploy/base/daemonset.yaml: the socket the decider
# creates is owned by it, and the queuer joins the group.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/decider"]

# ---- queuer: nftables, iptables-nft and conntrack userland ----------------
FROM debian:bookworm-slim AS queuer
ARG VERSION=dev
LABEL org.opencontainers.image.title="tollgate-queuer" \
      org.opencontainers.image.description="Tollgate queuer: steers new connections of policy-selected pods through NFQUEUE and enforces the decider's verdicts" \
      org.opencontainers.image.source="https://github.com/tollgate/tollgate" \
      org.opencontainers.image.version="${VERSION}"
# knftables runs nft; the xt NFQUEUE fallback runs iptables; conntrack is there
# for operators debugging flows. iptables is pinned to its nft backend, which
# needs only CAP_NET_ADMIN (the legacy backend would need CAP_NET_RAW too).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables conntrack \
 && update-alternatives --set iptables /usr/sbin/iptables-nft \
 && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/queuer /usr/local/bin/queuer
# Root with every capability but NET_ADMIN dropped by the DaemonSet: only uid 0
# gets added capabilities into its effective set.
USER 0:0
ENTRYPOINT ["/usr/local/bin/queuer"]
