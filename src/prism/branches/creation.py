"""What a branch's team policy asks of the making of a branch.

A new branch's own policy (expiry, protection) is written before it exists, so a crash cannot
lose it; a parent's ``on_create`` command that this Prism may not run is refused before
anything is made; the parent's hook runs in the new child (or a reset's fresh clone) before
anyone gets in. The policies themselves are ``prism.branches.policy``; running a hook,
``prism.branches.hooks``.
"""

from __future__ import annotations

import trio

from prism.branches import hooks
from prism.branches.hooks import HookCommands
from prism.branches.policy import BranchPolicy, CreateDefaults, PolicyStore
from prism.branches.status import Branch, elapsed_ms
from prism.core.address import BackendAddress
from prism.core.events import EventBus
from prism.durable.state import utcnow


class CreationPolicy:
    """The team-policy steps of creating (and resetting) a branch."""

    def __init__(
        self,
        policies: PolicyStore,
        *,
        defaults: CreateDefaults,
        commands: HookCommands,
        events: EventBus,
        superuser: str,
        password: str,
    ) -> None:
        self._policies = policies
        self._defaults = defaults
        self._commands = commands
        self._events = events
        self._superuser = superuser
        self._password = password

    def has_hook(self, parent: str) -> bool:
        return self._policies.get(parent).has_hook

    async def record_new(self, name: str, ttl: float, *, protected: bool = False) -> None:
        """Write a new branch's policy before it exists, so a crash cannot lose it."""
        policy = BranchPolicy(protected=protected, expires_at=self._defaults.expiry(utcnow(), ttl))
        if policy == BranchPolicy():
            await self._policies.forget(name)  # a row left by a create that failed early
        else:
            await self._policies.put(name, policy)

    def refuse_unrunnable_hook(self, parent: str) -> None:
        """Refuse, before anything is made, a child whose parent's command may not run here
        (set by an earlier run of Prism that allowed commands)."""
        if self._policies.get(parent).on_create_command is not None:
            self._commands.refuse_unless_allowed(
                f'cannot make a child of branch "{parent}", whose on_create hook is a command'
            )

    async def run_parent_hook(self, branch: Branch, address: BackendAddress) -> None:
        """Run the parent's ``on_create`` SQL, then its command, in the new child."""
        if branch.parent is None:
            return
        policy = self._policies.get(branch.parent)
        if not policy.has_hook:
            return
        started = trio.current_time()
        await hooks.run_parent_hook(
            address,
            sql=policy.on_create,
            command=policy.on_create_command,
            child=branch.name,
            parent=branch.parent,
            superuser=self._superuser,
            password=self._password,
            commands=self._commands,
        )
        self._events.publish(
            "hook", branch.name, parent=branch.parent, duration_ms=elapsed_ms(started)
        )
