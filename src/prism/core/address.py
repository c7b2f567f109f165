"""Where a running branch can be reached: by clients (TCP) and by Prism itself (Unix socket)."""

from __future__ import annotations

import ipaddress
import socket
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
    ``abstract_socket``: the socket is not a file in that directory but in the abstract
    namespace under the same name (``@dir``), which a sandboxed server cannot connect to
    (``prism.runtime.sandbox``).
    """

    host: str
    port: int
    service_socket_dir: Path | None = None
    abstract_socket: bool = False

    async def connect(self) -> trio.SocketStream:
        """Open a TCP connection for a client session.

        Branch servers listen on an IP address, so one socket connects straight to it:
        ``trio.open_tcp_stream``'s name resolution and happy-eyeballs nursery cost 0.8 ms per
        connection on a loaded 2-core machine (tools/bench/connect.py). A host name still goes
        through it.
        """
        try:
            version = ipaddress.ip_address(self.host).version
        except ValueError:
            return await trio.open_tcp_stream(self.host, self.port)
        sock = trio.socket.socket(socket.AF_INET6 if version == 6 else socket.AF_INET)
        try:
            await sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def service_socket_path(self) -> Path | None:
        """The Unix socket file Postgres creates in ``service_socket_dir`` for this port."""
        host = self.service_host()
        return None if host is None else Path(host) / f".s.PGSQL.{self.port}"

    def service_host(self) -> str | None:
        """The service socket as libpq's ``host``: the directory, or ``@directory`` for a
        socket in the abstract namespace (an ``@`` path in ``service_socket_path`` too)."""
        if self.service_socket_dir is None:
            return None
        directory = str(self.service_socket_dir)
        return f"@{directory}" if self.abstract_socket else directory
