"""Runtime drivers, chosen by name from the settings; the core never imports one directly."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prism.core.errors import ConfigError
from prism.core.settings import Settings
from prism.core.values import RuntimeKind
from prism.postgres.conninfo import parse_conninfo
from prism.runtime.base import Runtime
from prism.runtime.sandbox import SandboxPolicy

log = logging.getLogger(__name__)


def sandbox_policy(settings: Settings, data_dir: Path) -> SandboxPolicy:
    """What branch servers may reach beyond their own branch: ``--branch-egress``, and for
    main following a source, the source's port and password file (``source/``)."""
    main_reads: tuple[Path, ...] = ()
    main_ports: tuple[int, ...] = ()
    if settings.source:
        conninfo = parse_conninfo(settings.source)
        ports = (conninfo.get("port") or "5432").split(",")
        main_ports = tuple(int(port) for port in ports if port.strip().isdigit())
        main_reads = (data_dir / "source",)
        if os.environ.get("PGPASSFILE"):
            main_reads += (Path(os.environ["PGPASSFILE"]),)
    return SandboxPolicy(
        egress_ports=tuple(address.port for address in settings.branch_egress),
        main_reads=main_reads,
        main_ports=main_ports,
        service_role=settings.superuser,
    )


async def open_runtime(settings: Settings, data_dir: Path, *, copy_on_write: bool) -> Runtime:
    """Build the runtime named by ``settings.runtime`` for a Prism whose data is in ``data_dir``
    on storage that is ``copy_on_write`` or not (which WAL settings fit it)."""
    if settings.runtime is RuntimeKind.PROCESS:
        from prism.postgres.binaries import resolve_pg_installs
        from prism.runtime.process import ProcessRuntime

        install = await resolve_pg_installs(
            data_dir, pg_bins=settings.pg_bin, run_as=settings.run_as
        )
        if install.default.switches_user:
            # As root: say who the servers are, since Postgres refuses to run as root.
            log.info(
                "runtime: branch servers run as OS user %s (uid %d), not as Prism's own user",
                install.default.run_as_name,
                install.default.run_as_uid,
            )
        return ProcessRuntime(
            install,
            run_dir=data_dir / "run",
            log_dir=data_dir / "logs",
            start_timeout=settings.start_timeout,
            stop_timeout=settings.stop_timeout,
            copy_on_write=copy_on_write,
            sandbox_policy=sandbox_policy(settings, data_dir) if settings.branch_sandbox else None,
        )
    if settings.runtime is RuntimeKind.DOCKER:
        from prism.runtime.docker import open_docker_runtime

        return await open_docker_runtime(settings, data_dir, copy_on_write=copy_on_write)
    raise ConfigError(f"unknown runtime '{settings.runtime}'", hint="choose process or docker")
