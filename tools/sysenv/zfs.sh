#!/usr/bin/env bash
# Provision the file-backed ZFS pool the ZFS system tests use, via zfs-fuse.
#
# Why zfs-fuse: the kernel ZFS module needs DKMS and matching headers, which a CI box or a
# container rarely has; zfs-fuse runs in user space on /dev/fuse and speaks the same
# `zpool`/`zfs` commands Prism's driver uses. A sparse file costs only the blocks written.
#
# Idempotent: installs zfs-fuse only if missing, starts its daemon only if no daemon answers,
# creates (or re-imports) the pool and the dataset only if absent. Names match tests/sysenv.py.
# Undo with tools/sysenv/teardown-docker-zfs.sh.
set -euo pipefail

POOL=prismtest
DATASET=$POOL/prism
IMAGE_DIR=/var/lib/prism-test
POOL_FILE=$IMAGE_DIR/zfs-$POOL.img
POOL_SIZE=4G
PIDFILE=/var/run/zfs-fuse.pid
DAEMON_WAIT_S=30

say() { printf 'zfs: %s\n' "$*"; }
die() {
    printf 'zfs: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and runs the zfs-fuse daemon)"

if command -v zfs-fuse >/dev/null 2>&1; then
    say "zfs-fuse already installed"
else
    say "installing zfs-fuse"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zfs-fuse >/dev/null
fi
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: zfs-fuse needs FUSE (load the fuse module or run with --device /dev/fuse)"

# `zpool list` talks to the daemon over its socket, so it answering is the real test of a
# running daemon (a stale pid file is not).
# The inner sh is the one to see zpool die of SIGABRT when no daemon answers, so its report
# goes to /dev/null instead of this script's output.
daemon_answers() { sh -c 'zpool list >/dev/null 2>&1; exit $?' 2>/dev/null; }

# alive PID: the process runs and is not a zombie (a killed daemon whose parent never reaped
# it still "exists" for kill -0).
alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

# wait_for CONDITION...: poll every 0.1 s for up to DAEMON_WAIT_S; fail if it never holds.
wait_for() {
    local waited=0
    until "$@"; do
        ((waited < DAEMON_WAIT_S * 10)) || return 1
        sleep 0.1
        waited=$((waited + 1))
    done
}

old_daemon_gone_or_answering() { daemon_answers || ! alive "$(cat "$PIDFILE" 2>/dev/null)"; }

if daemon_answers; then
    say "zfs-fuse daemon already answering (skipped start)"
else
    # A daemon that is still starting or shutting down holds the socket: let it finish first.
    wait_for old_daemon_gone_or_answering || die "zfs-fuse (pid $(cat "$PIDFILE")) neither answers nor exits"
    if ! daemon_answers; then
        say "starting zfs-fuse daemon"
        rm -f "$PIDFILE"
        # zfs-fuse daemonises itself; it outlives this script.
        zfs-fuse --pidfile "$PIDFILE" || die "zfs-fuse failed to start (see syslog or run zfs-fuse -n)"
        wait_for daemon_answers || die "zfs-fuse did not answer within ${DAEMON_WAIT_S}s"
    fi
fi

if zpool list -H -o name "$POOL" >/dev/null 2>&1; then
    say "pool $POOL already imported (skipped)"
elif [[ -f $POOL_FILE ]] && zpool import -d "$IMAGE_DIR" "$POOL" >/dev/null 2>&1; then
    # The daemon forgets pools when it stops; the file still holds them.
    say "re-imported pool $POOL from $POOL_FILE"
else
    mkdir -p "$IMAGE_DIR"
    if [[ -f $POOL_FILE ]]; then
        say "$POOL_FILE exists but holds no importable pool $POOL; recreating it"
        rm -f "$POOL_FILE"
    fi
    truncate -s "$POOL_SIZE" "$POOL_FILE"
    # No mountpoint for the pool itself: Prism mounts each branch dataset where its storage
    # layout says, so nothing should appear under / by default.
    if ! zpool create -m none "$POOL" "$POOL_FILE"; then
        rm -f "$POOL_FILE"
        die "zpool create $POOL on $POOL_FILE failed"
    fi
    say "created pool $POOL on $POOL_FILE ($POOL_SIZE sparse)"
fi

if zfs list -H -o name "$DATASET" >/dev/null 2>&1; then
    say "dataset $DATASET already exists (skipped)"
else
    zfs create -o mountpoint=none "$DATASET"
    say "created dataset $DATASET"
fi
say "ready: pool $POOL, dataset $DATASET ($(zpool list -H -o free "$POOL") free)"
