"""The ``prism branch …`` and ``prism events`` commands: a thin client of the daemon's API.

Everything the commands do is an API call, so the CLI, the web page and scripts share one
implementation of each operation (the daemon's ``BranchManager``). Output is for people by
default (a table, one line per result or event) and JSON with ``--json``; any failure is a
non-zero exit and one line on stderr saying why (the API's own message when there is one).

The client finds the daemon the way the daemon finds its own address: the ``api`` and
``api_token`` settings (``prism.toml``, ``$PRISM_API``, ``$PRISM_API_TOKEN``), overridable with
``--api`` and ``--api-token``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio
import trio_websocket

from prism.branches.schemadiff import format_diff
from prism.cli.format import (
    format_branch,
    format_branches,
    format_change,
    format_details,
    format_event,
    format_snapshots,
    format_trash,
    main_first,
)
from prism.cli.status import format_disk, format_prune, format_status
from prism.core.config import load_settings
from prism.core.errors import PrismError
from prism.core.values import HostPort
from prism.postgres.dsn import FORMATS

API_PREFIX = "/api/v1"
# Exit statuses a script can rely on (docs/cli.md): the API's error code decides.
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 1, 2, 3, 4
_EXIT_BY_CODE = {
    "branch_not_found": EXIT_NOT_FOUND,
    "unknown_parent": EXIT_NOT_FOUND,
    "outside_window": EXIT_NOT_FOUND,
    "branch_exists": EXIT_CONFLICT,
    "branch_has_children": EXIT_CONFLICT,
    "branch_protected": EXIT_CONFLICT,
    "conflict": EXIT_CONFLICT,
    "not_dump_mode": EXIT_CONFLICT,
}
# Creating a branch of a big main with the copy driver, or a cold Docker start, can take minutes.
_OPERATION_TIMEOUT = httpx.Timeout(10.0, read=600.0)
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_NOT_RUNNING_HINT = "is `prism serve` running? set --api or $PRISM_API"


class ClientError(Exception):
    """A command failed; ``message`` is the line the user sees, ``hint`` what to do about it."""

    def __init__(self, message: str, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.hint = message, code, hint


# ---- finding and calling the API -----------------------------------------------------------


def base_url(api: str | None) -> str:
    """``http://host:port`` from a URL or a ``host:port``, defaulting to the ``api`` setting."""
    if api and api.startswith(("http://", "https://")):
        return api.rstrip("/")
    address = HostPort.parse(api) if api else load_settings().api
    host = "127.0.0.1" if address.host in _WILDCARD_HOSTS else address.host
    return f"http://{HostPort(host, address.port)}"


def _token(flag: str | None) -> str:
    return flag if flag is not None else load_settings().api_token


class ApiClient:
    """Synchronous calls to the REST API; each returns the decoded JSON or raises ClientError."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=_OPERATION_TIMEOUT)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, API_PREFIX + path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(
                f"cannot reach the Prism API at {self.url}: {exc or type(exc).__name__}",
                hint=_NOT_RUNNING_HINT,
            ) from None
        if response.is_success:
            if response.headers.get("content-type", "").startswith("text/plain"):
                return response.text
            return response.json()
        try:
            body = response.json()
            message, code = str(body["message"]), str(body["code"])
            hint = str(body["hint"]) if body.get("hint") else None
        except (ValueError, KeyError, TypeError, AttributeError):
            message, code = f"HTTP {response.status_code}: {response.text[:200]}", None
            hint = None
        raise ClientError(message, code, hint)


# ---- the commands --------------------------------------------------------------------------

Command = Callable[[ApiClient, argparse.Namespace], Any]
Parser = argparse.ArgumentParser


def _ls(api: ApiClient, args: argparse.Namespace) -> Any:
    answer = api.call("GET", "/branches")
    if args.json:
        return main_first(answer["branches"])
    return Text("\n".join([format_branches(answer["branches"]), *format_disk(answer.get("disk"))]))


def _connection(api: ApiClient, name: str, args: argparse.Namespace) -> Text:
    """``name``'s connection string in the asked format, as a bare line for ``$(...)``."""
    params = {"password": "true"} if args.password else {}
    branch = api.call("GET", f"/branches/{name}", params=params)
    connection = branch.get("connection")
    if connection is None:
        raise ClientError(f'Prism does not say how to reach branch "{name}"')
    if connection.get("password_note"):
        # The string still works with the password the user knows: say why it has none, on
        # stderr, so $(prism branch dsn ...) gets the string alone.
        print(f"prism: no password: {connection['password_note']}", file=sys.stderr)
    return Text(connection[args.format])


