#!/usr/bin/env bash
# Provision the loop-mounted btrfs and XFS (reflink) filesystems the storage system tests use.
#
# Why loop images: the tests need a real btrfs (subvolumes, snapshots) and a real reflink-capable
# XFS, and a developer machine or CI box rarely has spare partitions. Sparse image files cost
# only the blocks actually written.
#
# Idempotent: installs only missing packages, creates only missing images, mounts only what is
# not mounted yet, and says what it did or skipped. Paths match tests/sysenv.py.
# Undo with tools/sysenv/teardown-filesystems.sh.
set -euo pipefail

IMAGE_DIR=/var/lib/prism-test
MOUNT_ROOT=/mnt/prism-test
IMAGE_SIZE=4G

say() { printf 'filesystems: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "filesystems: must run as root (it installs packages and mounts loop images)" >&2
    exit 1
fi

install_missing() {
    local missing=()
    command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
    command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
    if ((${#missing[@]} == 0)); then
        say "btrfs-progs and xfsprogs already installed"
        return
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# fstype_at MOUNTPOINT: the filesystem type mounted exactly there, or nothing.
fstype_at() {
    awk -v m="$1" '$2 == m { t = $3 } END { if (t) print t }' /proc/self/mounts
}

# provision NAME FSTYPE MKFS_COMMAND...: make the image if missing, then mount it if not mounted.
provision() {
    local name=$1 fstype=$2
    shift 2
    local image=$IMAGE_DIR/$name.img mountpoint=$MOUNT_ROOT/$name
    local current
    current=$(fstype_at "$mountpoint")
    if [[ $current == "$fstype" ]]; then
        say "$fstype already mounted at $mountpoint (skipped)"
        return
    fi
    if [[ -n $current ]]; then
        echo "filesystems: $mountpoint has a $current filesystem mounted, expected $fstype;" \
            "unmount it or run tools/sysenv/teardown-filesystems.sh" >&2
        exit 1
    fi
    mkdir -p "$IMAGE_DIR" "$mountpoint"
    if [[ ! -f $image ]]; then
        truncate -s "$IMAGE_SIZE" "$image"
        # A half-made image would be mounted as garbage next time: remove it if mkfs fails.
        if ! "$@" "$image" >/dev/null; then
            rm -f "$image"
            echo "filesystems: mkfs for $image failed" >&2
            exit 1
        fi
        say "created $image ($IMAGE_SIZE sparse, $fstype)"
    else
        say "reusing $image"
    fi
    mount -o loop -t "$fstype" "$image" "$mountpoint"
    say "mounted $image at $mountpoint"
}

install_missing
provision btrfs btrfs mkfs.btrfs -q -f
provision xfs xfs mkfs.xfs -q -f -m reflink=1
say "ready: btrfs at $MOUNT_ROOT/btrfs, xfs (reflink) at $MOUNT_ROOT/xfs"
