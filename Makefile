# Herald developer tasks. `make` or `make help` lists them.
# Three Go modules, tied by go.work: every module-wide command runs in each.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO           ?= go
MODULES      := . ./api ./sdk/go
BIN          := bin
# Whole-module test run limit (go test -timeout).
TEST_TIMEOUT ?= 20m
# Extra flags for go test, e.g. GOTESTFLAGS=-race.
GOTESTFLAGS  ?=
# How long each fuzz target runs in `make fuzz`.
FUZZTIME     ?= 30s
# Benchmark duration: one iteration in CI (the numbers are for the log, not a gate).
BENCHTIME    ?= $(if $(CI),1x,1s)
# heraldbench in `make bench`: 0 skips it; the preset is ci (about 20 s) when CI
# is set, else quick (a few minutes). `make bench-full` runs the full preset.
HERALDBENCH  ?= 1
BENCH_PRESET ?= $(if $(CI),ci,quick)
# heraldbench writes <BENCH_OUT>-<preset>.json and .md (bin/ is not committed).
BENCH_OUT    ?= $(BIN)/heraldbench
# Where `make run` keeps its data (push log, store, etcd, admin token).
DATA_DIR     ?= ./data
# Generated protobuf Go checked into git (see scripts/genproto.sh).
GENERATED    := '*.pb.go'
# Shell test, run in a module directory: does the module hold any package yet?
HAS_PKGS      = [ -n "$$($(GO) list -e ./... 2>/dev/null)" ]

.PHONY: help build run test test-short fuzz bench bench-full bench-cluster heraldbench lint proto proto-check tidy clean \
	deps-up deps-down deps-status deps-clean cluster-up cluster-down

help: ## List the targets
	@echo "Usage: make <target> [VAR=value]"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: FUZZTIME=$(FUZZTIME) BENCHTIME=$(BENCHTIME) TEST_TIMEOUT=$(TEST_TIMEOUT) GOTESTFLAGS=$(GOTESTFLAGS)"

build: ## Build bin/herald and bin/heraldctl
	$(GO) build -o $(BIN)/herald ./cmd/herald
	$(GO) build -o $(BIN)/heraldctl ./cmd/heraldctl

run: build ## Build, then run every role in one process on the embedded engines (data in DATA_DIR)
	$(BIN)/herald -data-dir $(DATA_DIR)

test: deps-up ## Start the engines, run every module's tests (root module with -tags integration), then the quickstart script
	@for m in $(MODULES); do \
		if [ "$$m" = . ]; then \
			echo "== go test -tags integration . (all but e2e)"; \
			$(GO) test -tags integration -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) $$($(GO) list ./... | grep -v '/e2e$$'); \
			echo "== go test -tags integration ./e2e (alone: its outage tests stop and restart the engines)"; \
			$(GO) test -tags integration -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./e2e; \
		else \
			echo "== go test $$m"; \
			(cd $$m && if $(HAS_PKGS); then $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./...; fi); \
		fi; \
	done
	@if [ -x scripts/test-quickstart.sh ]; then \
		echo "== scripts/test-quickstart.sh"; scripts/test-quickstart.sh; \
	elif [ -f scripts/test-quickstart.sh ]; then \
		echo "== scripts/test-quickstart.sh"; bash scripts/test-quickstart.sh; \
	fi

test-short: ## Run the quick tests of every module (go test -short)
	@for m in $(MODULES); do \
		echo "== go test -short $$m"; \
		(cd $$m && if $(HAS_PKGS); then $(GO) test -short -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./...; fi); \
	done

fuzz: ## Run each fuzz target of every module for FUZZTIME (found with go test -list)
	@n=0; \
	for m in $(MODULES); do \
		targets=$$(cd $$m && if ! $(HAS_PKGS); then exit 0; fi; $(GO) test -list '^Fuzz' ./... | awk ' \
			/^Fuzz/ { names[++k] = $$1; next } \
			/^ok / { for (i = 1; i <= k; i++) print $$2, names[i]; k = 0 }'); \
		while read -r pkg name; do \
			[ -n "$$pkg" ] || continue; \
			echo "== fuzz $$pkg $$name ($(FUZZTIME))"; \
			(cd $$m && GO=$(GO) $(CURDIR)/scripts/fuzz-one.sh "$$pkg" "$$name" $(FUZZTIME)) || exit 1; \
			n=$$((n + 1)); \
		done <<< "$$targets"; \
	done; \
	echo "fuzz: $$n targets, $(FUZZTIME) each"

