"""The front door end to end: TLS, cancellation, SCRAM before provisioning, selection, limits."""

from __future__ import annotations

import contextlib
import datetime
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prism.core.values import CreatePolicy
from prism.postgres import scram, wire

from .harness import PrismHandle, psql

# ---- helpers ------------------------------------------------------------------------------


def _make_ca_and_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``localhost`` signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prism test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.DNSName("*.db.localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


async def _raw(port: int, payload: bytes, *, within: float = 5.0) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        received = b""
        with trio.fail_after(within):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


def _messages(data: bytes) -> list[wire.Message]:
    reader = wire.MessageReader()
    reader.feed(data)
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    return out


def _error(data: bytes) -> wire.ErrorResponse:
    errors = [m for m in _messages(data) if m.type == b"E"]
    assert errors, data
    return wire.ErrorResponse.decode(errors[0].payload)


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=30)


def _query(dsn: str, sql: str) -> Any:
    with _connect(dsn) as conn:
        return conn.execute(sql).fetchone()


def _cancel_sleep(conn: psycopg.Connection[Any], after: float = 0.3) -> float:
    """Run ``pg_sleep(30)``, cancel it from another thread; seconds until it returned."""
    timer = threading.Timer(after, conn.cancel_safe)
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
    finally:
        timer.cancel()
    return time.monotonic() - started - after


# ---- TLS ----------------------------------------------------------------------------------


async def test_sslmode_require_gets_tls_with_a_generated_certificate(prism: PrismHandle) -> None:
    assert (prism.settings.data_dir / "tls" / "server.crt").exists()
    key = prism.settings.data_dir / "tls" / "server.key"
    assert key.stat().st_mode & 0o777 == 0o600

    def check() -> tuple[bool, Any]:
        with _connect(prism.dsn("postgres@tls-branch", sslmode="require")) as conn:
            return conn.pgconn.ssl_in_use, conn.execute("SELECT 1").fetchone()

    assert await trio.to_thread.run_sync(check) == (True, (1,))
    out = await psql(prism.dsn(sslmode="require"), "SELECT 2")
    assert out.stdout.decode().strip() == "2"


async def test_verify_full_works_with_a_configured_ca_signed_certificate(
    start_prism: Any, tmp_path: Path
) -> None:
    ca, cert, key = _make_ca_and_cert(tmp_path)
    prism = await start_prism(tls_cert=cert, tls_key=key)
    dsn = prism.dsn(sslmode="verify-full", sslrootcert=str(ca), host="localhost")
    assert await trio.to_thread.run_sync(_query, dsn, "SELECT 3") == (3,)
    # The same CA does not vouch for another name.
    bad = prism.dsn(sslmode="verify-full", sslrootcert=str(ca), host="127.0.0.1")
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        await trio.to_thread.run_sync(_query, bad, "SELECT 3")


async def test_direct_tls_with_alpn_works(prism: PrismHandle) -> None:
    dsn = prism.dsn(sslmode="require", sslnegotiation="direct")
    assert await trio.to_thread.run_sync(_query, dsn, "SELECT 4") == (4,)


