"""Where a running branch can be reached: by clients (TCP) and by Prism itself (Unix socket)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio


@dataclass(frozen=True)
class BackendAddress:
    """The network location of one running branch server.

    ``host``/``port`` is where proxied client sessions go: a TCP listener whose pg_hba rules make
    the server authenticate the client itself. ``service_socket_dir`` is a private Unix socket
    directory (mode 0700) where Prism opens its own trusted service connections (CHECKPOINT,
    backup mode, reading role verifiers); ``None`` when the runtime cannot offer one.
    """

    host: str
    port: int
    service_socket_dir: Path | None = None

    async def connect(self) -> trio.SocketStream:
        """Open a TCP connection for a client session."""
        return await trio.open_tcp_stream(self.host, self.port)

    def service_socket_path(self) -> Path | None:
        """The Unix socket file Postgres creates in ``service_socket_dir`` for this port."""
        if self.service_socket_dir is None:
            return None
        return self.service_socket_dir / f".s.PGSQL.{self.port}"
