# interceptor: the two commands that matter are `make demo` and `make test`.
#
#   make bootstrap  idempotent machine set-up (apt packages, nightly + rust-src, bpf-linker, venv)
#   make build      bootstrap, then the release binary (build.rs compiles the eBPF object)
#   make demo       build, then real AutoGen agents vs a throw-away PostgreSQL and an MCP tool server: masked, held, denied
#   make test       build, then the whole workspace test suite (needs root; uses sudo -E if not)
#   make bench      every performance goal in one bounded run (< 10 min), written to docs/performance.md
#   make bench-smoke the same with tiny counts and debug binaries (~1 min), docs left untouched
#   make deb        build, then the Debian package target/debian/interceptor_*.deb (cargo-deb)
#   make fuzz       every cargo-fuzz target for FUZZ_SECONDS (default 60) each; fails on a crash
#   make soak       a bounded soak (10 min): RSS and descriptors under a fixed load, no lost events
#   make lint       rustfmt check and clippy with warnings as errors
#   make clean      cargo clean

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

# cargo, rustup and bpf-linker live in ~/.cargo/bin; build.rs needs bpf-linker on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
ROOT := $(CURDIR)

# Tests attach eBPF programs and create cgroups: they run as root. Compiling does not, so a
# non-root user compiles as themselves and only the test run goes through sudo.
ifeq ($(shell id -u),0)
AS_ROOT :=
else
# HOME, CARGO_HOME and RUSTUP_HOME are pinned so root reuses this user's toolchains and build.
AS_ROOT := sudo -E env PATH="$(PATH)" HOME="$(HOME)" \
	CARGO_HOME="$(or $(CARGO_HOME),$(HOME)/.cargo)" RUSTUP_HOME="$(or $(RUSTUP_HOME),$(HOME)/.rustup)"
endif

.PHONY: bootstrap build demo test bench bench-smoke soak deb deb-package fuzz lint clean

bootstrap:
	"$(ROOT)/scripts/bootstrap.sh"

build: bootstrap
	$(CARGO) build --release -p interceptor

demo: build
	"$(ROOT)/scripts/demo.sh"

# interceptor-ebpf only builds for the BPF target (interceptor's build.rs does that); on the host
# its no_std panic handler collides with std's, so --workspace leaves it out explicitly.
WORKSPACE := --workspace --exclude interceptor-ebpf

test: build
	$(CARGO) build $(WORKSPACE)
	$(CARGO) test $(WORKSPACE) --no-run
	$(AS_ROOT) $(if $(CI),CI="$(CI)") INTERCEPTOR_BIN="$(ROOT)/target/debug/interceptor" \
		$(CARGO) test $(WORKSPACE) --no-fail-fast -- --test-threads=1
	$(MAKE) fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

# scripts/bench.sh runs every section (capture, PostgreSQL, bulk, HTTP, memory, criterion) against one
# throw-away PostgreSQL and writes the summary table at the top of docs/performance.md. Every
# figure is measured in the same run as its baseline. Bounded: fixed counts and durations,
# loopback only. Never part of `make test`; tests/tests/bench_smoke.rs runs the smoke variant.
BENCHES := --bench policy --bench masking --bench journal

bench: build
	$(CARGO) build --release -p interceptor-bench
	$(CARGO) bench -p interceptor-bench $(BENCHES) --no-run
	$(AS_ROOT) BENCH_COMMAND="make bench" "$(ROOT)/scripts/bench.sh"

# A bounded soak (10 minutes by default: SOAK_SECONDS, SOAK_RATE): RSS and descriptors sampled
# under a fixed pgbench rate, and every transaction found in the journal. Writes its block of
# docs/performance.md. Not part of `make test` or `make bench`.
soak: build
	$(AS_ROOT) "$(ROOT)/scripts/soak.sh"

bench-smoke: bootstrap
	$(CARGO) build -p interceptor -p interceptor-bench
	$(CARGO) bench -p interceptor-bench --profile dev $(BENCHES) --no-run
	$(AS_ROOT) BENCH_SMOKE=1 BENCH_COMMAND="make bench-smoke" "$(ROOT)/scripts/bench.sh"

# The Debian package, from the release binary `build` made (cargo-deb --no-build). What it holds
# is listed in interceptor/Cargo.toml ([package.metadata.deb]) and docs/operations.md. Completions,
# the man page and the unit (ExecStart= on /usr/bin instead of `install`'s /usr/local/bin) are
# generated into target/<profile>/deb/ first, from the binary's own clap definitions.
# `deb-package` does the packaging alone, for a binary already built: DEB_PROFILE=dev packages
# target/debug/interceptor (tests/tests/package.rs does that, to skip a release build).
DEB_PROFILE ?= release
DEB_DIR := $(ROOT)/target/$(if $(filter dev,$(DEB_PROFILE)),debug,$(DEB_PROFILE))

deb: build
	$(MAKE) deb-package DEB_PROFILE=release

deb-package:
	"$(ROOT)/scripts/deb-assets.sh" "$(DEB_DIR)/interceptor" "$(DEB_DIR)/deb"
	$(CARGO) deb -p interceptor --no-build --profile "$(DEB_PROFILE)"

# The fuzz targets (interceptor/fuzz/, cargo-fuzz on nightly), each for FUZZ_SECONDS, bounded in
# memory and input size; a crash fails the run and names the input (scripts/fuzz.sh). `make test`
# ends with a short pass (TEST_FUZZ_SECONDS each); the regression inputs it keeps are replayed by
# `cargo test` on stable. Builds into target/fuzz/ as the calling user (no root needed).
FUZZ_SECONDS ?= 60
TEST_FUZZ_SECONDS ?= 10

fuzz: bootstrap
	FUZZ_SECONDS="$(FUZZ_SECONDS)" "$(ROOT)/scripts/fuzz.sh"

# clippy compiles interceptor's build.rs, which needs the eBPF toolchain from bootstrap.
lint: bootstrap
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