async def test_direct_tls_without_alpn_is_cut_off_without_a_word(prism: PrismHandle) -> None:
    """As Postgres: the handshake completes, then the connection closes with nothing sent."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    stream = await trio.open_tcp_stream("127.0.0.1", prism.port)
    tls = trio.SSLStream(stream, context, server_hostname="localhost")
    async with tls:
        await tls.do_handshake()
        received = b""
        with trio.fail_after(5):
            while chunk := await tls.receive_some(65536):
                received += chunk
    assert received == b""


async def test_tls_required_refuses_plaintext_startup(start_prism: Any) -> None:
    prism = await start_prism(tls="required")
    out = await psql(prism.dsn(), "SELECT 1", check=False)
    assert out.returncode != 0
    assert "only over TLS" in out.stderr.decode()
    ok = await psql(prism.dsn(sslmode="require"), "SELECT 5")
    assert ok.stdout.decode().strip() == "5"


async def test_tls_off_declines_ssl_requests(start_prism: Any) -> None:
    prism = await start_prism(tls="off")
    stream = await trio.open_tcp_stream("127.0.0.1", prism.port)
    async with stream:
        await stream.send_all(wire.SSLRequest().encode())
        assert await stream.receive_some(1) == b"N"
    out = await psql(prism.dsn(sslmode="require"), "SELECT 1", check=False)
    assert "does not support SSL" in out.stderr.decode()
    assert (await psql(prism.dsn(sslmode="prefer"), "SELECT 6")).stdout.decode().strip() == "6"


async def test_bytes_pipelined_after_ssl_request_go_into_the_tls_handshake(
    prism: PrismHandle,
) -> None:
    """As Postgres 17+: smuggled plaintext is read as TLS, which it breaks, never as a packet."""
    startup = wire.StartupMessage(wire.PROTOCOL_3_0, (("user", "postgres"),)).encode()
    assert await _raw(prism.port, wire.SSLRequest().encode() + startup) == b"S"


async def test_a_client_hello_pipelined_after_ssl_request_gets_tls(prism: PrismHandle) -> None:
    """The other side of the same rule: a client need not wait for the S to say hello."""
    stream = await trio.open_tcp_stream("127.0.0.1", prism.port)
    async with stream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        await stream.send_all(wire.SSLRequest().encode() + outgoing.read())
        received = b""
        with trio.fail_after(10):
            while len(received) < 1:
                received += await stream.receive_some(65536)
            assert received[:1] == b"S"
            incoming.write(received[1:])
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await stream.send_all(outgoing.read())
                    incoming.write(await stream.receive_some(65536))
    assert tls.version() is not None


async def test_gssenc_request_is_declined_and_the_next_packet_read(prism: PrismHandle) -> None:
    out = await psql(prism.dsn(gssencmode="prefer"), "SELECT 7")
    assert out.stdout.decode().strip() == "7"
    stream = await trio.open_tcp_stream("127.0.0.1", prism.port)
    async with stream:
        await stream.send_all(wire.GSSENCRequest().encode())
        assert await stream.receive_some(1) == b"N"
        await stream.send_all(wire.SSLRequest().encode())
        assert await stream.receive_some(1) == b"S"


# ---- cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["disable", "require"])
async def test_cancel_reaches_the_query_with_and_without_tls(
    prism: PrismHandle, sslmode: str
) -> None:
    def run() -> float:
        with _connect(prism.dsn("postgres@cancel-me", sslmode=sslmode)) as conn:
            waited = _cancel_sleep(conn)
            assert conn.execute("SELECT 8").fetchone() == (8,)
            return waited

    assert await trio.to_thread.run_sync(run) < 1.0


async def test_clients_are_told_the_backends_real_pid(prism: PrismHandle) -> None:
    """As from Postgres: the key's pid is what pg_backend_pid() and NOTIFY say (the secret is
    Prism's own, see tests/unit/test_cancel_keys.py)."""

    def pids() -> tuple[int, int]:
        with _connect(prism.dsn()) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return conn.info.backend_pid, row[0]

    client_pid, real_pid = await trio.to_thread.run_sync(pids)
    assert client_pid == real_pid


async def test_cancel_with_ten_branches_stops_only_its_own_query(prism: PrismHandle) -> None:
    names = [f"cx{i}" for i in range(10)]
    for name in names:
        await psql(prism.dsn(f"postgres@{name}"), "SELECT 1")
    results: dict[str, str] = {}

    def session(name: str, barrier: threading.Barrier) -> None:
        with _connect(prism.dsn(f"postgres@{name}")) as conn:
            barrier.wait()
            if name == "cx3":
                results[name] = f"{_cancel_sleep(conn, after=0.5):.2f}"
            else:
                conn.execute("SELECT pg_sleep(2)")
                results[name] = "finished"

    barrier = threading.Barrier(len(names))
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(trio.to_thread.run_sync, session, name, barrier)
    assert float(results.pop("cx3")) < 1.0
    assert set(results.values()) == {"finished"}


