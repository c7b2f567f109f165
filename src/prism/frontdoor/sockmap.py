"""The kernel side of the in-kernel data plane: two BPF sockhashes and a stream-verdict program.

A session's two sockets go into two ``BPF_MAP_TYPE_SOCKHASH`` maps:

* **peers**, with no program: each socket stored under the *socket cookie of its peer*. It only
  says where a segment goes.
* **relayed**, with the ``sk_skb`` stream-verdict program attached: each socket under its own
  cookie. Entering it is what makes the kernel relay the socket's segments.

The program runs for every segment a socket in *relayed* receives: it asks for the receiving
socket's cookie and redirects the segment to the socket stored under that key in *peers*, i.e.
out of the peer. The bytes never reach user space. Keying by cookie (``SO_COOKIE``, unique per
socket for the life of the boot) rather than by ports keeps two clients with the same source
port on different hosts apart.

Why two maps: a segment that reaches a relayed socket whose peer cannot be found is dropped (the
kernel has acked it already: it is lost). With one map, the first socket of a pair to go in is
relayed before its peer is there to receive, and bytes that arrive in between are lost (a server
sending right after log-in, as a backend's idle-session FATAL does, or the answer to a query the
client pipelined during log-in). With the peers entered first, a socket is relayed only once its
peer can take the bytes, so there is no such window. On the way out, *relayed* is left first.

The program is thirteen instructions, encoded here by hand and loaded with the ``bpf(2)``
system call through ctypes: no compiler, no kernel headers, no libbpf, at install or run time.
The numbers below are the kernel's stable uapi (``include/uapi/linux/bpf.h``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import socket
import struct
from typing import Final, Protocol

# bpf(2) commands
_MAP_CREATE: Final = 0
_MAP_UPDATE_ELEM: Final = 2
_MAP_DELETE_ELEM: Final = 3
_MAP_GET_NEXT_KEY: Final = 4
_PROG_LOAD: Final = 5
_PROG_ATTACH: Final = 8

_MAP_TYPE_SOCKHASH: Final = 18
_PROG_TYPE_SK_SKB: Final = 14
_SK_SKB_STREAM_VERDICT: Final = 5
_NOEXIST: Final = 1

# helper function ids
_GET_SOCKET_COOKIE: Final = 46
_SK_REDIRECT_HASH: Final = 72

_SYSCALL_BPF: Final = {"x86_64": 321, "aarch64": 280}
_ATTR_SIZE: Final = 128  # bigger than every attr used here; the kernel wants the tail zeroed
_LOG_SIZE: Final = 65536
SO_COOKIE: Final = 57

MAX_ENTRIES: Final = 65536
"""Sockets the map holds: two per session, so 32,768 sessions in the kernel at once."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SockmapUnavailable(Exception):
    """The kernel data plane cannot be used here; the message says why, for the start-up log."""


# ---- instruction encoding ----------------------------------------------------------------------

_R0, _R1, _R2, _R3, _R4, _R6, _R10 = 0, 1, 2, 3, 4, 6, 10


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``: opcode, dst/src registers in one byte, offset, immediate."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _mov_reg(dst: int, src: int) -> bytes:
    return insn(0xBF, dst, src)  # BPF_ALU64 | BPF_MOV | BPF_X


def _mov_imm(dst: int, imm: int) -> bytes:
    return insn(0xB7, dst, imm=imm)  # BPF_ALU64 | BPF_MOV | BPF_K


def _add_imm(dst: int, imm: int) -> bytes:
    return insn(0x07, dst, imm=imm)  # BPF_ALU64 | BPF_ADD | BPF_K


def _store_dw(base: int, off: int, src: int) -> bytes:
    return insn(0x7B, base, src, off)  # BPF_STX | BPF_MEM | BPF_DW


def _load_map_fd(dst: int, fd: int) -> bytes:
    # BPF_LD | BPF_IMM | BPF_DW with src = BPF_PSEUDO_MAP_FD: a two-slot instruction
    return insn(0x18, dst, 1, imm=fd) + insn(0)


