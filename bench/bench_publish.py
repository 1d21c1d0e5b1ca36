"""Sustained publish throughput: events/s acknowledged by a real Kafka broker, encoding included.

Measured in the same run:

* ``EventPublisher``: ``publish()`` of ready event dicts (stamped beforehand) from the calling thread, then
  ``flush()``; the clock runs from the first ``publish`` until every event is acknowledged. Validation,
  Avro batch encoding (``AgentEventBatch`` per session shard), lz4 and the idempotent producer are included.
* the same with ``publish_raw=True``: what the default scrubbing (secret scan, capture flags) costs;
* ``EventPublisher`` with a disk spool (the disk buffer: every record is written to a spool segment before it is
  handed to librdkafka, and acknowledged records are deleted), same events, spool in ``--spool-parent`` (a temp
  directory by default: put it on the disk you would use).
* baseline: raw confluent-kafka producing the same events as pre-encoded single ``AgentEvent`` records (encoding
  done before the clock starts), same producer settings, until ``flush()`` returns.

Goal (issue 2, §8): >= 50,000 events/s per producer process. No assertions: figures and the ratio are printed::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python bench/bench_publish.py --events 300000
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import confluent_kafka  # noqa: E402
import fastavro  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from producers.mapping import payload_text  # noqa: E402
from producers.publisher import EventPublisher  # noqa: E402
from producers.sharding import shard_key  # noqa: E402
from producers.stamp import Stamper  # noqa: E402
from schemas.codec import AvroCodec  # noqa: E402

TOOLS = ["read_file", "write_file", "run_shell_command", "grep", "web_fetch"]


def make_events(n: int, sessions: int, *, foreign_payload: bool = False) -> list[dict[str, Any]]:
    """Tool and LLM events as the bridge produces them: typed fields + a small JSON payload text from the bridge's
    serialiser (:func:`producers.mapping.payload_text`, which the publisher trusts); with ``foreign_payload`` the
    same texts as plain ``str``, which the publisher parses to validate."""
    stamper = Stamper(tenant="acme", service="bench")
    def text(payload: dict[str, Any]) -> str | None:
        made = payload_text(payload)
        return str(made) if foreign_payload else made
    llm_payload = text({"attempt": 1, "first_token_ms": 210, "finish_reason_reported": True})
    tool_payload = text({"error": None})
    out = []
    for i in range(n):
        sid = f"session-{i % sessions}"
        if i % 3 == 0:
            out.append(stamper.stamp("llm_call_completed", {
                "status": "ok", "model": "gpt-4o-mini", "duration_ms": 800 + i % 400, "prompt_tokens": 2800,
                "completion_tokens": 48, "cache_read_tokens": 1400, "cache_creation_tokens": 0,
                "reasoning_tokens": 7, "finish_reason": "tool_calls", "payload": llm_payload}, session_id=sid))
        else:
            out.append(stamper.stamp("tool_complete", {
                "tool_name": TOOLS[i % len(TOOLS)], "call_id": f"call_{i}", "status": "ok" if i % 17 else "error",
                "duration_ms": i % 250, "payload": tool_payload}, session_id=sid, turn_id=f"turn-{i // 40}"))
    return out


def run_publisher(bootstrap: str, topic: str, events: list[dict[str, Any]], batch: int,
                  publish_raw: bool = False, spool_dir: Path | None = None, **kw: Any) -> tuple[float, dict]:
    with EventPublisher(bootstrap, topic, batch_max_events=batch, buffer_max_events=len(events) + 1,
                        publish_raw=publish_raw, spool_dir=spool_dir, **kw) as pub:
        t0 = time.perf_counter()
        c0 = time.process_time()
        publish = pub.publish
        for e in events:
            publish(e)
        enqueued_s = time.perf_counter() - t0
        ok = pub.flush(300)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        stats = pub.stats
    stats["flushed"] = ok
    stats["enqueue_s"] = enqueued_s
    stats["cpu_s"] = cpu
    return elapsed, stats


def run_raw(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> tuple[float, int, float]:
    delivered = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "compression.type": "lz4", "linger.ms": 5, "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})
    t0 = time.perf_counter()
    c0 = time.process_time()
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(300)
    return time.perf_counter() - t0, delivered, time.process_time() - c0


def replay(mode: str, n: int, sessions: int) -> int:
    """The sender's work per event without Kafka or threads: a load-independent figure under
    ``valgrind --tool=cachegrind`` (instructions per event = the difference of two ``--events`` counts / their
    difference, so start-up cancels out)."""
    from producers.normalize import EventNormalizer
    from producers.scrub import Scrubber

    events = make_events(n, sessions)
    normalize = EventNormalizer(scrubber=Scrubber() if mode == "scrubbed" else None).normalize
    encode = AvroCodec().event_body_encoder  # what the publisher's sender calls
    counters: dict[str, int] = {}
    for e in events if mode != "setup" else ():
        encode(normalize(e, counters)[0])
    print(f"replay {mode}: {n} events")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500, help="batch_max_events of the publisher (default 500)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--spool-parent", type=Path, default=None,
                        help="directory in which the spooled run makes its spool (default: a temp directory)")
    parser.add_argument("--gil-slice", type=int, default=None,
                        help="gil_slice_events of the publishers (0: never release the GIL while draining; default: "
                        "the publisher's default)")
    parser.add_argument("--foreign-payload", action="store_true",
                        help="payload texts as plain str (validated by parsing) instead of the bridge's own")
    parser.add_argument("--replay", choices=("scrubbed", "raw", "setup"), default=None,
                        help="no Kafka: only build the events and run the sender's per-event work on them (normalize "
                        "with the default scrubber or none, encode), for instruction counts under valgrind; 'setup' "
                        "builds the events only (subtract it). See bench/README.md, 'The agent's thread'")
    args = parser.parse_args()
    if args.replay is not None:
        return replay(args.replay, args.events, args.sessions)

    from confluent_kafka.admin import AdminClient

    from agentwatch.topics import TopicSpec, ensure_topics

    print(f"python {platform.python_version()}  confluent-kafka {confluent_kafka.__version__}  "
          f"librdkafka {confluent_kafka.libversion()[0]}  fastavro {fastavro.__version__}  "
          f"prometheus_client {importlib.metadata.version('prometheus_client')}  cpus {os.cpu_count()}")
    suffix = uuid.uuid4().hex[:8]
    topics = {"publisher": f"bench-publish-{suffix}", "raw": f"bench-raw-{suffix}",
              "unscrubbed": f"bench-unscrubbed-{suffix}", "spooled": f"bench-spooled-{suffix}"}
    ensure_topics(args.bootstrap, [TopicSpec(t, args.partitions, 3_600_000) for t in topics.values()])
    n = args.events
    events = make_events(n, args.sessions, foreign_payload=args.foreign_payload)
    codec = AvroCodec()
    t0 = time.perf_counter()
    values = [(shard_key(e["session_id"], 64), codec.encode_event(e)) for e in events]
    encode_s = time.perf_counter() - t0
    try:
        raw_s, raw_delivered, raw_cpu = run_raw(args.bootstrap, topics["raw"], values)
        kw = {} if args.gil_slice is None else {"gil_slice_events": args.gil_slice}
        pub_s, stats = run_publisher(args.bootstrap, topics["publisher"], events, args.batch, **kw)
        unscrubbed_s, unscrubbed = run_publisher(args.bootstrap, topics["unscrubbed"], events, args.batch,
                                                 publish_raw=True, **kw)
        with tempfile.TemporaryDirectory(dir=args.spool_parent) as tmp:
            spool_s, spool_stats = run_publisher(args.bootstrap, topics["spooled"], events, args.batch,
                                                 spool_dir=Path(tmp) / "spool", **kw)
    finally:
        AdminClient({"bootstrap.servers": args.bootstrap}).delete_topics(list(topics.values()))
    pub_rate = stats["delivered"] / pub_s
    raw_rate = raw_delivered / raw_s
    print(f"\n{n} events, {args.sessions} sessions, {args.partitions} partitions, payload texts "
          f"{'plain str (parsed to validate)' if args.foreign_payload else 'from the bridge serialiser (trusted)'}")
    print(f"{'what':58s} {'events/s':>10s} {'seconds':>8s} {'CPU µs/event':>13s}")
    print(f"{'raw confluent-kafka, pre-encoded single-event records':58s} {raw_rate:10,.0f} {raw_s:8.2f}"
          f" {raw_cpu / n * 1e6:13.1f}")
    print(f"{'EventPublisher (validate + batch-encode + produce + ack)':58s} {pub_rate:10,.0f} {pub_s:8.2f}"
          f" {stats['cpu_s'] / n * 1e6:13.1f}   {pub_rate / raw_rate:.2f}x raw")
    unscrubbed_rate = unscrubbed["delivered"] / unscrubbed_s
    print(f"{'EventPublisher, publish_raw=True (no scrubbing, no flags)':58s} {unscrubbed_rate:10,.0f} "
          f"{unscrubbed_s:8.2f} {unscrubbed['cpu_s'] / n * 1e6:13.1f}   {unscrubbed_rate / raw_rate:.2f}x raw")
    spool_rate = spool_stats["delivered"] / spool_s
    print(f"{'EventPublisher with a disk spool (on disk before librdkafka)':58s} {spool_rate:10,.0f} {spool_s:8.2f}"
          f" {spool_stats['cpu_s'] / n * 1e6:13.1f}   {spool_rate / raw_rate:.2f}x raw, "
          f"{spool_rate / pub_rate:.2f}x without spool")
    print("(CPU: this process, all threads, while the run lasted; less sensitive to other load than events/s)")
    print(f"\n(encoding single events alone, outside the raw timing: {n / encode_s:,.0f} events/s)")
    print(f"publisher: delivered={stats['delivered']} flushed={stats['flushed']} records={stats['batches']} "
          f"(~{stats['delivered'] / max(1, stats['batches']):.0f} events/record) dropped={stats['dropped']} "
          f"publish() loop {stats['enqueue_s']:.2f} s")
    print(f"spooled publisher: delivered={spool_stats['delivered']} flushed={spool_stats['flushed']} "
          f"records={spool_stats['batches']} dropped={spool_stats['dropped']} "
          f"left in spool={spool_stats['spool_events']}")
    print(f"goal: >= 50,000 events/s; raw delivered={raw_delivered}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
