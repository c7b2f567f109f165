"""docs/api.md and docs/cli.md name everything the code offers, so the docs cannot fall behind.

Read from the code itself: the app's routes, the error codes, the event types the manager
publishes, and the CLI's commands and flags.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

import prism.api.auth
import prism.api.routes
import prism.api.sameorigin
from prism.api.app import create_app
from prism.api.errors import _STATUS
from prism.branches.status import BranchStatus
from prism.cli.main import build_parser
from prism.core.events import EventBus
from tests.fakes import FakeRuntime

_ROOT = Path(__file__).resolve().parents[2]
API_DOC = (_ROOT / "docs" / "api.md").read_text()
CLI_DOC = (_ROOT / "docs" / "cli.md").read_text()


class _Manager:
    events = EventBus()
    runtime = FakeRuntime()


def _routes() -> list[str]:
    app = create_app(_Manager())  # type: ignore[arg-type]
    rules = [str(rule) for rule in app.url_map.iter_rules() if rule.endpoint != "static"]
    return sorted({re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule) for rule in rules})


def _string_args(module: object, function: str, position: int) -> set[str]:
    """Literal string arguments at ``position`` of every call to ``function`` in ``module``
    (a module, or the path of its source)."""
    path = module if isinstance(module, Path) else Path(module.__file__)  # type: ignore[attr-defined]
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == function
            and len(node.args) > position
            and isinstance(node.args[position], ast.Constant)
        ):
            found.add(node.args[position].value)
    return found


@pytest.mark.parametrize("route", _routes())
def test_every_route_is_documented(route: str) -> None:
    assert f"`{route}" in API_DOC or f" {route}`" in API_DOC


def _error_codes() -> list[str]:
    codes = {code for _, _, code in _STATUS} | {"internal_error", "not_found"}
    for module in (prism.api.routes, prism.api.auth):
        codes |= _string_args(module, "ApiError", 1)
    codes |= _string_args(prism.api.sameorigin, "Refusal", 1)
    return sorted(codes)


@pytest.mark.parametrize("code", _error_codes())
def test_every_error_code_is_documented(code: str) -> None:
    assert f"| `{code}` |" in API_DOC


def _event_types() -> list[str]:
    # Status events go through the registry's one transition (its third argument). Every
    # module is read: an event published from a new one must be documented too.
    kinds = {"snapshot", "overflow"}
    for module in sorted((_ROOT / "src" / "prism").rglob("*.py")):
        kinds |= _string_args(module, "publish", 0) | _string_args(module, "transition", 2)
    return sorted(kinds)


@pytest.mark.parametrize("kind", _event_types())
def test_every_event_type_is_documented(kind: str) -> None:
    assert f"`{kind}`" in API_DOC


@pytest.mark.parametrize("status", [status.value for status in BranchStatus])
def test_every_status_is_documented_as_a_status_and_an_event(status: str) -> None:
    """A status is entered by the one transition, which publishes it as an event."""
    assert f"`{status}`" in API_DOC.split("## A branch", 1)[1].split("## Connection", 1)[0]
    assert f"| `{status}` |" in API_DOC


def _cli_words() -> list[str]:
    words = set()

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words.add(f"{path} {name}".strip())
                    walk(sub, f"{path} {name}".strip())
            elif path != "serve":  # serve's setting flags live in configuration.md
                words.update(o for o in action.option_strings if o.startswith("--"))

    walk(build_parser(), "")
    return sorted(words - {"--help"})


@pytest.mark.parametrize("word", _cli_words())
def test_every_cli_command_and_flag_is_documented(word: str) -> None:
    assert word in CLI_DOC
