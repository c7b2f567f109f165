"""Which data plane moves a session's bytes after log-in, chosen once at start-up.

* **sockmap** (:mod:`prism.frontdoor.kernelsplice`): plain-TCP sessions are relayed by the kernel
  through a BPF sockhash; needs Linux, root (or CAP_BPF + CAP_NET_ADMIN) and a kernel that loads the
  program. TLS sessions still go through the pump: the kernel sees only ciphertext.
* **pump** (:mod:`prism.frontdoor.pump`): a user-space relay that works everywhere.

``--data-plane auto`` takes the sockmap when the kernel gives it and says why not otherwise;
``--data-plane pump`` keeps Prism on the byte path (for comparisons, or a kernel to distrust).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from prism.core.values import DataPlaneChoice
from prism.frontdoor import kernelsplice, pump
from prism.frontdoor.sockmap import Sockmap, SockmapUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPlane:
    """The data plane in use and why; ``splice`` relays one session through it."""

    name: str
    reason: str
    sockmap: Sockmap | None = None
    sessions: Counter[str] = field(default_factory=Counter)
    """Sessions relayed so far by each plane ("sockmap", "pump"): TLS ones use the pump."""

    async def splice(
        self,
        client: trio.abc.HalfCloseableStream,
        server: trio.abc.HalfCloseableStream,
        *,
        on_bytes: Callable[[int], None],
        started: Callable[[], None] = lambda: None,
    ) -> None:
        """Relay ``client`` ⇄ ``server`` until the session ends (see :func:`pump.splice`).

        ``started`` is called once the plane is set up (the connect benchmark's last phase).
        """
        if (
            self.sockmap is not None
            and isinstance(client, trio.SocketStream)
            and isinstance(server, trio.SocketStream)
            and (session := kernelsplice.enter(self.sockmap, client, server)) is not None
        ):
            self.sessions["sockmap"] += 1
            started()
            await kernelsplice.relay(session, on_bytes=on_bytes)
            return
        self.sessions["pump"] += 1
        started()
        await pump.splice(client, server, on_bytes=on_bytes)

    def close(self) -> None:
        if self.sockmap is not None:
            self.sockmap.close()


PUMP = DataPlane("pump", "the user-space pump")


def choose(setting: DataPlaneChoice, *, program: bytes | None = None) -> DataPlane:
    """The data plane for ``--data-plane setting``; logs one line saying which and why.

    ``program`` replaces the verdict program (a test loads a broken one to see the fallback).
    """
    if setting == DataPlaneChoice.PUMP:
        plane = DataPlane("pump", "chosen with --data-plane pump")
    elif not sys.platform.startswith("linux"):
        plane = DataPlane("pump", f"the sockmap needs Linux, not {sys.platform}")
    else:
        try:
            sockmap = Sockmap(program)
        except SockmapUnavailable as exc:
            plane = DataPlane("pump", str(exc))
        else:
            reason = "the kernel relays plain-TCP sessions; TLS sessions use the pump"
            plane = DataPlane("sockmap", reason, sockmap)
    log.info("data plane: %s (%s)", plane.name, plane.reason)
    return plane
