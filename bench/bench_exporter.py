"""Exporter throughput (records -> metrics) against a bare decode loop, and scrape cost, in the same run.

    .venv/bin/python bench/bench_exporter.py [--duration 300] [--tenants 6] [--rounds 3] [--per-record 50]

Same simulated events (``FleetSimulator``) encoded once as AgentEventBatch records, then per round:

* baseline: ``AvroCodec.decode`` of every record and a ``collections.Counter`` of (tenant, type): the floor any
  consumer pays;
* exporter: ``ExporterState.process_batch`` (decode, dedup, late check, every agent_* / gen_ai_* update, the
  cardinality guard), in poll-sized batches of 500 records;
* prometheus_client: the same mapping written with ``Counter.labels(...).inc()`` / ``Histogram.observe`` on a
  registry (what the custom collector avoids: a lock and a label lookup per increment).

Then the scrape: ``generate_latest`` of the exporter's registry, and its size. Rounds alternate between variants
so that a noisy shared machine slows all alike; the figure is the best round.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client import Counter as PCounter  # noqa: E402
from prometheus_client import Histogram as PHistogram  # noqa: E402

from producers.simulator import FleetSimulator  # noqa: E402
from schemas.codec import AvroCodec  # noqa: E402
from sinks.prometheus import (  # noqa: E402
    TOKEN_TYPES,
    TOOL_BUCKETS_S,
    TURN_BUCKETS_S,
    ExporterState,
    error_type_of,
)


def records_of(events: list[dict[str, Any]], per_record: int) -> list[tuple[int, bytes]]:
    codec = AvroCodec()
    return [(i // per_record % 6, codec.encode_batch("bench", i // per_record, 0, events[i:i + per_record]))
            for i in range(0, len(events), per_record)]


def baseline(records: list[tuple[int, bytes]]) -> int:
    codec = AvroCodec()
    counts: Counter[tuple[str, str]] = Counter()
    for _, value in records:
        for ev in codec.decode(value).events:
            counts[(ev["tenant"], ev["type"])] += 1
    return sum(counts.values())


def exporter(records: list[tuple[int, bytes]]) -> int:
    state = ExporterState("events")
    state.register(CollectorRegistry())
    n = 0
    for i in range(0, len(records), 500):
        n += state.process_batch(records[i:i + 500])
    return n


def client_counters(records: list[tuple[int, bytes]]) -> int:
    """The main agent_* updates with prometheus_client's own metric objects (no guard, no gen_ai)."""
    codec = AvroCodec()
    reg = CollectorRegistry()
    turns = PCounter("agent_turns", "", ["tenant"], registry=reg)
    turn_dur = PHistogram("agent_turn_duration_seconds", "", ["tenant"], buckets=TURN_BUCKETS_S, registry=reg)
    calls = PCounter("agent_tool_calls", "", ["tenant", "tool", "status"], registry=reg)
    tool_dur = PHistogram("agent_tool_duration_seconds", "", ["tenant", "tool"], buckets=TOOL_BUCKETS_S, registry=reg)
    tokens = PCounter("agent_llm_tokens", "", ["tenant", "model", "type"], registry=reg)
    errors = PCounter("agent_llm_failed_attempts", "", ["tenant", "error_type"], registry=reg)
    confirm = PCounter("agent_confirm_requests", "", ["tenant", "outcome"], registry=reg)
    events = PCounter("agentwatch_exporter_events", "", ["type"], registry=reg)
    n = 0
    for _, value in records:
        for ev in codec.decode(value).events:
            n += 1
            typ, t = ev["type"], ev["tenant"]
            events.labels(typ).inc()
            if typ == "turn_end":
                turns.labels(t).inc()
                if ev["duration_ms"] is not None:
                    turn_dur.labels(t).observe(ev["duration_ms"] / 1000)
            elif typ == "tool_complete":
                calls.labels(t, ev["tool_name"] or "unknown", ev["status"] or "unknown").inc()
                if ev["duration_ms"] is not None:
                    tool_dur.labels(t, ev["tool_name"] or "unknown").observe(ev["duration_ms"] / 1000)
            elif typ == "llm_call_completed":
                for field, ttype in TOKEN_TYPES:
                    if ev[field] is not None:
                        tokens.labels(t, ev["model"] or "unknown", ttype).inc(ev[field])
                if ev["status"] == "error":
                    errors.labels(t, error_type_of(ev)).inc()
            elif typ == "llm_retry":
                errors.labels(t, error_type_of(ev)).inc()
            elif typ == "tool_confirmation":
                confirm.labels(t, "request").inc()
            elif typ == "confirm_resolved":
                confirm.labels(t, ev["confirm_outcome"] or "unknown").inc()
    return n


def best(fn: Callable[[list[tuple[int, bytes]]], int], records: list[tuple[int, bytes]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(records)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds of traffic (default 300)")
    ap.add_argument("--tenants", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-record", type=int, default=50, help="events per AgentEventBatch record (default 50)")
    args = ap.parse_args()
    events = list(FleetSimulator(seed=1, tenants=args.tenants, duration_s=args.duration, incidents=()).events())
    records = records_of(events, args.per_record)
    print(f"python {platform.python_version()}, {len(events):,} events in {len(records):,} records "
          f"({args.per_record}/record), {args.tenants} tenants, best of {args.rounds} rounds")
    variants = {"baseline (decode + Counter)": baseline, "exporter (ExporterState)": exporter,
                "prometheus_client objects": client_counters}
    times: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            dt, n = best(fn, records)
            assert n == len(events), (name, n)
            times[name] = min(times.get(name, float("inf")), dt)
    base = times["baseline (decode + Counter)"]
    for name, dt in times.items():
        print(f"  {name:<30} {len(events) / dt:>10,.0f} events/s   {base / dt:5.2f}x baseline")
    state = ExporterState("events")
    registry = state.register(CollectorRegistry())
    state.process_batch(records)
    t0 = time.perf_counter()
    text = generate_latest(registry)
    dt = time.perf_counter() - t0
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    print(f"  scrape: {series:,} series, {len(text) / 1024:,.0f} KiB, {dt * 1000:.1f} ms")


if __name__ == "__main__":
    main()
