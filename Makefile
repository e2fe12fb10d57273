# overtime — `make help` lists the targets.
SHELL := /bin/bash
GO    ?= go
BIN   := bin/overtime
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Debian packages the tests run for real: clang/llvm/libbpf-dev rebuild the
# eBPF objects, restic and borgbackup are the engines, prometheus brings
# promtool and the server for the alert test.
# qemu-system-x86 and busybox-static boot the kernel matrix (test/vm);
# containerd and runc run the container test (test/container), whose
# workload's shell is busybox-static too.
APT_PKGS := clang llvm libbpf-dev restic borgbackup prometheus util-linux procps psmisc curl qemu-system-x86 busybox-static containerd runc fuse-overlayfs
HELM_VERSION := v3.22.0
export PATH := $(PATH):$(shell $(GO) env GOPATH)/bin

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/overtime (no clang needed: the eBPF objects are committed)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/overtime

.PHONY: image
image: ## build the agent image (as the Dockerfile does, no container engine needed) into bin/overtime-image.tar
	@mkdir -p bin
	$(GO) run ./internal/ociimage/mkimage -o bin/overtime-image.tar -version $(VERSION) -commit $(COMMIT)

.PHONY: generate
generate: deps-generate ## rebuild the eBPF objects with bpf2go (needs clang)
	$(GO) generate ./bpf/

.PHONY: check-generated
check-generated: deps-generate ## fail when the committed eBPF objects are stale
	@out=$$(OVERTIME_REQUIRE_CLANG=1 $(GO) test -count=1 -v -run '^TestGeneratedUpToDate$$' ./bpf/ 2>&1); status=$$?; \
	echo "$$out" | grep -E '^(--- |ok|FAIL|panic)|_test\.go:'; \
	[ $$status = 0 ] || exit $$status; \
	echo "$$out" | grep -q '^--- PASS: TestGeneratedUpToDate' || { echo "check-generated: TestGeneratedUpToDate did not run"; exit 1; }

.PHONY: deps
deps: ## install what the tests need (apt-get, go install) when missing
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v helm >/dev/null || { echo "installing helm $(HELM_VERSION)"; $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); }

.PHONY: deps-generate
deps-generate:
	@command -v clang >/dev/null && dpkg -s libbpf-dev >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang llvm libbpf-dev >/dev/null; }

.PHONY: test
test: deps ## run every test as root against the real kernel (vet, race, short fuzz), then the smoke set of the kernel matrix in VMs
	@[ "$$(id -u)" = 0 ] || { echo "make test runs as root: the tests load eBPF programs, make cgroups and kill their own processes"; exit 1; }
	$(GO) vet ./...
	OVERTIME_REQUIRE_CLANG=1 OVERTIME_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 30m $$($(GO) list ./... | grep -v /test/container)
	# Alone: its agent and the e2e agents would each adopt the other's tree cgroups.
	OVERTIME_REQUIRE_TOOLS=1 $(GO) test -race -count=1 -timeout 15m ./test/container/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./agent/ ./bpf/ ./collector/ # the micro benchmarks still run
	$(MAKE) --no-print-directory fuzz FUZZTIME=100000x
	OVERTIME_REQUIRE_TOOLS=1 $(GO) run ./test/vm -set smoke # the smoke set on 5.10, 6.1, 6.12 x pure v2, v1, hybrid, in VMs

.PHONY: test-kernels
test-kernels: deps ## the real-kernel tests in VMs: Debian 5.10, 6.1, 6.12 x cgroup pure v2, pure v1, hybrid (qemu TCG; writes the README table)
	OVERTIME_REQUIRE_TOOLS=1 $(GO) run ./test/vm -set full -readme README.md $(VMFLAGS)

.PHONY: stress
# COUNT repeats each test (default 10); STRESS_PKGS narrows the packages.
stress: deps ## as root: the e2e and bpf tests COUNT=10 times over, to find flaky ones (about 10x their share of make test)
	@[ "$$(id -u)" = 0 ] || { echo "make stress runs as root: the tests load eBPF programs, make cgroups and kill their own processes"; exit 1; }
	OVERTIME_REQUIRE_CLANG=1 OVERTIME_REQUIRE_TOOLS=1 $(GO) test -race -count=$(or $(COUNT),10) -timeout 180m $(or $(STRESS_PKGS),./bpf/ ./test/e2e/)

.PHONY: fuzz
# FUZZTIME is a duration (30s) or a count of inputs (100000x); a count is
# steadier on a loaded machine.
fuzz: ## a short fuzz run of the config parser and the event decoder
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(or $(FUZZTIME),30s) ./agent/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(or $(FUZZTIME),30s) ./bpf/

.PHONY: bench
bench: build ## benchmarks, as root: the node suite (bench/, about 17 minutes, 9 of them the load target) against bin/overtime, then the hot-path micro benchmarks
	@[ "$$(id -u)" = 0 ] || { echo "make bench runs as root: the suite loads eBPF programs through the agent, makes cgroups and kills its own processes"; exit 1; }
	@status=0; $(GO) run ./bench -agent $(BIN) $(BENCHFLAGS) || status=$$?; \
	echo "-- micro benchmarks (go test -bench)"; \
	$(GO) test -run '^$$' -bench . -benchmem ./agent/ ./bpf/ ./collector/ || status=$$?; \
	exit $$status

.PHONY: demo
demo: deps build ## a real hung restic backup ended at its deadline, then by its stall; its stale lock removed
	@bash test/demo.sh $(BIN)

.PHONY: lint
lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

.PHONY: clean
clean: ## remove build outputs
	rm -rf bin
