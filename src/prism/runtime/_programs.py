"""What running PostgreSQL's client programs needs wherever they run (host or container)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence


class LineSplitter:
    """Cuts a program's output into lines at ``\\n`` or ``\\r``, whatever the chunks' bounds."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[str]:
        """The lines completed by ``chunk``."""
        self._buffer += chunk
        *lines, self._buffer = re.split(rb"[\r\n]", self._buffer)
        for raw in lines:
            yield raw.decode(errors="replace")


def pipe_script(first: Sequence[str], second: Sequence[str]) -> str:
    """A POSIX shell line running ``first | second`` that fails when either fails (sans-IO).

    ``sh`` has no ``pipefail`` everywhere: the first's status goes through a file. Each
    program's messages already start with its name (PostgreSQL's tools say ``pg_dump: error:``).
    """
    status = "/tmp/prism-pipe.status"
    return (
        f"{{ {shlex.join(first)}; echo $? > {status}; }} | {shlex.join(second)}; "
        f'tail=$?; [ "$(cat {status})" = 0 ] && exit $tail; exit 1'
    )
