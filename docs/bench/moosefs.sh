#!/usr/bin/env bash
# A throwaway MooseFS on this machine, for side-by-side benchmarks: one master, one chunkserver
# (one disk directory, goal 1) and an mfsmount, all under DIR. Debian's packages:
#
#   apt-get install moosefs-master moosefs-chunkserver moosefs-client
#
#   bash docs/bench/moosefs.sh start DIR     # prints the mount point (DIR/mnt) once it has space
#   bash docs/bench/moosefs.sh stop DIR
#
# The master refuses chunkservers that connect from 127.x ("localhost can't be used for
# connecting with master"), so everything listens on this machine's first non-loopback IPv4
# address: the traffic still never leaves the machine.
set -euo pipefail
cmd=${1:?start|stop}
DIR=$(realpath -m "${2:?DIR}")
case $cmd in
  start)
    command -v mfsmaster >/dev/null || { echo "moosefs.sh: mfsmaster is not installed (apt-get install moosefs-master moosefs-chunkserver moosefs-client)" >&2; exit 1; }
    IP=$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -1)
    [ -n "$IP" ] || { echo "moosefs.sh: no non-loopback IPv4 address to listen on" >&2; exit 1; }
    mkdir -p "$DIR"/{master,cs,hdd,mnt}
    cat >"$DIR/mfsmaster.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $DIR/master
EXPORTS_FILENAME = $DIR/mfsexports.cfg
MATOCL_LISTEN_HOST = $IP
MATOCS_LISTEN_HOST = $IP
MATOML_LISTEN_HOST = $IP
EOF
    printf '*\t/\trw,alldirs,admin,maproot=0:0\n*\t.\trw\n' >"$DIR/mfsexports.cfg"
    cat >"$DIR/mfschunkserver.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $DIR/cs
HDD_CONF_FILENAME = $DIR/mfshdd.cfg
MASTER_HOST = $IP
CSSERV_LISTEN_HOST = $IP
EOF
    echo "$DIR/hdd" >"$DIR/mfshdd.cfg"
    [ -f "$DIR/master/metadata.mfs" ] || cp /var/lib/mfs/metadata.mfs.empty "$DIR/master/metadata.mfs"
    mfsmaster -c "$DIR/mfsmaster.cfg" start >"$DIR/master.log" 2>&1
    mfschunkserver -c "$DIR/mfschunkserver.cfg" start >"$DIR/chunkserver.log" 2>&1
    mfsmount "$DIR/mnt" -H "$IP" >"$DIR/mount.log" 2>&1
    # The chunkserver registers its space after a scan of its disk: wait for it (writes fail
    # with ENOSPC before), then keep one copy of each chunk, like the other file systems.
    for _ in $(seq 300); do
      [ "$(stat -f -c %b "$DIR/mnt")" -gt 0 ] && break
      sleep 0.1
    done
    [ "$(stat -f -c %b "$DIR/mnt")" -gt 0 ] || { echo "moosefs.sh: the chunkserver never registered space" >&2; exit 1; }
    mfssetgoal -r 1 "$DIR/mnt" >/dev/null
    echo "$DIR/mnt"
    ;;
  stop)
    umount "$DIR/mnt" 2>/dev/null || fusermount3 -uz "$DIR/mnt" 2>/dev/null || true
    [ -f "$DIR/mfschunkserver.cfg" ] && mfschunkserver -c "$DIR/mfschunkserver.cfg" stop >/dev/null 2>&1 || true
    [ -f "$DIR/mfsmaster.cfg" ] && mfsmaster -c "$DIR/mfsmaster.cfg" stop >/dev/null 2>&1 || true
    ;;
  *) echo "usage: moosefs.sh start|stop DIR" >&2; exit 2 ;;
esac
