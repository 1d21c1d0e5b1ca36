"""What a crash costs the audit log's restart: confirming the unanchored tail against Kafka, next to a clean restart.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_audit_recover.py [--events 20000]
        [--tenants 20] [--rounds 3]

Needs a broker (auto-creation off is fine: the topic is created and deleted here). Produces ``--events`` audit
events (session starts over ``--tenants`` tenants, 10 per Kafka record, 3 partitions), writes them into two audit
logs with their source offsets, and leaves them in two states:

* clean: closed, every stream sealed; restart = open + rebuild every tenant's event-id index (baseline);
* crashed: no checkpoint after the genesis one, nothing sealed (``checkpoint_every`` above the event count, the
  writer's lock dropped without ``close``); restart = ``recover()``: the same loading plus one fetch of every
  record's offset from Kafka and a canonical comparison of each event.

The figure is the best round of each; the ratio is crashed / clean, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from agentwatch.topics import TopicSpec, ensure_topics  # noqa: E402
from schemas.codec import AvroCodec  # noqa: E402
from sinks.audit_classify import Classification  # noqa: E402
from sinks.audit_log import AuditLog  # noqa: E402
from sinks.audit_source import KafkaTailSource  # noqa: E402

KEY = b"bench-hmac-key-0123456789abcdef"
T0 = 1_767_225_600_000_000
SESSION = Classification("session_start", "session", 365)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("set KAFKA_BOOTSTRAP_SERVERS to a running broker", file=sys.stderr)
        return 2
    topic = f"bench-audit-recover-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    try:
        return run(args, bootstrap, topic)
    finally:
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic])


def run(args: argparse.Namespace, bootstrap: str, topic: str) -> int:
    codec = AvroCodec()
    events = [{"event_id": uuid.uuid4().hex, "event_time": T0 + i, "producer_time": T0 + i,
               "tenant": f"tenant-{i % args.tenants}", "session_id": uuid.uuid4().hex, "seq": i,
               "type": "session_start", "user_id": f"user-{i % 97}", "payload": "x" * 200}
              for i in range(args.events)]
    refs: dict[int, tuple[str, int, int]] = {}  # batch start -> where it landed
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
    decoded = []
    for n in range(0, len(events), 10):
        def landed(err: object, msg: object, n: int = n) -> None:
            assert err is None, err
            refs[n] = (topic, msg.partition(), msg.offset())  # type: ignore[attr-defined]
        value = codec.encode_batch("bench", n, T0, events[n:n + 10])
        decoded += codec.decode(value).events  # what the sink stores: the events as decoded from the topic
        producer.produce(topic, key=b"k%d" % n, value=value, on_delivery=landed)
    assert producer.flush(60) == 0
    events = decoded
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        clean, crashed = base / "clean", base / "crashed"
        for root in (clean, crashed):
            log = AuditLog(root, KEY, checkpoint_every=args.events + 1, checkpoint_max_age_s=1e9)
            for i, event in enumerate(events):
                log.append(event, SESSION, refs[i - i % 10])
            log.flush()
            if root == clean:
                log.close()
            else:
                os.close(log._lock_fd)  # the process "dies": nothing sealed, nothing checkpointed
        best = {"clean restart (index rebuild)": float("inf"), "crashed restart (+ confirm from Kafka)": float("inf")}
        for _ in range(args.rounds):
            for name, root in zip(best, (clean, crashed), strict=True):
                copy = base / f"copy-{uuid.uuid4().hex[:6]}"
                shutil.copytree(root, copy)
                t = time.perf_counter()
                log = AuditLog(copy, KEY, source=KafkaTailSource(bootstrap))
                refused = log.recover()
                for tenant in range(args.tenants):  # every tenant loaded, in both variants
                    assert log.append(events[tenant], SESSION).duplicate
                best[name] = min(best[name], time.perf_counter() - t)
                assert not refused, refused
                os.close(log._lock_fd)
                shutil.rmtree(copy)
    print(f"audit restart, {args.events:,} records over {args.tenants} tenants, best of {args.rounds} "
          f"({os.cpu_count()} cpus, broker {bootstrap})")
    base_s = best["clean restart (index rebuild)"]
    for name, secs in best.items():
        print(f"  {name:<40} {secs:6.2f} s  {args.events / secs:>9,.0f} records/s  {secs / base_s:5.2f}x clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