def _create(api: ApiClient, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": args.name, "parent": args.parent}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.protected:
        body["protected"] = True
    if args.at is not None:
        body["at"] = args.at
    created = api.call("POST", "/branches", json=body)
    return _connection(api, args.name, args) if args.print_dsn else created


def _rm(api: ApiClient, args: argparse.Namespace) -> Any:
    params = {"with_children": "true"} if args.with_children else {}
    if args.purge:
        params["purge"] = "true"
    try:
        return api.call("DELETE", f"/branches/{args.name}", params=params)
    except ClientError as exc:
        if args.if_exists and exc.code == "branch_not_found":
            return {"deleted": []}
        raise


def _undelete(api: ApiClient, args: argparse.Namespace) -> Any:
    return api.call("POST", f"/branches/{args.name}/undelete")


class Trash(list[dict[str, Any]]):
    """``branch trash``'s answer, printed as a table of its own."""


def _trash(api: ApiClient, args: argparse.Namespace) -> Any:
    kept = api.call("GET", "/trash")
    return kept if args.json else Trash(kept["trash"])


def _show(api: ApiClient, args: argparse.Namespace) -> Any:
    branch = api.call("GET", f"/branches/{args.name}")
    return branch if args.json else Text(format_details(branch))


def _dsn(api: ApiClient, args: argparse.Namespace) -> Any:
    return _connection(api, args.name, args)


def _change(api: ApiClient, args: argparse.Namespace, change: str, body: dict[str, Any]) -> Any:
    """PATCH the branch's policy; print what it is now (``format_change``), or the branch."""
    branch = api.call("PATCH", f"/branches/{args.name}", json=body)
    return branch if args.json else Text(format_change(change, branch))


def _protection(protected: bool) -> Command:
    def run(api: ApiClient, args: argparse.Namespace) -> Any:
        return _change(api, args, "protection", {"protected": protected})

    return run


def _expire(api: ApiClient, args: argparse.Namespace) -> Any:
    body = {"expires_at": None} if args.ttl in ("never", "none") else {"ttl": args.ttl}
    return _change(api, args, "expiry", body)


def _hook(api: ApiClient, args: argparse.Namespace) -> Any:
    """Set the SQL and/or the command given; with neither, remove both."""
    body: dict[str, Any] = {}
    if args.on_create is not None:
        try:
            body["on_create"] = (
                Path(args.on_create).read_text() if args.on_create != "-" else sys.stdin.read()
            )
        except OSError as exc:
            raise ClientError(f"cannot read {args.on_create}: {exc.strerror}") from None
    if args.on_create_command is not None:
        try:
            body["on_create_command"] = shlex.split(args.on_create_command)
        except ValueError as exc:
            raise ClientError(f"cannot read the command: {exc}") from None
    if not body:
        body = {"on_create": None, "on_create_command": None}
    return _change(api, args, "hooks", body)


def _operation(verb: str) -> Command:
    def run(api: ApiClient, args: argparse.Namespace) -> Any:
        return api.call("POST", f"/branches/{args.name}/{verb}")

    return run


def _refresh(api: ApiClient, args: argparse.Namespace) -> Any:
    # No read timeout: the answer comes when the whole dump is restored, however long it takes.
    return api.call("POST", "/branches/main/refresh", timeout=None)


class Text(str):
    """A result printed as it is, even with ``--json`` (a connection string for a script)."""


def _diff(api: ApiClient, args: argparse.Namespace) -> Any:
    params = {"against": args.against, "database": args.database}
    if args.format == "pg_dump":
        params["format"] = "pg_dump"
        dumped = api.call("GET", f"/branches/{args.branch}/diff", params=params)
        return Text(
            dumped.rstrip("\n") or f"pg_dump of {args.branch} and {args.against}: identical"
        )
    view = api.call("GET", f"/branches/{args.branch}/diff", params=params)
    return view if args.json else Text(format_diff(view))


class Snapshots(list[dict[str, Any]]):
    """``snapshot ls``'s answer, printed as a table of its own."""


def _snapshots(api: ApiClient, args: argparse.Namespace) -> Any:
    kept = api.call("GET", f"/branches/{args.branch}/snapshots")
    return kept if args.json else Snapshots(kept["snapshots"])


def _snapshot_rm(api: ApiClient, args: argparse.Namespace) -> Any:
    return api.call("DELETE", f"/branches/{args.branch}/snapshots/{args.snapshot}")


def _status(api: ApiClient, args: argparse.Namespace) -> Any:
    status = api.call("GET", "/status")
    return status if args.json else Text(format_status(status, api.url))


def _prune(api: ApiClient, args: argparse.Namespace) -> Any:
    result = api.call("POST", "/archive/prune", json={"branch": args.branch, "before": args.before})
    return result if args.json else Text(format_prune(result))


def _human(result: Any) -> str:
    if isinstance(result, Snapshots):
        return format_snapshots(result)
    if isinstance(result, Trash):
        return format_trash(result)
    if isinstance(result, list):
        return format_branches(result)
    if "deleted" in result:
        return f"deleted: {', '.join(result['deleted']) or 'nothing (no such branch)'}"
    if "undeleted" in result:
        return f"undeleted: {', '.join(result['undeleted'])}"
    return format_branch(result)


def join_relative_times(argv: Sequence[str]) -> list[str]:
    """``--at -15m`` as ``--at=-15m``: argparse takes a value starting with ``-`` for a flag
    and would refuse the form the docs and the issue use."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        if (
            argv[index] in ("--at", "--before")
            and index + 1 < len(argv)
            and argv[index + 1].startswith("-")
        ):
            joined.append(f"--at={argv[index + 1]}")
            index += 2
        else:
            joined.append(argv[index])
            index += 1
    return joined


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=None, help="API address: URL or host:port")
    parser.add_argument("--api-token", default=None, help="bearer token (or $PRISM_API_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``branch …`` and ``events`` to the ``prism`` command's sub-commands."""
    branch = commands.add_parser("branch", help="list and change branches of a running Prism")
    verbs = branch.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str, run: Command, *, named: bool = True) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_)
        if named:
            parser.add_argument("name", help="branch name")
        _add_common(parser)
        parser.set_defaults(run=run)
        return parser

    def dsn_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--format", choices=FORMATS, default="uri", help="connection string format (uri)"
        )
        parser.add_argument(
            "--password",
            action="store_true",
            help="include the password (left out by default; none, said why on stderr, where "
            "Prism does not know it)",
        )

    verb("ls", "list branches", _ls, named=False)
    verb("show", "everything about one branch: policy, hooks, disk use, how to connect", _show)
    create = verb("create", "create a branch", _create)
    create.add_argument("--parent", default="main", help="branch to clone (default main)")
    create.add_argument("--ttl", default=None, help="delete it this long after now, e.g. 72h")
    create.add_argument("--protected", action="store_true", help="protect it from delete/reset")
    create.add_argument(
        "--at",
        default=None,
        metavar="TIME",
        help="the parent's data as of TIME: RFC 3339 or before now (-15m); the parent must "
        "keep WAL (--point-in-time-branches)",
    )
    create.add_argument("--print-dsn", action="store_true", help="print only its connection string")
    dsn_flags(create)
    rm = verb("rm", "delete a branch (kept for --undelete-window, then purged)", _rm)
    rm.add_argument(
        "--with-children", action="store_true", help="also delete branches cloned from it"
    )
    rm.add_argument(
        "--if-exists", action="store_true", help="a branch that does not exist is not an error"
    )
    rm.add_argument(
        "--purge", action="store_true", help="free it at once: not kept in the trash for undelete"
    )
    verb("undelete", "bring a deleted branch back from the trash (data and policies)", _undelete)
    verb("trash", "list deleted branches kept for undelete", _trash, named=False)
    dsn_flags(verb("dsn", "print a branch's connection string", _dsn))
    verb("protect", "refuse delete and reset of a branch", _protection(True))
    verb("unprotect", "allow delete and reset of a branch again", _protection(False))
    verb("expire", "set when a branch is deleted", _expire).add_argument(
        "ttl", metavar="TTL", help="a duration from now (72h, 30m) or never"
    )
    hook = verb("hook", "set the SQL or command run for every new child of a branch", _hook)
    hook.add_argument("--on-create", metavar="FILE", default=None, help="SQL file (- for stdin)")
    hook.add_argument(
        "--on-create-command",
        metavar="COMMAND",
        default=None,
        help="program and arguments, split like a shell (needs --allow-hook-commands)",
    )
    verb("reset", "throw away a branch's changes (re-clone from its parent)", _operation("reset"))
    verb("stop", "stop a branch's server (data stays)", _operation("stop"))
    verb("start", "start a branch's server", _operation("start"))

    diff = commands.add_parser("diff", help="compare two branches' schemas")
    diff.add_argument("branch", help="the branch whose schema is wanted (A)")
    diff.add_argument("against", help="the branch to compare with (B)")
    diff.add_argument("--database", default="postgres", help="database to compare (postgres)")
    diff.add_argument(
        "--format",
        choices=("text", "pg_dump"),
        default="text",
        help="text: the catalog diff and its DDL; pg_dump: a unified diff of pg_dump --schema-only",
    )
    _add_common(diff)
    diff.set_defaults(run=_diff)

    def group_verb(group: str, about: str, name: str, help_: str, run: Command) -> Parser:
        """``prism GROUP NAME``: a command of a group (``snapshot ls``, ``archive prune``)."""
        if group not in groups:
            parser = commands.add_parser(group, help=about)
            groups[group] = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
        command = groups[group].add_parser(name, help=help_)
        _add_common(command)
        command.set_defaults(run=run)
        return command

    groups: dict[str, argparse._SubParsersAction[Parser]] = {}
    group_verb(
        "snapshot",
        "snapshots kept for point in time",
        "ls",
        "list the snapshots kept of a branch",
        _snapshots,
    ).add_argument("--branch", default="main", help="whose snapshots (default main)")
    rm = group_verb(
        "snapshot", "", "rm", "remove a snapshot and the WAL only it needed", _snapshot_rm
    )
    rm.add_argument("snapshot", help="the snapshot's name (snapshot ls)")
    rm.add_argument("--branch", default="main", help="whose snapshot (default main)")

    status = commands.add_parser("status", help="the daemon's state: main, disk, branches")
    _add_common(status)
    status.set_defaults(run=_status)

    prune = group_verb(
        "archive",
        "the WAL archive and snapshots",
        "prune",
        "free the snapshots and WAL before a time (the window starts there)",
        _prune,
    )
    prune.add_argument(
        "--before", required=True, metavar="TIME", help="RFC 3339 or before now (-2d)"
    )
    prune.add_argument("--branch", default="main", help="whose archive (default main)")
    group_verb(
        "main",
        "main's generations (--source-mode dump)",
        "refresh",
        "make a new generation of main from the source (waits until it serves)",
        _refresh,
    )

    events = commands.add_parser("events", help="follow branch events live")
    _add_common(events)


