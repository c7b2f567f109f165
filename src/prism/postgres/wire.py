"""Sans-IO codec for the PostgreSQL wire protocol as Prism needs it.

Bytes go in, typed messages come out; nothing here touches a socket, a clock or a task, in the
style of h11. That keeps the parts of the proxy that an untrusted client talks to first
(the start-up phase) small, exhaustively unit-tested and fuzzable, and lets the same framing
serve Prism's own service client (:mod:`prism.postgres.client`).

Two framings exist on the wire:

* start-up packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage) have no type
  byte: ``int32 length`` (including itself) followed by ``int32 code``. :class:`StartupReader`
  decodes them.
* every later message is ``byte type`` + ``int32 length`` (including itself, not the type) +
  payload. :class:`MessageReader` frames those in either direction.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, Self, TypeVar

from prism.core.errors import PrismError, ProtocolViolation

MAX_STARTUP_PACKET: Final = 10_000
"""The largest start-up packet body accepted, as Postgres's MAX_STARTUP_PACKET_LENGTH.

Like Postgres, this bounds the packet after its 4-byte length word: 10,004 bytes on the wire.
"""

MAX_MESSAGE_LENGTH: Final = 0x3FFF_FFFF
"""Default bound on a typed message: Postgres never allocates a message of 1 GiB or more."""

SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102
PROTOCOL_3_0: Final = 196608
"""Protocol 3.0 as ``major << 16 | minor``; every 3.x minor version shares this major."""
NEWEST_MINOR: Final = 2
"""Protocol 3.2 (PostgreSQL 18) is the newest Prism speaks."""

_PROTOCOL_MAJOR: Final = 3
_MIN_CANCEL_SECRET: Final = 4
_MAX_CANCEL_SECRET: Final = 256

_T = TypeVar("_T")

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_INT16 = struct.Struct("!h")
_HEADER = struct.Struct("!ii")


# --------------------------------------------------------------------------------------------
# Start-up phase: client → server
# --------------------------------------------------------------------------------------------


class UnansweredViolation(ProtocolViolation):
    """A start-up packet so broken that Postgres closes the connection without a word.

    Postgres logs these (a COMMERROR) and sends nothing: the bytes may not come from a
    Postgres client at all, and a client that sent a half packet is no longer listening. Prism
    logs them too and closes just as silently; the message is for the log only.
    """


class UnsupportedProtocol(ProtocolViolation):
    """A start-up packet asking for a protocol major version other than 3.

    The text is Postgres's own, so a client shows the same error whichever server it reached.
    """

    sqlstate = "0A000"  # feature_not_supported, as Postgres

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            f"server supports {_PROTOCOL_MAJOR}.0 to {_PROTOCOL_MAJOR}.{NEWEST_MINOR}"
        )


@dataclass(frozen=True)
class SSLRequest:
    """The client asks to switch to TLS before sending its StartupMessage."""

    code: ClassVar[int] = SSL_REQUEST_CODE

    def encode(self) -> bytes:
        return _HEADER.pack(8, self.code)


@dataclass(frozen=True)
class GSSENCRequest:
    """The client asks to switch to GSSAPI encryption before sending its StartupMessage."""

    code: ClassVar[int] = GSSENC_REQUEST_CODE

    def encode(self) -> bytes:
        return _HEADER.pack(8, self.code)


@dataclass(frozen=True)
class CancelRequest:
    """A request, on a fresh connection, to cancel the query running in another session.

    ``secret`` is 4 bytes in protocol 3.0 and up to 256 bytes in protocol 3.2.
    """

    pid: int
    secret: bytes

    def __post_init__(self) -> None:
        _check_cancel_secret(self.secret)

    def encode(self) -> bytes:
        body = _INT32.pack(CANCEL_REQUEST_CODE) + _INT32.pack(self.pid) + self.secret
        return _INT32.pack(len(body) + 4) + body

    @classmethod
    def decode(cls, body: bytes) -> CancelRequest:
        """The request from a packet's body: what follows its length word and code."""
        if not _MIN_CANCEL_SECRET <= len(body) - 4 <= _MAX_CANCEL_SECRET:
            raise UnansweredViolation(
                f"invalid length of cancel request packet: {len(body) + 8} (secret key of "
                f"{_MIN_CANCEL_SECRET} to {_MAX_CANCEL_SECRET} bytes expected)"
            )
        (pid,) = _INT32.unpack_from(body)
        return cls(pid, body[4:])


