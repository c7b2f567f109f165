"""The runtime drivers and the source follower meet only in the Runtime contract.

``source/`` reaches a runtime through ``prism.runtime.base`` (``Runtime.source_tools``), and
``runtime/`` imports nothing of ``source/``: no downcast, no private helper borrowed across, no
cycle between the two packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prism

PACKAGE = Path(prism.__file__).resolve().parent


def _imports(package: str) -> list[tuple[str, str]]:
    """(file, imported module) for every ``import``/``from ... import`` under ``package``."""
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found += [(path.name, node.module)]
                found += [(path.name, f"{node.module}.{alias.name}") for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
    return found


def test_the_runtime_drivers_import_nothing_of_the_source_follower() -> None:
    assert [hit for hit in _imports("runtime") if hit[1].startswith("prism.source")] == []


def test_the_source_follower_reaches_a_runtime_only_through_its_contract() -> None:
    reached = [
        hit
        for hit in _imports("source")
        if hit[1].startswith("prism.runtime") and not hit[1].startswith("prism.runtime.base")
    ]
    assert reached == []
