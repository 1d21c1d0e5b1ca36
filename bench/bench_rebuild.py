"""Replay-archive rebuild throughput (events/s from topic to files) against a bare consume + decode loop.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_rebuild.py [--events 100000] [--rounds 3]

Setup (not timed): the simulated fleet's traffic (:class:`producers.simulator.FleetSimulator`: every Agentao event
type in transport order, realistic payloads, tool results up to ~12k characters) is published once through the
real ``EventPublisher`` (AgentEventBatch records of up to 500 events, lz4) to a fresh topic.

Measured in the same run, on the same topic, rounds alternating so a noisy shared machine slows both alike (best
round reported):

* baseline: a bare confluent-kafka loop: partitions assigned at the beginning, ``consume(500)``, ``AvroCodec.decode``
  of every record, count the events, until the end offsets;
* rebuild: ``rebuild_archive`` into a fresh directory, i.e. what ``agentwatch replay rebuild`` runs: the same
  consume + decode, then mapping to replay rows, Agentao's sanitisation (secret scan, caps), JSON lines, one
  ``write`` per file per 2,000 records, mtimes, retention, one ``os.sync`` at the end (all timed); once in one
  process (``--workers 1``) and once with the partitions shared out to one process per CPU (the CLI's default;
  worker start-up included).

Goal (issue 13, goal 3): rebuild in one process >= 0.6x the bare loop, files byte-identical (issue 4 asked >= 0.5x).
No assertions: figures and the ratio are printed. The rebuild's CPU part alone, without Kafka and load-independent
under cachegrind: ``bench_rebuild_cpu.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, KafkaError, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from agentwatch.topics import TopicSpec, ensure_topics  # noqa: E402
from producers.publisher import EventPublisher  # noqa: E402
from producers.simulator import FleetSimulator  # noqa: E402
from schemas.codec import AvroCodec  # noqa: E402
from sinks.archive_sink import RebuildResult, rebuild_archive  # noqa: E402


def publish(bootstrap: str, topic: str, n: int, seed: int) -> int:
    sim = FleetSimulator(seed=seed, tenants=6, services=2, duration_s=24 * 3600)
    sent = 0
    with EventPublisher(bootstrap, topic, buffer_max_events=n + 1) as pub:
        for event in itertools.islice(sim.events(), n):
            sent += pub.publish(event)
        if not pub.flush(300):
            raise SystemExit("publisher did not flush")
    return sent


def bare_loop(bootstrap: str, topic: str) -> tuple[float, int, int]:
    """The baseline: consume + decode + count, until the end offsets. ``(seconds, records, events)``."""
    codec = AvroCodec()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in md.partitions}
        todo = {p: high for p, (low, high) in ends.items() if high > low}
        t0 = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        records = events = 0
        while todo:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is not None:
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise SystemExit(f"consume error: {msg.error()}")
                    continue
                records += 1
                events += len(codec.decode(msg.value()).events)
                p = msg.partition()
                if p in todo and msg.offset() + 1 >= todo[p]:
                    del todo[p]
        return time.perf_counter() - t0, records, events
    finally:
        consumer.close()


def rebuild(bootstrap: str, topic: str, out: Path, workers: int) -> tuple[float, RebuildResult]:
    """``agentwatch replay rebuild``'s work, final sync included: ``(seconds, result)``."""
    t0 = time.perf_counter()
    result = rebuild_archive(bootstrap, topic, out, workers=workers)
    return time.perf_counter() - t0, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where the rebuilt archives go (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rebuild processes for the parallel variant (default: the number of CPUs)")
    args = parser.parse_args()

    topic = f"bench.rebuild.{uuid.uuid4().hex[:10]}"
    ensure_topics(args.bootstrap, [TopicSpec(topic, args.partitions, 3_600_000, "delete", {})])
    base = Path(tempfile.mkdtemp(prefix="bench-rebuild-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        sent = publish(args.bootstrap, topic, args.events, args.seed)
        print(f"published {sent:,} simulated events to {topic} ({args.partitions} partitions) "
              f"in {time.perf_counter() - t0:.1f}s")
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        workers = args.workers or os.cpu_count() or 1
        variants = [1] if workers == 1 else [1, workers]
        bare: list[float] = []
        rebuilt: dict[int, list[float]] = {w: [] for w in variants}
        result = None
        for r in range(args.rounds):
            secs, records, events = bare_loop(args.bootstrap, topic)
            bare.append(events / secs)
            print(f"  round {r + 1}: bare consume+decode   {records:,} records, {events:,} events in {secs:.2f}s "
                  f"= {events / secs:,.0f} events/s")
            for w in variants:
                out = base / f"round-{r}-{w}"
                secs, result = rebuild(args.bootstrap, topic, out, w)
                rebuilt[w].append(result.events / secs)
                print(f"  round {r + 1}: rebuild, {w} worker(s) {result.records:,} records, {result.events:,} events "
                      f"in {secs:.2f}s = {result.events / secs:,.0f} events/s")
                shutil.rmtree(out, ignore_errors=True)
        assert result is not None
        print(f"archive: {result.rows:,} rows, {result.bytes / 1e6:,.1f} MB, {result.instances:,} instances; "
              f"{sum(result.skipped.values()):,} events without a replay kind")
        best_bare = max(bare)
        print(f"bare consume+decode:    {best_bare:,.0f} events/s (best of {args.rounds})")
        for w in variants:
            best = max(rebuilt[w])
            print(f"rebuild, {w} worker(s):   {best:,.0f} events/s (best of {args.rounds}), "
                  f"ratio {best / best_bare:.2f}x (goal for 1 worker >= 0.6x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        for fut in admin.delete_topics([topic], operation_timeout=10).values():
            try:
                fut.result(10)
            except Exception:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
