#!/usr/bin/env bash
# Builds the pinned OpenTelemetry Collector that the end-to-end tests use as a peer, into
# target/peers/otelcol-sloxide-test. The build is skipped when the binary was built from
# the same go.mod, go.sum and main.go (a stamp next to it holds their hash); Go's own
# module and build caches make a rebuild after a change quick too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/peers"
bin="$out/otelcol-sloxide-test"
stamp="$bin.stamp"

if ! command -v go >/dev/null 2>&1; then
  echo "tests/peers/otelcol/build.sh: go is not on PATH; the Collector peer needs Go 1.26 or later" >&2
  exit 1
fi
want="$(cd "$here" && cat go.mod go.sum main.go | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"
if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "test Collector up to date: $bin"
  exit 0
fi
mkdir -p "$out"
echo "building the test Collector (tests/peers/otelcol) into $bin"
cd "$here"
# -mod=readonly: go.sum must already list every module; nothing is resolved anew here.
go build -mod=readonly -trimpath -buildvcs=false -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
echo "$want" > "$stamp"
"$bin" --version
