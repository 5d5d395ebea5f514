# ambient-operator: the operator (this module) and the data plane (dataplane/, its own module).
# Every tool is pinned and installed into bin/ from the Go module proxy; envtest's kube-apiserver and etcd
# are built from source into bin/k8s/.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

# One version for the release: the operator's (main.version, the CSV), the data plane's
# (dataplane/version.Version) and the images' tags. The operator runs data-plane images
# <registry>/ambient-dataplane:v<version> for the minors in controllers/render.SupportedMinors;
# test/install checks that VERSION, the samples, config/manager and the bundle agree with it.
VERSION ?= 0.1.0
# The registry the operator takes data-plane images from when not told otherwise (render.DefaultRegistry).
DEFAULT_REGISTRY := ghcr.io/ambient-dev
REGISTRY ?= $(DEFAULT_REGISTRY)
IMG ?= $(REGISTRY)/ambient-operator:v$(VERSION)
DATAPLANE_IMG ?= $(REGISTRY)/ambient-dataplane:v$(VERSION)
BUNDLE_IMG ?= $(REGISTRY)/ambient-operator-bundle:v$(VERSION)
# OLM channels of the bundle ("candidate" while the API is v1alpha1) and the CSV this release upgrades from.
BUNDLE_CHANNELS ?= candidate
BUNDLE_DEFAULT_CHANNEL ?= candidate
BUNDLE_REPLACES ?=
# With another REGISTRY the operator is told to take its data-plane images from there too.
DATAPLANE_REGISTRY_ARG := $(if $(filter-out $(DEFAULT_REGISTRY),$(REGISTRY)),--dataplane-registry=$(REGISTRY))

LOCALBIN := $(CURDIR)/bin
K8SBIN := $(LOCALBIN)/k8s
export PATH := $(LOCALBIN):$(PATH)
export KUBEBUILDER_ASSETS := $(K8SBIN)
# Module downloads go through the proxy only; tools never switch Go toolchains behind our back.
export GOTOOLCHAIN := local

CONTROLLER_GEN_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
KUSTOMIZE_VERSION ?= v5.8.2
PROTOC_GEN_GO_VERSION ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2
OPERATOR_FRAMEWORK_API_VERSION ?= v0.36.0
ISTIO_API_VERSION ?= v1.31.1

CONTROLLER_GEN := $(LOCALBIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
GOLANGCI_LINT := $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
KUSTOMIZE := $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
PROTOC_GEN_GO := $(LOCALBIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTOC_GEN_GO_GRPC := $(LOCALBIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)

RELEASE_TOOLS := $(LOCALBIN)/release

LDFLAGS := -s -w -X main.version=$(VERSION)
DP_LDFLAGS := -s -w -X github.com/ambient-dev/ambient-operator/dataplane/version.Version=$(VERSION)

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: $(CONTROLLER_GEN) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## Generate deepcopy and protobuf code.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	@command -v protoc >/dev/null || { echo "protoc is missing: apt-get install -y protobuf-compiler"; exit 1; }
	cd dataplane/api/v1alpha1 && protoc -I . \
		--plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_out=. --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) --go-grpc_out=. --go-grpc_opt=paths=source_relative \
		*.proto

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from the markers in api/ and controllers/.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths=./... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@# The Gateway API CRDs our Gateway support is tested against, copied from the pinned module.
	@mkdir -p config/crd/external; gw=$$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api); \
	for f in gatewayclasses gateways; do install -m 0644 $$gw/config/crd/standard/gateway.networking.k8s.io_$$f.yaml config/crd/external/; done
	@# Istio's AuthorizationPolicy CRD, whose L4 subset the xDS server translates, from the pinned istio.io/api.
	@istio=$$(go mod download -json istio.io/api@$(ISTIO_API_VERSION) | sed -n 's/.*"Dir": "\(.*\)",*/\1/p'); \
	awk 'BEGIN { RS = "\n---\n" } /name: authorizationpolicies.security.istio.io/ { print; exit }' \
		$$istio/kubernetes/customresourcedefinitions.gen.yaml > config/crd/external/security.istio.io_authorizationpolicies.yaml

