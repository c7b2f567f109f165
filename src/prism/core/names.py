"""Branch names: which ones Prism accepts, and the one every other branch is cloned from.

A module of its own so the manager, the drivers and the router share one rule without the
manager importing the router (or the storage contract) just to validate a name.
"""

from __future__ import annotations

import re
from typing import Final

from prism.core.errors import InvalidBranchName

MAIN_BRANCH: Final = "main"
"""The root branch: made by initdb, never deleted, the default parent of every other branch."""

BRANCH_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""A branch name: safe as a directory, dataset, container and DNS label without quoting."""

_VALID_NAME = (
    "a branch name is 1 to 63 characters: lower-case letters, digits, '-' and '_', "
    "starting with a letter or digit"
)


def validate_branch_name(name: str) -> str:
    """Return ``name`` if Prism accepts it as a branch name, else raise InvalidBranchName.

    Names end up in paths, dataset names and container names, so they are checked before
    anything touches the disk; ``..`` or ``a/b`` never get that far.
    """
    if BRANCH_NAME_RE.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidBranchName(f"invalid branch name {shown!r}: {_VALID_NAME}")
    return name


SNAPSHOT_PREFIX: Final = "snap:"
"""Storage names of main's snapshots (``snap:main:<time>``): a ``:`` no branch name may hold,
so a snapshot never collides with a branch and reconcile never takes one for a branch."""


GENERATION_PREFIX: Final = "gen:"
"""Storage names of main's generations being restored (``gen:<number>``;
``prism.mainsource.generations``), which a ``:`` keeps apart from branches like the snapshots."""


def is_generation_name(name: str) -> bool:
    """Whether a storage entry is a generation of main being made, not a branch."""
    return name.startswith(GENERATION_PREFIX)


def is_snapshot_name(name: str) -> bool:
    """Whether a storage entry is a snapshot (``prism.branches.snapshots``), not a branch."""
    return name.startswith(SNAPSHOT_PREFIX)
