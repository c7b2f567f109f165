"""Choosing the data plane at start-up: the kernel's sockmap when it loads, else the pump and why.

These load real BPF programs into the running kernel, or run Prism without the privilege to, so
they need root (as CI runs them; there a skip is a failure).
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from prism.core.values import DataPlaneChoice
from prism.frontdoor import dataplane
from prism.frontdoor.sockmap import insn
from tests.sysenv import require_command, require_root

from .harness import PASSWORD, log_of, psql, running_prism

pytestmark = pytest.mark.integration

_KERNEL_SAYS_NO = (
    "cannot create a BPF sockhash: Operation not permitted"
    " (needs root, or CAP_BPF and CAP_NET_ADMIN)"
)
_WITHOUT_BPF = ["bpf", "net_admin", "sys_admin"]
"""The capabilities that grant a sockhash (CAP_SYS_ADMIN stands in for the other two)."""


@pytest.fixture
def root() -> None:
    require_root()


@pytest.mark.usefixtures("root")
def test_auto_takes_the_sockmap_when_the_kernel_loads_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prism.frontdoor.dataplane")
    plane = dataplane.choose(DataPlaneChoice.AUTO)
    try:
        assert plane.name == "sockmap"
        assert plane.sockmap is not None
        assert [r.getMessage() for r in caplog.records] == [f"data plane: sockmap ({plane.reason})"]
    finally:
        plane.close()


@pytest.mark.usefixtures("root")
def test_a_program_the_kernel_refuses_falls_back_to_the_pump_with_the_reason_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="prism.frontdoor.dataplane")
    exit_without_verdict = insn(0x95)  # BPF_EXIT with r0 never set: the verifier says no
    plane = dataplane.choose(DataPlaneChoice.AUTO, program=exit_without_verdict)
    assert plane.name == "pump"
    assert plane.sockmap is None
    assert plane.reason.startswith("the kernel refused the stream-verdict program: ")
    assert "R0" in plane.reason  # the verifier's own last word, for the operator
    assert [r.getMessage() for r in caplog.records] == [f"data plane: pump ({plane.reason})"]


def test_pump_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prism.frontdoor.dataplane")
    plane = dataplane.choose(DataPlaneChoice.PUMP)
    assert (plane.name, plane.reason) == ("pump", "chosen with --data-plane pump")
    assert [r.getMessage() for r in caplog.records] == [
        "data plane: pump (chosen with --data-plane pump)"
    ]


@pytest.mark.usefixtures("root")
async def test_prism_without_the_privilege_uses_the_pump_says_why_and_serves(
    data_dir: Path,
) -> None:
    """`prism serve` as root with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN taken away."""
    setpriv = require_command("setpriv")
    drop = ",".join(f"-{cap}" for cap in _WITHOUT_BPF)
    prefix = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]
    async with running_prism(data_dir, prefix=prefix) as (_, pg_port, api_port):
        dsn = f"host=127.0.0.1 port={pg_port} user=postgres password={PASSWORD} dbname=postgres"
        assert (await psql(dsn, "SELECT 6 * 7")).stdout.strip() == b"42"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            health = (await http.get("/healthz")).json()
            metrics = (await http.get("/metrics")).text.splitlines()
    assert health["data_plane"] == {"name": "pump", "reason": _KERNEL_SAYS_NO}
    assert f'prism_data_plane_info{{plane="pump",reason="{_KERNEL_SAYS_NO}"}} 1' in metrics
    assert 'prism_sessions_relayed_total{plane="pump"} 1' in metrics
    assert 'prism_sessions_relayed_total{plane="sockmap"} 0' in metrics
    said = [line for line in log_of(data_dir).read_text().splitlines() if "data plane:" in line]
    assert len(said) == 1, said
    assert said[0].endswith(f"prism.frontdoor.dataplane: data plane: pump ({_KERNEL_SAYS_NO})")