async def test_cancel_request_with_unknown_key_is_dropped_silently(prism: PrismHandle) -> None:
    received = await _raw(prism.port, wire.CancelRequest(1234, b"abcd").encode())
    assert received == b""


# ---- protocol negotiation -------------------------------------------------------------------


async def _scram_login(
    port: int, startup: wire.StartupMessage, password: str = "password"
) -> list[wire.Message]:
    """Log in with a raw client; every message the server sent up to ReadyForQuery."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    seen: list[wire.Message] = []
    reader = wire.MessageReader()
    client = scram.ScramClient(password)
    async with stream:
        await stream.send_all(startup.encode())
        with trio.fail_after(30):
            while True:
                message = reader.next_message()
                if message is None:
                    data = await stream.receive_some(65536)
                    assert data, f"closed early after {seen}"
                    reader.feed(data)
                    continue
                seen.append(message)
                if message.type == b"R":
                    request = wire.Authentication.decode(message.payload)
                    code, data = request.code, request.data
                    if code == 10:
                        first = wire.SASLInitialResponse(
                            scram.MECHANISM, client.client_first()
                        ).encode()
                        await stream.send_all(first)
                    elif code == 11:
                        await stream.send_all(
                            wire.PasswordMessage(client.client_final(data)).encode()
                        )
                    elif code == 12:
                        client.verify_server_final(data)
                elif message.type in (b"Z", b"E"):
                    await stream.send_all(wire.Terminate().encode())
                    return seen


@pytest.mark.parametrize(
    ("protocol", "extra", "expected"),
    [
        (3 << 16 | 9999, [("_pq_.test_protocol_negotiation", "")], (3 << 16 | 2, 1)),
        (3 << 16 | 2, [("_pq_.unknown", "x"), ("_pq_.other", "y")], (3 << 16 | 2, 2)),
        (3 << 16 | 5, [], (3 << 16 | 2, 0)),
    ],
)
async def test_protocol_negotiation_sends_exactly_one_correct_message(
    prism: PrismHandle,
    protocol: int,
    extra: list[tuple[str, str]],
    expected: tuple[int, int],
) -> None:
    params = (("user", "postgres@negotiated"), ("database", "postgres"), *extra)
    seen = await _scram_login(prism.port, wire.StartupMessage(protocol, params))
    negotiations = [m for m in seen if m.type == b"v"]
    assert len(negotiations) == 1
    version, count = struct.unpack("!ii", negotiations[0].payload[:8])
    assert (version, count) == expected
    names = negotiations[0].payload[8:].split(b"\0")[:count]
    assert [n.decode() for n in names] == [name for name, _ in extra]
    assert seen[0].type == b"v"  # before any authentication request, as Postgres does
    assert seen[-1].type == b"Z"
    keys = [m for m in seen if m.type == b"K"]
    assert len(keys) == 1 and len(keys[0].payload) == 4 + 32


async def test_protocol_3_0_gets_a_4_byte_key_and_no_negotiation(prism: PrismHandle) -> None:
    params = (("user", "postgres"), ("database", "postgres"))
    seen = await _scram_login(prism.port, wire.StartupMessage(wire.PROTOCOL_3_0, params))
    assert not [m for m in seen if m.type == b"v"]
    keys = [m for m in seen if m.type == b"K"]
    assert len(keys) == 1 and len(keys[0].payload) == 8


async def test_protocol_3_2_long_keys_cancel(prism: PrismHandle) -> None:
    def run() -> float:
        dsn = prism.dsn("postgres@long-keys", sslmode="require", max_protocol_version="3.2")
        with _connect(dsn) as conn:
            return _cancel_sleep(conn)

    assert await trio.to_thread.run_sync(run) < 1.0


# ---- branch selection -----------------------------------------------------------------------


async def test_sni_host_name_selects_the_branch(start_prism: Any) -> None:
    prism = await start_prism(sni_domain="db.localhost")
    dsn = prism.dsn(sslmode="require", host="sni-branch.db.localhost", hostaddr="127.0.0.1")
    await psql(dsn, "CREATE TABLE via_sni (x int)")
    assert prism.manager.get("sni-branch") is not None
    main = await psql(prism.dsn(), "SELECT to_regclass('via_sni') IS NULL")
    assert main.stdout.decode().strip() == "t"


async def test_options_select_the_branch_and_are_removed(prism: PrismHandle) -> None:
    dsn = prism.dsn(options="'-c prism.branch=opt-branch -c work_mem=5MB'")
    sql = "SELECT current_setting('prism.branch', true), current_setting('work_mem')"
    out = await psql(dsn, sql)
    assert out.stdout.decode().strip() == "|5MB"
    assert prism.manager.get("opt-branch") is not None


async def test_user_suffix_wins_over_options(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@by-user", options="-cprism.branch=by-option"), "SELECT 1")
    assert prism.manager.get("by-user") is not None
    assert prism.manager.get("by-option") is None


# ---- authentication -------------------------------------------------------------------------


async def test_wrong_password_for_a_new_branch_creates_nothing(prism: PrismHandle) -> None:
    dsn = prism.dsn("postgres@never", password="wrong")
    out = await psql(dsn, "SELECT 1", check=False)
    assert out.returncode != 0
    assert 'password authentication failed for user "postgres"' in out.stderr.decode()
    params = (("user", "postgres@never"), ("database", "postgres"))
    seen = await _scram_login(prism.port, wire.StartupMessage(wire.PROTOCOL_3_0, params), "wrong")
    error = wire.ErrorResponse.decode(seen[-1].payload)
    assert (seen[-1].type, error.severity, error.sqlstate) == (b"E", "FATAL", "28P01")
    assert prism.manager.get("never") is None
    assert prism.manager.storage.list() == ["main"]


async def test_wrong_password_leaves_a_stopped_branch_stopped(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@sleeper"), "SELECT 1")
    await prism.manager.stop("sleeper")
    out = await psql(prism.dsn("postgres@sleeper", password="wrong"), "SELECT 1", check=False)
    assert "password authentication failed" in out.stderr.decode()
    assert prism.manager.runtime.address("sleeper") is None
    # The right password still wakes it.
    ok = await psql(prism.dsn("postgres@sleeper"), "SELECT 9")
    assert ok.stdout.decode().strip() == "9"


async def test_unknown_role_fails_like_a_wrong_password(prism: PrismHandle) -> None:
    out = await psql(prism.dsn("nobody@ghost"), "SELECT 1", check=False)
    assert 'password authentication failed for user "nobody"' in out.stderr.decode()
    assert prism.manager.get("ghost") is None


async def test_password_changed_in_a_branch_is_used_for_that_branch(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@own-pw"), "ALTER ROLE postgres PASSWORD 'branch-secret'")
    await prism.manager.stop("own-pw")
    ok = await psql(prism.dsn("postgres@own-pw", password="branch-secret"), "SELECT 10")
    assert ok.stdout.decode().strip() == "10"
    out = await psql(prism.dsn("postgres@own-pw"), "SELECT 1", check=False)
    assert "password authentication failed" in out.stderr.decode()


async def test_md5_and_passwordless_roles_cannot_log_in_as_with_postgres(
    prism: PrismHandle,
) -> None:
    await psql(
        prism.dsn(),
        "SET password_encryption = 'md5'; CREATE ROLE old LOGIN PASSWORD 'pw'; "
        "CREATE ROLE nopw LOGIN",
    )
    for role in ("old", "nopw"):
        out = await psql(prism.dsn(f"{role}@md5-branch", password="pw"), "SELECT 1", check=False)
        assert f'password authentication failed for user "{role}"' in out.stderr.decode()
    assert prism.manager.get("md5-branch") is None


async def test_channel_binding_is_offered_only_over_tls(prism: PrismHandle) -> None:
    dsn = prism.dsn("postgres@bound", sslmode="require", channel_binding="require")
    assert await trio.to_thread.run_sync(_query, dsn, "SELECT 11") == (11,)
    plain = prism.dsn("postgres@bound", sslmode="disable", channel_binding="require")
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        await trio.to_thread.run_sync(_query, plain, "SELECT 1")


async def test_passthrough_lets_the_branch_server_authenticate(start_prism: Any) -> None:
    prism = await start_prism(auth="passthrough")
    ok = await psql(prism.dsn("postgres@passed", sslmode="require"), "SELECT 12")
    assert ok.stdout.decode().strip() == "12"
    out = await psql(prism.dsn("postgres@passed", password="wrong"), "SELECT 1", check=False)
    assert "password authentication failed" in out.stderr.decode()


# ---- limits ---------------------------------------------------------------------------------


async def test_create_on_connect_off_refuses_new_branches(start_prism: Any) -> None:
    prism = await start_prism(create_on_connect=CreatePolicy.parse("off"))
    out = await psql(prism.dsn("postgres@newbie"), "SELECT 1", check=False)
    assert 'branch "newbie" does not exist' in out.stderr.decode()
    assert prism.manager.get("newbie") is None
    assert (await psql(prism.dsn(), "SELECT 1")).returncode == 0


async def test_create_on_connect_pattern_limits_names(start_prism: Any) -> None:
    prism = await start_prism(create_on_connect=CreatePolicy.parse("pr-[0-9]+"))
    assert (await psql(prism.dsn("postgres@pr-42"), "SELECT 1")).returncode == 0
    out = await psql(prism.dsn("postgres@random"), "SELECT 1", check=False)
    assert "must match" in out.stderr.decode()


async def test_max_branches_is_enforced_with_configuration_limit_exceeded(
    start_prism: Any,
) -> None:
    prism = await start_prism(max_branches=2)
    assert (await psql(prism.dsn("postgres@first"), "SELECT 1")).returncode == 0
    out = await psql(prism.dsn("postgres@second"), "SELECT 1", check=False)
    assert "limit of 2 branches" in out.stderr.decode()
    assert prism.manager.get("second") is None


async def test_max_running_stops_the_least_recently_used_idle_branch(start_prism: Any) -> None:
    prism = await start_prism(max_running=3)
    for name in ("lru-a", "lru-b"):
        await psql(prism.dsn(f"postgres@{name}"), "SELECT 1")
    await psql(prism.dsn("postgres@lru-a"), "SELECT 1")  # b is now the least recently used
    await psql(prism.dsn("postgres@lru-c"), "SELECT 1")
    runtime = prism.manager.runtime
    assert runtime.address("lru-b") is None
    assert runtime.address("lru-a") is not None and runtime.address("lru-c") is not None


async def test_max_running_refuses_when_every_server_has_clients(start_prism: Any) -> None:
    prism = await start_prism(max_running=2)
    held = await trio.to_thread.run_sync(_connect, prism.dsn("postgres@busy"))
    with held:
        out = await psql(prism.dsn("postgres@waiting"), "SELECT 1", check=False)
        await trio.to_thread.run_sync(held.execute, "SELECT 1")
    assert "all of them have clients" in out.stderr.decode()


async def test_startup_connection_cap_refuses_with_too_many_connections(
    start_prism: Any,
) -> None:
    prism = await start_prism(max_startup_connections=3, startup_timeout=5.0)
    silent = [await trio.open_tcp_stream("127.0.0.1", prism.port) for _ in range(3)]
    await trio.sleep(0.2)
    try:
        error = _error(await _raw(prism.port, b""))
    finally:
        for stream in silent:
            await stream.aclose()
    assert error.sqlstate == "53300"
    assert "start-up" in error.message


async def test_five_hundred_silent_clients_do_not_block_a_real_one(start_prism: Any) -> None:
    prism = await start_prism(startup_timeout=20.0)
    silent = []
    for _ in range(500):
        silent.append(await trio.open_tcp_stream("127.0.0.1", prism.port))
    try:
        started = time.monotonic()
        out = await psql(prism.dsn(sslmode="require"), "SELECT 13")
        assert out.stdout.decode().strip() == "13"
        assert time.monotonic() - started < 5
    finally:
        for stream in silent:
            await stream.aclose()
