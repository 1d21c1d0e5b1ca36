"""The replay rebuild's CPU part without Kafka: records captured once from the bench topic, replayed in process.

    # once, with the broker (in the shared lock): publish bench_rebuild.py's workload, keep the records
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 PYTHONPATH=. .venv/bin/python bench/bench_rebuild_cpu.py \\
        --capture /tmp/rebuild-records.bin --events 150000
    # then, any number of times (no broker; instruction counts with valgrind --tool=cachegrind --cache-sim=no)
    PYTHONPATH=. .venv/bin/python bench/bench_rebuild_cpu.py /tmp/rebuild-records.bin [--rounds 3] [--out DIR]

``bench_rebuild.py``'s wall-clock ratio swings with the shared machine's load and includes librdkafka's fetch.
This replays the same record bytes through what ``rebuild_archive`` runs per batch (``ArchiveSink.process``: decode,
``ArchiveWriter.add``; ``flush`` every 2,000 records, no fsync) and, in the same run, the bare loop's decode + count
over the same records, and prints process-CPU events/s of both and their ratio. ``--out DIR`` keeps the archive (to
compare two code versions' files byte by byte: ``diff -r``).
"""

from __future__ import annotations

import argparse
import marshal
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from schemas.codec import AvroCodec  # noqa: E402
from sinks.archive_sink import ArchiveSink  # noqa: E402
from sinks.archive_store import ArchiveWriter  # noqa: E402

Record = tuple[int, int, bytes]


def capture(bootstrap: str, path: Path, events: int, partitions: int, seed: int) -> int:
    """Publish ``bench_rebuild.py``'s workload to a fresh topic and save its records (partition, offset, value)."""
    from bench_rebuild import publish
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from agentwatch.topics import TopicSpec, ensure_topics

    topic = f"bench.rebuild-cpu.{uuid.uuid4().hex[:10]}"
    ensure_topics(bootstrap, [TopicSpec(topic, partitions, 3_600_000, "delete", {})])
    try:
        publish(bootstrap, topic, events, seed)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-cpu-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "isolation.level": "read_committed"})
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in md.partitions}
        todo = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        records: list[Record] = []
        while todo:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error() is not None:
                    continue
                records.append((msg.partition(), msg.offset(), msg.value()))
                if msg.offset() + 1 >= todo.get(msg.partition(), 1 << 62):
                    del todo[msg.partition()]
        consumer.close()
    finally:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic])
    path.write_bytes(marshal.dumps(records))
    return len(records)


def replay(records: list[Record], out: Path, batch: int = 500, flush_every: int = 2_000) -> tuple[int, int, int]:
    """``(events, rows, bytes)`` after feeding ``records`` through the rebuild's per-batch work into ``out``."""
    writer = ArchiveWriter(out, fsync=False, max_instances=None)
    sink = ArchiveSink("unused:9092", "unused", writer)
    since = 0
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        sink.process(chunk)
        since += len(chunk)
        if since >= flush_every:
            writer.flush()
            since = 0
    writer.flush()
    writer.close()
    return sink.stats.events, writer.stats.rows, writer.stats.bytes


def bare(records: list[Record]) -> int:
    codec = AvroCodec()
    n = 0
    for _p, _o, value in records:
        n += len(codec.decode(value).events)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", type=Path, nargs="?", help="a file written by --capture")
    ap.add_argument("--capture", type=Path, help="publish the workload and write its records here")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N records")
    ap.add_argument("--only", choices=("rebuild", "bare"), help="run one side only (for instruction counts)")
    ap.add_argument("--out", type=Path, help="keep the last round's archive here (must not exist)")
    args = ap.parse_args()
    if args.capture:
        n = capture(args.bootstrap, args.capture, args.events, args.partitions, args.seed)
        print(f"captured {n:,} records into {args.capture}")
        return 0
    if args.records is None:
        ap.error("give a records file (made with --capture)")
    records: list[Record] = marshal.loads(args.records.read_bytes())[:args.limit]
    bare_rates, rebuild_rates = [], []
    for r in range(args.rounds):
        if args.only != "rebuild":
            t0 = time.process_time()
            events = bare(records)
            bare_rates.append(events / (time.process_time() - t0))
        if args.only != "bare":
            tmp = Path(tempfile.mkdtemp(prefix="bench-rebuild-cpu-"))
            try:
                t0 = time.process_time()
                events, rows, size = replay(records, tmp / "a")
                secs = time.process_time() - t0
                rebuild_rates.append(events / secs)
                if args.out and r == args.rounds - 1:
                    shutil.move(str(tmp / "a"), str(args.out))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"  round {r + 1}: {len(records):,} records, {events:,} events -> {rows:,} rows, "
                  f"{size / 1e6:.1f} MB")
    if bare_rates:
        print(f"bare decode + count: {max(bare_rates):,.0f} events/CPU-s (best of {args.rounds})")
    if rebuild_rates:
        print(f"rebuild CPU part:    {max(rebuild_rates):,.0f} events/CPU-s (best of {args.rounds})")
    if bare_rates and rebuild_rates:
        print(f"ratio {max(rebuild_rates) / max(bare_rates):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
