# syntax=docker/dockerfile:1
#
# The overtime node agent image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#                --build-arg COMMIT=$(git rev-parse HEAD) -t overtime .
#   docker buildx build --platform linux/amd64,linux/arm64 ...   # cross-compiled, no emulation
#
# No clang is needed: the eBPF objects (bpf/*_bpfel.o) are committed and
# embedded by go build. They are little-endian, which covers amd64 and arm64.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
WORKDIR /src
# Dependencies first, so source edits do not refetch modules.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/overtime ./cmd/overtime

# A static binary on an empty base: no shell, no package manager, nothing for
# the agent's capabilities to be borrowed by. The chart mounts an emptyDir at
# /tmp (the agent calibrates its created-file detection on a file of its own
# there).
FROM scratch
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="overtime" \
      org.opencontainers.image.description="Node agent that ends overdue backup-engine processes and cleans up their lock files" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /out/overtime /overtime
# Root on purpose: the container's capabilities (BPF, PERFMON, SYS_ADMIN,
# KILL, ...) are granted to uid 0 only. The Helm chart drops everything else.
USER 0:0
EXPOSE 9477
ENTRYPOINT ["/overtime"]
CMD ["run"]
