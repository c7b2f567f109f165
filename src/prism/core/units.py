"""Durations and sizes as settings, the API and the CLI write them: ``30s``, ``7d``, ``2GiB``.

Pure and dependency-free, so the configuration, the disk rules and the CLI share one spelling.
"""

from __future__ import annotations

import re

from prism.core.errors import ConfigError

# ASCII only: ``\d`` alone would also read Arabic-Indic or Devanagari digits as numbers.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
#: The longest duration any setting takes: longer ones overflow the date arithmetic they feed
#: (a branch's expiry, a snapshot's age) and mean "never", which 0 says where it is allowed.
MAX_DURATION_S = 100 * 365 * 86400.0


def parse_duration(text: str) -> float:
    """Seconds from ``"30s"``, ``"2m"``, ``"1h"``, ``"7d"``, ``"250ms"`` or a bare number of
    seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(
            f"invalid duration {text!r}",
            hint="write a number with an optional unit: 250ms, 30s, 2m, 1h, 7d (0 disables)",
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_S:
        raise ConfigError(
            f"duration {text!r} is longer than 100 years",
            hint="write at most 36500d (0 disables where a setting allows it)",
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the units ``parse_duration`` reads."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds else "0"


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 2**10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 2**20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 2**30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)
_SIZE_HINT = "write a size such as 500MB, 2GiB or 1073741824 (bytes)"


def parse_size(text: str) -> int:
    """Bytes from ``"500MB"``, ``"2GiB"``, ``"1.5G"`` or a bare number of bytes (SI units are
    powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB`` of 1024)."""
    match = _SIZE.match(text)
    unit = None if match is None else _UNITS.get(match.group(2).lower())
    if match is None or unit is None:
        raise ConfigError(f"invalid size {text!r}", hint=_SIZE_HINT)
    return int(float(match.group(1)) * unit)


def format_size(size: int | None) -> str:
    """``size`` bytes as people read them (binary units, one decimal): ``1.5 GiB``."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
