"""The sans-IO parts of running the source's client programs: output lines, who runs them in an
image, and which sources the docker runtime's containers can reach."""

from __future__ import annotations

import pytest

from prism.core.errors import ConfigError
from prism.core.values import DockerNetwork
from prism.postgres.binaries import version_in
from prism.runtime._docker_image import image_user
from prism.runtime._docker_tools import require_reachable
from prism.runtime._programs import LineSplitter
from prism.source.basebackup import parse_progress


def test_lines_are_cut_at_carriage_returns_and_newlines_across_chunks() -> None:
    lines = LineSplitter()
    # pg_basebackup --progress rewrites one line with \r; a chunk may end mid-line.
    assert list(lines.feed(b"1024/4096 kB (25%), 0/1 tab")) == []
    first = "1024/4096 kB (25%), 0/1 tablespace"
    assert list(lines.feed(b"lespace\r2048/4096 kB (50%)")) == [first]
    assert list(lines.feed(b"\nerror: gone\n")) == ["2048/4096 kB (50%)", "error: gone"]
    progress = parse_progress("2048/4096 kB (50%)", elapsed_s=1.0)
    assert progress is not None and progress.percent == 50


def test_the_version_is_read_from_a_programs_version_line() -> None:
    line = "pg_basebackup (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"
    assert version_in(line) == "15.18"
    assert version_in("exec: pg_basebackup: not found") is None


def test_the_image_user_is_postgres_from_its_passwd() -> None:
    passwd = "root:x:0:0:root:/root:/bin/sh\npostgres:x:100:102::/var/lib/postgresql:/bin/sh\n"
    assert image_user(passwd) == (100, 102)
    assert image_user("root:x:0:0:root:/root:/bin/sh\n") is None


@pytest.mark.parametrize("host", ["db.internal", "10.0.0.5", "172.17.0.1"])
@pytest.mark.parametrize("mode", ["host", "bridge-ip", "published-port"])
def test_a_routable_source_is_reachable_on_every_network(host: str, mode: str) -> None:
    require_reachable(host, DockerNetwork(mode))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_source_needs_the_hosts_network(host: str) -> None:
    require_reachable(host, DockerNetwork.HOST)
    with pytest.raises(ConfigError) as refused:
        require_reachable(host, DockerNetwork.BRIDGE_IP)
    assert "loopback" in refused.value.message
    assert refused.value.hint is not None and "--docker-network host" in refused.value.hint


@pytest.mark.parametrize("host", [None, "/var/run/postgresql"])
def test_a_unix_socket_source_is_refused_with_the_docker_runtime(host: str | None) -> None:
    with pytest.raises(ConfigError, match="Unix socket"):
        require_reachable(host, DockerNetwork.HOST)
