#!/usr/bin/env bash
# Produces docs/bench/fuse/: the FUSE mount (`mantle mount --data`, the embedded store) against
# the kernel's own file systems and MooseFS, side by side in one run: tmpfs (/dev/shm), ext4 (a
# directory on the root disk) and a MooseFS on this machine (docs/bench/moosefs.sh; skipped with
# MOOSEFS=0 or when its packages are missing). mdtest-rs's posix backend runs the same plan on each: create with a 4 KiB
# write, stat, read back, remove, for files and directories, N items per task. Then a
# sequential write and read of one large file (dd). The mount process's CPU time per operation
# is read from /proc before and after each run.
#
# Run as root (the mount uses /dev/fuse directly).
#
#   bash docs/bench/run-mount.sh                 # N=500 items per task, TASKS=16, ITER=3
#   N=2000 TASKS=64 bash docs/bench/run-mount.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-500}
TASKS=${TASKS:-16}
ITER=${ITER:-3}
BIG_MIB=${BIG_MIB:-1024}
OUT=${OUT:-docs/bench/fuse}
WORK=$(mktemp -d /var/tmp/mount-bench.XXXXXX)
SHM=/dev/shm/mount-bench.$$
MNT=$WORK/mnt
MOUNT_PID=""
FSES="tmpfs ext4 mantle mantle-always"
MOUNT2_PID=""
cleanup() {
  if [ -n "$MOUNT2_PID" ]; then kill -TERM "$MOUNT2_PID" 2>/dev/null || true; wait "$MOUNT2_PID" 2>/dev/null || true; fi
  fusermount3 -uz "$WORK/mnt2" 2>/dev/null || true
  [ -d "$WORK/mfs" ] && bash docs/bench/moosefs.sh stop "$WORK/mfs"
  if [ -n "$MOUNT_PID" ]; then kill -TERM "$MOUNT_PID" 2>/dev/null || true; wait "$MOUNT_PID" 2>/dev/null || true; fi
  fusermount3 -uz "$MNT" 2>/dev/null || true
  rm -rf "$WORK" "$SHM"
}
trap cleanup EXIT

cargo build --release -p mantle -p mdtest
BIN=${CARGO_TARGET_DIR:-target}/release
MD=$BIN/mdtest

mkdir -p "$MNT" "$WORK/ext4" "$SHM" "$WORK/json" "$WORK/unique" "$WORK/preset"
"$BIN/mantle" mount --foreground --data "$WORK/data" --data-capacity-mib $((BIG_MIB * 2 + 1024)) \
  "$MNT" >"$WORK/mount.out" 2>"$WORK/mount.log" &
MOUNT_PID=$!
for _ in $(seq 300); do grep -q "mounted" "$WORK/mount.out" 2>/dev/null && break; sleep 0.1; done
grep -q "mounted" "$WORK/mount.out" || { cat "$WORK/mount.log"; exit 1; }
# The same with every change on disk before it is acknowledged (--sync always).
mkdir -p "$WORK/mnt2"
"$BIN/mantle" mount --foreground --sync always --data "$WORK/data2" --data-capacity-mib $((BIG_MIB * 2 + 1024)) \
  "$WORK/mnt2" >"$WORK/mount2.out" 2>"$WORK/mount2.log" &
MOUNT2_PID=$!
for _ in $(seq 300); do grep -q "mounted" "$WORK/mount2.out" 2>/dev/null && break; sleep 0.1; done
grep -q "mounted" "$WORK/mount2.out" || { cat "$WORK/mount2.log"; exit 1; }

if [ "${MOOSEFS:-1}" = 1 ] && command -v mfsmaster >/dev/null; then
  MFS=$(bash docs/bench/moosefs.sh start "$WORK/mfs")
  FSES="tmpfs ext4 moosefs mantle mantle-always"
fi

TICK=$(getconf CLK_TCK)
# CPU ticks (user + system) of the mount serving $fs (0 for the others).
cpu() {
  case $fs in
    mantle) awk '{print $14 + $15}' "/proc/$MOUNT_PID/stat" ;;
    mantle-always) awk '{print $14 + $15}' "/proc/$MOUNT2_PID/stat" ;;
    *) echo 0 ;;
  esac
}
# Where file system $1 is.
root_of() {
  case $1 in
    tmpfs) echo "$SHM" ;;
    ext4) echo "$WORK/ext4" ;;
    moosefs) echo "$MFS" ;;
    mantle) echo "$MNT" ;;
    mantle-always) echo "$WORK/mnt2" ;;
  esac
}
for fs in $FSES; do
  DIR=$(root_of "$fs")/t
  before=$(cpu)
  echo "+ mdtest on $fs" >&2
  "$MD" -n "$N" --tasks "$TASKS" -i "$ITER" -w 4096 -e 4096 -d "$DIR" --label "$fs" \
    --json "$WORK/json/$fs.json" >"$WORK/$fs.txt" 2>&1
  after=$(cpu)
  echo "$(( after - before ))" >"$WORK/$fs.cpu"
  rm -rf "$DIR"
  # The same with a directory per task (-u): the kernel serializes creates and removes in one
  # directory, not across directories.
  echo "+ mdtest -u on $fs" >&2
  "$MD" -u -n "$N" --tasks "$TASKS" -i "$ITER" -w 4096 -e 4096 -d "$DIR" --label "$fs-unique" \
    --json "$WORK/unique/$fs.json" >"$WORK/$fs-unique.txt" 2>&1
  rm -rf "$DIR"
