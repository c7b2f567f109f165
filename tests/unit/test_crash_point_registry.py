"""One crash-point registry: every ``crash_point`` in the source is in ``POINTS``, and every
point in ``POINTS`` is driven by a kill test."""

from __future__ import annotations

import ast
from pathlib import Path

from prism.core.crashpoints import POINTS
from tests.crash_suite import OPERATION_POINTS

ROOT = Path(__file__).resolve().parents[2]
#: The tests that kill Prism at named points; a test drives every point of ``POINTS[op]`` when
#: it parametrizes over it (or over the crash suite's ``OPERATION_POINTS``).
KILL_TESTS = [
    "tests/integration/test_crash_points.py",
    "tests/system/test_crash_points_btrfs.py",
    "tests/integration/test_source_dump.py",
    "tests/integration/test_source_restarts.py",
    "tests/integration/test_pitr.py",
]
REGISTERED = {point for points in POINTS.values() for point in points}


def _crash_point_arguments() -> list[tuple[str, ast.expr]]:
    """Where each ``crash_point(...)`` call in ``src/`` is, and its argument."""
    found = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "crash_point"
            ):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.args[0]))
    return found


def test_every_crash_point_in_the_source_is_registered() -> None:
    calls = _crash_point_arguments()
    assert len(calls) > 20, "the scan found too few crash points"
    for where, argument in calls:
        if isinstance(argument, ast.Constant):
            assert argument.value in REGISTERED, f"{where}: {argument.value!r} is not in POINTS"
            continue
        # A point named at run time (``f"{reason}:server-up"``): its fixed tail must end a
        # registered point, which the suite drives through one of its reasons.
        assert isinstance(argument, ast.JoinedStr), f"{where}: name a crash point literally"
        tail = argument.values[-1]
        assert isinstance(tail, ast.Constant) and str(tail.value).startswith(":"), where
        assert any(point.endswith(str(tail.value)) for point in REGISTERED), where


def test_every_registered_point_is_driven_by_a_kill_test() -> None:
    driven = set(OPERATION_POINTS)
    for test in KILL_TESTS:
        tree = ast.parse((ROOT / test).read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "POINTS"
                and isinstance(node.slice, ast.Constant)
            ):
                driven |= set(POINTS[str(node.slice.value)])
    assert sorted(REGISTERED - driven) == []


def test_no_point_is_registered_twice() -> None:
    every = [point for points in POINTS.values() for point in points]
    assert len(every) == len(set(every))
