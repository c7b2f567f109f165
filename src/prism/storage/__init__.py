"""Storage drivers, found by name: the only way the rest of Prism gets a ``Storage``.

Drivers are imported when chosen, not when this package is, so a driver whose tools or
dependencies are absent (ZFS on a host without it) costs nothing until someone asks for it.

A driver may define ``async def check(self) -> None``; ``open_storage`` awaits it so that a
storage root that cannot work (wrong filesystem, missing tool) fails at start-up with the reason
rather than at the first branch.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from prism.core.errors import ConfigError
from prism.core.values import StorageKind
from prism.storage._probe import probe_and_choose
from prism.storage.base import Storage

__all__ = ["AUTO", "DRIVERS", "Storage", "driver_class", "open_storage"]

log = logging.getLogger(__name__)

AUTO = StorageKind.AUTO

#: Storage kind → ``module:Class`` of its driver. A new driver adds one line here.
DRIVERS: dict[str, str] = {
    StorageKind.BTRFS: "prism.storage.btrfs:BtrfsStorage",
    StorageKind.ZFS: "prism.storage.zfs:ZfsStorage",
    StorageKind.REFLINK: "prism.storage.reflink:ReflinkStorage",
    StorageKind.COPY: "prism.storage.copy:CopyStorage",
}


@runtime_checkable
class _SelfChecking(Protocol):
    async def check(self) -> None: ...


def driver_class(kind: str) -> type[Storage]:
    """Import and return the driver class registered as ``kind``."""
    try:
        target = DRIVERS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown storage driver '{kind}'",
            hint=f"choose one of: {', '.join([AUTO, *DRIVERS])}",
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"storage driver '{kind}' is not available: {exc}",
            hint="choose another storage driver, or 'auto'",
        ) from exc
    return cast("type[Storage]", getattr(module, class_name))


async def open_storage(kind: str, root: Path, **options: Any) -> Storage:
    """The storage driver ``kind`` for ``root``, checked and ready to use.

    ``kind`` is ``auto`` or a name in ``DRIVERS``; ``options`` go to the driver's constructor
    (e.g. ``dataset=`` for ZFS). ``auto`` picks btrfs, then reflink, then copy, by probing what
    the filesystem under ``root`` can actually do, and logs its choice and why.
    """
    root = Path(root)
    if kind == AUTO:
        choice = await probe_and_choose(root)
        kind = choice.kind
        log.info("storage: %s (%s)", kind, choice.reason)
    cls = driver_class(kind)
    try:
        storage = cls(root, **options)  # type: ignore[call-arg]
    except TypeError as exc:
        raise ConfigError(
            f"storage driver '{kind}' does not accept these options: {exc}",
            hint="remove the options that belong to another driver",
        ) from exc
    if isinstance(storage, _SelfChecking):
        await storage.check()
    return storage
