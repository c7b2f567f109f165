#!/usr/bin/env bash
# Undo tools/sysenv/docker.sh and tools/sysenv/zfs.sh: Prism's test containers, the test
# images (with --images), the ZFS test pool and its file, and the daemons this set-up started;
# also the private dockerd the engine-loss system test runs (its data root and bridge).
#
# Only what those scripts made is touched: containers labelled prism.managed=true, the
# prism-test/* images, the pool `prismtest` and its backing file. Safe to run repeatedly.
set -euo pipefail

POOL=prismtest
IMAGE_DIR=/var/lib/prism-test
POOL_FILE=$IMAGE_DIR/zfs-$POOL.img
REMOVE_IMAGES=false
STOP_DAEMONS=false

for arg in "$@"; do
    case $arg in
    --images) REMOVE_IMAGES=true ;;
    --stop-daemons) STOP_DAEMONS=true ;;
    *)
        echo "usage: $0 [--images] [--stop-daemons]" >&2
        exit 2
        ;;
    esac
done

say() { printf 'teardown: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || {
    echo "teardown: must run as root" >&2
    exit 1
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    mapfile -t containers < <(docker ps -aq --filter label=prism.managed=true)
    if ((${#containers[@]})); then
        docker rm -f -v "${containers[@]}" >/dev/null
        say "removed ${#containers[@]} Prism container(s)"
    else
        say "no Prism containers"
    fi
    if $REMOVE_IMAGES; then
        for image in prism-test/postgres:15 prism-test/postgres-base:15; do
            if docker image inspect "$image" >/dev/null 2>&1; then
                docker image rm "$image" >/dev/null
                say "removed image $image"
            fi
        done
    fi
    if $STOP_DAEMONS && [[ -s /var/run/docker.pid ]]; then
        kill "$(cat /var/run/docker.pid)" && say "stopped dockerd"
    fi
else
    say "no Docker engine answering (nothing to remove there)"
fi

# The private engine tests/system/private_engine.py starts (and stops) for the engine-loss
# test: normally stopped already; its data root caches a copy of the test image.
PRIVATE_PID=/var/run/prism-dockerd.pid
if [[ -s $PRIVATE_PID ]] && kill "$(cat "$PRIVATE_PID")" 2>/dev/null; then
    while kill -0 "$(cat "$PRIVATE_PID" 2>/dev/null)" 2>/dev/null; do sleep 0.1; done
    say "stopped the private test dockerd"
fi
if grep -q " $IMAGE_DIR/dockerd-private/" /proc/mounts; then
    # A container left running by a live-restore engine still has its root mounted there.
    say "$IMAGE_DIR/dockerd-private has mounts (a container still running?); left in place"
elif [[ -d $IMAGE_DIR/dockerd-private ]]; then
    rm -rf "$IMAGE_DIR/dockerd-private"
    say "removed $IMAGE_DIR/dockerd-private"
fi
if [[ -e /sys/class/net/prismdkr0 ]]; then
    ip link delete prismdkr0
    say "removed bridge prismdkr0"
fi

if command -v zpool >/dev/null 2>&1 && zpool list >/dev/null 2>&1; then
    if zpool list -H -o name "$POOL" >/dev/null 2>&1; then
        # -f: a test that failed mid-way may leave a clone mounted.
        zpool destroy -f "$POOL"
        say "destroyed pool $POOL"
    else
        say "no pool $POOL"
    fi
    if $STOP_DAEMONS && [[ -s /var/run/zfs-fuse.pid ]]; then
        kill "$(cat /var/run/zfs-fuse.pid)" && say "stopped zfs-fuse"
    fi
else
    say "no zfs-fuse daemon answering (pool left as a file, if any)"
fi

if [[ -f $POOL_FILE ]]; then
    rm -f "$POOL_FILE"
    say "removed $POOL_FILE"
fi
