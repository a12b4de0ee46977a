# qbo build and test entry points. `make test` and `make run` are the two
# commands the README promises work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

GO        ?= go
CACHE     ?= /var/cache/qbo
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULE    := github.com/qbo/qbo
LDFLAGS   := -s -w -X $(MODULE)/cmd/internal/buildinfo.Version=$(VERSION)
BIN       := bin
TOOLS     := $(CACHE)/bin

# Expensive artefacts live under the cache so warm runs are fast.
export GOCACHE    := $(CACHE)/go-build
export GOMODCACHE := $(CACHE)/go-mod
export GOFLAGS    := -buildvcs=false

GOTESTSUM_VERSION   := v1.13.0
STATICCHECK_VERSION := v0.8.2
GOTESTSUM   := $(TOOLS)/gotestsum-$(GOTESTSUM_VERSION)
STATICCHECK := $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)

.PHONY: all setup generate check-generate build test test-unit test-bpf test-integration test-e2e \
        run bench lint clean tools

all: build

setup:
	@bash scripts/setup.sh

tools: $(GOTESTSUM) $(STATICCHECK)

$(GOTESTSUM):
	@mkdir -p $(TOOLS)/tmp
	GOBIN=$(TOOLS)/tmp $(GO) install gotest.tools/gotestsum@$(GOTESTSUM_VERSION)
	mv $(TOOLS)/tmp/gotestsum $@

$(STATICCHECK):
	@mkdir -p $(TOOLS)/tmp
	GOBIN=$(TOOLS)/tmp $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/tmp/staticcheck $@

# Regenerate the BPF objects and their Go bindings (clang-19 via bpf2go).
generate:
	$(GO) generate ./bpf/...

# CI: the committed objects must be exactly what the sources generate.
check-generate: generate
	@if ! git diff --quiet -- bpf || [ -n "$$(git ls-files --others --exclude-standard bpf)" ]; then \
		echo "generated BPF files differ from the committed ones:"; git status --short bpf; \
		git diff --stat -- bpf; exit 1; fi
	@echo "generated BPF files match"

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/qbod ./cmd/qbod
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/qbo ./cmd/qbo

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags bpftest,integration,e2e ./...
	$(STATICCHECK) -tags bpftest,integration,e2e ./...

# Every tier, with set-up and clean-up; see scripts/test.sh.
test: setup tools
	@GOTESTSUM=$(GOTESTSUM) MAKE="$(MAKE)" bash scripts/test.sh

test-unit: $(GOTESTSUM)
	$(GOTESTSUM) --format testname -- -count=1 ./...

test-bpf: $(GOTESTSUM)
	$(GOTESTSUM) --format testname -- -count=1 -p 1 -tags bpftest ./...

test-integration: $(GOTESTSUM)
	$(GOTESTSUM) --format testname -- -count=1 -p 1 -tags integration ./...

test-e2e: build $(GOTESTSUM)
	QBO_BIN=$(CURDIR)/$(BIN) $(GOTESTSUM) --format testname -- -count=1 -p 1 -timeout 20m -tags e2e ./tests/...

run: setup build
	bash scripts/engines.sh start
	exec $(BIN)/qbod

bench:
	bash bench/run.sh

clean:
	rm -rf $(BIN)
