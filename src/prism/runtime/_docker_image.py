"""Images for the docker runtime: which image serves which data, what it holds, its initdb.

``--image`` may name ``{major}``, filled in with the PostgreSQL major version of the data a
server runs on, so one Prism serves branches of several majors. What Prism needs from an
image — its PGDATA, its ``/etc/passwd`` (who ``postgres`` is) and its PG_MAJOR — is read
once per image, from a created but never started container, which works for any image, shell
or not. Prism never pulls: a pull can hang on an unreachable registry, so a missing image is an
error that says how to get it. New clusters are made by the image's own ``initdb`` in a
one-off container, as the data directory's owner.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import trio
from docker.models.containers import Container
from docker.types import Mount

from prism.core import secretfiles
from prism.core.crashpoints import crash_point
from prism.core.errors import ConfigError, RuntimeStartFailed
from prism.postgres.binaries import read_data_major
from prism.runtime._docker_engine import LABEL_MANAGED, LABEL_PGDATA, DockerEngine
from prism.runtime._postmaster import remove_dir

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "postgres:15-alpine"
MAJOR_FIELD = "{major}"
_DEFAULT_PGDATA = "/var/lib/postgresql/data"
_INIT_TARGET = "/var/run/prism-init"
_INITDB_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ImageInfo:
    """What Prism needs to know about one image."""

    image: str
    pgdata: str
    passwd: str
    # From the official images' PG_MAJOR; None when an image does not say.
    major: int | None


class Images:
    """The images of one docker runtime: ``--image`` per major version, each read once."""

    def __init__(
        self, engine: DockerEngine, image: str = DEFAULT_IMAGE, default_major: int | None = None
    ) -> None:
        if MAJOR_FIELD in image and default_major is None:
            raise ConfigError(
                f"the image {image} names {MAJOR_FIELD} but no major version for new clusters "
                "is known"
            )
        self._engine = engine
        self._image = image
        self._default_major = default_major
        self._known: dict[str, ImageInfo] = {}

    def for_major(self, major: int | None) -> str:
        """The image for data of ``major`` (None: a new cluster): ``--image`` with its
        ``{major}`` filled in."""
        if MAJOR_FIELD not in self._image:
            return self._image
        return self._image.replace(MAJOR_FIELD, str(major or self._default_major))

    async def for_data(self, branch: str, pgdata: Path) -> ImageInfo:
        """The image whose server can read ``pgdata``, or a clear error before any container.

        A server of another major version exits at once on this data; refusing here keeps a
        client or the reaper from starting that doomed container again and again.
        """
        major = await trio.to_thread.run_sync(read_data_major, pgdata)
        if major is None:
            return await self.details(self.for_major(None))
        return await self.of_major(major, what=f"the data of branch {branch}")

    async def of_major(self, major: int, *, what: str) -> ImageInfo:
        """The image for PostgreSQL ``major``; one that says it runs another major is refused,
        naming ``what`` (the data, or the source) in the error."""
        info = await self.details(self.for_major(major))
        if info.major is not None and info.major != major:
            raise wrong_major(what, major, info.image, info.major)
        return info

    async def details(self, name: str) -> ImageInfo:
        """PGDATA, /etc/passwd and major version of an image, read once; a missing image is an
        error that says how to get it (Prism never pulls: a pull can hang on an unreachable
        registry)."""
        if name in self._known:
            return self._known[name]
        client = await self._engine.connect()
        try:
            image = await self._engine.call(
                RuntimeStartFailed,
                client.images.get,
                name,
                passes=(docker.errors.ImageNotFound,),
            )
        except docker.errors.ImageNotFound as exc:
            raise RuntimeStartFailed(
                f"the Docker image {name} is not present on the engine",
                hint=f"pull it (docker pull {name}) or build it, or choose another "
                "image with --image",
            ) from exc
        env = dict(item.split("=", 1) for item in (image.attrs.get("Config", {}).get("Env") or []))
        pgdata = env.get("PGDATA") or _DEFAULT_PGDATA
        # A created (never started) container is the only way to read a file from any image,
        # shell or not.
        probe: Container = await self._engine.call(
            RuntimeStartFailed,
            client.containers.create,
            name,
            entrypoint=["true"],
            labels={LABEL_MANAGED: "true"},
        )
        try:
            try:
                chunks, _ = await self._engine.call(
                    RuntimeStartFailed,
                    probe.get_archive,
                    "/etc/passwd",
                    passes=(docker.errors.NotFound,),
                )
                passwd = _untar_one(b"".join(chunks))
            except docker.errors.NotFound:
                passwd = ""
        finally:
            await self._engine.remove_quietly(probe)
        major = env.get("PG_MAJOR", "").split(".")[0]
        info = ImageInfo(name, pgdata, passwd, int(major) if major.isdigit() else None)
        self._known[name] = info
        return info

    async def initdb(self, pgdata: Path, *, run_dir: Path, superuser: str, password: str) -> None:
        """Initialise ``pgdata`` with the image's own ``initdb``, as the data directory's owner.

        A root-owned directory (what a storage driver running as root makes) is first handed to
        the image's ``postgres`` user, read from the image's ``/etc/passwd``, since Postgres
        refuses to run as root. A uid the image does not know gets a passwd entry bind-mounted
        in, because ``initdb`` looks its own user up.
        """
        info = await self.details(self.for_major(None))
        uid, gid = await trio.to_thread.run_sync(_initdb_owner, pgdata, info.passwd)
        workdir = await trio.to_thread.run_sync(
            _initdb_workdir, run_dir, password, uid, gid, info.passwd
        )
        crash_point("initdb:password-written")  # a kill now leaves it: the start-up sweep
        target = info.pgdata
        mounts = [
            Mount(target, str(pgdata), type="bind"),
            Mount(_INIT_TARGET, str(workdir), type="bind", read_only=True),
        ]
        if (workdir / "passwd").exists():
            mounts.append(
                Mount("/etc/passwd", str(workdir / "passwd"), type="bind", read_only=True)
            )
        command = [
            "-D",
            target,
            "-U",
            superuser,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={_INIT_TARGET}/pwfile",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        started = trio.current_time()
        try:
            await self._run_initdb(info.image, pgdata, command, uid, gid, mounts)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_dir, workdir)
        # The official images open TCP to every address in pg_hba the same way; without it the
        # server refuses the bridge gateway Prism connects from.
        await trio.to_thread.run_sync(_allow_host_connections, pgdata)
        log.info(
            "cluster initialised pgdata=%s superuser=%s image=%s uid=%d duration_ms=%d",
            pgdata,
            superuser,
            info.image,
            uid,
            (trio.current_time() - started) * 1000,
        )

    async def _run_initdb(
        self, image: str, pgdata: Path, command: list[str], uid: int, gid: int, mounts: list[Mount]
    ) -> None:
        """Run ``initdb`` in a one-off container and remove it, whatever happens."""
        container: Container = await self._engine.call(
            RuntimeStartFailed,
            self._engine.containers().create,
            image,
            entrypoint=["initdb"],
            command=command,
            user=f"{uid}:{gid}",
            mounts=mounts,
            labels={LABEL_MANAGED: "true", LABEL_PGDATA: str(pgdata)},
            environment={"LC_ALL": "C"},
        )
        try:
            await self._engine.call(RuntimeStartFailed, container.start)
            result: Any = None
            with trio.move_on_after(_INITDB_TIMEOUT_S):
                result = await self._engine.call(
                    RuntimeStartFailed, container.wait, abandon_on_cancel=True
                )
            if result is None:
                raise RuntimeStartFailed(
                    f"initdb for {pgdata} did not finish within {_INITDB_TIMEOUT_S:g} s",
                    hint=await self._engine.log_tail(container),
                )
            status = int(result.get("StatusCode", -1))
            if status != 0:
                raise RuntimeStartFailed(
                    f"initdb failed for {pgdata} in image {image} (exit status {status})",
                    hint=await self._engine.log_tail(container),
                )
        finally:
            with trio.CancelScope(shield=True):
                await self._engine.remove_quietly(container)


# --- blocking helpers (run in threads) ---------------------------------------------------------


def _initdb_owner(pgdata: Path, passwd: str) -> tuple[int, int]:
    """Who runs ``initdb``: the directory's owner, or the image's postgres user if that is root."""
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = pgdata.stat()
    if info.st_uid != 0:
        return info.st_uid, info.st_gid
    owner = image_user(passwd)
    if owner is not None:
        os.chown(pgdata, *owner)
        return owner
    raise RuntimeStartFailed(
        f"cannot tell which user should own {pgdata}: it is root's, and the image has no "
        "'postgres' user",
        hint=f"chown {pgdata} to the uid the image runs Postgres as",
    )


def wrong_major(what: str, major: int, image: str, runs: int) -> RuntimeStartFailed:
    """The error for data (or a source) of ``major`` and an image of PostgreSQL ``runs``."""
    return RuntimeStartFailed(
        f"{what} is PostgreSQL {major}, and the image {image} runs PostgreSQL {runs}",
        hint=f"choose an image per major version with --image "
        f"(e.g. postgres:{MAJOR_FIELD}-alpine), or an image of PostgreSQL {major}",
    )


def image_user(passwd: str) -> tuple[int, int] | None:
    """uid and gid of the ``postgres`` user in an image's ``/etc/passwd``; None if it has none."""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == "postgres":
            return int(fields[2]), int(fields[3])
    return None


