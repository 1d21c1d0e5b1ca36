"""The flags several subcommands share, spelled and explained the same way everywhere.

Every command that talks to Kafka takes ``--bootstrap-servers`` (``--bootstrap`` stays a hidden alias where a
command had it, so existing scripts keep working) and names the topic it reads or writes with ``--topic``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from agentwatch.config import ConfigError, Settings, parse_int


def add_bootstrap_servers(parser: argparse.ArgumentParser, *, legacy_alias: bool = False,
                          needs_kafka: bool = False) -> None:
    """``--bootstrap-servers`` (dest ``bootstrap_servers``) and ``--kafka-timeout``; ``legacy_alias`` also takes the
    old ``--bootstrap``. ``needs_kafka``: the CLI checks, before the command runs, that a broker answers (waiting at
    most the start-up timeout) and otherwise ends with one line saying so (:func:`agentwatch.startup.wait_for_kafka`).
    """
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)")
    if legacy_alias:
        parser.add_argument("--bootstrap", dest="bootstrap_servers", help=argparse.SUPPRESS)
    add_kafka_timeout(parser)
    if needs_kafka:
        parser.set_defaults(needs_kafka=True)


def add_kafka_timeout(parser: argparse.ArgumentParser) -> None:
    """``--kafka-timeout``: how long the start-up check waits for a broker."""
    parser.add_argument("--kafka-timeout", type=positive_seconds, metavar="SECONDS",
                        help="at start, wait at most this long for a Kafka broker to answer, then exit with an "
                        "error (default: $AGENTWATCH_KAFKA_STARTUP_TIMEOUT, else 10)")


def add_metrics_port(parser: argparse.ArgumentParser, component: str) -> None:
    """``--metrics-port``: where the command serves its self-monitoring /metrics (agentwatch.selfmon)."""
    parser.add_argument("--metrics-port", type=whole_number(0), metavar="PORT",
                        help=f"serve Prometheus /metrics (liveness, Kafka connectivity, consumer lag, with "
                        f"component=\"{component}\") on this port, on $AGENTWATCH_LISTEN_ADDR (default "
                        "127.0.0.1); 0 picks a free port (default: $AGENTWATCH_METRICS_PORT, else off)")
    parser.set_defaults(precheck=check_metrics_port)


def check_metrics_port(args: argparse.Namespace, settings: Settings) -> None:
    """A ``precheck`` (see :func:`agentwatch.cli.main`) for commands with :func:`add_metrics_port`."""
    from agentwatch.startup import require_free_port

    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    require_free_port(getattr(args, "listen_addr", None) or settings.listen_addr, port, "--metrics-port")


def positive_seconds(text: str) -> float:
    """An argparse ``type`` for a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def add_run_bounds(parser: argparse.ArgumentParser, *,
                   until_end_help: str = "stop once the end offsets seen at start are reached") -> None:
    """``--until-end`` and ``--idle-timeout``: how a long-running consumer command may stop by itself (besides
    Ctrl-C / SIGTERM). One definition, so every command refuses the same bad values (0, negative, nan, inf)."""
    parser.add_argument("--until-end", action="store_true", help=until_end_help)
    parser.add_argument("--idle-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                        help="stop after this many seconds without data")


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
