"""``prism status`` and ``prism archive prune``: one screen of the daemon's state, the archive
pruned, as the CLI prints them (from ``GET /api/v1/status`` and ``POST /api/v1/archive/prune``)."""

from __future__ import annotations

from typing import Any

from prism.core.units import format_size


def format_status(status: dict[str, Any], api_url: str) -> str:
    """The daemon's state on one screen: version, addresses, main, disk, branches, sandbox."""
    main = status.get("main") or {}
    counts = status.get("branches") or {}
    sandbox = status.get("sandbox") or {}
    lines = [
        f"prism {status['version']} ({'ready' if status.get('ready') else 'starting'})",
        f"  clients  {status.get('listen') or '-'}",
        f"  api      {api_url}",
        f"  main     {main.get('status', 'absent')}",
        f"  branches {sum(counts.values())} ("
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
        + ")",
        f"  sandbox  {sandbox.get('mechanism', '-')}",
    ]
    lines += format_disk(status.get("disk"))
    return "\n".join(lines)


def format_disk(disk: dict[str, Any] | None) -> list[str]:
    """Each file system's free, used and reserve, and what uses the space."""
    if disk is None:
        return []
    lines = []
    for fs in disk["filesystems"]:
        lines.append(
            f"  disk     {fs['path']} ({fs['kind']}, {'+'.join(fs['holds'])}): "
            f"{format_size(fs['free'])} free of {format_size(fs['total'])}, "
            f"reserve {format_size(fs['reserve'])}, {fs['level']}"
        )
    use = disk["use"]
    lines.append(
        "  used by  "
        + ", ".join(f"{name.replace('_', ' ')} {format_size(size)}" for name, size in use.items())
    )
    if disk.get("advice"):
        lines.append(f"  !        {disk['advice']}")
    return lines


def format_prune(result: dict[str, Any]) -> str:
    start = result["window_start"] or "no snapshot kept"
    return (
        f"{result['branch']}: removed {result['removed_snapshots']} snapshot(s) and the WAL "
        f"only they needed; branches as of a time now reach back to {start}"
    )
