"""``agentwatch``: one command line for every part of the pipeline.

Each subcommand lives in its own module under :mod:`agentwatch.commands` and exposes
``register(subparsers) -> None``; the parser it adds carries its own ``--help`` text and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from agentwatch.config import ConfigError, Settings

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
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"agentwatch: configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
