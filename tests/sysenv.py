"""Where the system tests find the resources that `tools/sysenv/setup.sh` provisions.

A system test asks for what it needs through these helpers. Where a resource is missing the test
is skipped with the reason, except in CI (``CI=true``), where a system test that cannot run is a
failure: CI provisions everything, so a missing resource there is a broken setup, not a choice.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

TEST_ROOT = Path("/mnt/prism-test")
BTRFS_MOUNT = TEST_ROOT / "btrfs"
XFS_MOUNT = TEST_ROOT / "xfs"
ZFS_POOL = "prismtest"
DOCKER_IMAGE = "prism-test/postgres:15"
HOST_PG_BIN = Path("/usr/lib/postgresql/15/bin")
"""The host's PostgreSQL of the image's major (tools/sysenv/docker.sh): a source for the image."""
PGJDBC_JAR = Path("/usr/share/java/postgresql.jar")
NODE_MODULES = Path("/var/lib/prism-test/clients/node/node_modules")
"""Where tools/sysenv/clients.sh installs node-postgres and pg-copy-streams."""


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test, or fail it in CI where every system test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"system test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (run the test command as root to provision system resources)")


def _fstype(path: Path) -> str | None:
    """The filesystem type mounted exactly at ``path``, from /proc/self/mounts."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[1] == str(path):
                    return fields[2]
    except OSError:
        return None
    return None


def require_mount(path: Path, fstype: str) -> Path:
    """Return ``path`` if a filesystem of ``fstype`` is mounted there, else skip/fail."""
    require_root()
    found = _fstype(path)
    if found != fstype:
        unavailable(
            f"no {fstype} filesystem mounted at {path} (found {found or 'nothing'}); "
            "run tools/sysenv/setup.sh as root"
        )
    return path


def require_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"command {name!r} not installed; run tools/sysenv/setup.sh as root")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else skip/fail naming what is missing."""
    if not path.exists():
        unavailable(f"{what} not installed at {path}; run tools/sysenv/setup.sh as root")
    return path
