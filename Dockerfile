# The operator image: a static binary on a distroless, non-root base.
# Build: docker build --build-arg VERSION=0.1.0 -t ghcr.io/ambient-dev/ambient-operator:v0.1.0 .
FROM golang:1.26 AS build
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH=amd64
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY main.go ./
COPY api/ api/
COPY controllers/ controllers/
COPY internal/ internal/
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/manager .

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="ambient-operator" \
      org.opencontainers.image.source="https://github.com/ambient-dev/ambient-operator"
COPY --from=build /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
