#!/usr/bin/env bash
# The shared load matrix (../shared/bench/matrix.sh: put with 1/16/64 clients, linearizable get
# with 16/1 clients, clients round-robin over all nodes) against a fresh local 3-node kvnode
# cluster, started with `kvnode demo` and stopped with SIGTERM afterwards.
# usage: kv-example/scripts/bench-matrix.sh [OUT_FILE] [-- KVNODE_FLAGS...]
# env:   STORAGE (rocksdb) TRANSPORT (tcp) CARGO_TARGET_DIR, and matrix.sh's COUNT MAX_SECS KEYSPACE
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-/dev/stdout}"
shift || true
[ "${1:-}" = "--" ] && shift
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
(cd "$ROOT" && cargo build --release -q -p kv-example --bins)
WORK="$(mktemp -d /tmp/kv-bench.XXXXXX)"
"$BIN/kvnode" demo --dir "$WORK/data" --storage "${STORAGE:-rocksdb}" \
    --transport "${TRANSPORT:-tcp}" -- "$@" >"$WORK/demo.out" 2>&1 &
DEMO=$!
trap 'kill -TERM "$DEMO" 2>/dev/null; wait "$DEMO" || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 600); do
    grep -q "Press Ctrl-C" "$WORK/demo.out" && break
    kill -0 "$DEMO" 2>/dev/null || { cat "$WORK/demo.out"; exit 1; }
    sleep 0.1
done
ENDPOINTS="$(grep -o 'node [0-9]*: http://[0-9.:]*' "$WORK/demo.out" | awk '{print $3}' | paste -sd, -)"
echo "cluster: $ENDPOINTS (${STORAGE:-rocksdb}+${TRANSPORT:-tcp}, flags: $*)" >&2
"$ROOT/../shared/bench/matrix.sh" kv "$ENDPOINTS" "$OUT"
