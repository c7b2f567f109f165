"""One settings object, from defaults, ``prism.toml``, ``PRISM_*`` environment variables and flags.

Later sources win: a flag beats an environment variable, which beats the file, which beats the
default. Every setting has one name used in all four places (``idle_timeout`` in the file,
``PRISM_IDLE_TIMEOUT`` in the environment, ``--idle-timeout`` on the command line), so the
configuration reference in docs/configuration.md can be generated from ``SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism.core.errors import ConfigError
from prism.core.settings import SETTINGS, Settings
from prism.core.units import format_duration as format_duration
from prism.core.units import parse_duration as parse_duration

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
