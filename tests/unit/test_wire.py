"""The sans-IO wire codec: start-up packets, server messages, typed-message framing."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.core.errors import InvalidBranchName, ProtocolViolation
from prism.postgres import wire
from prism.postgres.wire import (
    CancelRequest,
    GSSENCRequest,
    Message,
    MessageReader,
    SSLRequest,
    StartupMessage,
    StartupReader,
)


def startup_bytes(params: list[tuple[bytes, bytes]], protocol: int = wire.PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", protocol) + b"".join(k + b"\0" + v + b"\0" for k, v in params)
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def packet(code: int, rest: bytes = b"", length: int | None = None) -> bytes:
    body = struct.pack("!I", code) + rest
    return struct.pack("!i", len(body) + 4 if length is None else length) + body


def read_one(data: bytes) -> wire.StartupPacket | None:
    reader = StartupReader()
    reader.feed(data)
    return reader.next_message()


def violation(data: bytes) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        read_one(data)
    return info.value


# ---- start-up packets -----------------------------------------------------------------------


def test_startup_message_decodes_protocol_and_params() -> None:
    message = read_one(startup_bytes([(b"user", b"alice"), (b"database", b"app")]))
    assert message == StartupMessage(196608, (("user", "alice"), ("database", "app")))
    assert isinstance(message, StartupMessage)
    assert message.version == (3, 0)


def test_startup_params_keep_their_order() -> None:
    params = [(b"options", b"-c x=1"), (b"user", b"u"), (b"_pq_.foo", b"bar"), (b"a", b"")]
    message = read_one(startup_bytes(params))
    assert isinstance(message, StartupMessage)
    assert [k for k, _ in message.params] == ["options", "user", "_pq_.foo", "a"]


def test_startup_message_encodes_byte_exact() -> None:
    raw = startup_bytes([(b"user", b"alice"), (b"application_name", b"psql")])
    message = read_one(raw)
    assert isinstance(message, StartupMessage)
    assert message.encode() == raw


def test_startup_message_with_newer_minor_version_reports_it() -> None:
    message = read_one(startup_bytes([(b"user", b"u")], protocol=3 << 16 | 2))
    assert isinstance(message, StartupMessage)
    assert message.protocol == 196610
    assert message.version == (3, 2)


def test_get_returns_the_last_of_repeated_params_as_postgres_does() -> None:
    message = StartupMessage(wire.PROTOCOL_3_0, (("user", "a"), ("user", "b")))
    assert message.get("user") == "b"
    assert message.get("database") is None


def test_with_param_replaces_in_place_and_drops_duplicates() -> None:
    message = StartupMessage(wire.PROTOCOL_3_0, (("user", "a"), ("x", "1"), ("user", "b")))
    assert message.with_param("user", "c").params == (("user", "c"), ("x", "1"))


def test_with_param_appends_new_names_or_places_them_after_an_anchor() -> None:
    message = StartupMessage(wire.PROTOCOL_3_0, (("user", "a"), ("x", "1")))
    assert message.with_param("y", "2").params[-1] == ("y", "2")
    after = message.with_param("database", "a", after="user")
    assert after.params == (("user", "a"), ("database", "a"), ("x", "1"))
    assert message.with_param("y", "2", after="missing").params[-1] == ("y", "2")


def test_with_param_refuses_nul_so_params_cannot_be_injected() -> None:
    message = StartupMessage(wire.PROTOCOL_3_0, (("user", "a"),))
    with pytest.raises(ValueError):
        message.with_param("user", "a\0database\0evil")
    with pytest.raises(ValueError):
        message.with_param("", "x")


def test_without_removes_every_occurrence() -> None:
    message = StartupMessage(wire.PROTOCOL_3_0, (("user", "a"), ("x", "1"), ("x", "2")))
    assert message.without("x").params == (("user", "a"),)
    assert message.params == (("user", "a"), ("x", "1"), ("x", "2"))


def test_ssl_and_gssenc_requests_decode_and_encode() -> None:
    assert read_one(packet(wire.SSL_REQUEST_CODE)) == SSLRequest()
    assert read_one(packet(wire.GSSENC_REQUEST_CODE)) == GSSENCRequest()
    assert SSLRequest().encode() == bytes.fromhex("0000000804d2162f")
    assert GSSENCRequest().encode() == packet(wire.GSSENC_REQUEST_CODE)


def test_ssl_request_followed_by_pipelined_bytes_is_visible_as_pending() -> None:
    reader = StartupReader()
    smuggled = startup_bytes([(b"user", b"mallory")])
    reader.feed(SSLRequest().encode() + smuggled)
    assert reader.next_message() == SSLRequest()
    assert reader.pending() == smuggled
    assert not reader.finished


def test_startup_after_ssl_refusal_is_read_from_the_same_reader() -> None:
    reader = StartupReader()
    reader.feed(SSLRequest().encode())
    assert reader.next_message() == SSLRequest()
    assert reader.pending() == b""
    reader.feed(startup_bytes([(b"user", b"u")]))
    assert isinstance(reader.next_message(), StartupMessage)


def test_bytes_after_startup_stay_pending_for_forwarding() -> None:
    reader = StartupReader()
    reader.feed(startup_bytes([(b"user", b"u")]) + b"Qleftover")
    assert isinstance(reader.next_message(), StartupMessage)
    assert reader.finished
    assert reader.next_message() is None
    assert reader.pending() == b"Qleftover"


def test_cancel_request_with_4_byte_secret_round_trips() -> None:
    raw = packet(wire.CANCEL_REQUEST_CODE, struct.pack("!i", 1234) + b"\x01\x02\x03\x04")
    message = read_one(raw)
    assert message == CancelRequest(1234, b"\x01\x02\x03\x04")
    assert isinstance(message, CancelRequest)
    assert message.encode() == raw


def test_cancel_request_accepts_protocol_3_2_long_secret() -> None:
    secret = bytes(range(256))
    message = read_one(packet(wire.CANCEL_REQUEST_CODE, struct.pack("!i", 7) + secret))
    assert message == CancelRequest(7, secret)


@pytest.mark.parametrize("secret_len", [0, 3, 257])
def test_cancel_request_with_bad_secret_length_is_refused_silently(secret_len: int) -> None:
    exc = violation(packet(wire.CANCEL_REQUEST_CODE, b"\0\0\0\1" + b"s" * secret_len))
    assert "cancel request" in exc.message
    assert isinstance(exc, wire.UnansweredViolation)
    with pytest.raises(ProtocolViolation):
        CancelRequest(1, b"s" * secret_len)


def test_partial_packets_need_more_bytes() -> None:
    raw = startup_bytes([(b"user", b"alice")])
    reader = StartupReader()
    for byte in raw[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_message() is None
    reader.feed(raw[-1:])
    assert isinstance(reader.next_message(), StartupMessage)


@pytest.mark.parametrize("length", [0, 7, -1, -(2**31), wire.MAX_STARTUP_PACKET + 5, 0x58000000])
def test_length_word_out_of_range_is_refused_silently_from_the_header_alone(length: int) -> None:
    """As Postgres: no answer, since these bytes are no start-up packet a client meant.

    0x58000000 is a Terminate message (``X``, length 4) sent before any start-up packet.
    """
    exc = violation(struct.pack("!i", length))
    assert isinstance(exc, wire.UnansweredViolation)
    assert exc.message == f"invalid length of startup packet: {length}"


def test_startup_packet_of_exactly_the_maximum_size_is_accepted() -> None:
    """Postgres's limit is on the body after the length word: 10,004 bytes in all."""
    size = wire.MAX_STARTUP_PACKET + 4
    filler = b"x" * (size - len(startup_bytes([(b"user", b"u"), (b"p", b"")])))
    raw = startup_bytes([(b"user", b"u"), (b"p", filler)])
    assert len(raw) == size
    assert isinstance(read_one(raw), StartupMessage)


