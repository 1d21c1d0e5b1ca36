"""``agentwatch``: one command line for every part of the pipeline.

Each subcommand lives in its own module under :mod:`agentwatch.commands` and exposes
``register(subparsers) -> None``; the parser it adds carries its own ``--help`` text and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from agentwatch import kafka_log
from agentwatch.config import ConfigError, Settings
from agentwatch.startup import StartupError, wait_for_kafka

# Order is the order `agentwatch --help` lists them in.
COMMAND_MODULES: tuple[str, ...] = (
    "agentwatch.commands.demo",
    "agentwatch.commands.broker",
    "agentwatch.commands.topics",
    "agentwatch.commands.simulate",
    "agentwatch.commands.consume",
    "agentwatch.commands.worker",
    "agentwatch.commands.audit",
    "agentwatch.commands.replay",
    "agentwatch.commands.traces",
    "agentwatch.commands.logs",
    "agentwatch.commands.exporter",
    "agentwatch.commands.alerts",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentwatch",
        description="Observability and audit pipeline for fleets of Agentao agents. "
        "Configuration comes from the environment (KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, AGENTWATCH_*); "
        "flags override it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level (librdkafka's own lines included) and show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """``"alerts deliver"``: the command and its action, for error messages."""
    name = args.command or ""
    for attr, value in vars(args).items():
        if attr.startswith(f"{name}_") and attr.endswith(("_command", "_action")) and isinstance(value, str):
            return f"{name} {value}"
    return name


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr and an exit code != 0: start-up checks raise
    :class:`~agentwatch.startup.StartupError` (exit 2); anything else unexpected is one line naming it (exit 1),
    with the traceback only under ``-v``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kafka_log.install(verbose=args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    name = f"agentwatch {command_name(args)}"
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"agentwatch: configuration: {exc}", file=sys.stderr)
        return 2
    try:
        precheck = getattr(args, "precheck", None)
        if precheck is not None:  # the command's own quick checks (ports, keys, directories) before waiting on Kafka
            precheck(args, settings)
        if getattr(args, "needs_kafka", False):
            bootstrap = getattr(args, "bootstrap_servers", None) or settings.bootstrap_servers
            wait_for_kafka(bootstrap, getattr(args, "kafka_timeout", None) or settings.kafka_startup_timeout_s)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except StartupError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or socket the command needs: say which and why
        if args.verbose:
            traceback.print_exc()
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"{name}: {exc.strerror or exc}{where}; run with -v for details", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 (the last line of defence: one line, not a traceback)
        if args.verbose:
            traceback.print_exc()
        print(f"{name}: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
