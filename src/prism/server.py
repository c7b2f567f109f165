"""A whole Prism server: the nursery that owns the listener, the control plane and the reaper."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from prism.api.app import create_app
from prism.api.closing import CloseAfterEarlyAnswer
from prism.branches.capacity import Caps
from prism.branches.diskwatch import DiskWatch, MainControl, measure_use
from prism.branches.eviction import Reclaimer
from prism.branches.hooks import HookCommands
from prism.branches.manager import BranchManager
from prism.branches.pitr import PointInTime, SnapshotSource, open_point_in_time
from prism.branches.policy import CreateDefaults
from prism.branches.reaper import run_expiry, run_reaper
from prism.branches.snapshots import SnapshotStore
from prism.branches.status import BranchRegistry
from prism.core import secretfiles
from prism.core.diskrules import WAL_SEGMENT, ballast_size
from prism.core.errors import ConfigError
from prism.core.events import EventBus
from prism.core.followers import Followers
from prism.core.names import MAIN_BRANCH
from prism.core.settings import Settings
from prism.core.values import StorageKind, default_data_dir
from prism.durable.datadirlock import DataDirLock, hold_data_dir
from prism.durable.journal import Journal
from prism.durable.recovery import recover
from prism.durable.state import StateStore
from prism.frontdoor.auth import VerifierStore, open_verifiers
from prism.frontdoor.dataplane import DataPlane
from prism.frontdoor.dataplane import choose as choose_data_plane
from prism.frontdoor.proxy import Proxy
from prism.mainsource import MainStrategy, open_main_source
from prism.postgres.dsn import Endpoint
from prism.runtime import open_runtime
from prism.runtime.base import Confinement
from prism.storage import open_storage
from prism.storage.ballast import BALLAST_NAME, Ballast
from prism.storage.budget import DiskBudget, SpaceUse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerInfo:
    """Where a started server listens; ``nursery.start(PrismServer.run)`` returns it."""

    listen: tuple[str, int]
    api: tuple[str, int]
    manager: BranchManager
    data_plane: DataPlane
    reclaimer: Reclaimer
    """What the disk budget calls before it refuses anything for lack of space."""

    @property
    def api_url(self) -> str:
        return f"http://{self.api[0]}:{self.api[1]}"


def raise_open_file_limit() -> int:
    """Raise the open-file soft limit to the hard limit; return the limit now in force.

    Each proxied session holds two sockets (client and branch server) and, while busy, a pipe
    for splice: the common soft limit of 1024 would refuse clients in the hundreds, long before
    memory runs short. The hard limit is the operator's ceiling, so Prism goes up to it and no
    further.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _prepare_data_dir(path: Path) -> None:
    """Create the data dir (private) or explain in one line why it cannot be used.

    As root the servers run as another user, who must be able to pass through the data dir to
    reach its branch directories, so a new data dir is made searchable but not listable (0711).
    """
    mode = 0o711 if os.geteuid() == 0 else 0o700
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as exc:
        raise ConfigError(
            f"cannot create data directory {path}: {exc.strerror}",
            hint="choose another place with --data-dir",
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"data directory {path} is not writable by this user",
            hint="choose another place with --data-dir, or fix its owner",
        )


async def _open_listener(host: str, port: int, what: str) -> trio.SocketListener:
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror}",
            hint="is another server (Postgres, another Prism) using that port? "
            "choose another with --listen / --api; another Prism needs its own --data-dir too",
        ) from None
    return listeners[0]


def _bound(listener: trio.SocketListener) -> tuple[str, int]:
    host, port, *_ = listener.socket.getsockname()
    return str(host), int(port)


def _followers(
    point_in_time: PointInTime | None,
    verifiers: VerifierStore | None,
    main_source: MainStrategy,
) -> Followers:
    """What the parts that follow the branches' servers and data do, handed to the manager."""
    followers = main_source.followers()
    if point_in_time is not None:
        followers += Followers(
            after_start=(point_in_time.started,),
            after_discard=(point_in_time.drop,),
            after_clone=(point_in_time.cloned,),
        )
    if verifiers is not None:
        followers += Followers(
            after_start=(verifiers.snapshot,),
            before_stop=(verifiers.last_snapshot,),
            after_discard=(verifiers.forget,),
        )
    return followers


