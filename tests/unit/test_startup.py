"""The start-up machine driven with bytes only: no socket, no task, no clock.

Each test plays both peers — a client and a branch server — as bytes built with
:mod:`prism.postgres.wire` and :mod:`prism.postgres.scram`, and checks what
:class:`prism.frontdoor.startup.Startup` asks for and sends.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from prism.core.errors import PrismError, ProtocolViolation
from prism.frontdoor.clientauth import RoleSecret
from prism.frontdoor.startup import (
    NEED_BACKEND_DATA,
    NEED_CLIENT_DATA,
    Admit,
    Cancel,
    ClientGone,
    Event,
    IssueKey,
    LookupRole,
    Ready,
    Refused,
    StartTls,
    Startup,
    StartupConfig,
    State,
)
from prism.postgres import scram, wire

PASSWORD = "correct horse"
SALT = b"0123456789abcdef"
ITERATIONS = 4096


def make_verifier(password: str) -> scram.ScramVerifier:
    salted = scram.salted_password(password, SALT, ITERATIONS)
    key = scram.client_key(salted)
    return scram.ScramVerifier(ITERATIONS, SALT, scram.stored_key(key), scram.server_key(salted))


VERIFIER = make_verifier(PASSWORD)
ALICE = RoleSecret(password=VERIFIER.encode(), can_login=True, valid_until=None)


def startup_packet(user: str = "alice@dev", *extra: tuple[str, str], minor: int = 0) -> bytes:
    params = (("user", user), ("database", "postgres"), *extra)
    return wire.StartupMessage(wire.PROTOCOL_3_0 | minor, params).encode()


def messages(data: bytes) -> list[wire.Message]:
    reader = wire.MessageReader()
    reader.feed(data)
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    assert reader.pending() == b"", "a message was cut short"
    return out


def ready_backend_tail(pid: int = 1234, secret: bytes = b"abcd") -> bytes:
    """What a server sends after AuthenticationOk, up to ReadyForQuery."""
    return (
        wire.ParameterStatus("server_version", "18.0").encode()
        + wire.BackendKeyData(pid, secret).encode()
        + wire.ReadyForQuery().encode()
    )


def prove(
    client: scram.ScramClient, secret: RoleSecret | None = ALICE, now: float = 0.0
) -> tuple[Startup, Event | Failed]:
    """A verify-mode machine taken through SCRAM with ``client``: its event after the proof."""
    machine = Startup(StartupConfig(verify=True, mock_secret=b"m" * 32), peer="test")
    machine.receive_client(startup_packet())
    assert machine.next_event() == LookupRole("dev", "alice")
    machine.role_found(secret, now=now)
    assert machine.next_event() == NEED_CLIENT_DATA
    [challenge] = messages(machine.data_for_client())
    request = wire.Authentication.decode(challenge.payload)
    assert request.code == wire.AuthCode.SASL
    assert scram.MECHANISM.encode() in request.data

    machine.receive_client(
        wire.SASLInitialResponse(scram.MECHANISM, client.client_first()).encode()
    )
    assert machine.next_event() == NEED_CLIENT_DATA
    [cont] = messages(machine.data_for_client())
    server_first = wire.Authentication.decode(cont.payload)
    assert server_first.code == wire.AuthCode.SASL_CONTINUE
    machine.receive_client(wire.PasswordMessage(client.client_final(server_first.data)).encode())
    try:
        return machine, machine.next_event()
    except scram.AuthenticationFailed as exc:
        return machine, Failed(exc)


@dataclass(frozen=True)
class Failed:
    """The proof was refused with this error."""

    error: scram.AuthenticationFailed


def test_full_scram_login_answers_the_server_with_the_clients_key_and_rewrites_the_cancel_key() -> (
    None
):
    client = scram.ScramClient(PASSWORD)
    machine, admit = prove(client)
    assert isinstance(admit, Admit)
    assert admit.route.branch == "dev"
    # The server's signature is held back until the branch server has accepted the login.
    assert machine.data_for_client() == b""

    machine.connected()
    assert machine.next_event() == NEED_BACKEND_DATA
    sent = wire.StartupReader()
    sent.feed(machine.data_for_backend())
    backend_startup = sent.next_message()
    assert isinstance(backend_startup, wire.StartupMessage)
    assert backend_startup.get("user") == "alice"

    # The branch server holds the same verifier; Prism must prove itself without the password.
    server = scram.ScramServer("alice", VERIFIER, mock_secret=b"", channel_binding=None)
    machine.receive_backend(wire.Authentication(wire.AuthCode.SASL, b"SCRAM-SHA-256\0\0").encode())
    assert machine.next_event() == NEED_BACKEND_DATA
    [initial] = messages(machine.data_for_backend())
    first = wire.SASLInitialResponse.decode(initial.payload)
    machine.receive_backend(
        wire.Authentication(
            wire.AuthCode.SASL_CONTINUE, server.server_first(first.mechanism, first.data)
        ).encode()
    )
    assert machine.next_event() == NEED_BACKEND_DATA
    [final] = messages(machine.data_for_backend())
    machine.receive_backend(
        wire.Authentication(wire.AuthCode.SASL_FINAL, server.server_final(final.payload)).encode()
        + wire.Authentication(wire.AuthCode.OK).encode()
        + ready_backend_tail(pid=1234, secret=b"abcd")
    )
    assert machine.next_event() == IssueKey(1234, b"abcd")
    machine.key_issued(7, b"wxyz")
    assert machine.next_event() == Ready()
    assert machine.state is State.READY

    to_client = messages(machine.data_for_client())
    assert [m.type for m in to_client] == [b"R", b"R", b"S", b"K", b"Z"]
    server_final = wire.Authentication.decode(to_client[0].payload)
    assert server_final.code == wire.AuthCode.SASL_FINAL
    client.verify_server_final(server_final.data)  # Prism's own signature checks out
    assert wire.Authentication.decode(to_client[1].payload).code == wire.AuthCode.OK
    assert wire.BackendKeyData.decode(to_client[3].payload) == wire.BackendKeyData(7, b"wxyz")
    assert machine.leftovers() == (b"", b"")


def test_wrong_password_is_refused_with_28P01_before_any_branch_is_touched() -> None:
    machine, event = prove(scram.ScramClient("wrong"))
    assert isinstance(event, Failed)
    assert event.error.sqlstate == "28P01"
    assert machine.state is State.SASL_FINAL
    assert machine.data_for_backend() == b""


def test_an_expired_password_fails_like_a_wrong_one() -> None:
    expired = RoleSecret(password=VERIFIER.encode(), can_login=True, valid_until=10.0)
    assert isinstance(prove(scram.ScramClient(PASSWORD), expired, now=20.0)[1], Failed)
    assert isinstance(prove(scram.ScramClient(PASSWORD), expired, now=5.0)[1], Admit)


def test_an_unknown_role_gets_a_challenge_and_then_fails() -> None:
    assert isinstance(prove(scram.ScramClient(PASSWORD), None)[1], Failed)


def test_protocol_3_2_is_agreed_without_a_negotiation_message() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(startup_packet(minor=2))
    event = machine.next_event()
    assert isinstance(event, Admit)
    assert machine.data_for_client() == b""
    assert machine.protocol_minor == 2
    assert event.route.startup.version == (3, 2)


def test_a_newer_minor_and_pq_options_get_one_negotiate_protocol_version() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(startup_packet("alice", ("_pq_.compression", "on"), minor=9))
    event = machine.next_event()
    assert isinstance(event, Admit)
    assert (
        machine.data_for_client()
        == wire.NegotiateProtocolVersion(2, ("_pq_.compression",)).encode()
    )
    assert machine.protocol_minor == 2
    # The backend is asked for what the client was told, without the options.
    assert event.route.startup.version == (3, 2)
    assert event.route.startup.get("_pq_.compression") is None


def test_negotiation_goes_out_before_a_missing_user_is_refused() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(
        wire.StartupMessage(wire.PROTOCOL_3_0 | 5, (("database", "x"),)).encode()
    )
    with pytest.raises(PrismError):
        machine.next_event()
    assert machine.data_for_client() == wire.NegotiateProtocolVersion(2).encode()


def test_a_cancel_request_is_an_event_and_gets_no_answer() -> None:
    machine = Startup(StartupConfig(verify=True))
    machine.receive_client(wire.CancelRequest(42, b"abcd").encode())
    assert machine.next_event() == Cancel(wire.CancelRequest(42, b"abcd"))
    assert machine.data_for_client() == b""


def test_a_backend_error_during_login_is_relayed_and_refuses_the_session() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(startup_packet())
    assert isinstance(machine.next_event(), Admit)
    machine.connected()
    assert machine.next_event() == NEED_BACKEND_DATA
    machine.data_for_backend()
    error = wire.ErrorResponse(sqlstate="3D000", message='database "x" does not exist').encode()
    machine.receive_backend(error)
    assert machine.next_event() == Refused()
    assert machine.data_for_client() == error


def test_a_backend_that_hangs_up_during_login_is_a_08006() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(startup_packet())
    machine.next_event()
    machine.connected()
    machine.next_event()
    machine.receive_backend(b"")
    with pytest.raises(PrismError) as gone:
        machine.next_event()
    assert gone.value.sqlstate == "08006"


def test_passthrough_relays_a_password_challenge_and_the_clients_answer() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(startup_packet())
    machine.next_event()
    machine.connected()
    machine.next_event()
    machine.data_for_backend()
    challenge = wire.Authentication(wire.AuthCode.CLEARTEXT_PASSWORD).encode()
    machine.receive_backend(challenge)
    assert machine.next_event() == NEED_CLIENT_DATA
    assert machine.data_for_client() == challenge
    answer = wire.PasswordMessage(b"secret\0").encode()
    machine.receive_client(answer)
    assert machine.next_event() == NEED_BACKEND_DATA
    assert machine.data_for_backend() == answer


def test_bytes_pipelined_after_the_startup_packet_belong_to_the_session() -> None:
    machine = Startup(StartupConfig())
    query = wire.Query("select 1").encode()
    machine.receive_client(startup_packet() + query)
    assert isinstance(machine.next_event(), Admit)
    machine.connected()
    machine.next_event()
    notice = wire.NoticeResponse(message="first words of the session").encode()
    machine.receive_backend(
        wire.Authentication(wire.AuthCode.OK).encode() + ready_backend_tail() + notice
    )
    assert isinstance(machine.next_event(), IssueKey)
    machine.key_issued(1, b"1234")
    assert machine.next_event() == Ready()
    assert machine.leftovers() == (query, notice)


def test_ssl_request_without_tls_is_answered_n_and_pipelined_bytes_are_refused() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(wire.SSLRequest().encode() + startup_packet())
    with pytest.raises(ProtocolViolation, match="unencrypted data after SSL request"):
        machine.next_event()
    assert machine.data_for_client() == b"N"


def test_ssl_request_with_tls_hands_the_following_bytes_to_the_handshake() -> None:
    machine = Startup(StartupConfig(tls=True))
    machine.receive_client(wire.SSLRequest().encode() + b"\x16hello")
    assert machine.next_event() == StartTls(b"\x16hello", direct=False)
    assert machine.data_for_client() == b"S"
    machine.tls_started(sni="dev.example", channel_binding=b"cb")
    machine.receive_client(startup_packet("alice"))
    assert isinstance(machine.next_event(), Admit)
    assert machine.tls


def test_a_client_hello_first_is_direct_tls() -> None:
    machine = Startup(StartupConfig(tls=True))
    machine.receive_client(b"\x16\x03\x01")
    assert machine.next_event() == StartTls(b"\x16\x03\x01", direct=True)


def test_tls_required_refuses_a_plaintext_startup() -> None:
    machine = Startup(StartupConfig(tls=True, tls_required=True))
    machine.receive_client(startup_packet())
    with pytest.raises(PrismError) as refused:
        machine.next_event()
    assert refused.value.sqlstate == "28000"


def test_a_hang_up_mid_packet_is_unanswered_and_before_any_byte_is_client_gone() -> None:
    cut = Startup(StartupConfig())
    cut.receive_client(startup_packet()[:10])
    assert cut.next_event() == NEED_CLIENT_DATA
    cut.receive_client(b"")
    with pytest.raises(wire.UnansweredViolation, match="incomplete startup packet"):
        cut.next_event()
    silent = Startup(StartupConfig())
    silent.receive_client(b"")
    with pytest.raises(ClientGone):
        silent.next_event()


def test_a_request_is_repeated_until_the_driver_answers_it() -> None:
    machine = Startup(StartupConfig(verify=True))
    machine.receive_client(startup_packet())
    assert machine.next_event() == machine.next_event() == LookupRole("dev", "alice")
    with pytest.raises(RuntimeError):
        machine.connected()


def test_verify_mode_refuses_a_branch_server_that_asks_for_another_method() -> None:
    machine, admit = prove(scram.ScramClient(PASSWORD))
    assert isinstance(admit, Admit)
    machine.connected()
    machine.next_event()
    machine.receive_backend(wire.Authentication(wire.AuthCode.MD5_PASSWORD, b"salt").encode())
    with pytest.raises(PrismError, match="authentication method 5") as refused:
        machine.next_event()
    assert refused.value.sqlstate == "28000"


def test_the_servers_own_negotiation_is_absorbed() -> None:
    machine = Startup(StartupConfig())
    machine.receive_client(startup_packet(minor=9))
    machine.next_event()
    told = machine.data_for_client()
    machine.connected()
    machine.next_event()
    machine.receive_backend(
        wire.NegotiateProtocolVersion(2).encode()
        + wire.Authentication(wire.AuthCode.OK).encode()
        + ready_backend_tail()
    )
    assert isinstance(machine.next_event(), IssueKey)
    machine.key_issued(1, b"1234")
    assert machine.next_event() == Ready()
    sent = messages(machine.data_for_client())
    assert [m.type for m in sent] == [b"R", b"S", b"K", b"Z"]
    assert told == wire.NegotiateProtocolVersion(2).encode()
