#!/usr/bin/env bash
# Undo tools/sysenv/docker.sh and tools/sysenv/zfs.sh: Prism's test containers, the test
# images (with --images), the ZFS test pool and its file, and the daemons this set-up started.
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
