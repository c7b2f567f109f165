"""Issue 4's defaults, as a fresh `prism serve` gets them: what an operator relies on unasked."""

from __future__ import annotations

from prism.core.config import load_settings
from prism.core.values import HostPort


def test_branches_scale_to_zero_after_15_minutes_but_main_does_not() -> None:
    settings = load_settings(environ={})
    assert settings.idle_timeout == 15 * 60
    assert settings.main_scales_to_zero is False


def test_control_plane_binds_localhost_without_a_token() -> None:
    settings = load_settings(environ={})
    assert settings.api == HostPort("127.0.0.1", 8080)
    assert settings.api_token == ""


def test_idle_timeout_and_token_come_from_the_environment() -> None:
    settings = load_settings(environ={"PRISM_IDLE_TIMEOUT": "0", "PRISM_API_TOKEN": "t"})
    assert settings.idle_timeout == 0
    assert settings.api_token == "t"
