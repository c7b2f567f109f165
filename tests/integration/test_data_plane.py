"""Choosing the data plane at start-up: the kernel's sockmap when it loads, else the pump and why.

These load real BPF programs into the running kernel, so they need root (as CI runs them).
"""

from __future__ import annotations

import logging
import os

import pytest

from prism import dataplane
from prism.sockmap import insn

pytestmark = pytest.mark.integration

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


@needs_root
def test_auto_takes_the_sockmap_when_the_kernel_loads_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prism.dataplane")
    plane = dataplane.choose("auto")
    try:
        assert plane.name == "sockmap"
        assert plane.sockmap is not None
        assert [r.getMessage() for r in caplog.records] == [f"data plane: sockmap ({plane.reason})"]
    finally:
        plane.close()


@needs_root
def test_a_program_the_kernel_refuses_falls_back_to_the_pump_with_the_reason_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="prism.dataplane")
    exit_without_verdict = insn(0x95)  # BPF_EXIT with r0 never set: the verifier says no
    plane = dataplane.choose("auto", program=exit_without_verdict)
    assert plane.name == "pump"
    assert plane.sockmap is None
    assert plane.reason.startswith("the kernel refused the stream-verdict program: ")
    assert "R0" in plane.reason  # the verifier's own last word, for the operator
    assert [r.getMessage() for r in caplog.records] == [f"data plane: pump ({plane.reason})"]


def test_pump_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prism.dataplane")
    plane = dataplane.choose("pump")
    assert (plane.name, plane.reason) == ("pump", "chosen with --data-plane pump")
    assert [r.getMessage() for r in caplog.records] == [
        "data plane: pump (chosen with --data-plane pump)"
    ]
