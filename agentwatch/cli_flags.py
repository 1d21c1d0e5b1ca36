"""The flags several subcommands share, spelled and explained the same way everywhere.

Every command that talks to Kafka takes ``--bootstrap-servers`` (``--bootstrap`` stays a hidden alias where a
command had it, so existing scripts keep working) and names the topic it reads or writes with ``--topic``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from agentwatch.config import ConfigError, parse_int


def add_bootstrap_servers(parser: argparse.ArgumentParser, *, legacy_alias: bool = False) -> None:
    """``--bootstrap-servers`` (dest ``bootstrap_servers``); ``legacy_alias`` also takes the old ``--bootstrap``."""
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)")
    if legacy_alias:
        parser.add_argument("--bootstrap", dest="bootstrap_servers", help=argparse.SUPPRESS)


def add_topic(parser: argparse.ArgumentParser, which: str, verb: str = "read") -> None:
    """``--topic``: the ``which`` topic (``events``, ``alerts``) to ``verb``, defaulting to the configured one."""
    variable = {"events": "AGENTWATCH_EVENTS_TOPIC", "alerts": "AGENTWATCH_ALERTS_TOPIC"}[which]
    parser.add_argument("--topic", help=f"{which} topic to {verb} (default: ${variable}, else <prefix>.{which}, "
                        "prefix $AGENTWATCH_TOPIC_PREFIX or agentwatch)")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number of at least ``minimum``, refused with a usage error otherwise."""

    def parse(text: str) -> int:
        try:
            return parse_int(text, what="value", minimum=minimum)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f"whole number >= {minimum}"
    return parse