@pytest.mark.parametrize(
    ("code", "shown"), [(2 << 16, "2.0"), (4 << 16 | 1, "4.1"), (12345678, "188.24910")]
)
def test_unknown_protocol_is_refused_in_postgres_words(code: int, shown: str) -> None:
    exc = violation(packet(code, b"user\0u\0\0"))
    assert exc.message == f"unsupported frontend protocol {shown}: server supports 3.0 to 3.2"
    assert exc.sqlstate == "0A000"
    assert not isinstance(exc, wire.UnansweredViolation)


@pytest.mark.parametrize(("code", "shown"), [(2 << 16, "2.0"), (1, "0.1")])
def test_an_older_protocol_is_refused_in_the_protocol_2_error_format(code: int, shown: str) -> None:
    exc = violation(packet(code, b"user\0u\0\0"))
    assert wire.error_from(exc) == (
        f"EFATAL:  unsupported frontend protocol {shown}: server supports 3.0 to 3.2\n\0".encode()
    )


@pytest.mark.parametrize("code", [0, 4 << 16])
def test_protocol_0_0_and_newer_ones_are_refused_in_the_3_0_format(code: int) -> None:
    """Postgres reads 0 as "no protocol chosen yet" and answers it as 3.0."""
    answer = wire.error_from(violation(packet(code, b"user\0u\0\0")))
    assert answer[:1] == b"E"
    assert wire.ErrorResponse.decode(answer[5:]).sqlstate == "0A000"


