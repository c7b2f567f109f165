"""The values a setting can take, and how each is parsed from its text.

Durations, addresses, the choices as ``StrEnum``s, the create-on-connect policy and
the point-in-time branch pattern: pure, and shared by the settings and their readers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from prism.core.errors import ConfigError
from prism.core.hostnames import host_name
from prism.core.units import format_duration as format_duration
from prism.core.units import parse_duration as parse_duration


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


def parse_bool(text: str) -> bool:
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


def parse_choice(kind: type[_E]) -> Callable[[str], _E]:
    """A parser into ``kind``: the setting's text becomes a member once, at start."""

    def parse(text: str) -> _E:
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(kind)
            raise ConfigError(f"invalid value {text!r}", hint=f"choose one of: {allowed}") from None

    return parse


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"invalid count {text!r}", hint="write a whole number of at least 1")
    return int(text)


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"invalid duration {text!r}", hint="write a duration above 0: 5s, 1m")
    return seconds


def parse_rate(text: str) -> int:
    """kB/s from ``"500k"``, ``"20M"`` or ``"0"`` (no limit), within what pg_basebackup takes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kM]?)\s*", text)
    kb = 0 if match is None else int(match.group(1)) * (1024 if match.group(2) == "M" else 1)
    if match is None or (kb and not 32 <= kb <= 1024 * 1024) or (kb and not match.group(2)):
        raise ConfigError(
            f"invalid rate {text!r}",
            hint="write kilobytes or megabytes per second from 32k to 1024M (0: no limit)",
        )
    return kb


def parse_count(text: str) -> int:
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


def parse_slot_name(text: str) -> str:
    # Spliced into a replication command, so only the names Postgres allows get through.
    if text and not re.fullmatch(r"[a-z0-9_]{1,63}", text):
        raise ConfigError(
            f"invalid replication slot name {text!r}",
            hint="use lower-case letters, digits and underscores, up to 63 characters",
        )
    return text


def parse_optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


def parse_path_list(text: str) -> tuple[Path, ...]:
    return tuple(Path(part.strip()).expanduser() for part in text.split(",") if part.strip())


def parse_address_list(text: str) -> tuple[HostPort, ...]:
    return tuple(HostPort.parse(part.strip()) for part in text.split(",") if part.strip())


def parse_host_names(text: str) -> tuple[str, ...]:
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
