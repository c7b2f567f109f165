"""Property tests for the front-door decoders outside wire.py: any input → a value or clean error.

wire.py's codecs have theirs in test_wire.py. These cover what else reads bytes or text a client
controls before it is authenticated: the TLS ClientHello's server name, the SASL initial
response, both SCRAM client messages, the start-up routing (user, options, SNI), and the stored
verifier text Prism reads from a branch.
"""

from __future__ import annotations

import contextlib
import functools
import ssl

from hypothesis import given, settings
from hypothesis import strategies as st

from prism.core.errors import PrismError, ProtocolViolation
from prism.frontdoor import clienthello
from prism.frontdoor.router import Route, route, take_branch_option
from prism.postgres import scram, wire
from prism.postgres.wire import StartupMessage


@functools.cache
def client_hello(host: str | None) -> bytes:
    """A real ClientHello from OpenSSL, for ``host`` (no SNI when None)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=host)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# ---- TLS ClientHello ------------------------------------------------------------------------


def test_server_name_is_read_from_a_real_client_hello() -> None:
    hello = client_hello("Feature-1.DB.localhost")
    assert clienthello.server_name(hello) == "feature-1.db.localhost"
    assert clienthello.server_name(client_hello(None)) is None


def test_an_incomplete_hello_needs_more_bytes() -> None:
    hello = client_hello("a.db.localhost")
    for cut in (0, 1, 4, 5, 9, len(hello) // 2, len(hello) - 1):
        assert clienthello.server_name(hello[:cut]) is clienthello.NEED_MORE


def test_a_hello_split_over_two_records_is_reassembled() -> None:
    hello = client_hello("split.db.localhost")
    body = hello[5:]
    first, second = body[:40], body[40:]
    records = b"".join(hello[:3] + len(part).to_bytes(2, "big") + part for part in (first, second))
    assert clienthello.server_name(records) == "split.db.localhost"


def test_a_name_that_is_not_a_plain_host_name_is_no_name() -> None:
    hello = bytearray(client_hello("abcdefgh.example"))
    at = hello.index(b"abcdefgh")
    hello[at + 3] = 0x9C  # what crashed Python's own SNI callback (see prism.frontdoor.clienthello)
    assert clienthello.server_name(bytes(hello)) is None


def test_not_a_handshake_gives_no_name() -> None:
    assert clienthello.server_name(b"GET / HTTP/1.1\r\n") is None
    assert clienthello.server_name(b"\x16\x03\x01\x00\x00") is None


@given(st.binary(max_size=600))
def test_any_bytes_give_a_name_none_or_need_more(data: bytes) -> None:
    result = clienthello.server_name(data)
    assert result is None or result is clienthello.NEED_MORE or isinstance(result, str)


# No deadline: the first example makes the real ClientHello with an OpenSSL handshake, which
# on a loaded machine takes longer than hypothesis's 200 ms, and speed is not what this proves.
@settings(deadline=None)
@given(
    st.sampled_from(["x.db.localhost", "localhost"]),
    st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_client_hellos_never_crash(host: str, flips: list[tuple[int, int]]) -> None:
    hello = bytearray(client_hello(host))
    for position, value in flips:
        hello[position % len(hello)] = value
    result = clienthello.server_name(bytes(hello))
    assert result is None or result is clienthello.NEED_MORE or isinstance(result, str)


# ---- SASL and SCRAM -------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_sasl_initial_response_parses_or_is_a_protocol_violation(payload: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        message = wire.SASLInitialResponse.decode(payload)
        assert isinstance(message.mechanism, str) and isinstance(message.data, bytes)


VERIFIER = scram.ScramVerifier.mock("alice", b"k" * 32)


@given(
    st.sampled_from([scram.MECHANISM, scram.MECHANISM_PLUS, "PLAIN", ""]),
    st.one_of(
        st.binary(max_size=120),
        st.builds(
            lambda flag, rest: (flag + ",," + rest).encode(),
            st.sampled_from(["n", "y", "p=tls-server-end-point", "p=x", "q"]),
            st.text(max_size=60),
        ),
    ),
    st.binary(max_size=160),
    st.booleans(),
)
def test_any_client_scram_messages_give_answers_or_clean_errors(
    mechanism: str, first: bytes, final: bytes, tls: bool
) -> None:
    server = scram.ScramServer(
        "alice",
        VERIFIER,
        mock_secret=b"s" * 32,
        channel_binding=b"c" * 32 if tls else None,
    )
    try:
        assert server.server_first(mechanism, first).startswith(b"r=")
        server.server_final(final)
    except PrismError:  # ScramError is a ProtocolViolation; AuthenticationFailed is 28P01
        return
    raise AssertionError("a random proof was accepted")


@given(st.one_of(st.none(), st.text(max_size=200), st.just(VERIFIER.encode())))
def test_any_stored_password_text_is_a_verifier_or_none(text: str | None) -> None:
    parsed = scram.ScramVerifier.parse(text)
    assert parsed is None or isinstance(parsed, scram.ScramVerifier)


# ---- routing --------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=40)


@given(
    st.lists(
        st.tuples(st.sampled_from(["user", "options", "database", "prism.branch", "x"]), _text),
        max_size=6,
    ),
    st.one_of(st.none(), _text),
)
def test_any_startup_parameters_route_or_are_refused_cleanly(
    params: list[tuple[str, str]], sni: str | None
) -> None:
    try:
        result = route(StartupMessage(196608, tuple(params)), sni=sni, sni_domain="db.localhost")
    except PrismError:
        return
    assert isinstance(result, Route)
    assert result.startup.get("prism.branch") is None


@given(_text)
def test_any_options_text_splits_without_error(options: str) -> None:
    branch, remaining = take_branch_option(options)
    assert branch is None or isinstance(branch, str)
    assert isinstance(remaining, str)
