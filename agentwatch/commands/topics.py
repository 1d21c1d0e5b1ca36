"""``agentwatch topics create|list``: the admin step that creates agentwatch's topics explicitly.

Partitions, retention and cleanup policy come from :func:`agentwatch.topics.default_topics`, never from broker
defaults. The table shows what the broker actually has, and flags a topic whose settings differ from the code
(an existing topic is never altered behind an operator's back).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from agentwatch.cli_flags import add_bootstrap_servers
from agentwatch.config import Settings
from agentwatch.kafka_log import quiet_admin
from agentwatch.topics import DAY_MS, TopicSpec, default_topics, ensure_topics

HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class TopicState:
    """What the broker says about one topic."""

    partitions: int
    config: dict[str, str]


@dataclass(frozen=True)
class Row:
    name: str
    partitions: str
    retention: str
    cleanup_policy: str
    status: str


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "topics", help="create or list agentwatch's Kafka topics",
        description="Create or list the topics agentwatch uses (events, dead letters, metrics, alerts), with the "
        "partitions, retention and cleanup policy stated in agentwatch/topics.py. Names come from "
        "AGENTWATCH_TOPIC_PREFIX / AGENTWATCH_*_TOPIC, the broker from KAFKA_BOOTSTRAP_SERVERS.")
    sub = parser.add_subparsers(dest="topics_action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create the topics that do not exist yet",
                            description="Create missing topics; existing ones are left as they are.")
    create.add_argument("--partitions", type=int,
                        metavar="N",
                        help="partitions of the events and metrics topics (default: $AGENTWATCH_EVENTS_PARTITIONS, "
                        "else 6)")
    create.set_defaults(func=_create)
    listing = sub.add_parser("list", help="show the topics and their state on the broker",
                             description="Show each agentwatch topic as the broker has it: exists, missing, or "
                             "differs from the code.")
    listing.set_defaults(func=_list)
    for p in (create, listing):
        add_bootstrap_servers(p, needs_kafka=True)
        p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker (default 15)")


def format_retention(ms: str | int) -> str:
    value = int(ms)
    if value < 0:
        return "forever"
    if value and value % DAY_MS == 0:
        return f"{value // DAY_MS}d"
    if value and value % HOUR_MS == 0:
        return f"{value // HOUR_MS}h"
    return f"{value}ms"


def differences(spec: TopicSpec, state: TopicState) -> list[str]:
    """How the broker's topic differs from its spec, e.g. ``["partitions 3 (code: 6)"]``."""
    out = [] if state.partitions == spec.partitions else [f"partitions {state.partitions} (code: {spec.partitions})"]
    for key, wanted in spec.config().items():
        actual = state.config.get(key)
        if actual != wanted:
            out.append(f"{key} {actual} (code: {wanted})")
    return out


def rows(specs: list[TopicSpec], actual: dict[str, TopicState], created: dict[str, str] | None = None) -> list[Row]:
    """One table row per spec: the broker's values when the topic exists, the code's when it is missing."""
    out = []
    for spec in specs:
        state = actual.get(spec.name)
        if state is None:
            out.append(Row(spec.name, str(spec.partitions), format_retention(spec.retention_ms),
                           spec.cleanup_policy, "missing"))
            continue
        status = (created or {}).get(spec.name, "exists")
        diff = differences(spec, state)
        if diff:
            status += "; differs: " + ", ".join(diff)
        out.append(Row(spec.name, str(state.partitions), format_retention(state.config.get("retention.ms", "-1")),
                       state.config.get("cleanup.policy", "?"), status))
    return out


def render(table: list[Row]) -> str:
    header = Row("TOPIC", "PARTITIONS", "RETENTION", "CLEANUP", "STATUS")
    cells = [[r.name, r.partitions, r.retention, r.cleanup_policy, r.status] for r in [header, *table]]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
                     for row in cells)


def describe(bootstrap_servers: str, names: list[str], timeout: float) -> dict[str, TopicState]:
    """Partitions and effective config of those ``names`` that exist on the broker."""
    admin = AdminClient(quiet_admin({"bootstrap.servers": bootstrap_servers}))  # errors are raised, not logged
    topics = admin.list_topics(timeout=timeout).topics
    present = [n for n in names if n in topics]
    if not present:
        return {}
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in present],
                                     request_timeout=timeout)
    out = {}
    for resource, fut in futures.items():
        entries = fut.result(timeout)
        out[resource.name] = TopicState(len(topics[resource.name].partitions),
                                        {k: e.value for k, e in entries.items() if e.value is not None})
    return out


def _settings(args: argparse.Namespace, settings: Settings) -> Settings:
    return settings.with_(bootstrap_servers=args.bootstrap_servers,
                          events_partitions=getattr(args, "partitions", None))


def sized_topics(settings: Settings, events_partitions: int | None) -> list[TopicSpec]:
    """The topics to create, the internal ones (partials, changelogs) sized from the events topic when it exists
    (``events_partitions``): Faust requires each table's changelog to have as many partitions as the topic its agent
    reads, and the merge stage waits for a watermark from each events partition."""
    n = events_partitions or settings.events_partitions
    return default_topics(settings.with_(events_partitions=n))


def _create(args: argparse.Namespace, settings: Settings) -> int:
    settings = _settings(args, settings)
    if settings.events_partitions < 1:
        print("agentwatch topics create: --partitions must be at least 1", file=sys.stderr)
        return 2
    try:
        # fails fast and quietly when Kafka is away; an existing events topic sizes the internal ones
        existing = describe(settings.bootstrap_servers, [settings.topics.events], args.timeout)
        events = existing.get(settings.topics.events)
        if events is not None and args.partitions is not None and events.partitions != args.partitions:
            print(f"agentwatch topics create: {settings.topics.events} exists with {events.partitions} partitions, "
                  f"not {args.partitions}; the worker's internal topics follow it", file=sys.stderr)
        specs = sized_topics(settings, events.partitions if events is not None else None)
        created = ensure_topics(settings.bootstrap_servers, specs, settings.replication_factor, timeout=args.timeout)
        actual = describe(settings.bootstrap_servers, [s.name for s in specs], args.timeout)
    except KafkaException as exc:
        return _unreachable("create", settings, exc)
    print(render(rows(specs, actual, created)))
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    settings = _settings(args, settings)
    specs = default_topics(settings)
    try:
        actual = describe(settings.bootstrap_servers, [s.name for s in specs], args.timeout)
    except KafkaException as exc:
        return _unreachable("list", settings, exc)
    print(render(rows(specs, actual)))
    return 0


def _unreachable(action: str, settings: Settings, exc: KafkaException) -> int:
    print(f"agentwatch topics {action}: Kafka at {settings.bootstrap_servers} failed: {exc}\n"
          "  (start a local one with `agentwatch broker start`, or set KAFKA_BOOTSTRAP_SERVERS)", file=sys.stderr)
    return 1
