# One build profile (release, assertions on) for tests, the demo and benchmarks: it compiles once.
CARGO ?= cargo
PROFILE := --release

.PHONY: test demo deps fmt clippy bench plant mutants

# rocksdb's bindgen needs libclang; install it when missing (CI runs as root on a fresh machine).
deps:
	@if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; then \
		echo "libclang is missing: installing libclang-dev (needed by rocksdb's bindgen)"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libclang-dev clang; \
		else echo "run: sudo apt-get install -y libclang-dev clang" >&2; exit 1; fi; \
	fi

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(PROFILE) -- -D warnings
	$(CARGO) test --workspace $(PROFILE)

# A local 3-node kv cluster (RocksDB + TCP) as child processes; Ctrl-C stops it. kvctl is
# built first so the commands the demo prints work.
demo: deps
	$(CARGO) build $(PROFILE) -p kv-example --bin kvctl
	$(CARGO) run $(PROFILE) -p kv-example --bin kvnode -- demo

bench:
	$(CARGO) bench --workspace

# Plants the classic Raft bugs of raft-core/mutants/*.patch one at a time in a scratch copy and
# runs the simulation's default seeds and the scenario tests against each: every bug must be
# caught (see raft-core/MUTANTS.md). Not part of `make test`: it rebuilds raft-core per bug.
plant:
	raft-core/mutants/plant.sh

# Mutation testing of the protocol (raft-proto) with cargo-mutants, raft-proto's unit tests and
# raft-core's unit, simulation, scenario and safety tests as the test command (--test-package:
# the tests that exercise the protocol live mostly in raft-core). cargo-mutants' baseline runs the mutated package's tests, which
# lack those targets, so it is skipped and the timeouts are set. Long (hundreds of mutants,
# each a rebuild of raft-proto and raft-core's tests and a simulation run, 20 to 60 s here);
# narrow it with e.g. MUTANTS_FILES=raft-proto/src/protocol/transfer.rs, add options with
# MUTANTS_ARGS (such as "--re maybe_commit --output /tmp/mutants"). Survivors go in
# raft-core/MUTANTS.md.
MUTANTS_FILES ?= raft-proto/src/protocol/**/*.rs
MUTANTS_ARGS ?=
mutants:
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants --test-package raft-proto --test-package raft-core --file '$(MUTANTS_FILES)' \
		--baseline skip \
		--timeout 600 --build-timeout 1200 --cargo-arg=--release $(MUTANTS_ARGS) \
		-- --lib --test simulation --test scenarios --test safety
