# One build profile (release, assertions on) for tests, the demo and benchmarks: it compiles once.
CARGO ?= cargo
PROFILE := --release

.PHONY: test demo deps fmt clippy bench

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
