"""Shared pytest set-up: markers by folder."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the folder it lives in, so `-m` selects unit/integration/system."""
    for item in items:
        folder = Path(str(item.fspath)).relative_to(_TESTS).parts[0]
        if folder in ("integration", "system"):
            item.add_marker(getattr(pytest.mark, folder))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI (``CI=true``) a skipped system test is a failure, whatever skipped it.

    ``tests/sysenv.unavailable`` already fails instead of skipping in CI; this catches every
    other way a system test can skip (``importorskip``, a skip marker, a fixture that skips).
    """
    report = yield
    if (
        report.skipped
        and os.environ.get("CI") == "true"
        and item.get_closest_marker("system") is not None
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"system test skipped in CI, which must run every system test: {reason}"
    return report