def print_error(message: str, hint: str | None) -> None:
    """The error line, and the hint line when there is a hint: what every command prints."""
    print(f"prism: error: {message}", file=sys.stderr)
    if hint:
        print(f"prism: hint: {hint}", file=sys.stderr)


def run_client(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run a client sub-command; returns the exit status."""
    try:
        url, token = base_url(args.api), _token(args.api_token)
        if args.command == "events":
            trio.run(_follow_events, url, token, args.json, out)
            return 0
        result = args.run(ApiClient(url, token), args)
        if isinstance(result, Text):
            print(result, file=out)
        else:
            print(json.dumps(result, indent=2) if args.json else _human(result), file=out)
        out.flush()
    except ClientError as exc:
        print_error(exc.message, exc.hint)
        return _EXIT_BY_CODE.get(exc.code or "", EXIT_FAILED)
    except PrismError as exc:  # a bad setting while finding the API
        print_error(exc.message, exc.hint)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader stopped reading (``prism branch ls | head -3``): what it wanted it got.
        # Point stdout at /dev/null so the interpreter's own flush at exit cannot fail again.
        _silence(out)
        return 0
    return 0


def _silence(out: TextIO) -> None:
    # Not a real file (a test's StringIO): nothing is left to flush.
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


#: Close codes of an orderly end: the daemon said goodbye (1001: it is shutting down).
_CLEAN_CLOSE = (1000, 1001)


async def _follow_events(url: str, token: str, as_json: bool, out: TextIO) -> None:
    """Print events until interrupted or the daemon stops; a subscription dropped any other way
    is an error, not a quiet end."""
    ws_url = url.replace("http", "ws", 1) + API_PREFIX + "/events"
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
    try:
        async with trio_websocket.open_websocket_url(ws_url, extra_headers=headers) as socket:
            while True:
                event = json.loads(await socket.get_message())
                print(json.dumps(event) if as_json else format_event(event), file=out, flush=True)
                if event["type"] == "overflow":
                    raise ClientError(
                        f"the event stream dropped us: {event['error']}",
                        hint="run `prism events` again for a fresh snapshot",
                    )
    except trio_websocket.HandshakeError as exc:
        raise _handshake_error(ws_url, exc) from None
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason or trio_websocket.CloseReason(1006, None)
        if reason.code in _CLEAN_CLOSE:
            return
        raise ClientError(
            f"the event stream from {url} ended: {_close_text(reason)}",
            hint="the daemon stopped or the network dropped; " + _NOT_RUNNING_HINT,
        ) from None
    except BrokenPipeError:
        raise  # our reader left, not the daemon: run_client ends quietly
    except OSError as exc:
        raise ClientError(
            f"cannot reach the Prism API at {url}: {exc.strerror or exc or type(exc).__name__}",
            hint=_NOT_RUNNING_HINT,
        ) from None


def _close_text(reason: trio_websocket.CloseReason) -> str:
    """``connection lost (1006)``: a close code as words, not ``CloseReason<…>``."""
    words = reason.reason or ("connection lost" if reason.code == 1006 else reason.name)
    return f"{words} ({reason.code})"


def _handshake_error(ws_url: str, exc: trio_websocket.HandshakeError) -> ClientError:
    """Why the daemon refused the subscription, from its answer's body when it sent one."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None) or b""
    try:
        answer = json.loads(body)
        return ClientError(
            f"cannot subscribe to {ws_url}: {answer['message']}", answer["code"], answer.get("hint")
        )
    except (ValueError, KeyError, TypeError):
        pass
    if status == 401:
        return ClientError(
            f"cannot subscribe to {ws_url}: HTTP 401", hint="wrong or missing --api-token?"
        )
    # Refused or unreachable: trio-websocket raises a bare HandshakeError from the OSError.
    cause = exc.__cause__ or exc.__context__
    reason = (
        f"HTTP {status}"
        if status
        else getattr(cause, "strerror", None) or str(cause or exc) or "no answer"
    )
    return ClientError(f"cannot subscribe to {ws_url}: {reason}", hint=_NOT_RUNNING_HINT)