.PHONY: fmt
fmt: ## Format the Go code of both modules.
	go fmt ./...
	cd dataplane && go fmt ./...
	cd hack/release && go fmt ./...

.PHONY: vet
vet: ## Run go vet on both modules.
	go vet ./...
	cd dataplane && go vet ./...
	cd hack/release && go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint on both modules and the release tools.
	$(GOLANGCI_LINT) run ./...
	cd dataplane && $(GOLANGCI_LINT) run ./...
	cd dataplane && $(GOLANGCI_LINT) run --build-tags proxyonly ./cmd/ambient-dataplane/
	cd hack/release && $(GOLANGCI_LINT) run --config ../../.golangci.yml ./...

.PHONY: verify
verify: generate manifests bundle fmt ## Regenerate everything (code, CRDs, RBAC, OLM bundle), then fail if the tree changed.
	@if [ -n "$$(git status --porcelain --untracked-files=all -- . ':!bin' ':!dist')" ]; then \
		echo "Generated files are stale or unformatted; run 'make generate manifests bundle fmt' and commit:"; \
		git status --porcelain --untracked-files=all -- . ':!bin' ':!dist'; git --no-pager diff --stat; exit 1; fi
	@echo "Generated code is up to date."

##@ Build

.PHONY: build
build: ## Build the operator (bin/manager) and the data plane (bin/ambient-dataplane, bin/ambient-proxy), static binaries.
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(LOCALBIN)/manager .
	$(MAKE) dataplane-bin

# The data-plane image's two binaries: ambient-dataplane (every role) and ambient-proxy (the node proxy and
# the waypoint: the same commands built without the xDS server and the Kubernetes libraries it needs).
.PHONY: dataplane-bin
dataplane-bin:
	cd dataplane && CGO_ENABLED=0 go build -trimpath -ldflags '$(DP_LDFLAGS)' -o $(LOCALBIN)/ambient-dataplane ./cmd/ambient-dataplane
	cd dataplane && CGO_ENABLED=0 go build -trimpath -tags proxyonly -ldflags '$(DP_LDFLAGS)' -o $(LOCALBIN)/ambient-proxy ./cmd/ambient-dataplane

.PHONY: demo
demo: system-packages envtest build demo-bin ## Run the mesh on this machine: 2 nodes in network namespaces, the operator, traffic, a waypoint, a policy (needs root).
	$(LOCALBIN)/ambient-demo --bin $(LOCALBIN) $(DEMO_ARGS)

# ambient-demo finds the repository (samples, CRDs) from its source paths: no -trimpath.
.PHONY: demo-bin
demo-bin:
	go build -o $(LOCALBIN)/ambient-demo ./hack/demo

.PHONY: run
run: manifests ## Run the operator against the cluster of the current kubeconfig.
	go run -ldflags '$(LDFLAGS)' . --metrics-secure=false --metrics-bind-address=:8080

.PHONY: docker-build
docker-build: ## Build the operator and data-plane images (needs a Docker engine).
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .
	docker build --build-arg VERSION=$(VERSION) -t $(DATAPLANE_IMG) dataplane

##@ Release

.PHONY: bundle
bundle: manifests release-tools ## Generate the OLM bundle (bundle/, bundle.Dockerfile) from config/manifests and config/default.
	$(RELEASE_TOOLS)/bundle --config config/manifests --out bundle --version $(VERSION) --image $(IMG) \
		--related-images ambient-dataplane=$(DATAPLANE_IMG) $(if $(DATAPLANE_REGISTRY_ARG),--manager-arg=$(DATAPLANE_REGISTRY_ARG)) \
		--channels $(BUNDLE_CHANNELS) --default-channel $(BUNDLE_DEFAULT_CHANNEL) --replaces '$(BUNDLE_REPLACES)'

