"""Settings: precedence of sources, parsing, and the generated reference being current."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.cli.main import build_parser, settings_of
from prism.core.config import load_settings, parse_duration
from prism.core.errors import ConfigError
from prism.core.settings import Settings
from prism.core.values import (
    AuthMode,
    DataPlaneChoice,
    DockerNetwork,
    HostPort,
    LogLevel,
    RuntimeKind,
    StorageKind,
    TlsMode,
)
from tools.gen_config_doc import DOC, render


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "prism.toml"
    toml.write_text('storage = "reflink"\nidle_timeout = "2m"\nrun_as = "from-file"\n')
    env = {"PRISM_STORAGE": "btrfs", "PRISM_IDLE_TIMEOUT": "30s"}
    settings = load_settings({"storage": "copy"}, config_file=toml, environ=env)
    assert settings.storage == "copy"
    assert settings.idle_timeout == 30
    assert settings.run_as == "from-file"
    assert settings.listen == HostPort("127.0.0.1", 5432)


def test_prism_table_in_toml_is_accepted(tmp_path: Path) -> None:
    toml = tmp_path / "prism.toml"
    toml.write_text('[prism]\nlisten = "0.0.0.0:6432"\n')
    assert load_settings(config_file=toml, environ={}).listen == HostPort("0.0.0.0", 6432)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("2m", 120), ("1h", 3600), ("250ms", 0.25), ("0", 0)]
)
def test_durations_take_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"idle_timeout": "soon"}, "invalid duration 'soon'"),
        ({"branch_ttl": "999999999999d"}, "longer than 100 years"),
        ({"listen": "nowhere"}, "invalid address 'nowhere'"),
        ({"storage": "floppy"}, "invalid value 'floppy'"),
        ({"point_in_time_branches": "main|("}, "invalid pattern 'main|('"),
        ({"source_max_rate": "10"}, "invalid rate '10'"),  # no unit: kB or MB?
        ({"source_max_rate": "16k"}, "invalid rate '16k'"),  # below pg_basebackup's 32k
        ({"source_max_rate": "2048M"}, "invalid rate '2048M'"),  # above its 1024M
        ({"api_hostname": "http://prism.example"}, "invalid host name 'http://prism.example'"),
        ({"api_hostname": "ok.example,prism.example:8080"}, "invalid host name"),
    ],
)
def test_bad_values_name_the_setting_and_what_is_allowed(
    flags: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, environ={})
    assert message in caught.value.message
    assert caught.value.hint


def test_point_in_time_branches_match_whole_names() -> None:
    assert load_settings(environ={}).point_in_time_branches.matches("main")
    pattern = load_settings({"point_in_time_branches": "main|rel-.*"}, environ={})
    kept = pattern.point_in_time_branches
    assert [kept.matches(name) for name in ("main", "rel-1", "dev", "mainly")] == [
        True,
        True,
        False,
        False,
    ]


CHOICES = [
    ("storage", StorageKind, "auto, btrfs, zfs, reflink, copy"),
    ("runtime", RuntimeKind, "process, docker"),
    ("docker_network", DockerNetwork, "auto, host, bridge-ip, published-port"),
    ("log_level", LogLevel, "debug, info, warning, error"),
    ("tls", TlsMode, "off, on, required"),
    ("auth", AuthMode, "verify, passthrough"),
    ("data_plane", DataPlaneChoice, "auto, pump"),
]


@pytest.mark.parametrize(("name", "kind", "allowed"), CHOICES)
def test_a_choice_is_parsed_once_into_its_enum(name: str, kind: type, allowed: str) -> None:
    """From a flag, the environment or code, the setting holds a member, never the text."""
    last = allowed.split(", ")[-1]
    from_flag = getattr(load_settings({name: last}, environ={}), name)
    from_env = getattr(load_settings(environ={f"PRISM_{name.upper()}": last}), name)
    from_code = getattr(Settings(**{name: last}), name)
    for value in (from_flag, from_env, from_code):
        assert type(value) is kind
        assert value is kind(last)
    assert type(getattr(Settings(), name)) is kind


@pytest.mark.parametrize(("name", "kind", "allowed"), CHOICES)
def test_a_bad_choice_names_the_value_and_every_allowed_one(
    name: str, kind: type, allowed: str
) -> None:
    for build in (
        lambda: load_settings({name: "floppy"}, environ={}),
        lambda: Settings(**{name: "floppy"}),
    ):
        with pytest.raises(ConfigError) as caught:
            build()
        assert caught.value.message.endswith("invalid value 'floppy'")
        assert caught.value.hint == f"choose one of: {allowed}"


@pytest.mark.parametrize(("text", "kb"), [("0", 0), ("32k", 32), ("500k", 500), ("20M", 20480)])
def test_source_max_rate_is_read_in_kilobytes_per_second(text: str, kb: int) -> None:
    assert load_settings({"source_max_rate": text}, environ={}).source_max_rate == kb


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "prism.toml"
    toml.write_text("storag = 'copy'\n")
    with pytest.raises(ConfigError, match="unknown setting 'storag'"):
        load_settings(config_file=toml, environ={})


def test_configuration_reference_matches_the_code() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run .venv/bin/python tools/gen_config_doc.py"
    )


def test_api_hostname_is_a_list_from_the_file_the_environment_or_repeated_flags(
    tmp_path: Path,
) -> None:
    toml = tmp_path / "prism.toml"
    toml.write_text('api_hostname = ["Prism.Example.", "10.0.0.5"]\n')
    assert load_settings(config_file=toml, environ={}).api_hostname == (
        "prism.example",
        "10.0.0.5",
    )
    env = {"PRISM_API_HOSTNAME": "a.example, [::1]"}
    assert load_settings(environ=env).api_hostname == ("a.example", "::1")
    args = build_parser().parse_args(
        ["serve", "--api-hostname", "a.example", "--api-hostname", "b.example,c.example"]
    )
    assert settings_of(args, environ={}).api_hostname == ("a.example", "b.example", "c.example")