def test_the_code_is_judged_only_once_the_whole_packet_is_in() -> None:
    """A client that hangs up mid-packet gets silence, whatever its first bytes said."""
    reader = StartupReader()
    reader.feed(packet(4 << 16, b"user\0u\0\0")[:-1])
    assert reader.next_message() is None


def test_encryption_requests_with_a_body_still_count_as_requests() -> None:
    """Postgres reads the code and ignores the rest of the packet."""
    assert read_one(packet(wire.SSL_REQUEST_CODE, b"junk")) == SSLRequest()
    assert read_one(packet(wire.GSSENC_REQUEST_CODE, b"junk")) == GSSENCRequest()


@pytest.mark.parametrize(
    "body",
    [
        b"user\0alice\0",  # no final terminator
        b"user\0alice",  # value not terminated
        b"user\0\0",  # name without value
        b"user\0alice\0db\0",  # dangling name
        b"",  # nothing at all
    ],
)
def test_malformed_parameter_block_is_refused(body: bytes) -> None:
    exc = violation(packet(wire.PROTOCOL_3_0, body))
    assert "invalid startup packet layout" in exc.message


def test_empty_parameter_name_in_the_middle_is_refused() -> None:
    exc = violation(packet(wire.PROTOCOL_3_0, b"user\0u\0\0x\0\0"))
    assert exc.message == "invalid startup packet layout: expected terminator as last byte"


def test_empty_values_are_kept() -> None:
    message = read_one(packet(wire.PROTOCOL_3_0, b"a\0\0user\0\0\0"))
    assert message == StartupMessage(wire.PROTOCOL_3_0, (("a", ""), ("user", "")))


@pytest.mark.parametrize("params", [[], [(b"database", b"d")], [(b"user", b"")]])
def test_missing_user_is_left_to_routing(params: list[tuple[bytes, bytes]]) -> None:
    """Postgres answers a newer protocol version before it refuses a packet without a user,
    so the reader lets it through (see tests/unit/test_router.py for the refusal)."""
    assert isinstance(read_one(startup_bytes(params)), StartupMessage)


def test_non_utf8_parameters_are_refused() -> None:
    exc = violation(startup_bytes([(b"user", b"\xff\xfe")]))
    assert "UTF-8" in exc.message


def test_protocol_violation_is_sticky() -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!i", 3))
    with pytest.raises(ProtocolViolation):
        reader.next_message()
    reader.feed(startup_bytes([(b"user", b"u")]))
    with pytest.raises(ProtocolViolation):
        reader.next_message()


# ---- server messages ------------------------------------------------------------------------


def test_error_response_is_byte_exact() -> None:
    raw = wire.ErrorResponse(sqlstate="08P01", message="bad", hint="h", detail="d").encode()
    payload = b"SFATAL\0VFATAL\0C08P01\0Mbad\0Dd\0Hh\0\0"
    assert raw == b"E" + struct.pack("!i", len(payload) + 4) + payload


def test_error_response_round_trips_through_the_reader() -> None:
    error = wire.ErrorResponse(severity="ERROR", sqlstate="42602", message="nope")
    raw = error.encode()
    reader = MessageReader()
    reader.feed(raw)
    message = reader.next_message()
    assert message is not None
    assert message.type == b"E"
    assert message.raw == raw
    assert wire.ErrorResponse.decode(message.payload) == error


def test_error_from_carries_a_prism_errors_sqlstate_message_and_hint() -> None:
    exc = InvalidBranchName("invalid branch name '..'", hint="use letters")
    raw = wire.error_from(exc)
    assert raw[:1] == b"E"
    assert wire.ErrorResponse.decode(raw[5:]) == wire.ErrorResponse(
        severity="FATAL", sqlstate="42602", message="invalid branch name '..'", hint="use letters"
    )


def test_error_response_reads_a_servers_unlocalized_severity_and_skips_other_fields() -> None:
    payload = b"SFEHLER\0VERROR\0C42P01\0Mno table\0Fparse.c\0L42\0\0"
    error = wire.ErrorResponse.decode(payload)
    assert (error.severity, error.sqlstate, error.message) == ("ERROR", "42P01", "no table")


