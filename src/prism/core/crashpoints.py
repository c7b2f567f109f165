"""Named step boundaries of lifecycle operations, where a test can kill Prism on purpose.

The crash-point suite (``tests/integration/test_crash_points.py`` and the kill tests of the
source, dump and snapshot features) proves that every operation survives ``kill -9`` at each of
its steps: it starts ``prism serve`` with ``PRISM_TEST_CRASH_AT=<point>`` and Prism SIGKILLs
its own process group (as systemd does to a unit) on reaching that point. Without the variable
a crash point costs one environment lookup.

``POINTS`` is the one registry: a unit test (``tests/unit/test_crash_point_registry.py``) checks
that every ``crash_point`` call in the source names a registered point and that every point is
driven by a kill test.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV_VAR = "PRISM_TEST_CRASH_AT"

#: Every point an operation passes, in order; the suite iterates over these.
POINTS: dict[str, tuple[str, ...]] = {
    "create": ("create:recorded", "create:cloned", "create:server-up", "create:started"),
    "delete": ("delete:stopped", "delete:recorded", "delete:trashed"),
    "undelete": ("undelete:recorded", "undelete:restored"),
    "reset": (
        "reset:recorded",
        "reset:stopped",
        "reset:retired",
        "clone:appeared",
        "reset:cloned",
        "reset:hooked",
    ),
    "initdb": (
        "initdb:recorded",
        "initdb:created",
        "initdb:password-written",
        "initdb:initialised",
        "initdb:registered",
    ),
    "start": ("start:server-up",),
    "stop": ("stop:server-down",),
    # A refresh of main (--source-mode dump): the staging generation, then the swap.
    "refresh": (
        "refresh:created",
        "refresh:restored",
        "refresh:recorded",
        "refresh:retired",
        "refresh:swapped",
    ),
    # A base backup of the source into main (inside the initdb of main).
    "basebackup": ("basebackup:recorded", "basebackup:copied", "basebackup:configured"),
    "snapshot": ("snapshot:recorded", "snapshot:cloned", "snapshot:committed"),
    # A create with ``at``: its clone of a snapshot, before it is set to recover to the time.
    "pitr": ("pitr:cloned",),
}


def crash_point(name: str) -> None:
    """Kill this process group with SIGKILL if the test asked to crash at ``name``.

    Only a group Prism leads (``setsid``, as the suite starts it): a Prism started inside its
    caller's group kills just itself, never the caller.
    """
    if os.environ.get(ENV_VAR) == name:
        log.critical("crash point %s reached: killing Prism (test hook)", name)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
