"""How main is made and kept: initdb, a standby of a source, or dump generations.

``open_main_source`` picks one ``MainStrategy`` (``prism.mainsource.base``) from the settings;
it is the one place that asks whether there is a source and in which mode it is copied.
Everything else asks the strategy.
"""

from __future__ import annotations

from pathlib import Path

from prism.core.errors import ConfigError
from prism.core.events import EventBus
from prism.core.settings import Settings
from prism.core.values import SourceMode
from prism.durable.journal import Journal
from prism.mainsource.base import MainHost, MainOrigin, MainStrategy
from prism.mainsource.generations import Generations
from prism.mainsource.initdb import InitdbMain
from prism.mainsource.standby import StandbyMain
from prism.runtime.base import Runtime
from prism.source.follow import open_source
from prism.storage.base import Storage


async def open_main_source(
    settings: Settings,
    data_dir: Path,
    *,
    storage: Storage,
    runtime: Runtime,
    journal: Journal,
    events: EventBus,
) -> MainStrategy:
    """The strategy ``settings`` ask for: no ``--source`` → initdb; ``--source`` → a standby
    of it, or with ``--source-mode dump`` generations of its dump.

    Refused before anything is made: a dump with no source to dump, a source Prism cannot use
    (``open_source``).
    """
    dump = settings.source_mode is SourceMode.DUMP
    if not settings.source:
        if dump:
            raise ConfigError(
                "--source-mode dump needs a source to dump", hint="give --source CONNINFO"
            )
        return InitdbMain(runtime, superuser=settings.superuser, password=settings.password)
    source = await open_source(settings, data_dir, events, runtime, journal=journal)
    if dump:
        return Generations(
            source,
            storage,
            runtime,
            journal,
            events,
            superuser=settings.superuser,
            password=settings.password,
            refresh_every=settings.refresh_every,
        )
    return StandbyMain(source, storage, superuser=settings.superuser)


__all__ = ["MainHost", "MainOrigin", "MainStrategy", "open_main_source"]