def _load_w(dst: int, base: int, off: int) -> bytes:
    return insn(0x61, dst, base, off)  # BPF_LDX | BPF_MEM | BPF_W


def _jump_if_zero(reg: int, skip: int) -> bytes:
    return insn(0x15, reg, off=skip)  # BPF_JMP | BPF_JEQ | BPF_K, imm 0


def _call(helper: int) -> bytes:
    return insn(0x85, imm=helper)  # BPF_JMP | BPF_CALL


_EXIT: Final = insn(0x95)  # BPF_JMP | BPF_EXIT


def verdict_program(map_fd: int) -> bytes:
    """Redirect each segment out of the socket stored under the receiving socket's cookie.

    ``bpf_sk_redirect_hash`` returns SK_PASS when the peer is in the map and SK_DROP when it is
    not, which is the program's verdict as it stands: a peer that has left the map is a session
    being ended, and its bytes have nowhere to go. An empty segment (a bare FIN) is dropped: sent
    on, the kernel's writer would fail on zero bytes, report EPIPE on the peer and stop writing
    to it, and Prism passes the half-close on itself.
    """
    redirect = (
        _call(_GET_SOCKET_COOKIE),  # r0 = cookie of the receiving socket (r1 is the context)
        _store_dw(_R10, -8, _R0),  # key on the stack
        _mov_reg(_R1, _R6),
        _load_map_fd(_R2, map_fd),
        _mov_reg(_R3, _R10),
        _add_imm(_R3, -8),
        _mov_imm(_R4, 0),  # flags: egress, out of the peer
        _call(_SK_REDIRECT_HASH),
    )
    return b"".join(
        (
            _mov_reg(_R6, _R1),  # keep the context
            _load_w(_R0, _R1, 0),  # r0 = skb->len
            _jump_if_zero(_R0, sum(len(i) for i in redirect) // 8),  # to exit with SK_DROP (0)
            *redirect,
            _EXIT,
        )
    )


# ---- the bpf(2) system call ----------------------------------------------------------------------


def _bpf(command: int, attr: bytes) -> int:
    number = _SYSCALL_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"no bpf(2) number known for {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    result = _libc.syscall(number, command, buffer, _ATTR_SIZE)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def _address(buffer: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buffer)


class KernelSocket(Protocol):
    """What the sockmap needs of a socket: its descriptor and its cookie.

    Both the standard library's sockets and trio's wrappers have these; the sockmap takes
    either, so the data plane can hand over the sockets of its trio streams as they are.
    """

    def fileno(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def cookie(sock: KernelSocket) -> int:
    """The kernel's cookie of ``sock``: the key its peer is stored under."""
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    return value


class Sockmap:
    """The two sockhashes with the verdict program attached: paired sockets relay to each other.

    One per Prism process, made at start-up; its file descriptors live as long as the process
    (the kernel frees the maps and the program when they close).
    """

    def __init__(self, program: bytes | None = None) -> None:
        """Create the maps, load the program (``program`` replaces it, for tests) and attach.

        Raises :class:`SockmapUnavailable` saying which step failed and the kernel's reason.
        """
        self._peers_fd = self._relayed_fd = self._prog_fd = -1
        try:
            self._peers_fd = self._create_map()
            self._relayed_fd = self._create_map()
            self._prog_fd = self._load(program or verdict_program(self._peers_fd))
            self._attach()
        except SockmapUnavailable:
            self.close()
            raise

    def _create_map(self) -> int:
        attr = struct.pack("=5I", _MAP_TYPE_SOCKHASH, 8, 4, MAX_ENTRIES, 0)
        try:
            return _bpf(_MAP_CREATE, attr)
        except OSError as exc:
            hint = " (needs root, or CAP_BPF and CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise SockmapUnavailable(f"cannot create a BPF sockhash: {exc.strerror}{hint}") from exc

    def _load(self, program: bytes) -> int:
        instructions = ctypes.create_string_buffer(program, len(program))
        license_ = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(_LOG_SIZE)
        attr = struct.pack(
            "=IIQQIIQ",
            _PROG_TYPE_SK_SKB,
            len(program) // 8,
            _address(instructions),
            _address(license_),
            1,  # log level: the verifier's reasons, if it refuses
            _LOG_SIZE,
            _address(log),
        )
        try:
            return _bpf(_PROG_LOAD, attr)
        except OSError as exc:
            # The verifier ends with statistics ("processed N insns ..."); its reason comes before.
            said = log.value.decode(errors="replace").strip().splitlines()
            reasons = [line for line in said if not line.startswith(("processed ", "verification"))]
            why = f": {reasons[-1]}" if reasons else ""
            raise SockmapUnavailable(
                f"the kernel refused the stream-verdict program: {exc.strerror}{why}"
            ) from exc

    def _attach(self) -> None:
        attr = struct.pack("=4I", self._relayed_fd, self._prog_fd, _SK_SKB_STREAM_VERDICT, 0)
        try:
            _bpf(_PROG_ATTACH, attr)
        except OSError as exc:
            raise SockmapUnavailable(
                f"cannot attach the stream-verdict program: {exc.strerror}"
            ) from exc

    def _element(self, map_fd: int, command: int, key: int, value: int | None) -> None:
        key_buffer = ctypes.create_string_buffer(struct.pack("=Q", key), 8)
        value_buffer = ctypes.create_string_buffer(struct.pack("=I", value or 0), 4)
        attr = struct.pack(
            "=IIQQQ",
            map_fd,
            0,
            _address(key_buffer),
            _address(value_buffer) if value is not None else 0,
            _NOEXIST if value is not None else 0,
        )
        _bpf(command, attr)

    def join(self, a: KernelSocket, b: KernelSocket) -> tuple[int, int]:
        """Relay ``a`` ⇄ ``b`` in the kernel; return the two keys that :meth:`leave` takes.

        Each socket goes into *peers* under its peer's cookie, then both into *relayed*: from
        the first entry into *relayed* on, what that socket receives leaves through its peer,
        which is in *peers* already, so no segment meets a missing peer. What a socket had
        received before it entered *relayed* waits in its receive queue, ahead of later bytes.
        Raises ``OSError`` (nothing left in either map) if the kernel refuses, e.g. a socket
        that is no longer established.
        """
        keys = (cookie(a), cookie(b))
        entries = (
            (self._peers_fd, keys[0], b),
            (self._peers_fd, keys[1], a),
            (self._relayed_fd, keys[0], a),
            (self._relayed_fd, keys[1], b),
        )
        try:
            for map_fd, key, sock in entries:
                self._element(map_fd, _MAP_UPDATE_ELEM, key, sock.fileno())
        except OSError:
            self.leave(keys)
            raise
        return keys

    def leave(self, keys: tuple[int, ...]) -> None:
        """Take the sockets of a pair out of both maps (absent entries are fine).

        *relayed* first: a socket still relayed while its peer has left *peers* would drop
        what it receives.
        """
        for map_fd in (self._relayed_fd, self._peers_fd):
            for key in keys:
                with contextlib.suppress(FileNotFoundError):  # closed sockets leave by themselves
                    self._element(map_fd, _MAP_DELETE_ELEM, key, None)

    def relayed(self) -> int:
        """Sockets the kernel relays right now (walks the map: for diagnostics and tests)."""
        key = ctypes.create_string_buffer(8)
        count = 0
        while True:
            attr = struct.pack(
                "=IIQQ", self._relayed_fd, 0, _address(key) if count else 0, _address(key)
            )
            try:
                _bpf(_MAP_GET_NEXT_KEY, attr)
            except FileNotFoundError:  # past the last key
                return count
            count += 1

    def close(self) -> None:
        for fd in (self._prog_fd, self._relayed_fd, self._peers_fd):
            if fd >= 0:
                os.close(fd)
        self._peers_fd = self._relayed_fd = self._prog_fd = -1
