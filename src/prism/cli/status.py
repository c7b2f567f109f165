"""``prism status`` and ``prism archive prune``: one screen of the daemon's state, the archive
pruned, as the CLI prints them (from ``GET /api/v1/status`` and ``POST /api/v1/archive/prune``)."""

from __future__ import annotations

from typing import Any

from prism.cli.format import source_state
from prism.core.units import format_size


def format_status(status: dict[str, Any], api_url: str) -> str:
    """The daemon's state on one screen: version, addresses, where data lives and on what, how
    servers run and are confined, main and its source, branches, disk."""
    main = status.get("main") or {}
    counts = status.get("branches") or {}
    sandbox = status.get("sandbox") or {}
    storage = status.get("storage") or {}
    plane = status.get("data_plane") or "-"
    if status.get("data_plane_reason"):
        plane += f" ({status['data_plane_reason']})"
    lines = [
        f"prism {status['version']} ({'ready' if status.get('ready') else 'starting'})",
        f"  clients  {status.get('listen') or '-'}",
        f"  api      {status.get('api') or api_url}",
        f"  data     {status.get('data_dir') or '-'}",
        f"  storage  {storage.get('name', '-')} at {storage.get('root', '-')}",
        f"  runtime  {status.get('runtime') or '-'}",
        f"  plane    {plane}",
        f"  sandbox  {_confinement(sandbox)}",
        f"  main     {main.get('status', 'absent')}",
        f"  source   {_source(status.get('source'))}",
        f"  branches {sum(counts.values())} ("
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
        + ")",
    ]
    lines += format_disk(status.get("disk"))
    return "\n".join(lines)


def _confinement(sandbox: dict[str, Any]) -> str:
    """The sandbox's mechanism, and what this host leaves unenforced."""
    missing = sandbox.get("missing") or []
    gaps = f"; not enforced: {'; '.join(missing)}" if missing else ""
    return f"{sandbox.get('mechanism', '-')}{gaps}"


def _source(source: dict[str, Any] | None) -> str:
    """Where main's data comes from and, for a standby, how far behind it is."""
    if not source:
        return "-"
    made_by = str(source["made_by"])
    if made_by == "initdb":
        made_by = "none (an empty cluster made by initdb)"
    health = source.get("health")
    return f"{made_by}: {source_state(health)}" if health else made_by


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
