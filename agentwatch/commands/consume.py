"""``agentwatch consume``: read the events topic, decode every record, and show what arrived.

A bare confluent-kafka loop (no Faust): the quickest way for an operator to see that events flow and decode,
and the `main job`'s visible result. Records that do not decode are counted by reason, never fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError

from agentwatch.cli_flags import add_bootstrap_servers, add_topic
from agentwatch.config import Settings
from agentwatch.kafka_log import with_logger
from agentwatch.topic_reading import WholeTopic
from schemas.codec import AvroCodec, DecodeError


@dataclass
class Tally:
    """What a consume run saw."""

    records: int = 0
    batches: int = 0
    events: int = 0
    per_tenant_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, events: list[dict[str, Any]], is_batch: bool, keep_samples: int) -> None:
        self.records += 1
        self.batches += int(is_batch)
        self.events += len(events)
        for ev in events:
            self.per_tenant_type[(ev["tenant"], ev["type"])] += 1
            # one sample per event type, so the few shown are varied
            if len(self.samples) < keep_samples and all(s["type"] != ev["type"] for s in self.samples):
                self.samples.append(ev)


def consume_all(bootstrap: str, topic: str, codec: AvroCodec, *, idle_timeout: float = 5.0,
                max_events: int | None = None, samples: int = 5, progress: bool = True) -> Tally:
    """Read ``topic`` from the beginning until the end offsets seen at start are reached (or idle_timeout)."""
    consumer = Consumer(with_logger({
        "bootstrap.servers": bootstrap,
        "group.id": f"agentwatch-consume-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }))
    tally = Tally()
    try:
        try:
            whole = WholeTopic(consumer, topic)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        last_data = time.monotonic()
        last_print = 0.0
        while not whole.done and time.monotonic() - last_data < idle_timeout:
            msgs = consumer.consume(1000, timeout=0.5)
            for msg in msgs:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        tally.bad[f"kafka:{msg.error().name()}"] += 1
                    continue
                last_data = time.monotonic()
                try:
                    decoded = codec.decode(msg.value())
                except DecodeError as exc:
                    tally.records += 1
                    tally.bad[exc.reason] += 1
                else:
                    tally.add(decoded.events, decoded.is_batch, samples)
                whole.saw(msg)
            if progress and time.monotonic() - last_print > 1.0:
                last_print = time.monotonic()
                print(f"\r  consumed {tally.records:,} records, {tally.events:,} events", end="", file=sys.stderr)
            if max_events is not None and tally.events >= max_events:
                break
        if progress:
            print(f"\r  consumed {tally.records:,} records, {tally.events:,} events", file=sys.stderr)
    finally:
        consumer.close()
    return tally


def render(tally: Tally, top_types: int = 8) -> str:
    """A human summary: events per tenant (with the busiest types) and a few decoded sample events."""
    lines = [f"{tally.events:,} events in {tally.records:,} records ({tally.batches:,} batches)"]
    if tally.bad:
        lines.append("undecodable records: " + ", ".join(f"{k}={v}" for k, v in sorted(tally.bad.items())))
    tenants = sorted({t for t, _ in tally.per_tenant_type})
    lines.append("")
    lines.append(f"{'tenant':<16} {'events':>9}  top event types")
    for tenant in tenants:
        counts = Counter({ty: n for (t, ty), n in tally.per_tenant_type.items() if t == tenant})
        top = ", ".join(f"{ty}={n}" for ty, n in counts.most_common(top_types))
        lines.append(f"{tenant:<16} {sum(counts.values()):>9,}  {top}")
    if tally.samples:
        lines.append("")
        lines.append("sample events (decoded, nulls omitted):")
        for ev in tally.samples:
            lines.append("  " + json.dumps({k: v for k, v in ev.items() if v is not None}, sort_keys=False)[:300])
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    topic = args.topic or settings.topics.events
    print(f"reading {topic} at {settings.bootstrap_servers} from the beginning", file=sys.stderr)
    tally = consume_all(settings.bootstrap_servers, topic, AvroCodec(), idle_timeout=args.idle_timeout,
                        max_events=args.max_events, samples=args.samples)
    print(render(tally))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consume",
        help="read the events topic and show what arrived (counts per tenant and type, samples)",
        description="Read the events topic from the beginning to its current end, decode every record "
        "(batches and single events, both framings), and print counts per tenant and event type, "
        "undecodable records by reason, and a few decoded sample events.",
    )
    add_bootstrap_servers(p, legacy_alias=True, needs_kafka=True)
    add_topic(p, "events")
    p.add_argument("--max-events", type=int, default=None, metavar="N", help="stop after this many events")
    p.add_argument("--idle-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="stop after this many seconds without data (default 5)")
    p.add_argument("--samples", type=int, default=5, metavar="N", help="how many sample events to print (default 5)")
    p.set_defaults(func=run)
