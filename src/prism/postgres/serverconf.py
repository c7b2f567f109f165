"""A data directory's server configuration files: the one module that writes them.

What a server reads besides its data is Prism's to say, and said here only:

* **Prism's own files beside the data**: its ``pg_hba.conf`` and ident map
  (``write_prism_files``) and a filtered copy of the data's ``postgresql.conf``
  (``server_conf``), given to the server with ``-c hba_file``/``ident_file``/``config_file``.
* **Replication and recovery in the data directory**: ``postgresql.auto.conf`` lines and the
  signal files ``standby.signal`` / ``recovery.signal`` that make main a hot standby of its
  source (``make_standby``), a clone of a standby open writable (``detach_clone``) and a clone
  of a snapshot recover to a time (``recover_to``). Only settings Prism owns are rewritten
  (``_REPLICATION_SETTINGS``); the rest of ``postgresql.auto.conf`` is kept as it is.

The data's own ``postgresql.conf`` and ``pg_hba.conf`` are never edited: a main made from a base
backup of production carries production's files, and a later refresh would bring them back.
Every server starts instead with ``-c`` settings that win over them:

* its own ``pg_hba.conf`` (``hba_file``): trust on the private 0700 socket directory for
  Prism's service connection, SCRAM over TCP for clients. Production's rules (no local trust,
  client certificates, LDAP...) would lock Prism out, and methods the binaries were built
  without (GSSAPI, PAM) would stop the server from starting at all.
* settings that reach outside the host or cannot work on it: ``ssl`` (certificate paths of
  production; Prism terminates TLS in front), ``archive_mode`` (an ``archive_command`` copying
  to production's WAL archive), ``synchronous_standby_names`` (a branch would wait for ever
  for production's synchronous standby), ``logging_collector`` (log paths of production; Prism
  keeps each server's log), ``unix_socket_group``, ``external_pid_file``.
* ``wal_init_zero`` and ``wal_recycle`` off on copy-on-write storage (btrfs, ZFS), where
  zero-filling a new WAL segment and recycling an old one only cost writes — Postgres' own
  advice for such file systems; a branch whose WAL ends on a segment switch (a clone of a
  standby of an idle source) creates its next segment at start. Not on ext4 or XFS (the copy
  and reflink drivers): there the zero-fill reserves the segment's space, so a full disk fails
  its creation instead of a WAL write, which would be a PANIC of the server.
* memory a development host may not have: ``shared_buffers`` above ``_SHARED_BUFFERS_CAP`` is
  lowered to it and ``huge_pages = on`` becomes ``try``.
* ``shared_preload_libraries`` loses the libraries the binaries lack (a server refuses to start
  when one is missing); those present stay.

Main as a standby, and clones of it:

* main gets ``standby.signal`` and, appended to ``postgresql.auto.conf`` (later lines win),
  ``primary_conninfo`` without the password (that is in Prism's private passfile) and the
  optional ``primary_slot_name``. Postgres' own walreceiver then follows the source and retries
  every ``wal_retrieve_retry_interval`` when it is gone: no Prism task is needed for either.
* a clone of a standby loses ``standby.signal`` and every line naming the source, and starts
  with no signal file at all: crash recovery, as a clone of a primary does. It replays all the
  WAL it holds (main received and flushed it before replaying any of it, so every change in
  the clone's pages is there) and opens writable on main's timeline, as of the instant it was
  cloned; until then its server admits no client. Archive recovery (``recovery.signal``) would
  do the same and then switch to a new timeline, which writes and fsyncs a whole WAL segment
  and a history file: on btrfs that was most of a standby main's extra cold start
  (``tools/bench/standby.py``, docs/benchmarks.md).

The parsing here is sans-IO; ``configured_values`` reads the two files and the writers write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

HBA_FILE_NAME = "prism_hba.conf"
AUTO_CONF = "postgresql.auto.conf"
IDENT_FILE_NAME = "prism_ident.conf"

#: ``pg_hba.conf`` of every server Prism starts: its service socket is private (0700), so
#: trusting it admits only Prism; TCP asks every client for its password.
PRISM_HBA_RULES = """\
# Written by Prism; the server reads this file instead of the data directory's pg_hba.conf.
local all all trust
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
"""

#: ``pg_hba.conf`` of a sandboxed server, whose service socket is in the abstract namespace:
#: any local user can reach such a socket, so it asks the kernel who connects (``peer``) and
#: admits only the OS users in the ident map (Prism's, and the server user's tools).
PEER_HBA_RULES = """\
# Written by Prism; the server reads this file instead of the data directory's pg_hba.conf.
local all all peer map=prism
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
"""


def peer_ident_map(os_users: Iterable[str], role: str) -> str:
    """The ident map of ``PEER_HBA_RULES``: each of ``os_users`` may log in as any role
    (``all``, PostgreSQL 16 and later) and as ``role`` (Prism's superuser, for 15 and
    earlier, where ``all`` is just a role name nobody has)."""
    lines = ["# Written by Prism: OS users allowed on the service socket."]
    for user in dict.fromkeys(os_users):
        lines += [f"prism {user} all", f"prism {user} {role}"]
    return "\n".join(lines) + "\n"


#: Overridden whatever the configuration says (see the module docstring for why).
FIXED_OVERRIDES: dict[str, str] = {
    "ssl": "off",
    "archive_mode": "off",
    "synchronous_standby_names": "",
    "logging_collector": "off",
    "unix_socket_group": "",
    "external_pid_file": "",
}

#: Overridden too when the data lives on copy-on-write storage (see the module docstring).
COPY_ON_WRITE_OVERRIDES: dict[str, str] = {"wal_init_zero": "off", "wal_recycle": "off"}

_SHARED_BUFFERS_CAP = "1GB"
_UNIT_KB = {"kb": 1, "mb": 1024, "gb": 1024**2, "tb": 1024**3}
_PAGE_KB = 8
_INCLUDES = ("include", "include_if_exists", "include_dir")
_CONF_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=?\s*(.*?)\s*$")


def memory_kb(value: str) -> int | None:
    """Kilobytes in a memory setting (``64GB``, ``131072`` pages of 8 kB); None if unreadable."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT][bB])?\s*", value)
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return number * _UNIT_KB[unit.lower()] if unit else number * _PAGE_KB


