"""What one branch container is made of: its name, owner, settings, mounts, labels and command.

The docker runtime (:mod:`prism.runtime.docker`) decides when a container runs; this module
decides what it runs with. The clone is bind-mounted as the data directory and the container
runs as the directory's owner (read with ``os.stat``), so any ``postgres:*`` image works
whatever uid its ``postgres`` user has. Prism starts ``postgres -D ...`` itself instead of the
image's entrypoint: the entrypoint's checks and ``chown``s are start-up time a branch does not
need. Where the engine shares this kernel, a private per-branch host directory is bind-mounted
as the server's Unix socket directory, and Prism's own ``pg_hba.conf`` lives there too.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import trio
from docker.types import Mount

from prism.core.errors import RuntimeStartFailed
from prism.core.names import MAIN_BRANCH
from prism.core.values import DockerNetwork
from prism.postgres import serverconf
from prism.runtime import _docker_sandbox as sandbox
from prism.runtime._docker_engine import (
    LABEL_BRANCH,
    LABEL_MANAGED,
    LABEL_NETWORK,
    LABEL_PARENT,
    LABEL_PGDATA,
    LABEL_PORT,
    LABEL_SANDBOX,
    LABEL_SOCKET_DIR,
)
from prism.runtime._docker_image import ImageInfo
from prism.runtime._postmaster import LOOPBACK, hand_over, make_socket_dir
from prism.runtime.base import BindMount, ServerExtras, Share, SharedDir

CONTAINER_PREFIX = "prism-"
CONTAINER_PORT = 5432
"""The port a server listens on where each container has an address of its own (bridge)."""
_SOCKET_TARGET = "/var/run/prism"

CONTAINER_ARCHIVE = PurePosixPath("/var/lib/prism/wal-archive")
"""Where a container sees its own branch's WAL archive (read-write)."""
CONTAINER_PATHS = {
    Share.WAL_ARCHIVE: CONTAINER_ARCHIVE,
    Share.RESTORE_ARCHIVE: PurePosixPath("/var/lib/prism/restore/archive"),
    Share.RESTORE_WAL: PurePosixPath("/var/lib/prism/restore/pg_wal"),
}
"""Where a container sees each directory it is given: the same fixed paths on every host,
whatever the host paths are."""


def seen_in_container(shared: SharedDir) -> PurePosixPath:
    """Where a branch's container sees a directory it is given (``ServerExtras.resolve``)."""
    return CONTAINER_PATHS[shared.share]


def container_name(branch: str) -> str:
    """The container of ``branch``: a generation of main being made (``gen:2``) has a ``:``,
    which a container name may not; ``.`` takes its place, a character no branch name has."""
    return f"{CONTAINER_PREFIX}{branch.replace(':', '.')}"


@dataclass(frozen=True)
class Launch:
    """What one container start is made of, whatever port it gets."""

    branch: str
    pgdata: Path
    parent: str | None
    info: ImageInfo
    mode: DockerNetwork
    uid: int
    gid: int
    socket_dir: Path | None
    # The settings Prism overrides on this data (serverconf); the image's libraries are unknown,
    # so shared_preload_libraries is left alone.
    owned: dict[str, str]
    # Whether the sandbox lets it connect out (main following a source, --branch-egress).
    outbound: bool
    # Host directories beyond the data and socket ones (a WAL archive: prism.branches.pitr; main's
    # passfile for its walreceiver, when it follows a source).
    mounts: tuple[BindMount, ...] = ()