bench: ## Run the Go benchmarks of every module (BENCHTIME, 1x when CI is set), then heraldbench -preset BENCH_PRESET (HERALDBENCH=0 skips it)
	@for m in $(MODULES); do \
		echo "== go test -bench $$m"; \
		(cd $$m && if $(HAS_PKGS); then $(GO) test -run '^$$' -bench . -benchtime=$(BENCHTIME) -benchmem -timeout $(TEST_TIMEOUT) ./...; fi); \
	done
	@if [ "$(HERALDBENCH)" != 0 ]; then $(MAKE) heraldbench; fi

bench-full: ## Run heraldbench -preset full (19,000 connections; about 10 minutes; see docs/benchmarks.md)
	@$(MAKE) heraldbench BENCH_PRESET=full

bench-cluster: build ## heraldbench connect+fanout+raw against a local cluster of GATEWAYS gateways (8) holding N devices (150000); see docs/benchmarks.md
	GATEWAYS=$(or $(GATEWAYS),8) N=$(or $(N),150000) scripts/bench-cluster.sh

heraldbench: build
	$(GO) build -o $(BIN)/heraldbench ./cmd/heraldbench
	@echo "== heraldbench -preset $(BENCH_PRESET)"
	$(BIN)/heraldbench -preset $(BENCH_PRESET) -herald-bin $(BIN)/herald -out $(BENCH_OUT)-$(BENCH_PRESET)

lint: ## Fail on unformatted files (gofmt -l) and go vet findings in every module
	@files=$$(git ls-files --cached --others --exclude-standard -- '*.go' | \
		while read -r f; do if [ -f "$$f" ]; then echo "$$f"; fi; done); \
	unformatted=$$(gofmt -l $$files </dev/null); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@for m in $(MODULES); do \
		echo "== go vet $$m"; \
		(cd $$m && if $(HAS_PKGS); then $(GO) vet ./...; fi); \
	done

proto: ## Regenerate the protobuf Go code (scripts/genproto.sh, pinned generators)
	scripts/genproto.sh

proto-check: proto ## Regenerate and fail if the checked-in generated code differs
	@if ! git diff --exit-code --stat -- $(GENERATED) || \
		[ -n "$$(git ls-files --others --exclude-standard -- $(GENERATED))" ]; then \
		git status --short -- $(GENERATED); \
		echo "proto-check: generated code is stale: run 'make proto' and commit the result"; \
		exit 1; \
	fi
	@echo "proto-check: generated code is up to date"

tidy: ## go mod tidy in every module
	@for m in $(MODULES); do \
		echo "== go mod tidy $$m"; \
		(cd $$m && GOWORK=off $(GO) mod tidy); \
	done

clean: ## Remove build outputs (keeps ./data and the pinned generators in bin/tools)
	rm -f $(BIN)/herald $(BIN)/heraldctl

deps-up: ## Install (once) and start Kafka, Cassandra, Redis and etcd on loopback, wait until ready (data in .deps/)
	scripts/deps.sh up

deps-down: ## Stop what deps-up started (keeps data)
	scripts/deps.sh down

deps-status: ## Show which engines are up
	scripts/deps.sh status

deps-clean: ## Stop the engines and remove their data (keeps the downloaded jars)
	scripts/deps.sh clean

cluster-up: ## Start 1 api, 1 router, 2 dispatchers, GATEWAYS gateways (2) on the real engines (scripts/cluster.sh; ROUTER=etcd for etcd routes)
	scripts/cluster.sh up

cluster-down: ## Stop the local cluster (the engines keep running: make deps-down)
	scripts/cluster.sh down