def test_nul_in_error_text_cannot_end_the_field_early() -> None:
    raw = wire.ErrorResponse(sqlstate="X", message="a\0Mevil").encode()
    assert wire.ErrorResponse.decode(raw[5:]).message == "a\\0Mevil"


def test_notice_response_defaults() -> None:
    raw = wire.NoticeResponse(message="hi").encode()
    assert raw[:1] == b"N"
    assert raw[5:] == b"SNOTICE\0VNOTICE\0C00000\0Mhi\0\0"


def test_small_server_messages_are_byte_exact() -> None:
    assert wire.ReadyForQuery().encode() == b"Z\0\0\0\x05I"
    assert wire.ReadyForQuery(b"T").encode() == b"Z\0\0\0\x05T"
    assert wire.Authentication(wire.AuthCode.OK).encode() == b"R\0\0\0\x08\0\0\0\0"
    assert wire.BackendKeyData(42, b"abcd").encode() == b"K\0\0\0\x0c\0\0\0\x2aabcd"
    assert wire.ParameterStatus("a", "b").encode() == b"S\0\0\0\x08a\0b\0"
    with pytest.raises(ValueError):
        wire.ReadyForQuery(b"X")
    with pytest.raises(ProtocolViolation):
        wire.ReadyForQuery.decode(b"X")


def test_negotiate_protocol_version_sends_the_full_version_number() -> None:
    raw = wire.NegotiateProtocolVersion(0, ("_pq_.a", "_pq_.b")).encode()
    payload = struct.pack("!ii", 196608, 2) + b"_pq_.a\0_pq_.b\0"
    assert raw == b"v" + struct.pack("!i", len(payload) + 4) + payload


# ---- typed message framing and parsers ------------------------------------------------------


def test_message_reader_frames_several_messages_across_chunks() -> None:
    stream = wire.Query("select 1").encode() + wire.Terminate().encode()
    stream += wire.PasswordMessage(b"pw\0").encode()
    reader = MessageReader()
    got: list[Message] = []
    for i in range(0, len(stream), 3):
        reader.feed(stream[i : i + 3])
        while (message := reader.next_message()) is not None:
            got.append(message)
    assert got == [Message(b"Q", b"select 1\0"), Message(b"X", b""), Message(b"p", b"pw\0")]
    assert b"".join(m.raw for m in got) == stream
    assert reader.pending() == b""


@pytest.mark.parametrize("length", [3, 0, -1, 101])
def test_message_with_impossible_length_is_refused(length: int) -> None:
    reader = MessageReader(max_length=100)
    reader.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation, match="invalid length"):
        reader.next_message()
    with pytest.raises(ProtocolViolation):
        reader.next_message()


def test_backend_key_data_refuses_a_short_secret() -> None:
    with pytest.raises(ProtocolViolation):
        wire.BackendKeyData.decode(b"\0\0")
    with pytest.raises(ProtocolViolation):
        wire.BackendKeyData.decode(struct.pack("!i", 1) + b"abc")


def test_data_row_turns_minus_one_length_into_none() -> None:
    payload = struct.pack("!h", 3) + struct.pack("!i", 2) + b"hi" + struct.pack("!i", -1)
    payload += struct.pack("!i", 0)
    assert wire.DataRow.decode(payload).values == (b"hi", None, b"")
    with pytest.raises(ProtocolViolation):
        wire.DataRow.decode(struct.pack("!hi", 1, 5) + b"abc")


def test_parameter_status_refuses_trailing_bytes() -> None:
    with pytest.raises(ProtocolViolation):
        wire.ParameterStatus.decode(b"a\0b\0c")


def test_authentication_decodes_code_and_data() -> None:
    assert wire.Authentication.decode(struct.pack("!i", 5) + b"salt") == wire.Authentication(
        wire.AuthCode.MD5_PASSWORD, b"salt"
    )
    with pytest.raises(ProtocolViolation):
        wire.Authentication.decode(b"\0")


def test_error_fields_refuse_unterminated_payloads() -> None:
    with pytest.raises(ProtocolViolation):
        wire.ErrorResponse.decode(b"Mabc")
    with pytest.raises(ProtocolViolation):
        wire.ErrorResponse.decode(b"Mabc\0")


