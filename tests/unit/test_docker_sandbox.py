"""The docker runtime's sandbox as data: the seccomp profile and the confinement report."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prism.core.config import load_settings
from prism.core.errors import ConfigError
from prism.core.values import DockerNetwork, HostPort
from prism.runtime._docker_sandbox import confinement, host_config, label, seccomp_profile


def _denied(profile: str) -> dict[str, list[Any]]:
    """Syscall name → the argument conditions of each rule denying it ([] = unconditional)."""
    rules: dict[str, list[Any]] = {}
    for rule in json.loads(profile)["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ERRNO"
        for name in rule["names"]:
            rules.setdefault(name, []).append(rule.get("args", []))
    return rules


def test_a_branch_profile_denies_connect_and_datagrams_but_keeps_listening() -> None:
    denied = _denied(seccomp_profile(outbound=False, architecture="x86_64"))
    assert [] in denied["connect"]
    assert [] in denied["io_uring_setup"] and [] in denied["socketcall"]
    udp = [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]
    udp.append({"index": 1, "value": 0xF, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"})
    assert udp in denied["socket"]
    # A stream socket of a family the server uses is never denied outright.
    for family in (1, 2, 10):
        assert [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}] not in denied["socket"]
    for needed in ("bind", "listen", "accept", "accept4"):
        assert needed not in denied


def test_an_outbound_profile_keeps_connect_and_the_rest_of_the_sandbox() -> None:
    denied = _denied(seccomp_profile(outbound=True, architecture="x86_64"))
    assert "connect" not in denied and "socket" not in denied
    assert [] in denied["unshare"] and [] in denied["io_uring_setup"]


def test_the_profile_covers_the_32_bit_syscall_table_too() -> None:
    profile = json.loads(seccomp_profile(outbound=False, architecture="x86_64"))
    assert "SCMP_ARCH_X86" in profile["architectures"]
    options = host_config(outbound=False, architecture="aarch64")
    assert options["cap_drop"] == ["ALL"] and options["read_only"] is True
    assert "no-new-privileges" in options["security_opt"]


def test_containers_of_other_sandboxes_are_told_apart_by_label() -> None:
    assert label(outbound=False) != label(outbound=True)


def test_the_report_names_what_host_networking_and_egress_leave_open() -> None:
    closed = confinement(DockerNetwork.BRIDGE_IP, egress=(), main_outbound=False)
    assert closed.complete
    assert any("no outbound connection" in item for item in closed.enforced)
    host = confinement(DockerNetwork.HOST, egress=(), main_outbound=False)
    assert not host.complete and "/proc/net" in " ".join(host.missing)
    opened = confinement(DockerNetwork.PUBLISHED_PORT, egress=("db:5432",), main_outbound=True)
    assert len(opened.missing) == 2
    assert not any("no outbound connection" in item for item in opened.enforced)
    assert confinement(None, egress=(), main_outbound=False).missing


def test_an_engine_without_seccomp_gets_the_rest_and_a_report_saying_so() -> None:
    options = host_config(outbound=False, architecture="x86_64", seccomp=False)
    assert options["security_opt"] == ["no-new-privileges"]
    report = confinement(DockerNetwork.BRIDGE_IP, egress=(), main_outbound=False, seccomp=False)
    assert not report.complete and "seccomp" in report.missing[0]


def test_branch_egress_is_read_as_host_port_pairs_and_a_bad_one_is_refused() -> None:
    flag = load_settings({"branch_egress": "db.internal:5432, 10.0.0.7:6432"}, environ={})
    assert flag.branch_egress == (HostPort("db.internal", 5432), HostPort("10.0.0.7", 6432))
    env = load_settings(environ={"PRISM_BRANCH_EGRESS": "db.internal:5432"})
    assert env.branch_egress == (HostPort("db.internal", 5432),)
    assert load_settings(environ={}).branch_egress == ()
    with pytest.raises(ConfigError, match="invalid address"):
        load_settings({"branch_egress": "db.internal"}, environ={})
