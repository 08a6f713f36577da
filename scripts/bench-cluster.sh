#!/bin/bash
# mdtest --preset mantle against the embedded single node and a 3-node loopback cluster, side
# by side, with the servers' CPU per operation (utime + stime from /proc, all server processes).
#
#   bash scripts/bench-cluster.sh [ITEMS] [TASKS]      (defaults: 200 64)
#
# Writes docs/bench/cluster/{single,cluster,cluster-leader-only}.txt and summary.txt. Release
# builds. BIN=DIR uses the binaries in DIR, OUT=DIR writes elsewhere.
set -eu
cd "$(dirname "$0")/.."
N=${1:-200}; TASKS=${2:-64}
# BIN=DIR runs the mantle and mdtest binaries in DIR instead (another commit's build, for a
# side-by-side run); OUT=DIR writes the results there.
if [ -n "${BIN:-}" ]; then
  T=$BIN
else
  cargo build -q --release -p mantle -p mdtest
  T=${CARGO_TARGET_DIR:-target}/release
fi
OUT=${OUT:-docs/bench/cluster}; mkdir -p "$OUT"
W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
start() { # dir, extra args...; sets ADDR
  local d=$1; shift
  "$T/mantle" serve --data "$W/$d" --listen 127.0.0.1:0 "$@" > "$W/$d.out" 2> "$W/$d.err" &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q listening "$W/$d.out" 2>/dev/null && break; sleep 0.1; done
  ADDR=$(sed -n 's/.*listening on //p' "$W/$d.out")
}
ticks() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $s; }
run() { # label, backend address, pids...
  local label=$1 addr=$2; shift 2
  local before; before=$(ticks "$@")
  local t0; t0=$(date +%s.%N)
  "$T/mdtest" --preset mantle -n "$N" --tasks "$TASKS" -d "/$label" --backend "grpc://$addr" --label "$label" > "$OUT/$label.txt" 2>&1 || { tail -3 "$OUT/$label.txt"; exit 1; }
  local secs; secs=$(echo "$(date +%s.%N) - $t0" | bc)
  local used; used=$(( $(ticks "$@") - before ))
  local hz; hz=$(getconf CLK_TCK)
  # Operations: seven phases, shared and per-task, N items per task each.
  local ops=$(( 7 * 2 * N * TASKS ))
  echo "$label: $ops operations in ${secs} s; server CPU $(echo "scale=2; $used / $hz" | bc) s = $(echo "scale=1; $used * 1000000 / $hz / $ops" | bc) us per operation" | tee -a "$OUT/summary.txt"
}
: > "$OUT/summary.txt"
start single
run single "$ADDR" "${PIDS[0]}"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()
start c1 --init; A1=$ADDR; start c2 --join "$A1"; A2=$ADDR; start c3 --join "$A1"; A3=$ADDR
for _ in $(seq 100); do "$T/mantle" --addr "$A1" admin status | grep -q "voters \[1, 2, 3\]" && break; sleep 0.1; done
run cluster "$A1,$A2,$A3" "${PIDS[@]}"
# The same cluster with the client calling only the leader (node 1, the first): no forwarding.
run cluster-leader-only "$A1" "${PIDS[@]}"
