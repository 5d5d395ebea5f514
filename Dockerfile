# The operator image: one static binary (CGO_ENABLED=0) on a distroless, non-root base.
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/ambient-dev/ambient-operator:v0.1.0 .
# VERSION is the operator's version (main.version), logged at start. `make image-build-check` replays the
# build stage below without a Docker engine: keep its go build a single command, and COPY every directory
# the binary is built from (the check fails on a missing one).
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG VERSION=dev
# Set by BuildKit for the target platform; empty (the build host's) with the legacy builder.
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY main.go ./
COPY api/ api/
COPY controllers/ controllers/
COPY internal/ internal/
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/manager .

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="ambient-operator" \
      org.opencontainers.image.description="Installs, runs and upgrades a sidecar-less (ambient) service mesh" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/ambient-dev/ambient-operator"
COPY --from=build /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
