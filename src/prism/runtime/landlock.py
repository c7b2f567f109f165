"""Linux Landlock, through ``ctypes``: the kernel's unprivileged sandbox for a process tree.

Landlock needs no root, so it also confines the servers of the embedded default (Prism run by a
normal user). A ruleset lists what stays allowed — paths with their rights, TCP ports to bind
or connect — and, once a process restricts itself with it, that process and everything it
executes lose every other right the ruleset handles, for good.

The ruleset is built here in Prism's own process (``Ruleset.build``: opens, syscalls, errors
that can be reported). It is applied to one fresh thread of Prism's (``run_confined``), which
then starts the server: Landlock and ``no_new_privs`` belong to a thread, and a process
inherits its parent thread's, so the rest of Prism stays free while the server starts confined.
A ``preexec_fn`` in the child would do the same but forces ``fork`` instead of ``vfork``, which
costs milliseconds per start in a process of Prism's size (figures in docs/benchmarks.md).

What each ABI version adds (the kernel says which it has; older kernels get what they offer,
and ``Support.missing`` names the rest):

* 1: filesystem access (execute, read, write, create, remove).
* 2: ``REFER`` (rename and link across directories); 3: ``TRUNCATE``.
* 4: TCP ``bind`` and ``connect`` by port.
* 5: ``IOCTL_DEV``; 6: scopes (no connecting to abstract Unix sockets, no signals, outside
  the domain).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# The generic syscall numbers: the same on x86_64 and arm64 (and every architecture added
# since 5.13); other architectures are reported as lacking Landlock.
_SYSCALLS = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
_ARCHES = {"x86_64", "aarch64", "arm64", "riscv64"}
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_PR_SET_NO_NEW_PRIVS = 38

T = TypeVar("T")

# Filesystem rights (linux/landlock.h) and the ABI that introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15

_FS_BY_ABI = {1: (1 << 13) - 1, 2: REFER, 3: TRUNCATE, 5: IOCTL_DEV}
#: Rights a rule on a file (not a directory) may carry.
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

#: Read a tree: list directories, read files.
READ = READ_FILE | READ_DIR
#: Everything in a tree a server owns: create, write, rename, remove (not devices).
WRITE = (
    READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_SYM
    | REFER
    | TRUNCATE
)

BIND_TCP = 1 << 0
CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1


@dataclass(frozen=True)
class Support:
    """What this kernel's Landlock can enforce (``abi`` 0: none at all)."""

    abi: int
    reason: str = ""

    @property
    def filesystem(self) -> bool:
        return self.abi >= 1

    @property
    def tcp(self) -> bool:
        return self.abi >= 4

    @property
    def scopes(self) -> bool:
        return self.abi >= 6

    def handled_fs(self) -> int:
        """The filesystem rights this ABI can restrict."""
        return sum(bits for abi, bits in _FS_BY_ABI.items() if self.abi >= abi)

    def missing(self) -> tuple[str, ...]:
        """The guards this kernel cannot give, in words for an operator."""
        if not self.filesystem:
            return (f"Landlock ({self.reason})",)
        gaps = []
        if not self.tcp:
            gaps.append(f"TCP bind/connect rules (Landlock ABI {self.abi} < 4)")
        if not self.scopes:
            gaps.append(
                f"signal scoping and private service sockets (Landlock ABI {self.abi} < 6): "
                "a branch may reach another server's trusted Unix socket"
            )
        return tuple(gaps)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def probe() -> Support:
    """Ask the kernel which Landlock ABI it offers."""
    if platform.system() != "Linux" or platform.machine() not in _ARCHES:
        return Support(0, f"not available on {platform.system()} {platform.machine()}")
    libc = _libc()
    abi = libc.syscall(_SYSCALLS["create_ruleset"], None, 0, _CREATE_RULESET_VERSION)
    if abi < 0:
        code = ctypes.get_errno()
        why = "disabled at boot" if code == errno.EOPNOTSUPP else "not in this kernel"
        return Support(0, f"{why}: {os.strerror(code)}")
    return Support(int(abi))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@dataclass(frozen=True)