done
# mdtest-rs's `--preset mantle`: the seven operations of the Mantle paper, in one shared
# directory and in a directory per task, 1000 items per task.
for fs in $FSES; do
  DIR=$(root_of "$fs")/p
  echo "+ mdtest --preset mantle on $fs" >&2
  "$MD" --preset mantle --tasks "$TASKS" -d "$DIR" --label "$fs" \
    --json "$WORK/preset/$fs.json" >"$WORK/$fs-preset.txt" 2>&1
  rm -rf "$DIR"
done
# Median rate per phase; the mount's CPU (user + system of its process) over every operation
# of the run.
python3 - "$WORK" "$TICK" $FSES >"$WORK/table.md" <<'PY'
import json, statistics, sys
work, tick, fses = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for kind, title in (("json", "one shared directory"), ("unique", "a directory per task (-u)")):
    runs = {fs: json.load(open(f"{work}/{kind}/{fs}.json")) for fs in fses}
    phases = [p["name"] for p in runs["mantle"]["scenarios"][0]["phases"]]
    ratios = ["tmpfs"] + (["moosefs"] if "moosefs" in fses else [])
    print(f"**{title}**")
    print()
    print("| phase | " + " | ".join(f"{fs} ops/s" for fs in fses) + " | "
          + " | ".join(f"mantle / {r}" for r in ratios) + f" | p50 us ({' / '.join(fses)}) |")
    print("|---|" + "---:|" * (len(fses) + len(ratios)) + "---|")
    for ph in phases:
        rate, p50 = {}, []
        for fs in fses:
            p = next(x for x in runs[fs]["scenarios"][0]["phases"] if x["name"] == ph)
            rate[fs] = statistics.median(p["rates"])
            p50.append(f'{p["p50_us"]:.0f}')
        cells = [f"{rate[fs]:,.0f}" for fs in fses] + [f"{rate['mantle'] / rate[r]:.2f}" for r in ratios]
        print(f"| {ph} | " + " | ".join(cells) + f" | {' / '.join(p50)} |")
    print()
print("**--preset mantle** (p50 us in the last column)")
print()
runs = {fs: json.load(open(f"{work}/preset/{fs}.json")) for fs in fses}
ratios = ["tmpfs"] + (["moosefs"] if "moosefs" in fses else [])
print("| scenario | phase | " + " | ".join(f"{fs} ops/s" for fs in fses) + " | "
      + " | ".join(f"mantle / {r}" for r in ratios) + f" | p50 us ({' / '.join(fses)}) |")
print("|---|---|" + "---:|" * (len(fses) + len(ratios)) + "---|")
for i, sc in enumerate(runs["mantle"]["scenarios"]):
    for ph in [p["name"] for p in sc["phases"]]:
        rate, p50 = {}, []
        for fs in fses:
            p = next(x for x in runs[fs]["scenarios"][i]["phases"] if x["name"] == ph)
            rate[fs] = statistics.median(p["rates"])
            p50.append(f'{p["p50_us"]:.0f}')
        cells = [f"{rate[fs]:,.0f}" for fs in fses] + [f"{rate['mantle'] / rate[r]:.2f}" for r in ratios]
        print(f"| {sc['label']} | {ph} | " + " | ".join(cells) + f" | {' / '.join(p50)} |")
print()
runs = {fs: json.load(open(f"{work}/json/{fs}.json")) for fs in fses}
for fs in ("mantle", "mantle-always"):
    m = runs[fs]["scenarios"][0]["phases"]
    ops = sum(sum(p["ops"]) for p in m)
    cpu = int(open(f"{work}/{fs}.cpu").read()) / tick
    print(f"The {fs} mount process (shared-directory run) used {cpu:.1f} s of CPU for {ops:,} operations: {cpu / ops * 1e6:.0f} us per operation.")
PY

echo >>"$WORK/table.md"
echo "| file system | sequential write MiB/s (with fsync) | sequential read MiB/s (cold open) |" >>"$WORK/table.md"
echo "|---|---:|---:|" >>"$WORK/table.md"
for fs in $FSES; do
  F=$(root_of "$fs")/big
  echo "+ dd on $fs" >&2
  w=$(dd if=/dev/zero of="$F" bs=1M count="$BIG_MIB" conv=fsync 2>&1 | tail -1 | sed -E 's/.*, ([0-9.]+) s, .*/\1/')
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  r=$(dd if="$F" of=/dev/null bs=1M 2>&1 | tail -1 | sed -E 's/.*, ([0-9.]+) s, .*/\1/')
  echo "| $fs | $(python3 -c "print(round($BIG_MIB / $w))") | $(python3 -c "print(round($BIG_MIB / $r))") |" >>"$WORK/table.md"
  rm -f "$F"
done

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$WORK/json"/*.json "$OUT/"
mkdir -p "$OUT/unique" && cp "$WORK/unique"/*.json "$OUT/unique/"
mkdir -p "$OUT/preset" && cp "$WORK/preset"/*.json "$OUT/preset/"
cp "$WORK/table.md" "$OUT/table.md"
for fs in $FSES; do cp "$WORK/$fs.txt" "$OUT/$fs.txt"; done
"$MD" report "$OUT"/*.json --out "$OUT" >/dev/null || true
cat "$OUT/table.md"