def test_client_messages_are_byte_exact() -> None:
    assert wire.Query("select 1").encode() == b"Q\0\0\0\x0dselect 1\0"
    assert wire.Terminate().encode() == b"X\0\0\0\x04"
    assert wire.PasswordMessage(b"x\0").encode() == b"p\0\0\0\x06x\0"
    assert wire.SASLInitialResponse("M", b"ab").encode() == b"p\0\0\0\x0cM\0\0\0\0\x02ab"
    with pytest.raises(ValueError):
        wire.Query("select\0")


ROUND_TRIPS = [
    wire.ErrorResponse(sqlstate="57P01", message="bye", detail="d", hint="h"),
    wire.ErrorResponse(severity="ERROR", sqlstate="42601", message="syntax"),
    wire.NoticeResponse(message="hello"),
    wire.NoticeResponse(severity="WARNING", sqlstate="01000", message="careful", hint="h"),
    wire.ReadyForQuery(b"E"),
    wire.ParameterStatus("TimeZone", "UTC"),
    wire.BackendKeyData(7, bytes(range(32))),
    wire.Authentication(wire.AuthCode.SASL, b"SCRAM-SHA-256\0\0"),
    wire.NegotiateProtocolVersion(2, ("_pq_.a",)),
    wire.NegotiateProtocolVersion(0),
    wire.PasswordMessage(b"secret\0"),
    wire.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
    wire.DataRow((b"1", None, b"")),
    wire.Query("select 1"),
    wire.Terminate(),
    wire.CopyFail("no"),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_typed_messages_round_trip(message: wire.TypedMessage) -> None:
    """Encode then decode gives the same message back."""
    reader = MessageReader()
    reader.feed(message.encode())
    framed = reader.next_message()
    assert framed is not None
    assert reader.pending() == b""
    assert type(message).decode(framed.payload) == message


@pytest.mark.parametrize(
    "packet",
    [
        SSLRequest(),
        GSSENCRequest(),
        CancelRequest(42, b"abcd"),
        CancelRequest(-1, bytes(256)),
        StartupMessage(wire.PROTOCOL_3_0, (("user", "u"), ("database", "d"))),
    ],
    ids=lambda p: type(p).__name__,
)
def test_startup_packets_round_trip(packet: wire.StartupPacket) -> None:
    """Encode then read gives the same packet back."""
    assert read_one(packet.encode()) == packet


# ---- properties -----------------------------------------------------------------------------


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_bytes_in_any_chunking_give_messages_or_a_protocol_violation(
    data: bytes, cuts: list[int]
) -> None:
    reader = StartupReader()
    try:
        for chunk in chunked(data, cuts):
            reader.feed(chunk)
            while reader.next_message() is not None:
                pass
    except ProtocolViolation:
        pass


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_bytes_in_any_chunking_frame_or_fail_cleanly(data: bytes, cuts: list[int]) -> None:
    reader = MessageReader(max_length=1000)
    framed = b""
    try:
        for chunk in chunked(data, cuts):
            reader.feed(chunk)
            while (message := reader.next_message()) is not None:
                framed += message.raw
    except ProtocolViolation:
        return
    assert framed + reader.pending() == data


@given(st.binary(max_size=200))
def test_payload_parsers_never_crash(payload: bytes) -> None:
    parsers = [kind.decode for kind in dict.fromkeys(type(m) for m in ROUND_TRIPS)]
    for parse in parsers:
        with contextlib.suppress(ProtocolViolation):
            parse(payload)


_text = st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=20)
_params = st.lists(st.tuples(_text.filter(bool), _text), max_size=6)


@given(_params, st.sampled_from(["alice", "a@b@c"]), st.integers(0, 0xFFFF))
def test_startup_message_encode_decode_round_trips(
    params: list[tuple[str, str]], user: str, minor: int
) -> None:
    message = StartupMessage(3 << 16 | minor, (*params, ("user", user)))
    raw = message.encode()
    if len(raw) > wire.MAX_STARTUP_PACKET:
        return
    reader = StartupReader()
    reader.feed(raw)
    assert reader.next_message() == message
    assert reader.pending() == b""


@given(
    _params,
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_corrupted_startup_packets_fail_cleanly(
    params: list[tuple[str, str]], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    data = bytearray(
        SSLRequest().encode() + StartupMessage(196608, (*params, ("user", "u"))).encode()
    )
    for position, value in flips:
        data[position % len(data)] = value
    reader = StartupReader()
    try:
        for chunk in chunked(bytes(data), cuts):
            reader.feed(chunk)
            while reader.next_message() is not None:
                pass
    except ProtocolViolation:
        pass
