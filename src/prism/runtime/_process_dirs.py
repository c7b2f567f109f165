"""The directories and files a local server needs before it starts, made for the user it runs as.

Its data directory (the server user's, mode 0700), its private socket directory (or the name of
its service socket in the abstract namespace, where the sandbox keeps other servers from it),
the run and log directories, Prism's own ``pg_hba.conf`` and the filtered ``postgresql.conf``
of its data, and ``initdb``'s password file. All of it is blocking file work, run in a thread.
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

from prism.core import secretfiles
from prism.core.errors import RuntimeStartFailed
from prism.postgres import serverconf
from prism.postgres.binaries import PgInstall
from prism.runtime._postmaster import hand_over, make_socket_dir, socket_dir_for
from prism.runtime.base import BindMount, ServerExtras, seen_at_host_path
from prism.runtime.landlock import Support
from prism.runtime.sandbox import SandboxPolicy

log = logging.getLogger(__name__)


class ServerDirs:
    """Where the servers of one process runtime keep their files, and making them ready."""

    def __init__(
        self,
        install: PgInstall,
        *,
        run_dir: Path,
        log_dir: Path,
        copy_on_write: bool,
        sandbox_policy: SandboxPolicy | None,
        support: Support | None,
    ) -> None:
        # The binaries for new clusters; every install runs as the same user.
        self._install = install
        self._run_dir = run_dir
        self.log_dir = log_dir
        self._copy_on_write = copy_on_write  # the storage's: which WAL settings fit it
        self._sandbox_policy = sandbox_policy
        # Service sockets in the abstract namespace only where the sandbox keeps servers from
        # them (Landlock scopes); elsewhere a private 0700 directory with trust, as before.
        # ``peer`` authentication names Prism's OS user; a uid without a name (an arbitrary
        # container uid) cannot be admitted by name, so its sockets stay in a private directory.
        self._prism_user = user_name(os.geteuid())
        self.abstract = support is not None and support.scopes and self._prism_user is not None
        """Whether service sockets are in the abstract namespace (``peer`` authentication)."""

    def socket_dir(self, branch: str) -> Path:
        """The private socket directory of ``branch``, short enough for a Unix socket path."""
        return socket_dir_for(self._run_dir, branch, Path("/tmp") / f"prism-{os.geteuid()}")

    def socket_name(self, socket_dir: Path) -> str:
        """``unix_socket_directories``: the directory, or its name in the abstract namespace."""
        return f"@{socket_dir}" if self.abstract else str(socket_dir)

    def prepare_start(
        self, install: PgInstall, pgdata: Path, socket_dir: Path, extras: ServerExtras
    ) -> tuple[dict[str, str], tuple[BindMount, ...]]:
        """Blocking set-up before a start: data dir ownership, socket dir, log dir, Prism's own
        hba file; returns the settings Prism overrides for this data (``serverconf``) with
        those of ``extras``, and the extra directories its sandbox opens."""
        if not pgdata.is_dir():
            raise RuntimeStartFailed(f"the data directory {pgdata} does not exist")
        self.own_pgdata(pgdata, False)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._reachable_run_dir()
        owner = self._install
        server_ids = (owner.run_as_uid, owner.run_as_gid) if owner.switches_user else None
        make_socket_dir(socket_dir, server_ids)
        hand_over(extras.dirs, server_ids)
        hba, ident = serverconf.write_prism_files(
            self._run_dir, server_ids, ident_map=self._ident_map(install)
        )
        configured = serverconf.configured_values(pgdata)
        has_library = serverconf.library_checker(install.bin_dir.parent / "lib")
        if has_library is not None:
            for name in serverconf.missing_libraries(configured, has_library):
                log.warning(
                    "shared_preload_libraries: %s is not in PostgreSQL %s's libraries; "
                    "starting without it pgdata=%s",
                    name,
                    install.version,
                    pgdata,
                )
        owned = serverconf.overrides(
            configured, has_library=has_library, copy_on_write=self._copy_on_write
        )
        extra_settings, mounts = extras.resolve(seen_at_host_path)
        owned.update(extra_settings)
        # The private socket directory lives exactly as long as the server: a fine home.
        conf = socket_dir / "postgresql.conf"
        serverconf.write_private(conf, serverconf.server_conf(pgdata, owned), server_ids)
        settings = {
            "config_file": str(conf),
            **owned,
            "hba_file": str(hba),
            "ident_file": str(ident),
        }
        return settings, mounts

    def own_pgdata(self, pgdata: Path, create: bool) -> None:
        """Make ``pgdata`` the server user's, mode 0700, as Postgres insists.

        A clone made by root (copy, reflink, snapshot) may carry root-owned files; when the top
        directory is not the server user's, the whole tree is handed over.
        """
        if create:
            pgdata.mkdir(parents=True, exist_ok=True)
        if self._install.switches_user and pgdata.stat().st_uid != self._install.run_as_uid:
            for dirpath, dirnames, filenames in os.walk(pgdata):
                for name in (*dirnames, *filenames):
                    os.lchown(
                        os.path.join(dirpath, name),
                        self._install.run_as_uid,
                        self._install.run_as_gid,
                    )
            self._install.chown(pgdata)
        pgdata.chmod(0o700)

    def write_pwfile(self, password: str) -> Path:
        """A 0600 password file the server user can read, for ``initdb --pwfile``.

        It is made in the private run dir, not the shared temporary directory, so a Prism
        killed during initdb leaves it where the next start sweeps it (``secretfiles``).
        """
        self._reachable_run_dir()
        path = secretfiles.write_password_file(self._run_dir, password)
        try:
            self._install.chown(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def _reachable_run_dir(self) -> None:
        """Make the run dir; searchable (not listable) by the server user when that is
        another, who opens its socket directory and initdb's password file in it."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        if self._install.switches_user:
            self._run_dir.chmod(self._run_dir.stat().st_mode | 0o111)

    def _ident_map(self, install: PgInstall) -> str | None:
        """Who may use an abstract service socket: Prism's OS user and the server user (whose
        tools restore a dump into it); None where the socket is a private directory."""
        if not self.abstract:
            return None
        assert self._sandbox_policy is not None
        assert self._prism_user is not None
        users = [self._prism_user, install.run_as_name]
        return serverconf.peer_ident_map(users, self._sandbox_policy.service_role)


def user_name(uid: int) -> str | None:
    """The name of ``uid`` in the user database, None where it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