@dataclass(frozen=True)
class StartupMessage:
    """The client's opening message: a protocol version and its connection parameters.

    ``params`` keeps every pair in the order the client sent it, duplicates included, so the
    proxy can replay to the backend exactly what the client asked for, only changing what
    routing must change. Where a name repeats, Postgres lets the last one win, so :meth:`get`
    does too.
    """

    protocol: int
    params: tuple[tuple[str, str], ...]

    @property
    def version(self) -> tuple[int, int]:
        """The requested protocol as ``(major, minor)``."""
        return self.protocol >> 16, self.protocol & 0xFFFF

    def get(self, name: str) -> str | None:
        """The value of parameter ``name`` (the last one if repeated), or None."""
        found: str | None = None
        for key, value in self.params:
            if key == name:
                found = value
        return found

    def with_param(self, name: str, value: str, *, after: str | None = None) -> StartupMessage:
        """A copy with ``name`` set to ``value``.

        The value takes the place of the first occurrence, so the order the client chose is
        kept; later duplicates are dropped so the backend cannot see a stale value win. A new
        name goes right after the parameter ``after`` when given and present, else at the end.
        """
        _check_param_text(name, value)
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self.params:
            if key != name:
                out.append((key, old))
            elif not placed:
                out.append((name, value))
                placed = True
        if not placed:
            keys = [key for key, _ in out]
            at = len(out) if after not in keys else keys.index(after) + 1
            out.insert(at, (name, value))
        return StartupMessage(self.protocol, tuple(out))

    def without(self, name: str) -> StartupMessage:
        """A copy with every occurrence of ``name`` removed."""
        return StartupMessage(self.protocol, tuple(p for p in self.params if p[0] != name))

    def encode(self) -> bytes:
        """The packet as sent on the wire, ready to replay to a backend."""
        parts = [_INT32.pack(self.protocol)]
        for name, value in self.params:
            _check_param_text(name, value)
            parts.append(name.encode() + b"\0" + value.encode() + b"\0")
        parts.append(b"\0")
        body = b"".join(parts)
        return _INT32.pack(len(body) + 4) + body

    @classmethod
    def decode(cls, protocol: int, body: bytes) -> StartupMessage:
        """The message from a packet's body: the parameters after its protocol version."""
        return cls(protocol, _decode_params(body))


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def _check_param_text(name: str, value: str) -> None:
    # A NUL would end the C string early and shift every later parameter: an injection.
    if not name:
        raise ValueError("a startup parameter name cannot be empty")
    if "\0" in name or "\0" in value:
        raise ValueError(f"startup parameter {name!r} contains a NUL character")


def _check_cancel_secret(secret: bytes) -> None:
    if not _MIN_CANCEL_SECRET <= len(secret) <= _MAX_CANCEL_SECRET:
        raise ProtocolViolation(
            f"invalid cancel request: secret key is {len(secret)} bytes, "
            f"expected {_MIN_CANCEL_SECRET} to {_MAX_CANCEL_SECRET}"
        )


class _Reader(Generic[_T]):
    """Shared buffering for the two readers: feed, pending bytes, and a sticky error.

    A ProtocolViolation is final: the connection must be closed, and every later call raises
    the same error again rather than decoding from a corrupt position.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: ProtocolViolation | None = None

    def feed(self, data: bytes | bytearray) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    def pending(self) -> bytes:
        """Bytes received after the last complete message."""
        return bytes(self._buffer)

    def next_message(self) -> _T | None:
        """The next complete message, or None when more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolViolation as exc:
            self._error = exc
            raise

    def _next(self) -> _T | None:
        raise NotImplementedError


