# tmc-runner — see README.md. `make test` is what CI runs (.ci/run).
GO          ?= go
BIN         := bin/tmc-runner
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
STATICCHECK_VERSION := v0.8.2

.PHONY: run build test test-quick lint fuzz bench bench-smoke bench-quick bench-follow deploy-check chaos tools clean

## run: the embedded default — NATS + JetStream, Talend simulator, worker
run:
	$(GO) run ./cmd/tmc-runner dev

## build: the tmc-runner binary in bin/
build:
	$(GO) build -o $(BIN) ./cmd/tmc-runner

## test: every check CI runs — lint, deployment validation, all tests with the race detector, fuzz smoke runs
test: lint deploy-check
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz FUZZTIME=300000x

## test-quick: the edit-test loop (-short skips the slowest waits)
test-quick:
	$(GO) test -race -short ./...

## lint: gofmt, go vet, staticcheck
lint: tools
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

# Counts, not durations: with a duration, Go's fuzz coordinator (go1.26;
# golang/go#75804, fixed in 1.27) can fail a target with a bare "context
# deadline exceeded" as the time runs out, with no failing input. 300000
# runs take about 10 s per target on 2 cores.
FUZZTIME ?= 2000000x
## fuzz: the fuzz targets for everything that parses outside input
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) -timeout 20m ./messages
	$(GO) test -run '^$$' -fuzz '^FuzzPercentRoundTrip$$' -fuzztime $(FUZZTIME) -timeout 20m ./messages
	$(GO) test -run '^$$' -fuzz '^FuzzObjectMembers$$' -fuzztime $(FUZZTIME) -timeout 20m ./messages
	$(GO) test -run '^$$' -fuzz '^FuzzRunTaskBody$$' -fuzztime $(FUZZTIME) -timeout 20m ./talendsim

## bench-quick: requests/s through the whole pipeline at zero Talend latency
bench-quick:
	$(GO) test -run '^$$' -bench BenchmarkPipeline -benchtime 20000x -count 3 ./runner

## bench: baseline pipeline vs the worker (every row 3 times, interleaved), fleet budget, backlog RSS → perf/results (see perf/README.md)
bench:
	$(GO) run ./perf/cmd/tmcbench -out perf/results -repeat 3 -window 8s

## bench-smoke: the same, smaller (about 3 minutes)
bench-smoke:
	$(GO) run ./perf/cmd/tmcbench -out perf/results -quick

## bench-follow: Talend calls per followed execution and result delay (time-compressed)
bench-follow:
	TMC_BENCH=1 $(GO) test -run TestFollowEconomy -count=1 -v ./bench

## deploy-check: kustomize + kubeconform -strict (schemas generated from Go modules), alert rule tests, Dockerfile lint
deploy-check:
	bash deployments/validate.sh

## chaos: the chaos suite at 10,000 requests (kill -9, nats-server restarts, Talend faults); make test runs 1,000
chaos:
	CHAOS_REQUESTS=10000 $(GO) test -count=1 -v -timeout 30m -run '^TestChaos$$' ./chaos

tools: $(STATICCHECK)
$(STATICCHECK):
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

clean:
	rm -rf bin .tmc-dev
