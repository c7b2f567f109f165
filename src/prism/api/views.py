"""The JSON shape of a branch, shared by the REST API and the event stream's snapshot."""

from __future__ import annotations

from typing import Any

from prism.branches.manager import Branch, BranchManager
from prism.branches.policy import BranchPolicy
from prism.branches.snapshots import precise_time
from prism.branches.status import UNWELL, Trouble
from prism.branches.trash import TrashEntry
from prism.core.names import MAIN_BRANCH
from prism.durable.state import rfc3339
from prism.runtime.base import Confinement


def policy_view(policy: BranchPolicy) -> dict[str, Any]:
    """A branch's team policy as the API shows it (whether it has hooks, not what they are)."""
    return {
        "protected": policy.protected,
        "expires_at": None if policy.expires_at is None else rfc3339(policy.expires_at),
        "on_create": policy.on_create is not None,
        "on_create_command": policy.on_create_command is not None,
    }


def branch_view(
    branch: Branch,
    *,
    disk_bytes: int | None = None,
    policy: BranchPolicy | None = None,
    **more: Any,
) -> dict[str, Any]:
    """One branch as the API shows it; ``disk_bytes`` is null where the driver cannot tell.

    The REST API adds the policy and ``more`` (disk use, connection); the event snapshot leaves
    them out, as measuring disk use for every subscriber would be slow (the page reads REST).
    """
    address = branch.address
    return {
        "name": branch.name,
        "parent": branch.parent,
        "status": branch.status.value,
        "created_at": rfc3339(branch.created_at),
        "last_active": rfc3339(branch.last_active),
        "connections": branch.connections,
        "address": None if address is None else f"{address.host}:{address.port}",
        "bytes_proxied": branch.bytes_proxied,
        "disk_bytes": disk_bytes,
        "generation": None if branch.generation is None else branch.generation.number,
        "generation_taken_at": (
            None if branch.generation is None else rfc3339(branch.generation.taken_at)
        ),
        "trouble": None if branch.trouble is None else trouble_view(branch.trouble),
        # To the millisecond, as the window's edges: a time given relatively has them.
        "at": None if branch.at is None else precise_time(branch.at),
        **({} if policy is None else policy_view(policy)),
        **more,
    }


def trouble_view(trouble: Trouble) -> dict[str, Any]:
    """Why a branch's server does not serve, as the API, the stream and ``/healthz`` show it."""
    return {"reason": trouble.reason, "since": rfc3339(trouble.since), "log": list(trouble.log)}


def readiness(manager: BranchManager) -> tuple[int, dict[str, Any]]:
    """``/healthz``'s status code and verdict: ready once main is made and running, 503 while
    it is made or while its server does not serve (``recovering``, ``unhealthy``: why, too)."""
    if not manager.opened:
        return 503, {"status": "starting"}
    main = manager.get(MAIN_BRANCH)
    if main is None or main.status not in UNWELL or main.trouble is None:
        return 200, {"status": "ok"}
    return 503, {"status": main.status.value, "main": trouble_view(main.trouble)}


def trash_view(entry: TrashEntry, *, window: float) -> dict[str, Any]:
    """One deleted branch kept for undelete: who it was, and when it is purged."""
    return {
        "name": entry.name,
        "parent": entry.parent,
        "created_at": rfc3339(entry.created_at),
        "deleted_at": rfc3339(entry.deleted_at),
        "purge_at": rfc3339(entry.purge_at(window)),
        "own_bytes": entry.own_bytes,
        **policy_view(entry.policy),
    }


def confinement_view(confinement: Confinement) -> dict[str, Any]:
    """The branch servers' sandbox as ``/healthz`` and the page show it."""
    return {
        "mechanism": confinement.mechanism,
        "complete": confinement.complete,
        "enforced": list(confinement.enforced),
        "missing": list(confinement.missing),
    }
