"""SCRAM math and the client exchange, checked against the RFC test vectors."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.core.errors import ProtocolViolation
from prism.postgres import scram
from prism.postgres.scram import ScramClient, ScramError

# RFC 7677 section 3: SCRAM-SHA-256, user "user", password "pencil".
SHA256_NONCE = "rOprNGfwEbeRWgbNEkqO"
SHA256_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
SHA256_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SHA256_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# RFC 5802 section 5: SCRAM-SHA-1, same user and password.
SHA1_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
SHA1_SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
SHA1_CLIENT_FINAL = (
    b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
)
SHA1_SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="


def rfc7677_client() -> ScramClient:
    return ScramClient("pencil", username="user", nonce=SHA256_NONCE)


def test_client_reproduces_the_rfc7677_sha256_exchange() -> None:
    client = rfc7677_client()
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert client.client_final(SHA256_SERVER_FIRST) == SHA256_CLIENT_FINAL
    client.verify_server_final(SHA256_SERVER_FINAL)


def test_client_reproduces_the_rfc5802_sha1_exchange() -> None:
    client = ScramClient("pencil", username="user", nonce=SHA1_NONCE, hash_name="sha1")
    assert client.client_first() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    assert client.client_final(SHA1_SERVER_FIRST) == SHA1_CLIENT_FINAL
    client.verify_server_final(SHA1_SERVER_FINAL)


def test_key_derivations_match_the_rfc7677_vector() -> None:
    salted = scram.salted_password("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    auth_message = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
        + SHA256_SERVER_FIRST
        + b",c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    proof = scram.client_proof(scram.client_key(salted), auth_message)
    assert base64.b64encode(proof) == b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    signature = scram.server_signature(scram.server_key(salted), auth_message)
    assert base64.b64encode(signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert len(scram.stored_key(scram.client_key(salted))) == 32


def test_wrong_server_signature_is_refused() -> None:
    client = rfc7677_client()
    client.client_final(SHA256_SERVER_FIRST)
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(ScramError, match="signature"):
        client.verify_server_final(forged)


def test_server_error_in_final_message_is_reported() -> None:
    client = rfc7677_client()
    client.client_final(SHA256_SERVER_FIRST)
    with pytest.raises(ScramError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_server_nonce_must_extend_the_client_nonce() -> None:
    with pytest.raises(ScramError, match="nonce"):
        rfc7677_client().client_final(b"r=someoneelse,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ScramError, match="nonce"):
        rfc7677_client().client_final(f"r={SHA256_NONCE},s=QSXCR+Q6sek8bf92,i=1".encode())


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92",  # no iterations
        b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=-5",
        b"r=rOprNGfwEbeRWgbNEkqOx,s=not base64!,i=4096",
        b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=QSXCR+Q6sek8bf92,i=4096",
        b"garbage",
        b"\xff\xfe",
    ],
)
def test_malformed_server_first_message_is_refused(server_first: bytes) -> None:
    with pytest.raises(ScramError):
        rfc7677_client().client_final(server_first)


def test_verify_before_final_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        rfc7677_client().verify_server_final(SHA256_SERVER_FINAL)


def test_user_names_are_escaped_in_the_client_first_message() -> None:
    client = ScramClient("pw", username="a=b,c", nonce="n")
    assert client.client_first() == b"n,,n=a=3Db=2Cc,r=n"


def test_fresh_nonces_are_unique_and_comma_free() -> None:
    nonces = {scram.make_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all("," not in n for n in nonces)


def test_saslprep_leaves_ascii_alone_and_maps_as_rfc4013() -> None:
    assert scram.saslprep("pencil") == "pencil"
    assert scram.saslprep("I\u00adX") == "IX"  # soft hyphen maps to nothing
    assert scram.saslprep("a\u00a0b") == "a b"  # non-ASCII space maps to space
    assert scram.saslprep("\u2168") == "IX"  # NFKC
    assert scram.saslprep("\u00aa") == "a"


def test_saslprep_uses_prohibited_passwords_unchanged_as_postgres_does() -> None:
    assert scram.saslprep("a\u0007\u00e9") == "a\u0007\u00e9"  # control character
    assert scram.saslprep("\u0627\u0031") == "\u0627\u0031"  # RandAL not at both ends


def test_scram_errors_are_protocol_violations() -> None:
    assert issubclass(ScramError, ProtocolViolation)


@given(st.binary(max_size=200))
def test_any_server_first_message_gives_a_final_message_or_a_scram_error(data: bytes) -> None:
    with contextlib.suppress(ScramError):
        rfc7677_client().client_final(data)


def _postgres_verifier(password: str, salt: bytes, iterations: int) -> str:
    """What Postgres stores for ``password``, computed here from RFC 5802 alone."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", "sha256").digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = [base64.b64encode(part).decode() for part in (salt, hashlib.sha256(client).digest())]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{base64.b64encode(server).decode()}"


def test_a_verifier_accepts_its_own_password_and_no_other() -> None:
    verifier = scram.ScramVerifier.parse(_postgres_verifier("pässword", b"0123456789ab", 4096))
    assert verifier is not None
    assert verifier.accepts("pässword")
    assert not verifier.accepts("password")
    assert not verifier.accepts("")
