#!/bin/bash
# Soak: a full disk, end to end, on a 64 MiB tmpfs (needs root for the mount).
#
#   bash scripts/soak-disk-full.sh
#
# Fills the store with creates until it answers ENOSPC, then checks: the server is up; reads
# (stat, ls, fsck) work; deletes work; writes resume by themselves once space is freed; a
# kill -9 and a restart on a full disk come up (writes refused, reads served), lose nothing
# that was listed before the kill, and delete a whole tree; writes resume once space is back. Exits non-zero at the first failed check.
set -u
cd "$(dirname "$0")/.."
cargo build -q -p mantle -p mdtest || exit 1
T=${CARGO_TARGET_DIR:-target}/debug
M=$T/mantle; MD=$T/mdtest
MNT=$(mktemp -d /tmp/soak-full.XXXXXX); D=$MNT/d
mount -t tmpfs -o size=64m tmpfs "$MNT" || { echo "cannot mount a tmpfs (root needed)"; exit 1; }
SP=
cleanup() { [ -n "$SP" ] && kill -9 "$SP" 2>/dev/null; wait 2>/dev/null; umount "$MNT"; rmdir "$MNT"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; grep -v INFO "$MNT"/../soak-full.err 2>/dev/null | tail -5; exit 1; }
ok() { echo "ok: $*"; }
start() {
  : > /tmp/soak-full.out
  "$M" serve --data "$D" --listen 127.0.0.1:0 --mvcc-window-ms 200 > /tmp/soak-full.out 2>>/tmp/soak-full.err &
  SP=$!
  for _ in $(seq 300); do grep -q listening /tmp/soak-full.out && break; sleep 0.1; done
  grep -q listening /tmp/soak-full.out || fail "the server did not start"
  ADDR=$(sed -n 's/.*listening on //p' /tmp/soak-full.out)
}
: > /tmp/soak-full.err
fallocate -l 8M "$MNT/filler"
start
DIR=/fill/test-dir.0-0/mdtest_tree.0
t0=$(date +%s.%N)
timeout 300 "$MD" -n 50000 --tasks 16 -F -C -d /fill --backend "grpc://$ADDR" > /tmp/soak-full.fill 2>&1
grep -q ENOSPC /tmp/soak-full.fill || fail "filling did not end in ENOSPC: $(tail -1 /tmp/soak-full.fill)"
ok "filled in $(echo "$(date +%s.%N) - $t0" | bc) s; the client got: $(grep -o 'ENOSPC[^)]*' /tmp/soak-full.fill | head -1))"
kill -0 "$SP" || fail "the server died"
"$M" --addr "$ADDR" mkdir /x 2>&1 | grep -q ENOSPC || fail "a write on the full disk was not ENOSPC"
ok "a write on the full disk gets ENOSPC"
"$M" --addr "$ADDR" stat /fill > /dev/null || fail "stat on the full disk"
N=$("$M" --addr "$ADDR" ls "$DIR" | wc -l)
[ "$N" -gt 1000 ] || fail "ls on the full disk listed $N"
ok "reads on the full disk: ls lists $N entries"
F=$("$M" --addr "$ADDR" ls "$DIR" | head -1)
"$M" --addr "$ADDR" rm "$DIR/$F" || fail "a delete on the full disk"
ok "a delete on the full disk"
rm "$MNT/filler"
t0=$(date +%s.%N)
for _ in $(seq 100); do "$M" --addr "$ADDR" mkdir /after-free 2>/dev/null && break; sleep 0.1; done
"$M" --addr "$ADDR" stat /after-free > /dev/null || fail "writes did not resume after space was freed"
ok "writes resumed $(echo "$(date +%s.%N) - $t0" | bc) s after space was freed"
timeout 300 "$MD" -n 50000 --tasks 16 -F -C -d /fill2 --backend "grpc://$ADDR" > /tmp/soak-full.fill 2>&1
grep -q ENOSPC /tmp/soak-full.fill || fail "the second fill did not end in ENOSPC"
BEFORE=$("$M" --addr "$ADDR" ls /fill2/test-dir.0-0/mdtest_tree.0 | wc -l)
kill -9 "$SP"; wait "$SP" 2>/dev/null; SP=
# Whatever the flusher left free, the restart is on a full disk: another program takes all but
# 4 MiB (a quarter of the reserve).
AVAIL=$(df -k --output=avail "$MNT" | tail -1)
[ "$AVAIL" -gt 4096 ] && fallocate -l $(( (AVAIL - 4096) * 1024 )) "$MNT/filler2"
start
grep -q "starting on a full disk" /tmp/soak-full.err || fail "the restart did not say the disk is full"
ok "restarted on the full disk ($(df -h "$MNT" | awk 'NR==2 {print $4}') free)"
AFTER=$("$M" --addr "$ADDR" ls /fill2/test-dir.0-0/mdtest_tree.0 | wc -l)
[ "$BEFORE" = "$AFTER" ] || fail "$BEFORE entries before kill -9, $AFTER after"
ok "kill -9 on the full disk lost nothing: $AFTER entries before and after"
# Opening the engines may free space (RocksDB drops a preallocated WAL): top the disk up again,
# and writes must be refused once the space guard sees it (it looks every second).
AVAIL=$(df -k --output=avail "$MNT" | tail -1)
[ "$AVAIL" -gt 4096 ] && fallocate -l $(( (AVAIL - 4096) * 1024 )) "$MNT/filler3"
REFUSED=
for i in $(seq 50); do
  "$M" --addr "$ADDR" mkdir "/y$i" 2>&1 | grep -q ENOSPC && { REFUSED=1; break; }
  sleep 0.2
done
[ -n "$REFUSED" ] || fail "writes after the restart on a full disk were not refused with ENOSPC"
"$M" --addr "$ADDR" fsck | grep -q clean || fail "fsck"
ok "fsck clean on the full disk"
t0=$(date +%s.%N)
"$M" --addr "$ADDR" rm -r /fill2 > /tmp/soak-full.rm 2>&1 || fail "rm -r on the full disk: $(tail -1 /tmp/soak-full.rm)"
ok "rm -r of $AFTER entries on the full disk (after the restart) in $(echo "$(date +%s.%N) - $t0" | bc) s"
rm -f "$MNT/filler2" "$MNT/filler3"
t0=$(date +%s.%N)
for _ in $(seq 300); do "$M" --addr "$ADDR" mkdir /z 2>/dev/null && break; sleep 0.2; done
"$M" --addr "$ADDR" stat /z > /dev/null || fail "writes did not resume after space was freed"
ok "writes resumed $(echo "$(date +%s.%N) - $t0" | bc) s after the other program's space was freed"
"$M" --addr "$ADDR" fsck | grep -q clean || fail "fsck at the end"
ok "fsck clean at the end"
kill "$SP"; wait "$SP"; SP=
ok "clean shutdown"
echo "PASS"