async def prepare_launch(
    branch: str,
    pgdata: Path,
    *,
    parent: str | None,
    info: ImageInfo,
    mode: DockerNetwork,
    socket_dir: Path | None,
    extras: ServerExtras,
    main_mounts: tuple[BindMount, ...],
    copy_on_write: bool,
    outbound: bool,
) -> Launch:
    """Ready the host side of ``branch``'s container and say what it is made of.

    The data's owner becomes the server's uid:gid; the directories of ``extras`` are handed to
    it and its socket directory (``socket_dir``, None where the engine runs elsewhere) is made
    with Prism's ``pg_hba.conf`` in it. ``main_mounts`` are given to main only.
    """
    uid, gid = await trio.to_thread.run_sync(_server_owner, pgdata)
    await trio.to_thread.run_sync(hand_over, extras.dirs, (uid, gid))
    if socket_dir is not None:
        await trio.to_thread.run_sync(make_socket_dir, socket_dir, (uid, gid))
    configured = await trio.to_thread.run_sync(serverconf.configured_values, pgdata)
    owned = serverconf.overrides(configured, has_library=None, copy_on_write=copy_on_write)
    if socket_dir is not None:
        owned.update(await trio.to_thread.run_sync(_prism_files, socket_dir, (uid, gid)))
    extra_settings, mounts = extras.resolve(seen_in_container)
    owned.update(extra_settings)
    mounts += main_mounts if branch == MAIN_BRANCH else ()
    return Launch(branch, pgdata, parent, info, mode, uid, gid, socket_dir, owned, outbound, mounts)


def container_args(spec: Launch, port: int) -> tuple[list[str], list[Mount], dict[str, str]]:
    """The server command line, the mounts and Prism's labels of ``spec``'s container on
    ``port`` (sans-IO)."""
    # With the host's network the server shares the host's loopback: listen there only.
    listen = LOOPBACK if spec.mode is DockerNetwork.HOST else "*"
    command = ["-D", spec.info.pgdata, *serverconf.as_flags(spec.owned)]
    command += ["-c", f"listen_addresses={listen}", "-c", f"port={port}"]
    mounts = [Mount(spec.info.pgdata, str(spec.pgdata), type="bind")]
    mounts += [
        Mount(m.target, str(m.source), type="bind", read_only=m.read_only) for m in spec.mounts
    ]
    labels = {
        LABEL_MANAGED: "true",
        LABEL_BRANCH: spec.branch,
        LABEL_PARENT: spec.parent or "",
        LABEL_PGDATA: str(spec.pgdata),
        LABEL_NETWORK: spec.mode,
        LABEL_PORT: str(port),
        LABEL_SANDBOX: sandbox.label(outbound=spec.outbound),
    }
    if spec.socket_dir is not None:
        mounts.append(Mount(_SOCKET_TARGET, str(spec.socket_dir), type="bind"))
        labels[LABEL_SOCKET_DIR] = str(spec.socket_dir)
        command += [
            "-c",
            f"unix_socket_directories={_SOCKET_TARGET}",
            "-c",
            "unix_socket_permissions=0700",
        ]
    else:
        command += ["-c", "unix_socket_directories="]
    return command, mounts, labels


def _prism_files(socket_dir: Path, owner: tuple[int, int]) -> dict[str, str]:
    """Prism's ``pg_hba.conf`` and ident map in the server's socket directory, as settings.

    As with the process runtime, the data's own ``pg_hba.conf`` (production's, after a base
    backup: no local trust) must not lock Prism's service connection out.
    """
    hba, ident = serverconf.write_prism_files(socket_dir, owner)
    return {
        "hba_file": f"{_SOCKET_TARGET}/{hba.name}",
        "ident_file": f"{_SOCKET_TARGET}/{ident.name}",
    }


def _server_owner(pgdata: Path) -> tuple[int, int]:
    """The uid:gid the server runs as: the data directory's owner, never root."""
    try:
        info = pgdata.stat()
    except OSError as exc:
        raise RuntimeStartFailed(
            f"the data directory {pgdata} cannot be read: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeStartFailed(f"the data directory {pgdata} does not exist")
    if info.st_uid == 0:
        raise RuntimeStartFailed(
            f"the data directory {pgdata} is owned by root, and Postgres refuses to run as root",
            hint=f"chown -R it to the uid the image's postgres user has (e.g. chown -R 999:999 "
            f"{pgdata} for the Debian postgres images, 70:70 for alpine)",
        )
    return info.st_uid, info.st_gid
