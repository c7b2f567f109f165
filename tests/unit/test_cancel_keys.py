"""Prism-issued cancel keys: the backend's pid, Prism's secret, one target per key."""

from __future__ import annotations

from prism.core.address import BackendAddress
from prism.frontdoor.cancel import CancelKeys, CancelTarget


def _target(branch: str, pid: int = 4242) -> CancelTarget:
    address = BackendAddress("127.0.0.1", 5000 + len(branch))
    return CancelTarget(address, pid, b"backend-secret", branch)


def test_key_keeps_the_backends_pid_with_a_secret_of_prisms_own() -> None:
    keys = CancelKeys()
    pid, secret = keys.issue(_target("a"), protocol_minor=0)
    assert pid == 4242
    assert len(secret) == 4 and secret != b"back"
    assert keys.lookup(pid, secret) == _target("a")


def test_protocol_3_2_clients_get_32_byte_secrets() -> None:
    _, secret = CancelKeys().issue(_target("a"), protocol_minor=2)
    assert len(secret) == 32


def test_colliding_pids_on_two_branches_cancel_their_own_backend() -> None:
    keys = CancelKeys()
    key_a = keys.issue(_target("a"), protocol_minor=0)
    key_b = keys.issue(_target("b"), protocol_minor=0)
    assert key_a[0] == key_b[0] and key_a[1] != key_b[1]
    assert keys.lookup(*key_a) == _target("a")
    assert keys.lookup(*key_b) == _target("b")
    keys.revoke(*key_a)
    assert keys.lookup(*key_a) is None
    assert keys.lookup(*key_b) == _target("b")
    assert len(keys) == 1


def test_unknown_or_wrong_keys_find_nothing() -> None:
    keys = CancelKeys()
    pid, secret = keys.issue(_target("a"), protocol_minor=0)
    assert keys.lookup(pid, bytes(a ^ 0xFF for a in secret)) is None
    assert keys.lookup(pid + 1, secret) is None
    assert keys.lookup(pid, secret + b"x") is None
    keys.revoke(pid, secret)
    keys.revoke(pid, secret)  # revoking twice is harmless
    assert len(keys) == 0
