"""The settings Prism overrides on every server, and picking binaries by major version."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.core.config import load_settings
from prism.core.errors import ConfigError, RuntimeStartFailed
from prism.postgres.binaries import PgInstall, PgInstalls
from prism.postgres.serverconf import FIXED_OVERRIDES, memory_kb, overrides, parse_conf, server_conf
from prism.runtime._docker_engine import DockerEngine
from prism.runtime._docker_image import Images
from prism.runtime.docker import DockerRuntime
from prism.storage.btrfs import BtrfsStorage
from prism.storage.copy import CopyStorage
from prism.storage.reflink import ReflinkStorage
from prism.storage.zfs import ZfsStorage

PRODUCTION_CONF = """\
# production
shared_buffers = 64GB                   # a big box
huge_pages = on
ssl = on
ssl_cert_file = '/etc/ssl/certs/prod.pem'
archive_mode = on
archive_command = 'aws s3 cp %p s3://prod-wal/%f'
shared_preload_libraries = 'pg_stat_statements,pg_cron, timescaledb'
synchronous_standby_names = 'standby1'
application_name = 'it''s quoted'
work_mem 64MB
"""


def test_production_conf_is_parsed_like_postgres_does() -> None:
    values = parse_conf(PRODUCTION_CONF)
    assert values["shared_buffers"] == "64GB"
    assert values["archive_command"] == "aws s3 cp %p s3://prod-wal/%f"
    assert values["application_name"] == "it's quoted"
    assert values["work_mem"] == "64MB"


def test_settings_that_cannot_work_on_a_dev_host_are_overridden() -> None:
    result = overrides(
        parse_conf(PRODUCTION_CONF), has_library=lambda name: name == "pg_stat_statements"
    )
    assert result["ssl"] == "off"
    assert result["archive_mode"] == "off"
    assert result["synchronous_standby_names"] == ""
    assert result["shared_buffers"] == "1GB"
    assert result["huge_pages"] == "try"
    assert result["shared_preload_libraries"] == "pg_stat_statements"


def test_settings_that_work_are_left_alone() -> None:
    configured = {"shared_buffers": "256MB", "shared_preload_libraries": "pg_stat_statements"}
    assert overrides(configured, has_library=lambda name: True) == FIXED_OVERRIDES


def test_wal_segments_are_zero_filled_and_recycled_except_on_copy_on_write_storage() -> None:
    """On btrfs and ZFS zero-filling reserves nothing; on ext4 and XFS it is what keeps a full
    disk from failing a WAL write (a PANIC) instead of a segment's creation."""
    plain = overrides({}, has_library=None)
    cow = overrides({}, has_library=None, copy_on_write=True)
    assert "wal_init_zero" not in plain and "wal_recycle" not in plain
    assert (cow["wal_init_zero"], cow["wal_recycle"]) == ("off", "off")


def test_the_storage_drivers_say_whether_they_are_copy_on_write() -> None:
    assert (BtrfsStorage.copy_on_write, ZfsStorage.copy_on_write) == (True, True)
    assert (ReflinkStorage.copy_on_write, CopyStorage.copy_on_write) == (False, False)


def test_preload_is_left_alone_when_the_libraries_cannot_be_checked() -> None:
    assert "shared_preload_libraries" not in overrides(
        {"shared_preload_libraries": "pg_cron"}, has_library=None
    )


@pytest.mark.parametrize(
    ("text", "kb"), [("64GB", 64 * 1024**2), ("128MB", 131072), ("16384", 131072), ("x", None)]
)
def test_memory_settings_are_read_in_their_units(text: str, kb: int | None) -> None:
    assert memory_kb(text) == kb


def _install(version: str) -> PgInstall:
    return PgInstall(Path(f"/pg/{version}/bin"), version, 1000, 1000, "prism")


def test_binaries_are_picked_by_the_data_major() -> None:
    installs = PgInstalls(_install("18.1"), (_install("16.4"),))
    assert installs.for_major(16, what="main").version == "16.4"
    assert installs.majors == [16, 18]


def test_a_major_without_binaries_names_the_setting_to_change() -> None:
    installs = PgInstalls(_install("18.1"))
    with pytest.raises(RuntimeStartFailed, match=r"PostgreSQL 15 data.*binaries for 18") as caught:
        installs.for_major(15, what="the data of branch main")
    assert "--pg-bin" in (caught.value.hint or "")


def test_pg_bin_takes_one_directory_per_major(tmp_path: Path) -> None:
    flags = load_settings({"pg_bin": "/usr/lib/postgresql/16/bin, /opt/pg15/bin"}, environ={})
    assert flags.pg_bin == (Path("/usr/lib/postgresql/16/bin"), Path("/opt/pg15/bin"))
    toml = tmp_path / "prism.toml"
    toml.write_text('pg_bin = ["/a/bin", "/b/bin"]\n')
    assert load_settings(config_file=toml, environ={}).pg_bin == (Path("/a/bin"), Path("/b/bin"))


def test_the_servers_conf_comments_out_overridden_lines_and_anchors_includes(
    tmp_path: Path,
) -> None:
    (tmp_path / "postgresql.conf").write_text(
        PRODUCTION_CONF + "include 'tuning.conf'\ninclude_dir '/etc/pg/conf.d'\n"
    )
    conf = server_conf(tmp_path, overrides(parse_conf(PRODUCTION_CONF), has_library=None))
    values = parse_conf(conf)
    assert "ssl" not in values
    assert "ssl_cert_file" not in values
    assert "archive_mode" not in values
    assert values["archive_command"] == "aws s3 cp %p s3://prod-wal/%f"  # inert: archiving is off
    assert values["include"] == str(tmp_path / "tuning.conf")
    assert values["include_dir"] == "/etc/pg/conf.d"
    assert "# overridden by Prism: ssl = on" in conf


def test_a_data_dir_without_postgresql_conf_gets_an_empty_one(tmp_path: Path) -> None:
    assert parse_conf(server_conf(tmp_path, FIXED_OVERRIDES)) == {}


def test_a_docker_image_per_major_version() -> None:
    images = Images(DockerEngine(), "postgres:{major}-alpine", default_major=18)
    assert images.for_major(16) == "postgres:16-alpine"
    assert images.for_major(None) == "postgres:18-alpine"  # a new cluster
    fixed = Images(DockerEngine(), "postgres:15-alpine")
    assert fixed.for_major(16) == "postgres:15-alpine"  # checked against PG_MAJOR at start


def test_an_image_per_major_needs_a_major_for_new_clusters() -> None:
    with pytest.raises(ConfigError, match="no major version"):
        DockerRuntime(run_dir=Path("/nonexistent"), image="postgres:{major}")