.PHONY: bundle-validate
bundle-validate: release-tools ## Validate bundle/ with operator-framework's validators; any error or warning fails.
	$(RELEASE_TOOLS)/bundle-validate --bundle bundle

.PHONY: installer
installer: manifests $(KUSTOMIZE) ## Write dist/install.yaml: config/default with the operator image pinned to IMG.
	@rm -rf dist/.installer; mkdir -p dist/.installer
	@printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../config/default\n' > dist/.installer/kustomization.yaml
	@cd dist/.installer && $(KUSTOMIZE) edit set image ghcr.io/ambient-dev/ambient-operator=$(IMG)
	@if [ -n "$(DATAPLANE_REGISTRY_ARG)" ]; then printf '%s\n' 'patches:' '- target: {kind: Deployment, name: ambient-operator-controller-manager}' \
		'  patch: |-' '    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "$(DATAPLANE_REGISTRY_ARG)"}' \
		>> dist/.installer/kustomization.yaml; fi
	$(KUSTOMIZE) build dist/.installer > dist/install.yaml
	@rm -rf dist/.installer
	@echo "Wrote dist/install.yaml (operator image $(IMG)): kubectl apply -f dist/install.yaml"

.PHONY: image-build-check
image-build-check: release-tools ## Replay the Dockerfiles' builds without Docker: COPY coverage, static binaries, versions.
	$(RELEASE_TOOLS)/image-check --dockerfile Dockerfile --context . $(IMAGE_CHECK_ARGS) --out $(LOCALBIN)/image \
		--exec --kubeconfig=/nonexistent --expect 'Starting ambient-operator'
	$(RELEASE_TOOLS)/image-check --dockerfile dataplane/Dockerfile --context dataplane $(IMAGE_CHECK_ARGS) --out $(LOCALBIN)/image \
		--exec version --expect ambient-dataplane
	$(RELEASE_TOOLS)/image-check --dockerfile bundle.Dockerfile --context .

IMAGE_CHECK_ARGS = --version $(VERSION) --build-arg TARGETOS=linux --build-arg TARGETARCH=$(shell go env GOARCH)

.PHONY: docker-push
docker-push: ## Push the operator and data-plane images (needs a Docker engine and a login).
	docker push $(IMG)
	docker push $(DATAPLANE_IMG)

.PHONY: bundle-build
bundle-build: ## Build the bundle image (needs a Docker engine).
	docker build -f bundle.Dockerfile -t $(BUNDLE_IMG) .

.PHONY: bundle-push
bundle-push: ## Push the bundle image (needs a Docker engine and a login).
	docker push $(BUNDLE_IMG)

.PHONY: release-tools
release-tools: ## Build the release tools of hack/release (bundle, bundle-validate, image-check) into bin/release.
	cd hack/release && go build -o $(RELEASE_TOOLS)/ ./cmd/...

##@ Test

.PHONY: test
test: envtest ## Run every suite: unit, fuzz seeds and envtest of both modules, the release tools', and the end-to-end suite.
	go test $$(go list ./... | grep -v /test/e2e) -count=1
	cd dataplane && go test ./... -count=1
	@# ambient-proxy, the proxies' build of the same command: its commands (the e2e suite runs it).
	cd dataplane && go test -tags proxyonly -count=1 -run 'Command|Subcommand' ./cmd/ambient-dataplane
	cd hack/release && go test ./... -count=1
	$(MAKE) test-e2e

.PHONY: test-e2e
test-e2e: system-packages envtest build demo-bin ## End-to-end suite: a 2-node cluster in network namespaces, the real operator and data plane (needs root).
	AMBIENT_E2E_BIN=$(LOCALBIN) go test ./test/e2e/ -count=1 -v -timeout 20m $(E2E_ARGS)

.PHONY: system-packages
system-packages: ## Install the Debian packages needed here when missing (protoc, iptables, iproute2).
	@hack/system-packages.sh

