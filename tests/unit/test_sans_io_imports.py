"""The sans-IO front door stays sans-IO: importing it loads no I/O library and no manager.

An import is how I/O creeps into a pure module unnoticed (``startup`` once loaded the whole
manager through ``auth``), so each pure module is imported alone in a fresh interpreter and
what it dragged in is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prism

# The modules that decide the start-up of a connection without touching a socket.
SANS_IO_MODULES = (
    "prism.frontdoor.startup",
    "prism.postgres.wire",
    "prism.postgres.scram",
    "prism.frontdoor.clientauth",
    "prism.frontdoor.backendlogin",
    "prism.frontdoor.router",
    "prism.frontdoor.clienthello",
    # The disk budget's rules: sizes, reserve, retention, the fit decision.
    "prism.core.diskrules",
    "prism.core.units",
)

# Async I/O, TLS, and the branch manager (which brings storage, runtimes and the journal).
FORBIDDEN = ("trio", "ssl", "prism.branches.manager")


def modules_loaded_by(module: str) -> set[str]:
    """Every module in ``sys.modules`` after ``import module`` in a fresh interpreter."""
    # The child imports the same prism as this process (a worktree's src, not an installed one).
    src = str(Path(prism.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", SANS_IO_MODULES)
def test_sans_io_module_imports_no_io_and_no_manager(module: str) -> None:
    loaded = modules_loaded_by(module)
    assert module in loaded
    assert sorted(loaded.intersection(FORBIDDEN)) == []
