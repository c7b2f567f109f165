"""Main as a standby and clones of it: the auto.conf lines and signal files serverconf writes."""

from __future__ import annotations

from pathlib import Path

from prism.postgres.serverconf import (
    AUTO_CONF,
    detach_clone,
    is_recovering,
    is_standby,
    make_standby,
    parse_conf,
    recover_to,
)


def _auto_conf(pgdata: Path) -> dict[str, str]:
    return parse_conf((pgdata / AUTO_CONF).read_text())


def test_main_follows_the_source_and_keeps_what_alter_system_set(tmp_path: Path) -> None:
    (tmp_path / AUTO_CONF).write_text("work_mem = '64MB'\nprimary_conninfo = 'host=old'\n")
    make_standby(tmp_path, primary_conninfo="host=db user=app", slot="prism_main")
    assert is_standby(tmp_path)
    conf = _auto_conf(tmp_path)
    assert conf["work_mem"] == "64MB"
    assert (conf["primary_conninfo"], conf["primary_slot_name"]) == (
        "host=db user=app",
        "prism_main",
    )
    assert (tmp_path / AUTO_CONF).stat().st_mode & 0o777 == 0o600


def test_a_clone_of_a_standby_names_the_source_nowhere(tmp_path: Path) -> None:
    make_standby(tmp_path, primary_conninfo="host=db password=x", slot=None)
    assert detach_clone(tmp_path)
    assert not is_standby(tmp_path) and not is_recovering(tmp_path)
    assert "host=db" not in (tmp_path / AUTO_CONF).read_text()
    assert not detach_clone(tmp_path)  # not a standby any more: nothing to do


def test_a_clone_of_a_snapshot_recovers_to_its_time_then_promotes(tmp_path: Path) -> None:
    make_standby(tmp_path, primary_conninfo="host=db", slot=None)
    recover_to(tmp_path, target_time="2026-12-07 20:00:00+00")
    assert is_recovering(tmp_path) and not is_standby(tmp_path)
    conf = _auto_conf(tmp_path)
    assert conf["recovery_target_time"] == "2026-12-07 20:00:00+00"
    assert (conf["recovery_target_action"], conf["hot_standby"]) == ("promote", "off")
    assert conf["primary_conninfo"] == ""
