#!/usr/bin/env bash
# Produces docs/bench/indexnode/: path depth against the TopDirPathCache. For each depth D,
# `mdtest --preset deep --depth D` creates and stats files at the end of 1-level and D-level
# paths in one run; the ratio D-level / 1-level rate is what the cache is for (the paper: a
# 10-level lookup at 1/1.09 of a 1-level one). Four set-ups side by side, one after the other
# per depth: the embedded store with the cache (k=3) and without, a server over loopback gRPC
# with the cache and without.
#
# Each scenario runs ITER times (default 3) and the report takes the median: the first
# iteration of a fresh process runs up to 20% off the others.
#
#   bash docs/bench/run-indexnode.sh               # N=200 items per task, TASKS=64, ITER=3
#   DEPTHS="1 10" N=500 ITER=5 bash docs/bench/run-indexnode.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-200}
TASKS=${TASKS:-64}
DEPTHS=${DEPTHS:-"1 4 10 32 64"}
ITER=${ITER:-3}
OUT=${OUT:-docs/bench/indexnode}
WORK=$(mktemp -d /tmp/indexnode-bench.XXXXXX)
SERVERS=()
cleanup() {
  for s in "${SERVERS[@]}"; do kill -TERM "$s" 2>/dev/null || true; wait "$s" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -p mantle -p mdtest
BIN=${CARGO_TARGET_DIR:-target}/release
MD=$BIN/mdtest
run() { echo "+ mdtest $*" >&2; "$MD" -i "$ITER" "$@" >/dev/null 2>&1; }

# A server prints its address on stdout once it listens.
serve() {
  local name=$1
  shift
  "$BIN/mantle" serve --data "$WORK/$name" --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  SERVERS+=($!)
  for _ in $(seq 300); do
    local addr
    addr=$(grep -oE '127\.0\.0\.1:[0-9]+' "$WORK/$name.out" | head -1 || true)
    if [ -n "$addr" ]; then echo "$addr"; return; fi
    sleep 0.1
  done
  echo "server $name did not start" >&2
  exit 1
}
ON=$(serve grpc-cache)
OFF=$(serve grpc-nocache --path-cache-levels 0)

mkdir -p "$WORK/json"
for d in $DEPTHS; do
  run --preset deep --depth "$d" -n "$N" --tasks "$TASKS" -d "/d$d" \
      --backend "embedded:$WORK/emb-cache-$d" --label "embedded cache" --json "$WORK/json/embedded-cache-$d.json"
  run --preset deep --depth "$d" -n "$N" --tasks "$TASKS" -d "/d$d" --path-cache-levels 0 \
      --backend "embedded:$WORK/emb-nocache-$d" --label "embedded no cache" --json "$WORK/json/embedded-nocache-$d.json"
  run --preset deep --depth "$d" -n "$N" --tasks "$TASKS" -d "/d$d" \
      --backend "grpc://$ON" --label "grpc cache" --json "$WORK/json/grpc-cache-$d.json"
  run --preset deep --depth "$d" -n "$N" --tasks "$TASKS" -d "/d$d" \
      --backend "grpc://$OFF" --label "grpc no cache" --json "$WORK/json/grpc-nocache-$d.json"
done

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$WORK"/json/*.json "$OUT/"
python3 docs/bench/depth-report.py "$OUT" "$N" "$TASKS" "$ITER" > "$OUT/report.md"
echo "report in $OUT/report.md"
