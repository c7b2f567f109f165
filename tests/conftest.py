"""Shared pytest set-up: markers by folder."""

from __future__ import annotations

from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the folder it lives in, so `-m` selects unit/integration/system."""
    for item in items:
        folder = Path(str(item.fspath)).relative_to(_TESTS).parts[0]
        if folder in ("integration", "system"):
            item.add_marker(getattr(pytest.mark, folder))