class PathRule:
    """``rights`` on ``path`` and everything beneath it (a file: that file only)."""

    path: Path
    rights: int


class LandlockError(OSError):
    """A ruleset could not be built (a path vanished, the kernel refused a rule)."""


class Ruleset:
    """A built ruleset's file descriptor, applied to the thread that starts one server."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self.fd = fd
        self._libc = libc
        self._prctl = libc.prctl
        self._syscall = libc.syscall

    @classmethod
    def build(
        cls,
        support: Support,
        paths: Iterable[PathRule],
        *,
        bind_ports: Iterable[int] = (),
        connect_ports: Iterable[int] = (),
    ) -> Ruleset:
        """Create a ruleset allowing only ``paths`` and the TCP ports given (where ``support``
        can enforce ports and scopes, they are; else only what it can)."""
        libc = _libc()
        handled_fs = support.handled_fs()
        attr = _RulesetAttr(
            handled_access_fs=handled_fs,
            handled_access_net=(BIND_TCP | CONNECT_TCP) if support.tcp else 0,
            scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if support.scopes else 0,
        )
        size = 24 if support.scopes else 16 if support.tcp else 8
        fd = libc.syscall(_SYSCALLS["create_ruleset"], ctypes.byref(attr), size, 0)
        if fd < 0:
            code = ctypes.get_errno()
            raise LandlockError(code, f"landlock_create_ruleset: {os.strerror(code)}")
        ruleset = cls(int(fd), libc)
        try:
            for rule in paths:
                ruleset._add_path(rule, handled_fs)
            if support.tcp:
                for port in bind_ports:
                    ruleset._add_port(port, BIND_TCP)
                for port in connect_ports:
                    ruleset._add_port(port, CONNECT_TCP)
        except BaseException:
            ruleset.close()
            raise
        return ruleset

    def _add_path(self, rule: PathRule, handled_fs: int) -> None:
        try:
            parent = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # nothing there to allow (an optional system directory)
        try:
            rights = rule.rights & handled_fs
            if not os.path.isdir(f"/proc/self/fd/{parent}"):
                rights &= FILE_RIGHTS
            attr = _PathBeneathAttr(allowed_access=rights, parent_fd=parent)
            self._add(_RULE_PATH_BENEATH, ctypes.byref(attr), f"path {rule.path}")
        finally:
            os.close(parent)

    def _add_port(self, port: int, rights: int) -> None:
        attr = _NetPortAttr(allowed_access=rights, port=port)
        self._add(_RULE_NET_PORT, ctypes.byref(attr), f"port {port}")

    def _add(self, kind: int, attr: object, what: str) -> None:
        if self._libc.syscall(_SYSCALLS["add_rule"], self.fd, kind, attr, 0) < 0:
            code = ctypes.get_errno()
            raise LandlockError(code, f"landlock_add_rule ({what}): {os.strerror(code)}")

    def restrict_self(self) -> None:
        """Confine the calling thread, and every process it starts from now on, for good.

        Refuses privilege gains first (the kernel's condition for an unprivileged sandbox).
        """
        if self._prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self._syscall(_SYSCALLS["restrict_self"], self.fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")

    def close(self) -> None:
        """Release the ruleset in Prism's process (the child's copy is its own)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def run_confined(ruleset: Ruleset, start: Callable[[], T]) -> T:
    """Call ``start`` (which starts a process) in a new thread confined by ``ruleset``, and
    return what it returns (blocking: call it from a worker thread).

    The thread is made for this one call and ends with it: a confined thread must never run
    anything of Prism's afterwards.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def confined() -> None:
        try:
            ruleset.restrict_self()
            outcome.append(start())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=confined, name="prism-confined-start")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
