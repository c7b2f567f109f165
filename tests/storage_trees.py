"""Sample data directories for storage driver tests, and how to compare two of them.

Shared by the integration and system storage tests so both check the same things: contents,
modes, owners, timestamps and symlinks.
"""

from __future__ import annotations

import os
from pathlib import Path


def fill_sample_tree(root: Path, *, owner: tuple[int, int] | None = None) -> None:
    """Write a small PGDATA-like tree into the existing directory ``root``.

    With ``owner`` every entry (``root`` included) is chowned to that uid/gid, which needs root;
    the tests use it to prove a clone keeps the parent's owner rather than Prism's.
    """
    (root / "base" / "1").mkdir(parents=True)
    (root / "pg_wal").mkdir()
    (root / "PG_VERSION").write_text("18\n")
    (root / "base" / "1" / "1259").write_bytes(os.urandom(64 * 1024))
    (root / "pg_wal" / "000000010000000000000001").write_bytes(b"\0" * 16384)
    (root / "postgresql.conf").write_text("port = 5432\n")
    (root / "postgresql.conf").chmod(0o600)
    (root / "base" / "1").chmod(0o750)
    (root / "conf.link").symlink_to("postgresql.conf")
    os.utime(root / "PG_VERSION", (1_000_000_000, 1_000_000_000))
    if owner is not None:
        for path in [root, *root.rglob("*")]:
            os.lchown(path, *owner)


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a clone must preserve, per relative path, for an equality check."""
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            content: object = ("link", os.readlink(path))
        elif path.is_dir():
            content = "dir"
        else:
            content = path.read_bytes()
        mode = info.st_mode & 0o7777
        found[rel] = (content, mode, info.st_uid, info.st_gid, int(info.st_mtime))
    return found