def parse_conf(text: str) -> dict[str, str]:
    """``name = value`` pairs of a ``postgresql.conf`` text, the last one of a name winning.

    Quoted values lose their quotes ('' inside means '); comments are dropped. ``include``
    directives are not followed: settings that hide in included files are not seen here (the
    fixed overrides apply regardless).
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _CONF_LINE.match(line)
        if match is None:
            continue
        name, rest = match.group(1).lower(), match.group(2)
        if rest.startswith("'"):
            value, index = [], 1
            while index < len(rest):
                char = rest[index]
                if char == "'" and rest[index + 1 : index + 2] == "'":
                    value.append("'")
                    index += 2
                    continue
                if char == "'":
                    break
                if char == "\\" and index + 1 < len(rest):
                    index += 1
                    char = rest[index]
                value.append(char)
                index += 1
            values[name] = "".join(value)
        else:
            values[name] = rest.split("#", 1)[0].strip()
    return values


def configured_values(pgdata: Path) -> dict[str, str]:
    """What ``postgresql.conf`` then ``postgresql.auto.conf`` in ``pgdata`` set (later wins)."""
    values: dict[str, str] = {}
    for name in ("postgresql.conf", AUTO_CONF):
        try:
            values.update(parse_conf((pgdata / name).read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return values


def overrides(
    configured: dict[str, str],
    *,
    has_library: Callable[[str], bool] | None,
    copy_on_write: bool = False,
) -> dict[str, str]:
    """The ``-c`` settings a server on data configured as ``configured`` must be started with.

    ``has_library`` says whether the binaries have a shared library; None when that cannot be
    known (a container image), and then ``shared_preload_libraries`` is left as it is.
    ``copy_on_write``: the data lives on btrfs or ZFS (``Storage.copy_on_write``).
    """
    result = dict(FIXED_OVERRIDES)
    if copy_on_write:
        result.update(COPY_ON_WRITE_OVERRIDES)
    buffers = memory_kb(configured.get("shared_buffers", ""))
    cap = memory_kb(_SHARED_BUFFERS_CAP)
    if buffers is not None and cap is not None and buffers > cap:
        result["shared_buffers"] = _SHARED_BUFFERS_CAP
    if configured.get("huge_pages", "").lower() == "on":
        result["huge_pages"] = "try"
    preload = configured.get("shared_preload_libraries", "")
    if preload and has_library is not None:
        libraries = _list_items(preload)
        kept = [name for name in libraries if has_library(name)]
        if kept != libraries:
            result["shared_preload_libraries"] = ",".join(kept)
    return result


def missing_libraries(configured: dict[str, str], has_library: Callable[[str], bool]) -> list[str]:
    """The preloaded libraries the binaries lack: what ``overrides`` drops, for a warning."""
    preload = configured.get("shared_preload_libraries", "")
    return [name for name in _list_items(preload) if not has_library(name)]


def library_checker(pkglibdir: Path) -> Callable[[str], bool] | None:
    """Whether a library is in ``pkglibdir``; None when that directory is unknown."""
    if not pkglibdir.is_dir():
        return None

    def has_library(name: str) -> bool:
        base = name.removeprefix("$libdir/")
        return (pkglibdir / f"{base}.so").exists() or (pkglibdir / base).exists()

    return has_library


def write_prism_files(
    directory: Path, readable_by: tuple[int, int] | None, *, ident_map: str | None = None
) -> tuple[Path, Path]:
    """Write Prism's ``pg_hba.conf`` and ident map into ``directory``; return both.

    ``readable_by`` is the server's uid:gid when it is not Prism's own user. ``ident_map``:
    the service socket asks for ``peer`` with this map (``PEER_HBA_RULES``) instead of
    trusting whoever reaches the private socket directory.
    """
    paths = []
    files = (
        (HBA_FILE_NAME, PRISM_HBA_RULES if ident_map is None else PEER_HBA_RULES),
        (IDENT_FILE_NAME, ident_map or ""),
    )
    for name, content in files:
        write_private(directory / name, content, readable_by)
        paths.append(directory / name)
    return paths[0], paths[1]


def server_conf(pgdata: Path, drop: Iterable[str]) -> str:
    """The ``postgresql.conf`` Prism gives the server (``config_file``): the data's own, with
    the lines that set a name in ``drop`` commented out.

    A value in the file is checked at start-up even when a ``-c`` flag overrides it, so
    ``ssl = on`` alone stops a server built without SSL; such lines must not reach it.
    ``include`` paths are made absolute, since the copy lives elsewhere. A data directory
    without ``postgresql.conf`` (packaged servers keep theirs in /etc) gets an empty one.
    """
    try:
        text = (pgdata / "postgresql.conf").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    dropped = {name.lower() for name in drop}
    lines = ["# Written by Prism from the data directory's postgresql.conf; see serverconf.py."]
    for line in text.splitlines():
        match = _CONF_LINE.match(line)
        name = match.group(1).lower() if match else ""
        if name in dropped or name.startswith("ssl"):
            lines.append(f"# overridden by Prism: {line}")
        elif name in _INCLUDES and match is not None:
            target = parse_conf(f"x = {match.group(2)}").get("x", "")
            path = target if target.startswith("/") else str(pgdata / target)
            lines.append(f"{name} '{path.replace(chr(39), chr(39) * 2)}'")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def write_private(path: Path, content: str, readable_by: tuple[int, int] | None) -> None:
    """Write ``content`` to ``path`` (0600) atomically, owned by ``readable_by`` if given."""
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.chmod(0o600)
    if readable_by is not None:
        os.chown(tmp, *readable_by)
    tmp.replace(path)


# ---- replication and recovery in the data directory --------------------------------------

_REPLICATION_SETTINGS = (
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "hot_standby",
    "recovery_target_time",
    "recovery_target_action",
    "wal_retrieve_retry_interval",  # main's backoff (prism.source.backoff), not a branch's
)


def conf_line(name: str, value: str) -> str:
    """``name = 'value'`` as postgresql.conf quotes it."""
    return f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n"


def is_standby(pgdata: Path) -> bool:
    """Whether the server on ``pgdata`` runs as a standby (of the source)."""
    return (pgdata / "standby.signal").exists()


def is_recovering(pgdata: Path) -> bool:
    """Whether the server on ``pgdata`` will start in archive recovery (a clone to a time, or
    of a standby, that has not promoted yet)."""
    return (pgdata / "recovery.signal").exists()


def make_standby(pgdata: Path, *, primary_conninfo: str, slot: str | None) -> None:
    """Configure main, fresh from a base backup, to follow the source."""
    lines = [
        "# Added by Prism: main follows the source as a hot standby.\n",
        conf_line("primary_conninfo", primary_conninfo),
        conf_line("primary_slot_name", slot or ""),
        conf_line("restore_command", ""),
        conf_line("hot_standby", "on"),
    ]
    _rewrite_auto_conf(pgdata, lines)
    _write_owned(pgdata, "standby.signal", "")


def detach_clone(pgdata: Path) -> bool:
    """Make a clone of a standby recover to the end of the WAL it holds and open writable;
    False if it is not a standby.

    Nothing naming the source stays in the clone, so a branch can never reach it.
    """
    if not is_standby(pgdata):
        return False
    lines = [
        "# Added by Prism: a branch recovers what it holds and opens writable.\n",
        conf_line("primary_conninfo", ""),
        conf_line("primary_slot_name", ""),
    ]
    _rewrite_auto_conf(pgdata, lines)
    (pgdata / "standby.signal").unlink()
    return True


def recover_to(pgdata: Path, *, target_time: str) -> None:
    """Make a clone of a snapshot replay archived WAL up to ``target_time``, then promote.

    Commits at or before the target are kept, later ones are not (``recovery_target_inclusive``
    is on by default). ``hot_standby = off`` keeps clients out until it has promoted. Its
    ``restore_command`` is a start setting, given while it recovers (``prism.branches.pitr``), since
    it names paths as the server's runtime shows them; an earlier one here is dropped.
    """
    lines = [
        "# Added by Prism: a branch as of a point in time.\n",
        conf_line("primary_conninfo", ""),
        conf_line("primary_slot_name", ""),
        conf_line("recovery_target_time", target_time),
        conf_line("recovery_target_action", "promote"),
        conf_line("hot_standby", "off"),
    ]
    _rewrite_auto_conf(pgdata, lines)
    _write_owned(pgdata, "recovery.signal", "")
    (pgdata / "standby.signal").unlink(missing_ok=True)


def _rewrite_auto_conf(pgdata: Path, lines: list[str]) -> None:
    """Drop earlier source settings from ``postgresql.auto.conf`` and append ``lines``."""
    path = pgdata / AUTO_CONF
    try:
        kept = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        kept = ["# Do not edit this file manually!\n"]
    kept = [
        line
        for line in kept
        if line.split("=", 1)[0].strip().lower() not in _REPLICATION_SETTINGS
        and not line.startswith("# Added by Prism")
    ]
    _write_owned(pgdata, AUTO_CONF, "".join(kept) + "".join(lines))


def _write_owned(pgdata: Path, name: str, content: str) -> None:
    """Write a file into ``pgdata`` atomically, owned like ``pgdata`` and private (0600)."""
    owner = pgdata.stat()
    readable_by = (owner.st_uid, owner.st_gid) if os.geteuid() == 0 else None
    write_private(pgdata / name, content, readable_by)


def _list_items(value: str) -> list[str]:
    return [item.strip().strip('"') for item in value.split(",") if item.strip()]


def as_flags(settings: dict[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """``-c name=value`` arguments for a ``postgres`` command line."""
    items = settings.items() if isinstance(settings, dict) else settings
    flags: list[str] = []
    for key, value in items:
        flags += ["-c", f"{key}={value}"]
    return flags