class PrismServer:
    """Runs Prism until cancelled; stops every branch server it started on the way out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(
        self, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        log.debug("open-file limit %d", raise_open_file_limit())
        data_dir = self.settings.data_dir.resolve()
        if os.geteuid() == 0:
            log.info(
                "prism: running as root: data in %s%s (--data-dir to change); branch servers "
                "run as an unprivileged OS user (--run-as), as PostgreSQL refuses root",
                data_dir,
                " (root's default)" if data_dir == default_data_dir() else "",
            )
        _prepare_data_dir(data_dir)
        # Before anything reads or changes the data dir, and until every server is stopped.
        with hold_data_dir(data_dir) as lock:
            await self._run(data_dir, lock, task_status)

    async def _run(
        self, data_dir: Path, lock: DataDirLock, task_status: trio.TaskStatus[ServerInfo]
    ) -> None:
        settings = self.settings
        for sub in ("run", "logs"):
            (data_dir / sub).mkdir(exist_ok=True, mode=0o700)
        # Before anything of this Prism could run an initdb that writes one.
        await trio.to_thread.run_sync(secretfiles.sweep, data_dir / "run", data_dir / "source")
        pg_listener = await _open_listener(settings.listen.host, settings.listen.port, "clients")
        api_listener = await _open_listener(settings.api.host, settings.api.port, "the API")
        lock.describe(listen=_bound(pg_listener), api=_bound(api_listener))
        storage_options = (
            {"dataset": settings.zfs_dataset} if settings.storage is StorageKind.ZFS else {}
        )
        storage = await open_storage(settings.storage, data_dir, **storage_options)
        runtime = await open_runtime(settings, data_dir, copy_on_write=storage.copy_on_write)
        _report_confinement(runtime.confinement())
        state = StateStore(data_dir / "prism.db")
        journal = Journal(state)
        events = EventBus(buffer=settings.event_buffer)
        main_source = await open_main_source(
            settings, data_dir, storage=storage, runtime=runtime, journal=journal, events=events
        )
        point_in_time = None
        if main_source.keeps_history:
            point_in_time = open_point_in_time(settings, data_dir, storage, events, journal)
        budget = DiskBudget(
            storage=storage,
            data_dir=data_dir,
            reserve=settings.disk_reserve,
            archives=point_in_time is not None,
        )
        origin = main_source.origin
        main = dataclasses.replace(
            origin, make=within_budget(budget, origin.make, f"make main ({origin.how})")
        )
        # The registry first: the role store reads it, and the manager hears from the store.
        registry = BranchRegistry(events)
        verifiers = open_verifiers(
            settings, registry, address=runtime.address, data_path=storage.path
        )
        manager = BranchManager(
            storage=storage,
            runtime=runtime,
            state=state,
            events=events,
            superuser=settings.superuser,
            password=settings.password,
            caps=Caps(branches=settings.max_branches, running=settings.max_running),
            defaults=CreateDefaults(
                parent=settings.default_parent,
                ttl=settings.branch_ttl,
                expiry_grace=settings.expiry_grace,
            ),
            endpoint=Endpoint(
                host=settings.listen.host,
                port=_bound(pg_listener)[1],
                superuser=settings.superuser,
                password=main_source.superuser_password,
                tls=settings.tls,
            ),
            main=main,
            hook_commands=HookCommands(
                allowed=settings.allow_hook_commands, timeout=settings.hook_command_timeout
            ),
            journal=journal,
            followers=_followers(point_in_time, verifiers, main_source),
            point_in_time=point_in_time,
            registry=registry,
            # The point-in-time object also says what each server is started with.
            server_extras=point_in_time,
            undelete_window=settings.undelete_window,
            budget=budget,
            evict_on_pressure=settings.evict_on_pressure,
        )
        data_plane = choose_data_plane(settings.data_plane)
        proxy = Proxy.from_settings(manager, settings, data_dir, verifiers, data_plane)
        snapshots = (
            SnapshotStore(data_dir / "snapshots", storage, journal)
            if point_in_time is None
            else point_in_time.store
        )
        owners = [
            *main_source.recovery_owners(),
            snapshots.recovery_owner(sweep=point_in_time is not None),
            manager.recovery_owner(),
        ]
        try:
            # One pass, in the order prism.durable.recovery declares; it refuses to start, touching
            # nothing, if the journal holds an intent none of these owners recovers.
            await recover(journal, owners)
            # Main is made before serving (clients wait in the backlog) unless its strategy
            # serves early: then the API shows the progress and clients are told how far it is
            # (manager.check_available).
            if not main_source.serve_early:
                await manager.open_main()
            async with trio.open_nursery() as nursery:
                # Before the front door: clones are followed, refreshes taken, from the first
                # client on.
                await nursery.start(main_source.keep, manager)
                nursery.start_soon(trio.serve_listeners, proxy.handle, [pg_listener])
                app = create_app(
                    manager,
                    api_token=settings.api_token,
                    served_names=(settings.api.host, *settings.api_hostname),
                    data_plane=data_plane,
                    source_health=main_source.health(manager),
                    body_timeout=settings.api_body_timeout,
                    password_check=None if proxy.verifiers is None else proxy.verifiers.logs_in,
                )
                await nursery.start(_serve_api, app, api_listener)
                if main_source.serve_early:
                    await manager.open_main()
                nursery.start_soon(
                    functools.partial(manager.watch, health_every=settings.health_interval)
                )
                if settings.idle_timeout > 0:
                    nursery.start_soon(
                        functools.partial(
                            run_reaper,
                            manager,
                            idle_timeout=settings.idle_timeout,
                            include_main=settings.main_scales_to_zero,
                        )
                    )
                nursery.start_soon(run_expiry, manager)
                nursery.start_soon(_disk_watch(budget, manager, point_in_time).run)
                if point_in_time is not None:
                    source_of_snapshots = SnapshotSource(
                        names=lambda: [branch.name for branch in manager.list()],
                        running=manager.address,
                        clone=manager.clone_to,
                    )
                    nursery.start_soon(
                        functools.partial(
                            point_in_time.run,
                            every=settings.snapshot_every,
                            retention=settings.retention,
                            source=source_of_snapshots,
                            superuser=settings.superuser,
                        )
                    )
                info = ServerInfo(
                    _bound(pg_listener),
                    _bound(api_listener),
                    manager,
                    data_plane,
                    manager.reclaimer,
                )
                log.info(
                    "prism: ready: postgres clients on %s:%d, API on %s; data in %s "
                    "(storage %s, runtime %s)",
                    *info.listen,
                    info.api_url,
                    data_dir,
                    storage.name,
                    runtime.name,
                )
                task_status.started(info)
        finally:
            with trio.CancelScope(shield=True):
                log.info("prism: shutting down: stopping branch servers")
                await manager.close(kill_after=settings.shutdown_timeout)
                await runtime.aclose()
                state.close()
                data_plane.close()
                for listener in (pg_listener, api_listener):
                    listener.socket.close()
                log.info("prism: stopped")


async def _serve_api(
    app: object,
    listener: trio.SocketListener,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane on an already-bound socket (so port 0 and busy ports are ours)."""
    config = HypercornConfig()
    host, port = _bound(listener)
    # Hypercorn wraps the fd in a socket of its own and closes it when it stops; a duplicate
    # keeps that close from hitting our listener's fd number, which by then may be reused.
    fd = os.dup(listener.socket.fileno())
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("prism.api")
    config.graceful_timeout = 1
    log.debug("api: serving on %s:%d (fd %d)", host, port, fd)
    app = CloseAfterEarlyAnswer(app)  # else a request answered early keeps its connection
    await hypercorn_serve(app, config, task_status=task_status)  # type: ignore[arg-type]


