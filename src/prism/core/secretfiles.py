"""Files that hold a secret for a moment, and the start-up sweep of those a kill left behind.

``initdb`` reads the new superuser's password from a file (``--pwfile``), since on its command
line it would show in ``ps``. That file lives only while ``initdb`` runs and is removed after,
but a Prism killed in between (SIGKILL, the OOM killer, a power cut) cannot remove it. So every
such file is made in one private place, the data dir's ``run/`` (0700, Prism's own; 0711 when
the servers run as another user, who may pass through but not list it), under one of the names
here, and every start removes whatever of them is there before anything else can run. The
same goes for the role script of a dump generation (password verifiers) in the private source
directory.

The files of older Prisms, which wrote them into the system's temporary directory, are swept
there too once they are old enough that no ``initdb`` could still be reading them.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

PWFILE_PREFIX: Final = "prism-initdb-"
PWFILE_SUFFIX: Final = ".pw"
WORKDIR_PREFIX: Final = ".initdb-"
"""The docker runtime's directory holding the password file it mounts into initdb's container."""
ROLES_SCRIPT: Final = "roles.sql"
"""The source's roles, password verifiers maybe, in the private source directory while a dump
generation applies them (``prism.source.dump``)."""
LEGACY_MIN_AGE_S: Final = 3600.0
"""How old a password file in the temporary directory must be to be a leftover: no initdb runs
an hour, while a younger one may belong to another Prism's initdb right now."""


def is_pwfile(name: str) -> bool:
    """Whether ``name`` is that of an initdb password file of Prism's."""
    return name.startswith(PWFILE_PREFIX) and name.endswith(PWFILE_SUFFIX)


def is_leftover(name: str) -> bool:
    """Whether an entry of the run dir called ``name`` holds a secret only a running initdb
    needs: at start-up none runs, so every one is a leftover."""
    return is_pwfile(name) or name.startswith(WORKDIR_PREFIX)


def is_stale_legacy(name: str, mode: int, mtime: float, now: float, *, mine: bool) -> bool:
    """Whether an entry of the temporary directory is an old Prism's forgotten password file.

    ``mine``: this user may remove it (its owner, or root); another user's file is theirs to
    sweep, and trying would only fill the log.
    """
    old_enough = now - mtime >= LEGACY_MIN_AGE_S
    return mine and is_pwfile(name) and stat.S_ISREG(mode) and old_enough


def write_password_file(directory: Path, password: str) -> Path:
    """A new file in ``directory`` (an existing private one) holding ``password``, mode 0600.

    ``mkstemp`` makes it 0600 before a byte is written, with a name no one can guess ahead.
    """
    fd, name = tempfile.mkstemp(prefix=PWFILE_PREFIX, suffix=PWFILE_SUFFIX, dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(password + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def sweep(run_dir: Path, source_dir: Path, *, legacy_dir: Path | None = None) -> list[Path]:
    """Remove the secret files a killed Prism left in ``run_dir`` and ``source_dir`` (and, old
    enough, in ``legacy_dir``, the temporary directory by default); the paths removed
    (blocking).

    Must run before anything of this Prism may write such a file.
    """
    removed = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            if is_leftover(path.name) and _remove(path):
                removed.append(path)
    if _remove(source_dir / ROLES_SCRIPT):
        removed.append(source_dir / ROLES_SCRIPT)
    legacy = Path(tempfile.gettempdir()) if legacy_dir is None else legacy_dir
    removed += [path for path in _stale_legacy_files(legacy) if _remove(path)]
    for path in removed:
        log.info("secrets: removed %s, a secret left by a Prism killed while using it", path)
    return removed


def _stale_legacy_files(directory: Path) -> list[Path]:
    """The old Prisms' password files in ``directory`` that are ours to remove now."""
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.debug("secrets: cannot list %s for old password files: %s", directory, exc)
        return []
    now, stale = time.time(), []
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile
        mine = os.geteuid() in (0, info.st_uid)
        if is_stale_legacy(entry.name, info.st_mode, info.st_mtime, now, mine=mine):
            stale.append(Path(entry.path))
    return stale


def _remove(path: Path) -> bool:
    """Remove a file or a directory; False (logged) if it cannot be, e.g. another user's."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("secrets: cannot remove %s, which may hold a password: %s", path, exc)
        return False
    return True
