"""The JSON shape of a branch, shared by the REST API and the event stream's snapshot."""

from __future__ import annotations

from typing import Any

from prism.branches import Branch
from prism.state import rfc3339


def branch_view(branch: Branch, *, disk_bytes: int | None = None) -> dict[str, Any]:
    """One branch as the API shows it; ``disk_bytes`` is null where the driver cannot tell."""
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
    }
