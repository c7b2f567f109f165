#!/usr/bin/env bash
# Unmount and delete the loop filesystems that tools/sysenv/filesystems.sh provisioned.
#
# Idempotent: whatever is already gone is skipped. Packages stay installed (other tools use them).
set -euo pipefail

IMAGE_DIR=/var/lib/prism-test
MOUNT_ROOT=/mnt/prism-test

say() { printf 'teardown-filesystems: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "teardown-filesystems: must run as root (it unmounts loop images)" >&2
    exit 1
fi

for name in btrfs xfs; do
    mountpoint=$MOUNT_ROOT/$name
    image=$IMAGE_DIR/$name.img
    if awk -v m="$mountpoint" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; then
        # The loop device is released with the mount because mount -o loop set autoclear.
        umount "$mountpoint"
        say "unmounted $mountpoint"
    fi
    if [[ -d $mountpoint ]]; then
        rmdir "$mountpoint"
        say "removed $mountpoint"
    fi
    if [[ -f $image ]]; then
        rm -f "$image"
        say "removed $image"
    fi
done
rmdir "$MOUNT_ROOT" "$IMAGE_DIR" 2>/dev/null || true
say "done"