class StartupReader(_Reader[StartupPacket]):
    """Decodes the packets a client sends before the regular protocol starts.

    Feed it whatever the socket returned; ask for :meth:`next_message` until it says None
    (need more bytes). The length word is checked as soon as its 4 bytes have arrived, so a
    hostile client cannot make Prism buffer more than one packet of MAX_STARTUP_PACKET; the
    code and the body once the whole packet is in, as Postgres does.

    After a StartupMessage or CancelRequest the start-up phase is over: the reader is
    :attr:`finished`, returns None from then on and leaves later bytes in :meth:`pending`
    for the proxy to forward (or, after an SSLRequest, to hand to the TLS handshake or refuse:
    bytes pipelined before it would otherwise be trusted as if they came over TLS).
    """

    def __init__(self) -> None:
        super().__init__()
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once a StartupMessage or CancelRequest has been returned."""
        return self._finished

    def _next(self) -> StartupPacket | None:
        if self._finished:
            return None
        buf = self._buffer
        if len(buf) < 4:
            return None
        (length,) = _INT32.unpack_from(buf)
        if not 8 <= length <= MAX_STARTUP_PACKET + 4:
            raise UnansweredViolation(f"invalid length of startup packet: {length}")
        if len(buf) < length:
            return None
        # As Postgres, the code is judged only once the whole packet is in: a client that
        # hangs up before that gets the same silent close whatever its first eight bytes said.
        (code,) = _UINT32.unpack_from(buf, 4)
        body = bytes(buf[8:length])
        del buf[:length]
        return self._decode(code, body)

    def _decode(self, code: int, body: bytes) -> StartupPacket:
        # Postgres ignores the body of an encryption request, so a longer one is still one.
        if code == SSL_REQUEST_CODE:
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE:
            return GSSENCRequest()
        self._finished = True
        if code == CANCEL_REQUEST_CODE:
            return CancelRequest.decode(body)
        if code >> 16 != _PROTOCOL_MAJOR:
            raise UnsupportedProtocol(code)
        return StartupMessage.decode(code, body)


def _decode_params(body: bytes) -> tuple[tuple[str, str], ...]:
    """Split the NUL-terminated name/value pairs of a StartupMessage, keeping their order.

    Whether a user name was given is checked later, by routing: Postgres first answers a
    newer protocol version or a ``_pq_`` option with NegotiateProtocolVersion, then refuses
    a packet without a user.
    """
    fields = body.split(b"\0")
    # ``a\0b\0\0`` splits as [a, b, "", ""]: an empty name (the terminator), then nothing.
    # Postgres reads up to the first empty name and wants it to be the packet's last byte;
    # an empty value is fine.
    names = fields[0:-2:2]
    if len(fields) % 2 or fields[-2:] != [b"", b""] or b"" in names:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    try:
        text = [field.decode("utf-8") for field in fields[:-2]]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid startup packet: parameters are not valid UTF-8") from exc
    return tuple(zip(text[0::2], text[1::2], strict=True))


# --------------------------------------------------------------------------------------------
# Typed messages, both directions
# --------------------------------------------------------------------------------------------


def _message(type_: bytes, payload: bytes) -> bytes:
    return type_ + _INT32.pack(len(payload) + 4) + payload


def _cstring(text: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        # An embedded NUL would end the field early and let the rest read as other fields.
        data = data.replace(b"\0", b"\\0")
    return data + b"\0"


@dataclass(frozen=True)
class Message:
    """One typed protocol message: its type byte and its payload (without the header)."""

    type: bytes
    payload: bytes

    @property
    def raw(self) -> bytes:
        """The message exactly as framed on the wire, header included."""
        return _message(self.type, self.payload)


class MessageReader(_Reader[Message]):
    """Frames typed messages (``type``, ``int32 length``, payload) out of a byte stream.

    ``max_length`` bounds how much a peer can make the reader buffer for one message.
    """

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__()
        self._max_length = max_length

    def _next(self) -> Message | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        (length,) = _INT32.unpack_from(buf, 1)
        if length < 4 or length > self._max_length:
            raise ProtocolViolation(
                f"invalid length of message {bytes(buf[:1])!r}: {length} "
                f"(4 to {self._max_length} bytes allowed)"
            )
        end = 1 + length
        if len(buf) < end:
            return None
        message = Message(bytes(buf[:1]), bytes(buf[5:end]))
        del buf[:end]
        return message


class _Cursor:
    """Reads fields out of one payload, turning any short read into a ProtocolViolation."""

    def __init__(self, payload: bytes, what: str) -> None:
        self._data = payload
        self._pos = 0
        self._what = what

    def _fail(self, why: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self._what} message: {why}")

    def int16(self) -> int:
        return self._unpack(_INT16)

    def int32(self) -> int:
        return self._unpack(_INT32)

    def _unpack(self, fmt: struct.Struct) -> int:
        if self._pos + fmt.size > len(self._data):
            raise self._fail("truncated")
        (value,) = fmt.unpack_from(self._data, self._pos)
        self._pos += fmt.size
        return int(value)

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self._fail("truncated")
        data = self._data[self._pos : self._pos + n]
        self._pos += n
        return data

    def cstring(self) -> str:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise self._fail("string without terminator")
        data = self._data[self._pos : end]
        self._pos = end + 1
        # Server text may be in any encoding a misconfigured server picks; never crash on it.
        return data.decode("utf-8", errors="replace")

    def rest(self) -> bytes:
        data = self._data[self._pos :]
        self._pos = len(self._data)
        return data

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self._fail(f"{len(self._data) - self._pos} unexpected trailing bytes")


# --------------------------------------------------------------------------------------------
# The messages Prism builds or reads: one frozen dataclass each, with encode and decode.
# ``encode()`` gives the framed bytes; ``decode(payload)`` reads the payload of a framed
# :class:`Message` of that type (the reader has already taken the type byte and length).
# --------------------------------------------------------------------------------------------


class AuthCode(enum.IntEnum):
    """Authentication request codes (the int32 at the start of an 'R' message)."""

    OK = 0
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


_NEEDS_ANSWER: Final = frozenset(
    {AuthCode.CLEARTEXT_PASSWORD, AuthCode.MD5_PASSWORD, AuthCode.SASL, AuthCode.SASL_CONTINUE}
)


@dataclass(frozen=True)
class Authentication:
    """An Authentication ('R') request from a server; ``data`` depends on the code.

    ``code`` stays a plain int: a server may ask for a method Prism has no name for (GSS,
    SSPI), and saying which one is the useful error.
    """

    code: int
    data: bytes = b""

    @property
    def needs_answer(self) -> bool:
        """True where the client must answer with a 'p' message before the server goes on."""
        return self.code in _NEEDS_ANSWER

    def encode(self) -> bytes:
        return _message(b"R", _INT32.pack(self.code) + self.data)

    @classmethod
    def decode(cls, payload: bytes) -> Authentication:
        cur = _Cursor(payload, "Authentication")
        return cls(cur.int32(), cur.rest())


@dataclass(frozen=True)
class BackendKeyData:
    """BackendKeyData ('K'): what the client must quote in a later CancelRequest."""

    pid: int
    secret: bytes

    def __post_init__(self) -> None:
        _check_cancel_secret(self.secret)

    def encode(self) -> bytes:
        return _message(b"K", _INT32.pack(self.pid) + self.secret)

    @classmethod
    def decode(cls, payload: bytes) -> BackendKeyData:
        cur = _Cursor(payload, "BackendKeyData")
        pid = cur.int32()
        secret = cur.rest()
        if not _MIN_CANCEL_SECRET <= len(secret) <= _MAX_CANCEL_SECRET:
            raise ProtocolViolation(f"malformed BackendKeyData message: {len(secret)}-byte secret")
        return cls(pid, secret)


@dataclass(frozen=True)
class PasswordMessage:
    """A 'p' message carrying ``data`` verbatim.

    One type serves PasswordMessage, SASLResponse and the MD5 answer: on the wire they are the
    same bytes, and which one it is depends on what the server asked. A cleartext password
    carries its own NUL.
    """

    data: bytes

    def encode(self) -> bytes:
        return _message(b"p", self.data)

    @classmethod
    def decode(cls, payload: bytes) -> PasswordMessage:
        return cls(payload)


@dataclass(frozen=True)
class SASLInitialResponse:
    """SASLInitialResponse: the 'p' message that opens a SASL exchange."""

    mechanism: str
    data: bytes

    def encode(self) -> bytes:
        body = _cstring(self.mechanism) + _INT32.pack(len(self.data)) + self.data
        return PasswordMessage(body).encode()

    @classmethod
    def decode(cls, payload: bytes) -> SASLInitialResponse:
        cur = _Cursor(payload, "SASLInitialResponse")
        mechanism = cur.cstring()
        length = cur.int32()
        data = cur.rest()
        if length != len(data):
            raise ProtocolViolation("malformed SASLInitialResponse message: wrong length")
        return cls(mechanism, data)


@dataclass(frozen=True, kw_only=True)
class _Report:
    """The fields an ErrorResponse and a NoticeResponse share, and their codec.

    Prism never localizes, so 'S' and 'V' carry the same text; reading, the unlocalized 'V'
    wins where a server sent both. Fields Prism has no use for (file, line, routine...) are
    not kept. A server that leaves out the code or the text still yields a report: what it
    did say is worth more to whoever reads it than a protocol error.
    """

    type: ClassVar[bytes]
    severity: str
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None

    def encode(self) -> bytes:
        fields = [(b"S", self.severity), (b"V", self.severity), (b"C", self.sqlstate)]
        fields.append((b"M", self.message))
        if self.detail is not None:
            fields.append((b"D", self.detail))
        if self.hint is not None:
            fields.append((b"H", self.hint))
        payload = b"".join(code + _cstring(value) for code, value in fields) + b"\0"
        return _message(self.type, payload)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        cur = _Cursor(payload, "error/notice")
        fields: dict[bytes, str] = {}
        while (code := cur.take(1)) != b"\0":
            fields[code] = cur.cstring()
        cur.end()
        return cls(
            severity=fields.get(b"V", fields.get(b"S", "")),
            sqlstate=fields.get(b"C", "XX000"),
            message=fields.get(b"M", ""),
            detail=fields.get(b"D"),
            hint=fields.get(b"H"),
        )


@dataclass(frozen=True, kw_only=True)
class ErrorResponse(_Report):
    """An ErrorResponse ('E'): the statement, or at FATAL the session, has failed."""

    type: ClassVar[bytes] = b"E"
    severity: str = "FATAL"


@dataclass(frozen=True, kw_only=True)
class NoticeResponse(_Report):
    """A NoticeResponse ('N'): information for the client that does not end anything."""

    type: ClassVar[bytes] = b"N"
    severity: str = "NOTICE"
    sqlstate: str = "00000"


def error_from(exc: PrismError, severity: str = "FATAL") -> bytes:
    """The bytes a client should see for one of Prism's own errors, in its protocol's format."""
    if isinstance(exc, UnsupportedProtocol) and 0 < exc.code < PROTOCOL_3_0:
        # As Postgres: a client of an older protocol gets the error in its own format (2.0:
        # 'E' and one line of text), which it can show, where a 3.0 message would be garbage.
        # Code 0 is Postgres's "no protocol chosen yet", answered in the 3.0 format.
        return b"E" + _cstring(f"{severity}:  {exc.message}\n")
    return ErrorResponse(
        severity=severity,
        sqlstate=exc.sqlstate,
        message=exc.message,
        hint=exc.hint,
        detail=exc.detail,
    ).encode()


_TRANSACTION_STATUS: Final = (b"I", b"T", b"E")


@dataclass(frozen=True)
class ReadyForQuery:
    """ReadyForQuery ('Z') with transaction status I (idle), T (in block) or E (failed)."""

    status: bytes = b"I"

    def __post_init__(self) -> None:
        if self.status not in _TRANSACTION_STATUS:
            raise ValueError(f"transaction status must be b'I', b'T' or b'E', not {self.status!r}")

    def encode(self) -> bytes:
        return _message(b"Z", self.status)

    @classmethod
    def decode(cls, payload: bytes) -> ReadyForQuery:
        if payload not in _TRANSACTION_STATUS:
            raise ProtocolViolation(f"malformed ReadyForQuery message: status {payload!r}")
        return cls(payload)


@dataclass(frozen=True)
class ParameterStatus:
    """ParameterStatus ('S'): a run-time parameter the client should know about."""

    name: str
    value: str

    def encode(self) -> bytes:
        return _message(b"S", _cstring(self.name) + _cstring(self.value))

    @classmethod
    def decode(cls, payload: bytes) -> ParameterStatus:
        cur = _Cursor(payload, "ParameterStatus")
        name, value = cur.cstring(), cur.cstring()
        cur.end()
        return cls(name, value)


@dataclass(frozen=True)
class NegotiateProtocolVersion:
    """NegotiateProtocolVersion ('v'): the newest minor version and the options not known.

    The first field is documented as the newest minor version, but Postgres sends (and libpq
    checks) the full version number ``3 << 16 | minor``, so that is what goes on the wire.
    """

    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def encode(self) -> bytes:
        payload = _INT32.pack(_PROTOCOL_MAJOR << 16 | self.newest_minor)
        payload += _INT32.pack(len(self.unrecognized))
        payload += b"".join(_cstring(name) for name in self.unrecognized)
        return _message(b"v", payload)

    @classmethod
    def decode(cls, payload: bytes) -> NegotiateProtocolVersion:
        cur = _Cursor(payload, "NegotiateProtocolVersion")
        version = cur.int32()
        count = cur.int32()
        if count < 0:
            raise ProtocolViolation("malformed NegotiateProtocolVersion message: negative count")
        names = tuple(cur.cstring() for _ in range(count))
        cur.end()
        return cls(version & 0xFFFF, names)


@dataclass(frozen=True)
class DataRow:
    """DataRow ('D'): one row's column values; SQL NULL is None."""

    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        payload = _INT16.pack(len(self.values))
        for value in self.values:
            payload += _INT32.pack(-1) if value is None else _INT32.pack(len(value)) + value
        return _message(b"D", payload)

    @classmethod
    def decode(cls, payload: bytes) -> DataRow:
        cur = _Cursor(payload, "DataRow")
        values: list[bytes | None] = []
        for _ in range(cur.int16()):
            length = cur.int32()
            values.append(None if length == -1 else cur.take(length))
        cur.end()
        return cls(tuple(values))


