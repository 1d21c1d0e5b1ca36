"""``agentwatch exporter``: the Prometheus ``/metrics`` endpoint of the agent fleet (see :mod:`sinks.exporter`).

Run as many as you like with the same ``--group``: they share the events topic's partitions and each exposes the
counters of what it consumed, so sum over instances in PromQL (``sum without(instance)(...)``). Scrape config,
alert rules and a Grafana dashboard are in ``deploy/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from agentwatch.cli_flags import add_bootstrap_servers, add_topic, whole_number
from agentwatch.config import Settings
from agentwatch.foreground import stop_on_signals
from agentwatch.kafka_log import with_logger
from agentwatch.selfmon import start_selfmon
from agentwatch.startup import require_free_port
from schemas.pricing import PricesFileError, price_table
from sinks.exporter import Exporter, SpoolDirCollector
from sinks.prometheus import CardinalityLimits, ExporterState

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464


def build(args: argparse.Namespace, settings: Settings) -> tuple[Exporter, CollectorRegistry]:
    """The exporter and its registry (process, GC and platform collectors included) from flags and settings."""
    topic = args.topic or settings.topics.events
    per_label = {"tool": args.max_tools, "model": args.max_models, "error_type": args.max_error_types}
    limits = CardinalityLimits(max_tenants=args.max_tenants, max_values=args.max_values, per_label=per_label)
    state = ExporterState(topic, limits=limits, lateness_s=args.lateness,
                          prices=price_table(getattr(args, "prices", None) or settings.prices_file))
    exporter = Exporter(settings.bootstrap_servers, topic, state=state, group_id=args.group,
                        dead_letter_topic=None if args.no_dead_letter else settings.topics.dead_letter,
                        commit_interval_s=args.commit_interval, health_interval_s=args.health_interval,
                        consumer_config=with_logger())
    registry = CollectorRegistry()
    exporter.register(registry)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    spool = args.spool_dir or (settings.spool_dir if args.watch_spool else None)
    if spool:
        registry.register(SpoolDirCollector(Path(spool)))
    return exporter, registry


def _port(args: argparse.Namespace, settings: Settings) -> int:
    return args.port if args.port is not None else settings.metrics_port if settings.metrics_port is not None \
        else DEFAULT_PORT


def precheck(args: argparse.Namespace, settings: Settings) -> None:
    require_free_port(args.addr or settings.listen_addr, _port(args, settings), "--port")


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    try:
        exporter, registry = build(args, settings)
    except PricesFileError as exc:
        print(f"agentwatch exporter: {exc}", file=sys.stderr)
        return 2
    addr = args.addr or settings.listen_addr
    port = _port(args, settings)
    # /metrics carries agentwatch_kafka_connected: an exporter cut off from Kafka says so instead of serving its
    # last counters as if all were well (up stays 1: the process is alive)
    mon = start_selfmon("exporter", args.group, [exporter.topic], port, bootstrap_servers=settings.bootstrap_servers,
                        listen_addr=addr, registry=registry, flag="--port")
    print(f"serving http://{addr}:{mon.port}/metrics; consuming {exporter.topic} at "
          f"{settings.bootstrap_servers} in group {args.group}", file=sys.stderr)
    try:
        with stop_on_signals() as stop:
            exporter.run(stop)
    finally:
        mon.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "exporter",
        help="serve Prometheus /metrics computed from the events topic",
        description="Consume the events topic in a consumer group and serve the fleet's metrics (agent_* per "
        "tenant, OpenTelemetry gen_ai_* histograms, the pipeline's own health) at /metrics. Several instances "
        "in one group split the partitions; sum their series over instances.",
    )
    p.add_argument("--port", "--metrics-port", dest="port", type=whole_number(0), default=None,
                   help=f"HTTP port of /metrics (default: $AGENTWATCH_METRICS_PORT, else {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--addr", default=None,
                   help="address to listen on; /metrics has no authentication, so the default is loopback "
                   "(default: $AGENTWATCH_LISTEN_ADDR, else 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--group", default="agentwatch-exporter", help="consumer group (default agentwatch-exporter)")
    add_bootstrap_servers(p, needs_kafka=True)
    add_topic(p, "events")
    p.add_argument("--prices", type=Path, default=None,
                   help="YAML file of negotiated or self-hosted LLM prices that win over genai-prices' for "
                   "agent_llm_cost_usd_total; use the worker's file (default: $AGENTWATCH_PRICES_FILE)")
    p.add_argument("--no-dead-letter", action="store_true", help="do not watch the dead-letter topic's size")
    p.add_argument("--spool-dir", default=None, help="a producer spool directory on this host to report the size of")
    p.add_argument("--watch-spool", action="store_true", help="report the size of $AGENTWATCH_SPOOL_DIR")
    p.add_argument("--max-tenants", type=int, default=1000,
                   help="tenants kept apart; the rest are 'other' (default 1000)")
    p.add_argument("--max-values", type=int, default=50, help="distinct values per tenant and label (default 50)")
    p.add_argument("--max-tools", type=int, default=50, help="distinct tool names per tenant (default 50)")
    p.add_argument("--max-models", type=int, default=20, help="distinct models per tenant (default 20)")
    p.add_argument("--max-error-types", type=int, default=20, help="distinct error types per tenant (default 20)")
    p.add_argument("--lateness", type=float, default=60.0,
                   help="seconds behind its partition's newest event time after which an event counts as late")
    p.add_argument("--commit-interval", type=float, default=1.0, help="seconds between offset commits (default 1)")
    p.add_argument("--health-interval", type=float, default=5.0,
                   help="seconds between consumer-lag and dead-letter checks (default 5)")
    p.set_defaults(func=run, precheck=precheck)
