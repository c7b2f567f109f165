"""Helpers for tests that run a real Prism: settings, a handle on a running server, psql."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import trio

from prism.config import HostPort, Settings
from prism.server import ServerInfo

PASSWORD = "password"
# Data dirs must be reachable by the non-root user Postgres runs as when the tests run as root;
# pytest's own tmp_path lives under a 0700 directory, so use a world-traversable base instead.
_BASE = Path(tempfile.gettempdir()) / "prism-tests"


def fresh_dir(prefix: str) -> Path:
    _BASE.mkdir(mode=0o711, exist_ok=True)
    _BASE.chmod(0o711)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_BASE))
    path.chmod(0o711)
    return path


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=data_dir,
        listen=HostPort("127.0.0.1", 0),
        api=HostPort("127.0.0.1", 0),
        storage="copy",
        password=PASSWORD,
        startup_timeout=3.0,
    )
    return dataclasses.replace(base, **overrides)


class PrismHandle:
    """A running in-process Prism and helpers to reach it."""

    def __init__(self, info: ServerInfo, settings: Settings) -> None:
        self.info = info
        self.settings = settings

    @property
    def port(self) -> int:
        return self.info.listen[1]

    @property
    def manager(self) -> Any:
        return self.info.manager

    def dsn(self, user: str = "postgres", dbname: str = "postgres", **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": user,
            "password": PASSWORD,
            "dbname": dbname,
            "sslmode": "disable",
            **extra,
        }
        return " ".join(f"{key}={value}" for key, value in parts.items())


async def psql(dsn: str, sql: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run real ``psql`` (unaligned, tuples only) against ``dsn``."""
    result = await trio.run_process(
        ["psql", dsn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "30"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"psql failed ({result.returncode}): {result.stderr.decode()}")
    return result