@dataclass(frozen=True)
class Query:
    """A simple-protocol Query ('Q')."""

    sql: str

    def __post_init__(self) -> None:
        if "\0" in self.sql:
            raise ValueError("a query cannot contain a NUL character")

    def encode(self) -> bytes:
        return _message(b"Q", self.sql.encode() + b"\0")

    @classmethod
    def decode(cls, payload: bytes) -> Query:
        cur = _Cursor(payload, "Query")
        sql = cur.cstring()
        cur.end()
        return cls(sql)


@dataclass(frozen=True)
class Terminate:
    """Terminate ('X'): the polite way to close a session."""

    def encode(self) -> bytes:
        return _message(b"X", b"")

    @classmethod
    def decode(cls, payload: bytes) -> Terminate:
        _Cursor(payload, "Terminate").end()
        return cls()


@dataclass(frozen=True)
class CopyFail:
    """CopyFail ('f'): refuse a COPY FROM STDIN the server started."""

    reason: str

    def encode(self) -> bytes:
        return _message(b"f", _cstring(self.reason))

    @classmethod
    def decode(cls, payload: bytes) -> CopyFail:
        cur = _Cursor(payload, "CopyFail")
        reason = cur.cstring()
        cur.end()
        return cls(reason)


TypedMessage = (
    Authentication
    | BackendKeyData
    | PasswordMessage
    | SASLInitialResponse
    | ErrorResponse
    | NoticeResponse
    | ReadyForQuery
    | ParameterStatus
    | NegotiateProtocolVersion
    | DataRow
    | Query
    | Terminate
    | CopyFail
)
"""Every typed message Prism builds or reads; each has ``encode()`` and ``decode(payload)``."""
