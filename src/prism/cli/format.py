"""What the ``prism`` client commands print for people: tables of branches, the trash and
snapshots, one branch in full, one line per event.

Kept apart from the commands (``prism.cli.client``): pure functions of the API's JSON, tested on
their own, so the wording can change without touching how the API is called.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any


def _ago(stamp: str, now: float) -> str:
    seconds = max(0, int(now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _until(stamp: str | None, now: float) -> str:
    """``in 3h`` for an expiry (``due`` once passed), ``-`` for none."""
    if stamp is None:
        return "-"
    seconds = int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - now)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"in {seconds // size}{unit}"
    return f"in {seconds}s" if seconds > 0 else "due"


def _own_size(branch: dict[str, Any]) -> str:
    """What deleting the branch would free: its own bytes where the storage tells them."""
    disk = branch.get("disk")
    if disk and disk.get("own") is not None:
        return _size(disk["own"])
    return _size(branch.get("disk_bytes"))


def main_first(branches: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``main``, then the others by name: main is what every other branch comes from."""
    return sorted(branches, key=lambda b: (b["parent"] is not None, b["name"]))


def format_branches(branches: Sequence[dict[str, Any]], *, now: float | None = None) -> str:
    """The branch table ``prism branch ls`` prints, main first."""
    now = time.time() if now is None else now
    branches = main_first(branches)
    header = ("NAME", "STATUS", "PARENT", "CONNS", "LAST ACTIVE", "PROTECTED", "EXPIRES", "OWN")
    rows = [header] + [
        (
            b["name"],
            b["status"],
            b["parent"] or "-",
            str(b["connections"]),
            _ago(b["last_active"], now),
            "yes" if b.get("protected") else "no",
            _until(b.get("expires_at"), now),
            _own_size(b),
        )
        for b in branches
    ]
    # Columns only some set-ups have: a point-in-time branch's time, dump mode's generation.
    for title, key in (("AT", "at"), ("GEN", "generation")):
        if any(b.get(key) is not None for b in branches):
            rows = [(*rows[0], title)] + [
                (*row, str(b.get(key) or "-")) for row, b in zip(rows[1:], branches, strict=True)
            ]
    rows = [(*rows[0], "ADDRESS")] + [
        (*row, b["address"] or "-") for row, b in zip(rows[1:], branches, strict=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    # Below the table, why each branch whose server was up does not serve, and its log's end.
    for b in branches:
        if b.get("trouble"):
            table += ["", f"{b['name']}: {b['status']}: {b['trouble']['reason']}"]
            table += _log_lines(b["trouble"]["log"][-_LS_LOG_LINES:])
    return "\n".join(table)


#: Lines of an unwell branch's log ``branch ls`` shows (``branch show`` shows all it has).
_LS_LOG_LINES = 5


def _log_lines(lines: Sequence[str]) -> list[str]:
    """A server's log lines, set off from Prism's own words."""
    return [f"  | {line}" for line in lines]


def format_branch(branch: dict[str, Any]) -> str:
    """One line about one branch, after an operation on it."""
    parts = [f"parent {branch['parent']}" if branch["parent"] else "no parent"]
    if branch.get("generation") is not None:
        parts.append(f"generation {branch['generation']} of {branch['generation_taken_at']}")
    if branch["address"]:
        parts.append(f"server {branch['address']}")
    return f"{branch['name']}: {branch['status']} ({', '.join(parts)})"


def format_change(change: str, branch: dict[str, Any], *, now: float | None = None) -> str:
    """What ``protect``, ``unprotect``, ``expire`` and ``hook`` changed, from the branch the
    API answers with: the state it is in now, and how to undo it."""
    name = branch["name"]
    if change == "protection":
        if branch["protected"]:
            return f"{name}: protected: delete and reset refused (prism branch unprotect {name})"
        return f"{name}: not protected: delete and reset allowed (prism branch protect {name})"
    if change == "expiry":
        if branch["expires_at"] is None:
            return f"{name}: never expires"
        when = _until(branch["expires_at"], time.time() if now is None else now)
        return f"{name}: expires at {branch['expires_at']} ({when})"
    hooks = [kind for kind in ("on_create", "on_create_command") if branch.get(kind)]
    if not hooks:
        return f"{name}: no on_create hooks: new children are plain copies"
    return f"{name}: new children run {' and '.join(hooks)} before anyone connects"


def _disk_text(disk: dict[str, Any] | None) -> str:
    if disk is None or disk["total"] is None:
        return "unknown"
    if disk["own"] is None:
        return f"{_size(disk['total'])} in all, own and shared unknown ({disk['basis']})"
    return (
        f"own {_size(disk['own'])}, shared {_size(disk['shared'])}, "
        f"total {_size(disk['total'])} ({disk['basis']})"
    )


def source_state(health: dict[str, Any]) -> str:
    """How main keeps up with its source: its state, how far behind, the error if any."""
    state = str(health["state"])
    if health.get("replay_lag_seconds") is not None:
        state += f", {health['replay_lag_seconds']} s behind"
    if health.get("error"):
        state += f" ({health['error']})"
    return state


def format_details(branch: dict[str, Any], *, now: float | None = None) -> str:
    """Everything ``prism branch show`` says about one branch: a line per fact."""
    now = time.time() if now is None else now
    hooks = [kind for kind in ("on_create", "on_create_command") if branch.get(kind)]
    connection = branch.get("connection")
    facts = (
        ("created", branch["created_at"]),
        *((("data as of", f"{branch['at']} (made with --at)"),) if branch.get("at") else ()),
        ("last active", _ago(branch["last_active"], now)),
        ("connections", str(branch["connections"])),
        ("protected", "yes" if branch["protected"] else "no"),
        ("expires", branch["expires_at"] or "never"),
        ("hooks", ", ".join(hooks) or "none"),
        ("keeps WAL", "yes (branches as of a time: --at)" if branch.get("keeps_wal") else "no"),
        ("disk", _disk_text(branch.get("disk"))),
        ("connect", connection["uri"] if connection else "-"),
        # Main as a standby of --source: how it keeps up, and that it takes no writes.
        *(
            (
                ("source", source_state(branch["source"])),
                ("writes", "none: main is a read-only standby of the source; write in a branch"),
            )
            if branch.get("source")
            else ()
        ),
    )
    lines = [format_branch(branch), *(f"  {key:<12} {value}" for key, value in facts)]
    trouble = branch.get("trouble")
    if trouble:
        lines += [f"  {'trouble':<12} {trouble['reason']} (since {trouble['since']})"]
        lines += [f"  {'server log':<12} last {len(trouble['log'])} lines:"]
        lines += _log_lines(trouble["log"])
    return "\n".join(lines)


def format_event(event: dict[str, Any]) -> str:
    """One line per event for ``prism events`` (and the server log lines it carries, if any:
    ``recovering``, ``unhealthy``)."""
    if event["type"] == "snapshot":
        listed = ", ".join(f"{b['name']} ({b['status']})" for b in event["branches"])
        return f"snapshot: {len(event['branches'])} branches: {listed}"
    clock = str(event["at"])[11:23]
    extra = " ".join(
        f"{key}={_event_value(value)}"
        for key, value in event.items()
        if key not in ("type", "branch", "at", "seq", "log") and value is not None
    )
    line = " ".join(part for part in (clock, event["type"], event["branch"] or "", extra) if part)
    return "\n".join([line, *_log_lines(event.get("log") or ())])


def _event_value(value: Any) -> str:
    """``protected=yes``, not Python's ``True``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_trash(entries: Sequence[dict[str, Any]]) -> str:
    """A table of the deleted branches kept for undelete, oldest deletion first."""
    if not entries:
        return "the trash is empty (deleted branches are kept for --undelete-window)"
    lines = [f"{'NAME':<24} {'PARENT':<16} {'DELETED AT':<21} PURGED AT"]
    lines += [
        f"{e['name']:<24} {e['parent'] or '-':<16} {e['deleted_at']:<21} {e['purge_at']}"
        for e in entries
    ]
    return "\n".join(lines)


def format_snapshots(snapshots: Sequence[dict[str, Any]]) -> str:
    """A table of snapshots, oldest first; the first one's time is where ``--at`` can reach."""
    if not snapshots:
        return "no snapshots kept (see --snapshot-every and --point-in-time-branches)"
    lines = [f"{'TAKEN AT':<26} {'REDO WAL':<26} NAME"]
    lines += [f"{s['taken_at']:<26} {s['redo_wal']:<26} {s['name']}" for s in snapshots]
    return "\n".join(lines)
