#!/usr/bin/env bash
# Plants each classic Raft bug of raft-core/mutants/*.patch (one bug per patch) in a scratch
# copy of the workspace, runs the simulation (the default seeds of `make test`) and the
# scenario and safety tests against it, and reports per bug whether they caught it. A bug that survives
# means the proof has a hole: the script exits non-zero.
#
#   raft-core/mutants/plant.sh                 # every patch
#   raft-core/mutants/plant.sh c-double-vote   # some, by name
#
# Most patches plant their bug in the protocol (raft-proto/src/protocol), some in raft-core; the
# tests that must catch it are raft-core's either way.
#
# PLANT_SCRATCH (default $TMPDIR/raft-plant) is the scratch copy, PLANT_TARGET_DIR (default
# $TMPDIR/raft-plant-target) its cargo target directory, kept between runs so only raft-proto
# and raft-core rebuild. The working tree is never modified. Logs: $PLANT_SCRATCH.logs/<bug>.<target>.log.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=${TMPDIR:-/tmp}
scratch=${PLANT_SCRATCH:-$tmp/raft-plant}
logs=$scratch.logs
export CARGO_TARGET_DIR=${PLANT_TARGET_DIR:-$tmp/raft-plant-target}
cargo=${CARGO:-cargo}
tests=(--release -p raft-core --test simulation --test scenarios --test safety)

if [ $# -gt 0 ]; then
    names=("$@")
else
    names=()
    for patch in "$root"/raft-core/mutants/*.patch; do
        names+=("$(basename "$patch" .patch)")
    done
fi

mkdir -p "$logs" "$CARGO_TARGET_DIR"
# Cargo names a workspace's artifacts by paths relative to the workspace root: two scratch
# copies sharing a target directory overwrite each other's builds. One run at a time.
exec 9>"$CARGO_TARGET_DIR/plant.lock"
flock 9

# Runs one test target of the scratch copy; prints how it caught the bug ("-" if it did not):
# the failing seed and the first violation, or the failing tests.
run_target() {
    local target=$1 log=$2
    if (cd "$scratch" && "$cargo" test --release -p raft-core --test "$target") >"$log" 2>&1; then
        echo "-"
        return
    fi
    local seed what failed
    seed=$(grep -o -m1 'simulation seed [0-9]*' "$log" | sed 's/simulation //' || true)
    what=$(grep -m1 -E 'invariant violated|panicked at' -A1 "$log" | grep -v 'panicked at' \
        | head -1 | sed 's/^invariant violated (seed [0-9]*): //' | cut -c1-150 || true)
    failed=$(sed -n '/^failures:$/,/^test result/p' "$log" | grep -E '^    [a-z_0-9]+$' \
        | sort -u | tr -d ' ' || true)
    local count first
    count=$(echo "$failed" | grep -c . || true)
    first=$(echo "$failed" | head -1)
    if [ -n "$seed" ]; then
        echo "$seed: $what"
    else
        echo "$first$( [ "$count" -gt 1 ] && echo " (+$((count - 1)) more)"): $what"
    fi
}

survived=0
for name in "${names[@]}"; do
    patch=$root/raft-core/mutants/$name.patch
    [ -f "$patch" ] || { echo "no such patch: $patch" >&2; exit 2; }
    # A fresh copy of the sources (no .git, no target), then the bug. Touching every source
    # makes cargo rebuild whatever an earlier bug left compiled from other contents.
    rm -rf "$scratch"
    mkdir -p "$scratch"
    (cd "$root" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$scratch" && tar -xf -)
    find "$scratch" -name '*.rs' -exec touch {} +
    if ! (cd "$scratch" && git apply "$patch") 2>"$logs/$name.apply.log"; then
        echo "$name: DOES NOT APPLY (the code moved: regenerate the patch; $logs/$name.apply.log)"
        survived=$((survived + 1))
        continue
    fi
    started=$(date +%s)
    if ! (cd "$scratch" && "$cargo" test "${tests[@]}" --no-run) >"$logs/$name.build.log" 2>&1; then
        echo "$name: DOES NOT BUILD (see $logs/$name.build.log)"
        survived=$((survived + 1))
        continue
    fi
    simulation=$(run_target simulation "$logs/$name.simulation.log")
    scenarios=$(run_target scenarios "$logs/$name.scenarios.log")
    safety=$(run_target safety "$logs/$name.safety.log")
    if [ "$simulation" = "-" ] && [ "$scenarios" = "-" ] && [ "$safety" = "-" ]; then
        verdict=SURVIVED
        survived=$((survived + 1))
    else
        verdict=caught
    fi
    echo "$name: $verdict ($(($(date +%s) - started)) s)"
    echo "    simulation: $simulation"
    echo "    scenarios:  $scenarios"
    echo "    safety:     $safety"
done
exit $((survived > 0))
