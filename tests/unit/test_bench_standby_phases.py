"""The start phases of a branch server, read from its log by the standby bench (sans-IO)."""

from __future__ import annotations

import pytest

from tools.bench.standby import start_phases

_STANDBY_CLONE = """\
2026-11-29 10:07:07.463 UTC [6953] LOG:  starting PostgreSQL 18.6 on x86_64-pc-linux-gnu
2026-11-29 10:07:07.469 UTC [6959] LOG:  database system was interrupted while in recovery
2026-11-29 10:07:07.666 UTC [6959] LOG:  redo starts at 0/3000028
2026-11-29 10:07:07.679 UTC [6959] LOG:  redo done at 0/4000028 system usage: CPU: user: 0.00 s
2026-11-29 10:07:07.682 UTC [6959] LOG:  selected new timeline ID: 2
2026-11-29 10:07:07.703 UTC [6959] LOG:  archive recovery complete
2026-11-29 10:07:07.704 UTC [6957] LOG:  checkpoint starting: end-of-recovery immediate wait
2026-11-29 10:07:07.706 UTC [6957] LOG:  checkpoint complete: wrote 0 buffers (0.0%)
2026-11-29 10:07:07.707 UTC [6953] LOG:  database system is ready to accept connections
"""


def test_a_standby_clone_s_start_is_split_at_each_milestone() -> None:
    phases = start_phases(_STANDBY_CLONE)
    assert phases == pytest.approx(
        {
            "start to redo (data directory fsync)": 0.203,
            "redo": 0.013,
            "end of archive recovery (new timeline)": 0.024,
            "end-of-recovery checkpoint": 0.003,
            "to ready": 0.001,
        }
    )


def test_a_primary_clone_ends_no_archive_recovery_and_the_checkpoint_takes_that_time() -> None:
    log = "".join(line + "\n" for line in _STANDBY_CLONE.splitlines() if "archive" not in line)
    phases = start_phases(log)
    assert phases is not None
    assert phases["end of archive recovery (new timeline)"] == 0.0
    assert phases["end-of-recovery checkpoint"] == pytest.approx(0.027)


def test_a_log_without_a_finished_start_has_no_phases() -> None:
    assert start_phases(_STANDBY_CLONE.rsplit("\n", 2)[0]) is None
