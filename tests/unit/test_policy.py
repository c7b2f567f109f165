"""Team policies: who may be deleted, who is due to expire, and that policies survive a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prism.branches.policy import (
    BranchPolicy,
    CreateDefaults,
    default_policy,
    grace_over,
    is_expired,
    refuse_if_protected,
)
from prism.core.errors import BranchProtected

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_main_is_protected_by_default_and_others_are_not() -> None:
    assert default_policy("main").protected
    assert not default_policy("feature").protected


def test_protected_branch_is_refused_with_a_hint() -> None:
    with pytest.raises(BranchProtected) as caught:
        refuse_if_protected("keep", BranchPolicy(protected=True), "deleted")
    assert caught.value.message == 'branch "keep" is protected: it cannot be deleted'
    assert caught.value.hint == "unprotect it first: prism branch unprotect keep"
    refuse_if_protected("free", BranchPolicy(), "deleted")


def test_expiry_needs_a_past_time_and_no_protection() -> None:
    past = BranchPolicy(expires_at=NOW - timedelta(seconds=1))
    assert is_expired(past, NOW)
    assert not is_expired(BranchPolicy(expires_at=NOW + timedelta(hours=1)), NOW)
    assert not is_expired(BranchPolicy(), NOW)
    assert not is_expired(BranchPolicy(protected=True, expires_at=past.expires_at), NOW)


def test_grace_runs_from_the_expiry_time() -> None:
    policy = BranchPolicy(expires_at=NOW)
    assert not grace_over(policy, NOW + timedelta(seconds=599), 600)
    assert grace_over(policy, NOW + timedelta(seconds=600), 600)


def test_create_defaults_turn_a_ttl_into_an_expiry() -> None:
    assert CreateDefaults().expiry(NOW) is None
    assert CreateDefaults(ttl=3600).expiry(NOW) == NOW + timedelta(hours=1)
    assert CreateDefaults(ttl=3600).expiry(NOW, 60) == NOW + timedelta(minutes=1)