def within_budget(
    budget: DiskBudget, make: Callable[[Path], Awaitable[None]], what: str
) -> Callable[[Path], Awaitable[None]]:
    """``make`` (main's data from its source) refused up front when the disk is already
    under its reserve. How much the source holds is known only once the copy runs, so what is
    held is the WAL main's first start writes; a copy that then fills the disk fails as before,
    removing what it wrote."""

    async def makewithin_budget(pgdata: Path) -> None:
        hold = await budget.hold({"main": WAL_SEGMENT}, what=what)
        try:
            await make(pgdata)
        finally:
            hold.release()

    return makewithin_budget


def _disk_watch(
    budget: DiskBudget, manager: BranchManager, point_in_time: PointInTime | None
) -> DiskWatch:
    """The watcher of the budget's file systems, with a ballast on main's where Prism's data
    dir shares it (a ZFS main in a dataset of its own gets none: give the dataset a
    ``reservation`` instead)."""
    main = budget.filesystem("main")
    ballast = None
    if "data" in main.roles:
        space = budget.space(main)
        ballast = Ballast(
            budget.data_dir / BALLAST_NAME, ballast_size(budget.reserve_of(main, space))
        )
    else:
        log.warning(
            "disk: main's file system (%s) is not the data dir's: no ballast is kept for it",
            main.path,
        )

    async def stop_main() -> None:
        await manager.stop(MAIN_BRANCH, reason="disk-full")

    def prune_now() -> None:
        if point_in_time is not None:
            point_in_time.poke()

    async def use() -> SpaceUse:
        names = [branch.name for branch in manager.list()]
        return await measure_use(names, manager.disk, manager.storage, point_in_time)

    return DiskWatch(budget, manager.events, MainControl(stop_main, use, prune_now), ballast)


def _report_confinement(confinement: Confinement) -> None:
    """Say once at start what a branch server's sandbox enforces, and warn of each gap."""
    log.info("sandbox: %s: %s", confinement.mechanism, "; ".join(confinement.enforced) or "nothing")
    for gap in confinement.missing:
        log.warning("sandbox: not enforced on this host: %s (see docs/security.md)", gap)