.PHONY: envtest
envtest: $(K8SBIN)/.built ## Build envtest's kube-apiserver and etcd from source into bin/k8s (cached).

# The stamp records the pinned modules; a changed pin rebuilds, an unchanged one costs nothing.
ENVTEST_PIN := $(shell cat hack/envtest/kube-apiserver/go.mod hack/envtest/etcd/go.mod 2>/dev/null | sha256sum | cut -c1-16)
$(K8SBIN)/.built: hack/envtest/kube-apiserver/go.mod hack/envtest/etcd/go.mod
	@mkdir -p $(K8SBIN)
	@if [ "$$(cat $@ 2>/dev/null)" = "$(ENVTEST_PIN)" ] && [ -x $(K8SBIN)/kube-apiserver ] && [ -x $(K8SBIN)/etcd ]; then touch $@; exit 0; fi; \
	echo "Building kube-apiserver and etcd from source (several minutes on a cold cache)..."; \
	(cd hack/envtest/kube-apiserver && go build -trimpath -o $(K8SBIN)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver); \
	(cd hack/envtest/etcd && go build -trimpath -o $(K8SBIN)/etcd .); \
	echo "$(ENVTEST_PIN)" > $@

##@ Benchmarks

# Extra flags of ambient-bench (`bin/ambient-bench --help`), e.g. BENCH_ARGS='--repeats 1 --phases throughput'.
BENCH_ARGS ?=

.PHONY: bench
bench: ## Run the data-plane and xDS benchmarks (needs root).
	@[ "$$(id -u)" = 0 ] || { echo "make bench needs root: it creates a network namespace and iptables rules (sudo make bench)"; exit 1; }
	@mkdir -p $(LOCALBIN) dist
	$(MAKE) dataplane-bin
	cd dataplane && CGO_ENABLED=0 go build -trimpath -o $(LOCALBIN)/ambient-bench ./cmd/ambient-bench
	@# Data plane, each proxy a separate process (docs/performance.md, "Data plane"): the node proxies run
	@# ambient-proxy, as the operator's DaemonSet does.
	$(LOCALBIN)/ambient-bench --dataplane-bin $(LOCALBIN)/ambient-proxy --markdown dist/bench-dataplane.md $(BENCH_ARGS)
	@# The HBONE package alone, in one process: tunnel setup, round trips, throughput, idle-tunnel memory.
	cd dataplane && go test -run '^$$' -bench . -benchtime 1s ./hbone/
	@# xDS scale (docs/performance.md, "xDS"): dataplane/xds's env-gated TestScale.
	cd dataplane && AMBIENT_XDS_SCALE=1 go test ./xds -run '^TestScale$$' -v -count=1

##@ Tools

$(LOCALBIN):
	@mkdir -p $@

# go-install-tool installs $(2)@$(3) into bin/ under a versioned name, so a changed pin installs afresh.
define go-install-tool
@[ -x $(1) ] || { set -e; echo "Installing $(2)@$(3)"; tmp=$$(mktemp -d); \
	GOBIN=$$tmp go install $(2)@$(3); mv $$tmp/$$(basename $$(echo $(2) | sed 's|/v[0-9]*$$||')) $(1); rm -rf $$tmp; }
endef

$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$@,sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_GEN_VERSION))
$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$@,github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))
$(KUSTOMIZE): | $(LOCALBIN)
	$(call go-install-tool,$@,sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))
$(PROTOC_GEN_GO): | $(LOCALBIN)
	$(call go-install-tool,$@,google.golang.org/protobuf/cmd/protoc-gen-go,$(PROTOC_GEN_GO_VERSION))
$(PROTOC_GEN_GO_GRPC): | $(LOCALBIN)
	$(call go-install-tool,$@,google.golang.org/grpc/cmd/protoc-gen-go-grpc,$(PROTOC_GEN_GO_GRPC_VERSION))

.PHONY: tools
tools: $(CONTROLLER_GEN) $(GOLANGCI_LINT) $(KUSTOMIZE) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## Install every pinned tool into bin/.
