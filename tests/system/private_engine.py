"""A private Docker engine that a test may stop and start for real.

Why not the shared engine of ``tools/sysenv/docker.sh``: other test runs use it at the same
time, and stopping it (without live-restore, which it does not have) would stop their
containers too. This is the same ``dockerd`` binary started the same way, on its own socket,
data root, exec root and bridge, with no iptables rules (Prism's containers use the host's
network), so stopping it disturbs nothing else. Not ``--bridge=none``: a dockerd told so
deletes the host's ``docker0`` when it starts, and with it the shared engine's bridge network.
Its data root is kept between runs, so the test image is copied into it
(``docker save | docker load``, ~10 s) only once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

from tests.sysenv import DOCKER_IMAGE, unavailable

DATA_ROOT = Path("/var/lib/prism-test/dockerd-private")
EXEC_ROOT = Path("/var/run/prism-dockerd")
SOCKET = Path("/var/run/prism-dockerd.sock")
PIDFILE = Path("/var/run/prism-dockerd.pid")
LOG = Path("/var/log/prism-dockerd-private.log")
BRIDGE = "prismdkr0"
_BRIDGE_ADDRESS = "172.31.254.1/24"
DOCKER_HOST = f"unix://{SOCKET}"
_WAIT_S = 60.0


class PrivateEngine:
    """Start, stop and ask a private ``dockerd``; ``live_restore`` keeps containers running
    while it is down."""

    def __init__(self, *, live_restore: bool) -> None:
        self.live_restore = live_restore
        self._process: subprocess.Popen[bytes] | None = None

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=DOCKER_HOST, version="auto")

    def answers(self) -> bool:
        try:
            client = self.client()
            try:
                client.ping()
            finally:
                client.close()
        except docker.errors.DockerException:
            return False
        return True

    def start(self) -> None:
        """Start the engine (stopping one running with other options) and wait until it answers."""
        if self.answers():
            info = self.client().info()
            if bool(info.get("LiveRestoreEnabled")) == self.live_restore:
                return
            self.stop()
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        args = [
            "dockerd",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={EXEC_ROOT}",
            f"--host={DOCKER_HOST}",
            f"--pidfile={PIDFILE}",
            "--iptables=false",
            "--ip6tables=false",
            f"--bridge={BRIDGE}",
        ]
        _ensure_bridge()
        if self.live_restore:
            args.append("--live-restore")
        with open(LOG, "ab") as log:
            # A session of its own: the engine must not get the test's terminal signals.
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + _WAIT_S
        while not self.answers():
            if time.monotonic() > deadline:
                unavailable(f"a private dockerd did not answer within {_WAIT_S:g} s; see {LOG}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the engine for real (SIGTERM, as an init system does) and wait until it exits."""
        try:
            pid = int(PIDFILE.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(_WAIT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
            return
        # Started by an earlier run: not our child, so watch /proc.
        deadline = time.monotonic() + _WAIT_S
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def ensure_image(self) -> None:
        """Copy the test image from the shared engine unless this engine has it already."""
        client = self.client()
        try:
            client.images.get(DOCKER_IMAGE)
            return
        except docker.errors.ImageNotFound:
            pass
        finally:
            client.close()
        save = subprocess.Popen(["docker", "save", DOCKER_IMAGE], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", DOCKER_HOST, "load", "-q"], stdin=save.stdout, capture_output=True
        )
        save.wait()
        if save.returncode != 0 or load.returncode != 0:
            unavailable(f"cannot copy {DOCKER_IMAGE} into the private engine: {load.stderr!r}")


def _ensure_bridge() -> None:
    """The private engine's own bridge device (dockerd --bridge needs it to exist)."""
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        return
    for command in (
        ["ip", "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "addr", "add", _BRIDGE_ADDRESS, "dev", BRIDGE],
        ["ip", "link", "set", BRIDGE, "up"],
    ):
        subprocess.run(command, check=True, capture_output=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
