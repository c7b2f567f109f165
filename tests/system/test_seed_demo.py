"""The seed's Getting Started, run as written (docs/operations.md, "Getting started").

The operator's steps, in order, with the real tools: ``/mnt/prism_data`` on btrfs with
``master`` a subvolume, the master populated by running the Postgres image once with
``POSTGRES_PASSWORD=password``, then exactly

    prism serve --storage btrfs --runtime docker --data-dir /mnt/prism_data
    psql "host=localhost port=5432 user=postgres@amazing-feature password=password sslmode=disable"
    curl http://localhost:8080/branches

One difference, in the environment rather than the commands: there is no registry here to pull
the default image (``postgres:15-alpine``) from, so ``PRISM_IMAGE`` names the local test image,
which keeps the official image's contract (tools/sysenv/image/).

``/mnt/prism_data`` is a fresh subvolume of the btrfs test pool bind-mounted there (an existing,
non-empty one is never touched: the test cannot run then). The demo needs ports 5432 and 8080;
no other test uses them (the others listen on port 0, and branch servers get ports from the
ephemeral range), so a taken port is something outside the test run: the test waits a little
for it, then fails naming the holder rather than skipping, since the demo is the point.
Everything is removed afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from prism.runtime.docker import LABEL_PGDATA
from tests.sysenv import BTRFS_MOUNT, DOCKER_IMAGE, require_command, require_mount, unavailable
from tests.system.stacks import (
    ServeProcess,
    populate_with_image,
    prism_serve,
    require_docker,
    scratch_dir,
)

DATA_DIR = Path("/mnt/prism_data")
DEMO_DSN = (
    "host=localhost port=5432 user=postgres@amazing-feature password=password sslmode=disable"
)
_BACKING = BTRFS_MOUNT / "prism_data-demo"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_free_ports(*ports: int) -> None:
    """Wait up to 30 s for ``ports`` (something may be shutting down); fail naming the holder."""
    deadline = time.monotonic() + 30
    while taken := [port for port in ports if not _port_free(port)]:
        if time.monotonic() > deadline:
            holders = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
            lines = [line for line in holders.splitlines() if any(f":{p} " in line for p in taken)]
            pytest.fail(f"the seed's demo needs ports {taken}, held by:\n" + "\n".join(lines))
        time.sleep(0.5)


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _delete_subvolumes_under(path: Path) -> None:
    """Delete every subvolume below ``path`` (deepest first), then ``path`` itself."""
    if not path.exists():
        return
    listed = _run("btrfs", "subvolume", "list", "-o", str(path))
    # Lines end with "path <path relative to the filesystem root>".
    nested = [BTRFS_MOUNT / line.split(" path ", 1)[1] for line in listed.splitlines()]
    for subvolume in sorted(nested, key=lambda p: len(p.parts), reverse=True):
        subprocess.run(["btrfs", "subvolume", "delete", str(subvolume)], capture_output=True)
    subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True)


@pytest.fixture
def prism_data() -> Iterator[Path]:
    """``/mnt/prism_data``: a fresh btrfs subvolume bind-mounted there; all removed afterwards."""
    require_mount(BTRFS_MOUNT, "btrfs")
    for tool in ("psql", "curl", "btrfs", "mount"):
        require_command(tool)
    client = require_docker()
    _wait_for_free_ports(5432, 8080)
    if DATA_DIR.exists() and (os.path.ismount(DATA_DIR) or any(DATA_DIR.iterdir())):
        unavailable(f"{DATA_DIR} exists and is not empty; the demo will not touch it")
    backing = _BACKING.with_name(f"{_BACKING.name}-{uuid.uuid4().hex[:8]}")
    _run("btrfs", "subvolume", "create", str(backing))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", "--bind", str(backing), str(DATA_DIR))
        try:
            yield DATA_DIR
        finally:
            for container in client.containers.list(all=True, filters={"name": "prism-"}):
                if container.labels.get(LABEL_PGDATA, "").startswith(str(DATA_DIR)):
                    container.remove(force=True, v=True)
            subprocess.run(["umount", str(DATA_DIR)], check=True)
    finally:
        _delete_subvolumes_under(backing)
        shutil.rmtree(backing, ignore_errors=True)
        DATA_DIR.rmdir()


async def test_the_seeds_getting_started_runs_as_written(prism_data: Path) -> None:
    master = prism_data / "master"
    await trio.run_process(["btrfs", "subvolume", "create", str(master)], capture_stdout=True)
    await trio.to_thread.run_sync(populate_with_image, master)
    assert (master / "PG_VERSION").read_text().strip() == "15"

    prism = str(Path(sys.executable).with_name("prism"))
    command = [prism, "serve", "--storage", "btrfs", "--runtime", "docker"]
    command += ["--data-dir", "/mnt/prism_data"]
    with scratch_dir("prism-demo-") as logs:
        async with prism_serve(
            command,
            pg_port=5432,
            api_port=8080,
            log=logs / "serve.log",
            env={"PRISM_IMAGE": DOCKER_IMAGE},
        ) as served:
            await _psql_and_curl(served)


async def _psql_and_curl(served: ServeProcess) -> None:
    # psql reads its commands from stdin, so its command line is the seed's, unchanged.
    session = await trio.run_process(
        ["psql", DEMO_DSN],
        stdin=b"SELECT current_user, current_database();\n",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert session.returncode == 0, session.stderr.decode() + served.log_text()
    assert re.search(r"^ postgres +\| postgres$", session.stdout.decode(), re.M)

    listing = await trio.run_process(
        ["curl", "http://localhost:8080/branches"], capture_stdout=True, capture_stderr=True
    )
    assert "amazing-feature" in listing.stdout.decode()
    assert (DATA_DIR / "branches" / "amazing-feature" / "PG_VERSION").exists()