def _initdb_workdir(run_dir: Path, password: str, uid: int, gid: int, passwd: str) -> Path:
    """A private directory with the password file (and a passwd entry if the image lacks uid)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # Named for the start-up sweep: a kill before its removal leaves the password in it.
    workdir = Path(tempfile.mkdtemp(prefix=secretfiles.WORKDIR_PREFIX, dir=run_dir))
    try:
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        os.chown(pwfile, uid, gid)
        known = {line.split(":")[2] for line in passwd.splitlines() if line.count(":") >= 3}
        if str(uid) not in known:
            entry = f"prism:x:{uid}:{gid}:Prism branch server:/tmp:/sbin/nologin\n"
            body = passwd if not passwd or passwd.endswith("\n") else passwd + "\n"
            (workdir / "passwd").write_text(body + entry, encoding="utf-8")
            (workdir / "passwd").chmod(0o644)
        os.chown(workdir, uid, gid)
        workdir.chmod(0o700)
    except BaseException:
        remove_dir(workdir)
        raise
    return workdir


def _allow_host_connections(pgdata: Path) -> None:
    hba = pgdata / "pg_hba.conf"
    with open(hba, "a", encoding="utf-8") as file:
        file.write("\n# Added by Prism: clients reach the container over its network.\n")
        file.write("host all all all scram-sha-256\n")


def _untar_one(data: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive:
            extracted = archive.extractfile(member)
            if extracted is not None:
                return extracted.read().decode("utf-8", errors="replace")
    return ""
