#!/usr/bin/env bash
# Produces docs/bench/mdtest/: mdtest-rs on a tmpfs directory (posix), on an in-process Mantle
# store (embedded) and on a Mantle server over loopback gRPC, side by side, with plots.
#
#   bash docs/bench/run-mdtest.sh            # N=200 items per task, TASKS=64
#   N=1000 TASKS=128 bash docs/bench/run-mdtest.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-200}
TASKS=${TASKS:-64}
OUT=docs/bench/mdtest
WORK=$(mktemp -d /tmp/mdtest-bench.XXXXXX)
SHM=/dev/shm/mdtest-bench.$$
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK" "$SHM"
}
trap cleanup EXIT

cargo build --release -p mantle -p mdtest
MD=target/release/mdtest
run() { echo "+ mdtest $*" >&2; "$MD" "$@" 2>/dev/null; }

mkdir -p "$WORK/backends" "$WORK/harness" "$WORK/scaling" "$WORK/deep"

# 1. The seven Mantle operations, shared and unique directories, on three backends.
run --preset mantle -n "$N" --tasks "$TASKS" -d "$SHM/mantle" --label posix-tmpfs \
    --json "$WORK/backends/1-posix.json"
run --preset mantle -n "$N" --tasks "$TASKS" -d /bench --backend "embedded:$WORK/store-embedded" \
    --label embedded --json "$WORK/backends/2-embedded.json"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/mantle serve --data "$WORK/store-grpc" --listen "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
run --preset mantle -n "$N" --tasks "$TASKS" -d /bench --backend "grpc://127.0.0.1:$PORT" \
    --label grpc --json "$WORK/backends/3-grpc.json"

# 2. What the harness costs: one task against a straight loop of the same syscalls.
run -n 20000 --tasks 1 -d "$SHM/harness" --syscall-baseline --label posix-1-task \
    --json "$WORK/harness/posix.json"

# 3. The Spark pattern against tasks: shared parent vs one parent per task, on the server.
for t in 1 8 64; do
  run --preset spark -n "$N" --tasks "$t" -d "/spark-$t" --backend "grpc://127.0.0.1:$PORT" \
      --label grpc --json "$WORK/scaling/grpc-$t.json"
done

# 4. Path depth: create and stat at depth 1 and depth 10.
run --preset deep --depth 10 -n "$N" --tasks "$TASKS" -d /deep --backend "grpc://127.0.0.1:$PORT" \
    --label grpc --json "$WORK/deep/grpc.json"
run --preset deep --depth 10 -n "$N" --tasks "$TASKS" -d "$SHM/deep" --label posix-tmpfs \
    --json "$WORK/deep/posix.json"

rm -rf "$OUT"
for part in backends harness scaling deep; do
  "$MD" report "$WORK/$part"/*.json --out "$OUT/$part" >/dev/null
  cp "$WORK/$part"/*.json "$OUT/$part/"
done
echo "reports in $OUT/{backends,harness,scaling,deep}/report.md"
