#!/usr/bin/env bash
# Produces docs/bench/dsl/: the script versions of the operations and one hook on every
# create, side by side with the built-in operations in one run (mdtest --preset mantle on an
# in-process store, so the CPU per operation is the store's), and dsl-bench's table of what a
# call costs.
#
#   bash docs/bench/run-dsl.sh               # N=200 items per task, TASKS=16, ITER=2
#   N=500 TASKS=64 bash docs/bench/run-dsl.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-200}
TASKS=${TASKS:-16}
ITER=${ITER:-2}
OUT=docs/bench/dsl
T=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d /var/tmp/dsl-bench.XXXXXX)

cargo build --release -p mdtest -p dsl -p mantle
MD=$T/release/mdtest
MANTLE=$T/release/mantle
SERVER=""
trap 'if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT

# Runs mdtest, then prints the CPU seconds it used (user + system, the store included).
run() {
  local label=$1
  shift
  echo "+ mdtest $label $*" >&2
  python3 - "$MD" --preset mantle -n "$N" --tasks "$TASKS" -i "$ITER" -d /bench \
      --backend "embedded:$WORK/$label" --label "$label" --json "$WORK/$label.json" "$@" <<'PY'
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
if r.returncode != 0:
    sys.exit(r.returncode)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{u.ru_utime + u.ru_stime:.2f}")
PY
}

ops=$((14 * N * TASKS * ITER)) # 7 operations x shared/unique, N items per task, per iteration
{
  echo "| run | CPU s | timed ops | CPU us/op |"
  echo "|---|---:|---:|---:|"
  for spec in \
      "native|" \
      "script-versions|--script dsl/examples/native_ops.rhai --hook instead_mkdir --hook instead_create --hook instead_unlink --hook instead_rmdir --hook instead_rename" \
      "one-hook|--script dsl/examples/name_policy.rhai --hook before_create:/ --hook before_mkdir:/"; do
    label=${spec%%|*}
    # shellcheck disable=SC2086
    cpu=$(run "$label" ${spec#*|})
    echo "| $label | $cpu | $ops | $(python3 -c "print(f'{$cpu * 1e6 / $ops:.0f}')") |"
  done
} > "$WORK/cpu.md"

# Hostile scripts against a server under load: mdtest over gRPC alone, then again while a
# loop calls scripts that loop, recurse, grow a string and an array, and write too many keys.
mkdir -p "$WORK/hostile"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MANTLE" serve --data "$WORK/server" --listen "127.0.0.1:$PORT" 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
cat > "$WORK/bad.rhai" <<'RHAI'
fn spin() { loop { } }
fn recurse(n) { recurse(n + 1) }
fn big_string() { let s = "x"; loop { s += s; } }
fn big_array() { let a = []; loop { a.push(1); } }
fn many_keys() { for i in 0..1000000 { put(data_key(`k${i}`), "v"); } }
RHAI
"$MANTLE" --addr "127.0.0.1:$PORT" script push bad "$WORK/bad.rhai" >/dev/null
grpc() {
  "$MD" -n "$N" --tasks "$TASKS" -i "$ITER" -d "/$1" --backend "grpc://127.0.0.1:$PORT" \
      --label "$1" --json "$WORK/hostile/$1.json" >/dev/null
}
grpc baseline
( while :; do
    for f in spin "recurse 0" big_string big_array many_keys; do
      # shellcheck disable=SC2086
      "$MANTLE" --addr "127.0.0.1:$PORT" script call bad $f >/dev/null 2>>"$WORK/hostile.err" || true
    done
  done ) &
HOSTILE=$!
grpc with-hostile-calls
kill "$HOSTILE" 2>/dev/null || true
wait "$HOSTILE" 2>/dev/null || true
sort "$WORK/hostile.err" | sed 's/ (thrown.*//' | uniq -c | sort -rn | head -8 > "$WORK/hostile-errors.txt"

rm -rf "$OUT"
"$MD" report "$WORK"/*.json --out "$OUT" >/dev/null
"$MD" report "$WORK"/hostile/*.json --out "$OUT/hostile" >/dev/null
cp "$WORK"/*.json "$WORK/cpu.md" "$OUT/"
cp "$WORK"/hostile/*.json "$WORK/hostile-errors.txt" "$OUT/hostile/"
"$T/release/dsl-bench" 5000 > "$OUT/calls.md"
echo "reports in $OUT/report.md, $OUT/cpu.md, $OUT/calls.md, $OUT/hostile/report.md"
