"""The ``pg_dump`` view of a schema diff: a unified diff of two ``--schema-only`` dumps."""

from __future__ import annotations

import difflib


def _comparable(dump: str) -> list[str]:
    # pg_dump (since 17.6, 16.10...) fences its output with \restrict and \unrestrict lines
    # carrying a random key, different on every run: not part of the schema.
    return [
        line
        for line in dump.splitlines(keepends=True)
        if not line.startswith(("\\restrict ", "\\unrestrict "))
    ]


def dump_diff(before: str, after: str, *, before_name: str, after_name: str) -> str:
    """What changes from the dump ``before`` (B's) to ``after`` (A's); "" when nothing does."""
    return "".join(
        difflib.unified_diff(
            _comparable(before), _comparable(after), fromfile=before_name, tofile=after_name
        )
    )
