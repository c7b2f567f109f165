"""The ``prism`` command: ``prism serve`` runs the daemon; ``branch`` and ``events`` talk to its
API (see ``prism.cli.client``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from prism import __version__
from prism.cli.client import add_client_commands, join_relative_times, print_error, run_client
from prism.core.config import load_settings
from prism.core.errors import find_prism_error
from prism.core.events import EventBus
from prism.core.settings import SETTINGS, Settings
from prism.core.values import LogLevel
from prism.postgres.conninfo import parse_conninfo
from prism.server import PrismServer

log = logging.getLogger(__name__)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named like the setting (``idle_timeout`` → ``--idle-timeout``)."""
    for setting in SETTINGS:
        parser.add_argument(
            f"--{setting.name.replace('_', '-')}",
            dest=setting.name,
            default=None,
            action="append" if setting.repeatable else "store",
            metavar=setting.name.split("_")[-1].upper(),
            help=setting.help,
        )


def _flag_text(value: str | list[str] | None) -> str | None:
    """A flag's text; a repeated flag's values joined as its one comma-separated value."""
    return ",".join(value) if isinstance(value, list) else value


def settings_of(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """``prism serve``'s settings: its flags over the environment, the file and the defaults."""
    flags = {s.name: _flag_text(getattr(args, s.name, None)) for s in SETTINGS}
    return load_settings(flags, config_file=args.config, environ=environ)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism",
        description="Instant copy-on-write branches of PostgreSQL, created on connect.",
    )
    parser.add_argument("--version", action="version", version=f"prism {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the Prism daemon")
    serve.add_argument("--config", type=Path, default=None, help="settings file (prism.toml)")
    _add_setting_flags(serve)
    add_client_commands(commands)
    return parser


def _configure_logging(level: LogLevel) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("hypercorn", "prism.api", "quart"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


#: How long event subscribers get to read the ``shutdown`` event before the API stops.
_SUBSCRIBERS_GRACE = 2.0


async def _serve_until_signalled(settings: Settings) -> None:
    """Run the server; SIGINT or SIGTERM starts a clean shutdown (branch servers stopped).

    Event subscribers are told first, while the API still serves: a ``shutdown`` event and a
    close with 1001, so ``prism events`` and the page end cleanly instead of losing the socket.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            events: list[EventBus] = []

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    log.info("cli: received %s", name)
                    for bus in events:
                        bus.close(f"Prism is shutting down ({name})")
                        with trio.move_on_after(_SUBSCRIBERS_GRACE):
                            await bus.wait_drained()
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            info = await nursery.start(PrismServer(settings).run)
            events.append(info.manager.events)


def warn_of_password_in_argv(source_flag: str | None) -> None:
    """Warn, once at start, when ``--source`` on the command line holds a password.

    Every local user reads a process's arguments in ``ps``; the environment and files are
    private to Prism's user. The password is taken, so a quick try still works, but never
    echoed. Only the flag counts: ``$PRISM_SOURCE`` and ``prism.toml`` are not in ``ps``.
    """
    if not source_flag or parse_conninfo(source_flag).password is None:
        return
    log.warning(
        "source: --source on the command line holds a password, which every local user can "
        "read in ps; give the connection string in $PRISM_SOURCE instead, or the password "
        "in a file named by --source-password-file or in a $PGPASSFILE entry "
        "(see docs/production-data.md)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_relative_times(sys.argv[1:] if argv is None else argv))
    if args.command != "serve":
        return run_client(args)
    try:
        settings = settings_of(args)
        _configure_logging(settings.log_level)
        warn_of_password_in_argv(getattr(args, "source", None))
        trio.run(_serve_until_signalled, settings)
    except Exception as exc:
        error = find_prism_error(exc)
        if error is None:
            raise
        print_error(error.message, error.hint)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
