"""Running the external tools storage drivers rely on (``cp``, ``btrfs``, ``stat``).

One home for turning a failed command into a ``StorageError`` that carries the tool's own
stderr, so every driver reports failures the same way and none swallows the real cause.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import trio

from prism.core.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a missing tool comes from on Debian/Ubuntu, for the hint.
_PACKAGES = {"btrfs": "btrfs-progs", "cp": "coreutils", "stat": "coreutils"}


async def run_tool(argv: Sequence[str], *, action: str, hint: str) -> str:
    """Run ``argv`` to completion off the event loop and return its stdout.

    ``action`` completes "cannot ..." in the error message; ``hint`` says what the operator can
    do about a failure. stderr is captured, never inherited, so it ends up in the error instead
    of interleaving with Prism's own log.
    """
    result = await _run(argv, action=action)
    if result.returncode != 0:
        raise _failed(result, action=action, hint=hint)
    return _decode(result.stdout)


async def run_tool_tolerating(
    argv: Sequence[str], *, action: str, hint: str, tolerate: Callable[[str], T | None]
) -> list[T]:
    """Run ``argv`` like :func:`run_tool`, where some complaints of a tool are no failure.

    A tool such as ``cp`` carries on past a file it cannot copy and fails only at the end; when
    ``tolerate`` makes something of every line it wrote to stderr (a file that vanished while
    it was copied), the run counts as done and those things are returned (none after a clean
    run). Any other line, silence, or death by a signal is a failure as in ``run_tool``. The
    tool runs in the C locale: its complaints are read, so they must be in known words.
    """
    result = await _run(argv, action=action, env={**os.environ, "LC_ALL": "C"})
    if result.returncode == 0:
        return []
    lines = list(dict.fromkeys(_decode(result.stderr).splitlines()))
    tolerated = [tolerate(line) for line in lines]
    accepted = [item for item in tolerated if item is not None]
    if result.returncode < 0 or not lines or len(accepted) < len(lines):
        raise _failed(result, action=action, hint=hint)
    return accepted


async def _run(
    argv: Sequence[str], *, action: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with stdout and stderr captured; a missing program is a StorageError."""
    started = time.monotonic()
    try:
        result = await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    except FileNotFoundError as exc:
        package = _PACKAGES.get(argv[0], argv[0])
        raise StorageError(
            f"cannot {action}: command {argv[0]!r} not found",
            hint=f"install it (Debian/Ubuntu: apt-get install {package})",
        ) from exc
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    log.debug("storage: ran argv=%s rc=%s duration_ms=%s", argv, result.returncode, duration_ms)
    return result


def _failed(result: subprocess.CompletedProcess[bytes], *, action: str, hint: str) -> StorageError:
    return StorageError(f"cannot {action}: {_failure(result.returncode, result.stderr)}", hint=hint)


def _failure(returncode: int, stderr: bytes | None) -> str:
    """The tool's own words for what went wrong, or how it died if it said nothing."""
    said = _decode(stderr)
    if returncode < 0:
        died = f"killed by {signal.Signals(-returncode).name}"
        return f"{said} ({died})" if said else died
    return said or f"exit status {returncode}"


def _decode(output: bytes | None) -> str:
    return (output or b"").decode("utf-8", errors="replace").strip()


async def probe_tool(argv: Sequence[str]) -> str | None:
    """Run a probe command and return its stdout, or None if it is missing or fails.

    Probes ask a question ("is this btrfs?", "does the btrfs tool work?"); a "no" is an answer,
    not an error, so it is logged at DEBUG for whoever wonders why a driver was not chosen.
    """
    try:
        result = await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as exc:
        log.debug("storage: probe argv=%s failed error=%s", argv, exc)
        return None
    if result.returncode != 0:
        log.debug(
            "storage: probe argv=%s rc=%s stderr=%s",
            argv,
            result.returncode,
            _decode(result.stderr),
        )
        return None
    return _decode(result.stdout)
