"""Traces sink throughput (records -> OTLP protobuf bytes) against a bare decode loop, in the same run.

    .venv/bin/python bench/bench_traces.py [--duration 300] [--tenants 6] [--rounds 3] [--per-record 50]

Same simulated events (``FleetSimulator``) encoded once as AgentEventBatch records, then per round:

* baseline: ``AvroCodec.decode`` of every record and a ``collections.Counter`` of (tenant, type): the floor any
  consumer pays;
* traces: ``TracesSink.process`` (decode, assemble per turn, build the span trees) + the SDK's ``ReadableSpan``
  conversion + ``encode_spans`` to the OTLP protobuf request bytes, in requests of 512 spans: everything the sink
  does per batch except the HTTP round trip and the Kafka commit.

Rounds alternate between the two so that a noisy shared machine slows both alike; the figure is the best round.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402

from producers.simulator import FleetSimulator  # noqa: E402
from schemas.codec import AvroCodec  # noqa: E402
from sinks.traces import Span  # noqa: E402
from sinks.traces_export import MAX_SPANS_PER_REQUEST, to_readable  # noqa: E402
from sinks.traces_sink import TracesSink  # noqa: E402


class EncodeOnly:
    """A sender that encodes the OTLP request and sends nothing: the CPU side of an export."""

    def __init__(self) -> None:
        from opentelemetry.sdk.resources import Resource

        self.resource = Resource.create({"service.name": "bench"})
        self.bytes = 0

    def send(self, spans: list[Span]) -> None:
        for i in range(0, len(spans), MAX_SPANS_PER_REQUEST):
            chunk = [to_readable(s, self.resource) for s in spans[i:i + MAX_SPANS_PER_REQUEST]]
            self.bytes += len(encode_spans(chunk).SerializeToString())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds of traffic (default 300)")
    ap.add_argument("--tenants", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-record", type=int, default=50, help="events per AgentEventBatch record")
    args = ap.parse_args()

    codec = AvroCodec()
    events = list(FleetSimulator(seed=7, tenants=args.tenants, duration_s=args.duration).events())
    records = [(0, i, codec.encode_batch("bench", i, 0, events[j:j + args.per_record]))
               for i, j in enumerate(range(0, len(events), args.per_record))]
    print(f"{len(events):,} events in {len(records):,} records ({args.per_record}/record), "
          f"{args.tenants} tenants, {args.duration:g} simulated s")

    def baseline() -> float:
        t0 = time.perf_counter()
        counts: Counter[tuple[str, str]] = Counter()
        for _, _, value in records:
            for e in codec.decode(value).events:
                counts[(e["tenant"], e["type"])] += 1
        return time.perf_counter() - t0

    stats = {}

    def traces() -> float:
        sender = EncodeOnly()
        sink = TracesSink("unused:9092", "bench", sender, codec=codec)
        stop = threading.Event()
        t0 = time.perf_counter()
        for i in range(0, len(records), 500):
            sink.export(sink.process(records[i:i + 500]), stop)
        elapsed = time.perf_counter() - t0
        stats.update(spans=sink.stats.spans_exported, bytes=sender.bytes, turns=sink.assembler.stats.turns,
                     open=sink.assembler.open_turns)
        return elapsed

    best = {"baseline": float("inf"), "traces": float("inf")}
    for _ in range(args.rounds):
        best["baseline"] = min(best["baseline"], baseline())
        best["traces"] = min(best["traces"], traces())
    n = len(events)
    b, t = n / best["baseline"], n / best["traces"]
    print(f"baseline (decode + Counter):            {b:12,.0f} events/s")
    print(f"traces (decode, assemble, spans, OTLP): {t:12,.0f} events/s  = {t / b:.2f}x the baseline")
    print(f"  {stats['turns']:,} turns -> {stats['spans']:,} spans, {stats['bytes'] / 1e6:.1f} MB of OTLP protobuf "
          f"({stats['bytes'] / max(1, stats['spans']):.0f} B/span); {stats['open']:,} turns still open at the end")
    print(f"command: {' '.join(sys.argv)}; python {platform.python_version()} on {platform.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
