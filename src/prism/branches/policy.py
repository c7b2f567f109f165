"""Team policies on branches: protection, expiry and the ``on_create`` hook, kept durably.

They live in their own table of the state database (``branch_policy``), beside the branch
registry rather than in it, so a policy is one row written in one statement: either it is there
or it is not, whatever moment a crash picks. A new branch's policy row is written *before* the
branch is provisioned (intent first), so a branch never exists without the expiry it was
created with; start-up reconcile drops rows whose branch never came to be (``prune``).

``main`` is protected unless a row says otherwise. The decisions (may this be deleted, is this
due to expire) are pure functions here, unit-tested; ``BranchManager`` enforces them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from prism.core.errors import BranchProtected
from prism.core.names import MAIN_BRANCH
from prism.durable.state import StateStore, parse_rfc3339

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS branch_policy (
    name        TEXT PRIMARY KEY,
    protected   INTEGER NOT NULL,
    expires_at  TEXT,
    on_create   TEXT,
    on_create_command TEXT
)
"""
# Tables written before hook commands existed lack the column; it is added in place (NULL: none).
_ADD_COMMAND = "ALTER TABLE branch_policy ADD COLUMN on_create_command TEXT"


@dataclass(frozen=True)
class BranchPolicy:
    """What a team decided about one branch."""

    protected: bool = False
    expires_at: datetime | None = None
    on_create: str | None = None
    """SQL run once in every new child of this branch before any client gets in."""
    on_create_command: tuple[str, ...] | None = None
    """A program (argv, no shell) run once for every new child, after ``on_create``'s SQL;
    it runs only in a Prism started with ``--allow-hook-commands`` (see hooks.py)."""

    @property
    def has_hook(self) -> bool:
        """Whether new children of this branch need a hook run before anyone gets in."""
        return self.on_create is not None or self.on_create_command is not None


def default_policy(name: str) -> BranchPolicy:
    """The policy of a branch nobody set one for: main is protected, the rest are not."""
    return BranchPolicy(protected=name == MAIN_BRANCH)


def refuse_if_protected(name: str, policy: BranchPolicy, action: str) -> None:
    """Raise ``BranchProtected`` if ``policy`` forbids ``action`` (delete, reset) on ``name``."""
    if policy.protected:
        raise BranchProtected(
            f'branch "{name}" is protected: it cannot be {action}',
            hint=f"unprotect it first: prism branch unprotect {name}",
        )


def is_expired(policy: BranchPolicy, now: datetime) -> bool:
    """Whether the branch's time is up. Protected branches never expire."""
    return not policy.protected and policy.expires_at is not None and policy.expires_at <= now


def grace_over(policy: BranchPolicy, now: datetime, grace: float) -> bool:
    """Whether an expired branch's open sessions have had their ``grace`` seconds."""
    assert policy.expires_at is not None
    return now >= policy.expires_at + timedelta(seconds=grace)


def _stored_expiry(name: str, stored: object) -> datetime | None:
    """A stored ``expires_at``; one that cannot be read or shown (an older Prism saved e.g.
    ``9999-12-31T23:59:59-14:00``) is read as no expiry, with a warning: keeping a branch
    someone meant to expire is mended by setting its expiry again, deleting it is not."""
    if stored is None:
        return None
    try:
        return parse_rfc3339(str(stored))
    except ValueError as exc:
        log.warning("policy: branch=%s expires_at unreadable, read as never: %s", name, exc)
        return None


def policy_to_json(policy: BranchPolicy) -> str:
    """``policy`` as one JSON object: how a deleted branch's policy waits in the trash."""
    expires = None if policy.expires_at is None else policy.expires_at.isoformat()
    command = None if policy.on_create_command is None else list(policy.on_create_command)
    return json.dumps(
        {
            "protected": policy.protected,
            "expires_at": expires,
            "on_create": policy.on_create,
            "on_create_command": command,
        }
    )


def policy_from_json(name: str, text: str) -> BranchPolicy:
    """The policy ``policy_to_json`` wrote for branch ``name``."""
    raw = json.loads(text)
    command = raw.get("on_create_command")
    return BranchPolicy(
        protected=bool(raw.get("protected")),
        expires_at=_stored_expiry(name, raw.get("expires_at")),
        on_create=raw.get("on_create"),
        on_create_command=None if command is None else tuple(command),
    )


class PolicyStore:
    """Policies by branch name: a cache in memory, each change written through to sqlite.

    The table lives in the state file and goes through its ``StateStore``: one connection,
    one set of journal settings, one way a failed write is reported.
    """

    def __init__(self, state: StateStore) -> None:
        self._state = state
        state.open_table("branch_policy", _SCHEMA, columns={"on_create_command": _ADD_COMMAND})
        self._policies: dict[str, BranchPolicy] = {}
        for name, protected, expires_at, on_create, command in state.load(
            "SELECT name, protected, expires_at, on_create, on_create_command FROM branch_policy"
        ):
            self._policies[str(name)] = BranchPolicy(
                protected=bool(protected),
                expires_at=_stored_expiry(str(name), expires_at),
                on_create=None if on_create is None else str(on_create),
                on_create_command=None if command is None else tuple(json.loads(str(command))),
            )

    def get(self, name: str) -> BranchPolicy:
        return self._policies.get(name) or default_policy(name)

    async def put(self, name: str, policy: BranchPolicy) -> None:
        expires = None if policy.expires_at is None else policy.expires_at.isoformat()
        command = policy.on_create_command
        row = (
            name,
            int(policy.protected),
            expires,
            policy.on_create,
            None if command is None else json.dumps(list(command)),
        )
        await self._write(
            "INSERT OR REPLACE INTO branch_policy"
            " (name, protected, expires_at, on_create, on_create_command) VALUES (?, ?, ?, ?, ?)",
            row,
        )
        self._policies[name] = policy

    async def update(self, name: str, **changes: object) -> BranchPolicy:
        """Change some fields of ``name``'s policy; returns the new policy."""
        policy = replace(self.get(name), **changes)  # type: ignore[arg-type]
        await self.put(name, policy)
        return policy

    async def forget(self, name: str) -> None:
        await self._write("DELETE FROM branch_policy WHERE name = ?", (name,))
        self._policies.pop(name, None)

    async def _write(self, sql: str, params: tuple[object, ...]) -> None:
        await self._state.execute(sql, params, what="branch policies in")

    async def prune(self, existing: Iterable[str]) -> list[str]:
        """Drop the rows of branches that do not exist (a create that a crash cut short)."""
        gone = sorted(set(self._policies) - set(existing))
        for name in gone:
            await self.forget(name)
        return gone


@dataclass(frozen=True)
class CreateDefaults:
    """How branches created on connect are made (``--default-parent``, ``--branch-ttl``)."""

    parent: str = MAIN_BRANCH
    ttl: float = 0.0
    """Seconds a branch created on connect lives; 0: until deleted."""
    expiry_grace: float = 600.0
    """Seconds an expired branch's open sessions keep going before they are ended."""

    def expiry(self, now: datetime, ttl: float | None = None) -> datetime | None:
        """When a branch made ``now`` expires, for ``ttl`` (or the default); None: never."""
        seconds = self.ttl if ttl is None else ttl
        return now + timedelta(seconds=seconds) if seconds > 0 else None
