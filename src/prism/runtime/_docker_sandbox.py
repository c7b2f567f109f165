"""The sandbox of a branch container: what its superuser can do stays inside the branch.

A branch's superuser (or a hook, or pasted migration SQL) runs shell commands (``COPY ... TO
PROGRAM``), native code (``CREATE FUNCTION ... LANGUAGE C``) and network clients (dblink,
postgres_fdw) as the server's user. The container confines them:

* **Files**: only the branch's own data directory, its private socket directory and the WAL
  archives it keeps or recovers from are mounted (:mod:`prism.runtime._docker_config`); the root
  filesystem is read-only (a small tmpfs on ``/tmp``), every capability is dropped and
  ``no-new-privileges`` is set.
* **Network**: a seccomp filter denies every outbound connection: ``connect``, TCP Fast Open
  sends (an implicit connect), and every socket that is not a stream (UDP, raw, SCTP) or is
  of an unexpected family. The server still listens and accepts. So a branch reaches neither
  Prism's API nor its front door, nor main's server, another branch or the source, whatever
  address it tries, loopback included.

Why seccomp rather than a network namespace per branch: the namespace is what the ``host``
network mode saves, and a fresh one costs a cold start 80-120 ms on the reference machine
(``none``) or about 200 ms (a bridge) against a budget of 10 ms (docs/benchmarks.md); a seccomp
filter costs nothing measurable. It cannot tell one destination from another, so a container
that needs one (main following a source, branches given ``--branch-egress``) gets ``connect``
back whole, which :func:`confinement` reports.

The filter allows by default and denies the calls above and the ones that open the kernel
further to an unprivileged process (user and other namespaces, io_uring, which would connect
around the filter, keyrings, bpf, userfaultfd, perf, ptrace): it replaces Docker's default
profile, so it carries the part of it that still matters once every capability is gone.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from prism.core.values import DockerNetwork
from prism.runtime.base import Confinement

MECHANISM = "docker: seccomp, no capabilities, read-only root, own mounts"
# Bumped whenever the sandbox changes, so a container an older Prism left running is restarted
# into the current one instead of adopted (prism.runtime.docker).
_VERSION = "1"
PIDS_LIMIT = 4096
_TMPFS = {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}

_EPERM = 1
_ENOSYS = 38  # clone3: glibc then falls back to clone, whose flags the filter can read
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16
_SOCK_TYPE_MASK = 0xF
_NETLINK_ROUTE = 0
_NOT_STREAM = (2, 3, 4, 5, 6, 10)  # dgram, raw, rdm, seqpacket, dccp, packet
_MSG_FASTOPEN = 0x20000000
_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_DENIED = (
    "socketcall",  # 32-bit multiplexer: its arguments are in memory, out of the filter's sight
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "syslog",  # the kernel log, readable without a capability where dmesg_restrict is 0
    "name_to_handle_at",
    "open_by_handle_at",
    "fanotify_init",
    # Each needs a capability the container has not got; denied all the same, as Docker's
    # default profile does, should a capability ever come back.
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "chroot",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "lookup_dcookie",
)
# A native process can switch to the 32-bit syscall table; the filter must cover it as well.
_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def _deny(names: list[str], *args: dict[str, int | str], errno: int = _EPERM) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno}
    if args:
        rule["args"] = list(args)
    return rule


def _arg(index: int, value: int, mask: int | None = None) -> dict[str, int | str]:
    if mask is None:
        return {"index": index, "value": value, "op": "SCMP_CMP_EQ"}
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


@functools.cache
def seccomp_profile(*, outbound: bool, architecture: str) -> str:
    """The seccomp profile (Docker's JSON) of a container; ``outbound`` keeps ``connect``.

    ``architecture`` is the engine's (``docker info``), not Prism's host's: Docker Desktop runs
    the containers in a VM of its own.
    """
    rules = [_deny(list(_DENIED)), _deny(["clone3"], errno=_ENOSYS)]
    rules += [_deny(["clone"], _arg(0, flag, mask=flag)) for flag in _NAMESPACE_FLAGS]
    if not outbound:
        rules.append(_deny(["connect"]))
        # Fast Open sends to an address without connect(); the flags argument is 4th of
        # sendto and sendmmsg, 3rd of sendmsg.
        for name, flags in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
            rules.append(_deny([name], _arg(flags, _MSG_FASTOPEN, mask=_MSG_FASTOPEN)))
        # A datagram needs no connect(): only stream sockets, and netlink to the kernel's
        # routing (queried by the C library), are left.
        rules += [
            _deny(["socket"], _arg(0, family), _arg(1, kind, mask=_SOCK_TYPE_MASK))
            for family in (_AF_UNIX, _AF_INET, _AF_INET6)
            for kind in _NOT_STREAM
        ]
        rules += [
            _deny(["socket"], _arg(0, family))
            for family in range(_AF_UNIX + 1, _AF_NETLINK)
            if family not in (_AF_INET, _AF_INET6)
        ]
        rules.append(_deny(["socket"], {"index": 0, "value": _AF_NETLINK, "op": "SCMP_CMP_GT"}))
        rules.append(
            _deny(
                ["socket"],
                _arg(0, _AF_NETLINK),
                {"index": 2, "value": _NETLINK_ROUTE, "op": "SCMP_CMP_NE"},
            )
        )
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    if architecture in _ARCHITECTURES:
        profile["architectures"] = _ARCHITECTURES[architecture]
    return json.dumps(profile, separators=(",", ":"))


def label(*, outbound: bool) -> str:
    """The sandbox a container runs in, as its label value: adopted only if it matches."""
    return f"{_VERSION}+outbound" if outbound else _VERSION


def host_config(*, outbound: bool, architecture: str, seccomp: bool = True) -> dict[str, Any]:
    """The ``create_host_config`` arguments that put a server's container in the sandbox.

    ``seccomp`` is False on an engine without it (a kernel built without), which refuses any
    profile: the container then starts without the filter, and :func:`confinement` says so.
    """
    security = ["no-new-privileges"]
    if seccomp:
        security.append(f"seccomp={seccomp_profile(outbound=outbound, architecture=architecture)}")
    return {
        "cap_drop": ["ALL"],
        "security_opt": security,
        "read_only": True,
        "tmpfs": dict(_TMPFS),
        "pids_limit": PIDS_LIMIT,
    }


def confinement(
    mode: DockerNetwork | None,
    *,
    egress: tuple[str, ...],
    main_outbound: bool,
    seccomp: bool = True,
) -> Confinement:
    """What the sandbox enforces with these settings on this engine, and what it does not."""
    enforced = [
        "files: a branch container mounts only its own data directory, its private socket "
        "directory and the WAL archives it keeps or recovers from; main alone gets the "
        "source's passfile",
        "root filesystem read-only (tmpfs /tmp), every capability dropped, no-new-privileges, "
        f"at most {PIDS_LIMIT} processes, server runs as the data directory's owner (not root)",
    ]
    missing = []
    if not seccomp:
        missing.append(
            "seccomp: the Docker engine has none, so branch servers can connect to any address "
            "the host reaches (Prism's API, main, other branches, the source)"
        )
        return Confinement(MECHANISM, tuple(enforced), tuple(missing))
    enforced.append(
        "seccomp: no new namespaces, io_uring, keyrings, bpf, userfaultfd, perf_event_open "
        "or ptrace"
    )
    if egress:
        missing.append(
            "network: --branch-egress is set, so branch containers may connect to any address "
            f"the host reaches, not only {', '.join(egress)} (seccomp cannot filter by "
            "destination)"
        )
    else:
        enforced.append(
            "network: a branch server opens no outbound connection (seccomp denies connect, "
            "Fast Open and datagram sockets): not Prism's API or front door, not main, not "
            "another branch, not the source"
        )
    if main_outbound:
        missing.append(
            "network: main's container, which follows the source, may connect to any address "
            "the host reaches"
        )
    if mode is DockerNetwork.HOST:
        missing.append(
            "network namespace: with --docker-network host a branch server shares the host's: "
            "it can listen on free host ports and list the host's sockets (/proc/net)"
        )
    elif mode is None:
        missing.append("network mode: not known until the Docker engine answers")
    return Confinement(mechanism=MECHANISM, enforced=tuple(enforced), missing=tuple(missing))
