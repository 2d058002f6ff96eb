#!/usr/bin/env bash
# End to end on production-like traffic (docs/benchmarks.md, "End to end on
# production-like traffic, against a tuned null server and the Collector"):
#
#   A  sloxide (the release daemon as a child process, and in process) against the
#      tuned null server and prost, gRPC and HTTP
#   B  sloxide and the Collector (spanmetrics + prometheus), both as child processes
#   C  server CPU per span of sloxide (the daemon, and in process) and null for plain,
#      gzip and zstd requests
#
# Every comparison runs its targets in one loadgen process, the order rotated every
# round; it prints each run, then the summary and ratio lines (medians of per-round
# ratios), which are collected at the end.
#
#   bash benches/e2e_compare.sh            # all of it, about 20 minutes
#   bash benches/e2e_compare.sh A C        # some of it
#
# ROUNDS (5), DURATION (6), WARMUP (1), CONFIG (config/example.yaml; its data_dir is
# always dropped) and SLOXIDE_OTELCOL (the Collector built by
# tests/peers/otelcol/build.sh) change what is run. Set CARGO_TARGET_DIR to build
# elsewhere. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-1}
CONFIG=${CONFIG:-config/example.yaml}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export SLOXIDE_OTELCOL=${SLOXIDE_OTELCOL:-$TARGET_DIR/peers/otelcol-sloxide-test}
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(A B C)

cargo build --release --example loadgen --bin sloxide
loadgen="$TARGET_DIR/release/examples/loadgen"
common=(--compare --rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" --config "$CONFIG")
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run() {
    # tee -a: stderr redirected to a file is appended to, not truncated by each run.
    echo "== loadgen $*" | tee -a "$out"
    "$loadgen" "$@" | tee -a /dev/stderr | grep -E '^(summary|ratio)' >>"$out"
}

for part in "${parts[@]}"; do
    case $part in
    A)
        run "${common[@]}" --targets sloxide-process,sloxide,null,prost --transport grpc
        run "${common[@]}" --targets sloxide-process,sloxide,null,prost --transport http
        ;;
    B)
        if [ ! -x "$SLOXIDE_OTELCOL" ]; then
            echo "no Collector at $SLOXIDE_OTELCOL: bash tests/peers/otelcol/build.sh" >&2
            exit 1
        fi
        run "${common[@]}" --targets sloxide-process,otelcol --transport grpc
        ;;
    C)
        for c in none gzip zstd; do
            flag=()
            [ $c = none ] || flag=(--$c)
            run "${common[@]}" --targets sloxide-process,sloxide,null --transport grpc "${flag[@]}"
        done
        ;;
    *)
        echo "unknown part $part (A, B or C)" >&2
        exit 2
        ;;
    esac
done

echo
echo "== summary"
cat "$out"
