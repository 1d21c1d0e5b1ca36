"""The comparison of bench/bench_worker.py written with Quix Streams: 1-minute tumbling window counts per tenant.

Runs in its own venv (``bench/.venv-quix``: quixstreams 3.28 needs confluent-kafka 2.12.x, older than the
project's), started by ``bench_worker.py`` as a subprocess. It reads the bench's ``AgentEventBatch`` records and
decodes them with the project's ``schemas.codec.AvroCodec`` (it needs only fastavro, so the repository root on
``sys.path`` is enough and every consumer in the comparison pays the same decode), then the usual Quix pipeline:

    decode -> explode (expand=True) into (tenant, type, event time) rows -> set_timestamp(event time)
    -> group_by(tenant) (a repartition topic) -> tumbling_window(60 s, grace).count().final()

Clock: the first record decoded to the last window emitted. It stops once its windows hold every event, or when
the input is consumed and no window came for ``--settle`` seconds (then the shortfall is what Quix dropped as
late; ``late`` counts them through the ``on_late`` callback). Prints one JSON line::

    bench/.venv-quix/bin/python bench/quix_baseline.py --bootstrap-servers 127.0.0.1:19092 --topic T --events N
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import confluent_kafka  # noqa: E402
from quixstreams import Application  # noqa: E402

from schemas.codec import AvroCodec  # noqa: E402


class Tally:
    """What the pipeline saw, shared by its callbacks and the watchdog thread."""

    def __init__(self, expected: int, end_tenant: str) -> None:
        self.expected = expected
        self.end_tenant = end_tenant
        self.records = 0
        self.decoded = 0
        self.windowed = 0
        self.windows = 0
        self.late = 0
        self.first: float | None = None
        self.decoded_all: float | None = None
        self.last_window: float | None = None
        self.done = threading.Event()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True, help="consumer group (Quix names its internal topics after it)")
    ap.add_argument("--events", type=int, required=True, help="data events in the topic (end-of-input excluded)")
    ap.add_argument("--end-tenant", default="zz-end-of-input", help="prefix of the end-of-input tenants")
    ap.add_argument("--grace", type=float, default=600.0, help="window grace in seconds")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)

    tally = Tally(args.events, args.end_tenant)
    codec = AvroCodec()
    end_prefix = args.end_tenant

    def explode(value: bytes) -> list[dict[str, Any]]:
        if tally.first is None:
            tally.first = time.perf_counter()
        tally.records += 1
        rows = [{"tenant": ev["tenant"], "type": ev["type"], "ts": ev["event_time"] // 1000}
                for ev in codec.decode(value).events]
        tally.decoded += sum(1 for r in rows if not r["tenant"].startswith(end_prefix))
        if tally.decoded >= tally.expected and tally.decoded_all is None:
            tally.decoded_all = time.perf_counter()
        return rows

    def on_window(result: dict[str, Any], key: Any, *_: Any) -> None:
        if isinstance(key, bytes):
            key = key.decode()
        if str(key).startswith(end_prefix):
            return
        tally.windows += 1
        tally.windowed += int(result["value"])
        tally.last_window = time.perf_counter()
        if tally.windowed >= tally.expected:
            tally.done.set()

    def on_late(*_: Any, **__: Any) -> bool:
        tally.late += 1
        return False  # counted here, not logged

    app = Application(broker_address=args.bootstrap_servers, consumer_group=args.group,
                      auto_offset_reset="earliest", state_dir=args.state_dir, loglevel="WARNING")
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(explode, expand=True)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
    sdf = sdf.group_by(lambda value: value["tenant"], name="tenant")
    sdf = sdf.tumbling_window(60_000, grace_ms=int(args.grace * 1000), on_late=on_late).count().final()
    sdf = sdf.update(on_window, metadata=True)

    def watchdog() -> None:
        deadline = time.monotonic() + args.timeout
        while not tally.done.wait(0.5):
            now = time.perf_counter()
            settled = (tally.decoded_all is not None
                       and now - max(tally.decoded_all, tally.last_window or 0.0) > args.settle)
            if settled or time.monotonic() > deadline:
                break
        app.stop()

    threading.Thread(target=watchdog, daemon=True).start()
    app.run()
    first = tally.first or 0.0
    print(json.dumps({
        "windowed_events": tally.windowed, "seconds": (tally.last_window or first) - first,
        "decode_seconds": (tally.decoded_all or first) - first, "records": tally.records,
        "decoded_events": tally.decoded, "windows": tally.windows, "late": tally.late,
        "complete": tally.windowed >= tally.expected,
        "versions": {"quixstreams": importlib.metadata.version("quixstreams"),
                     "confluent-kafka": confluent_kafka.version(), "librdkafka": confluent_kafka.libversion()[0],
                     "fastavro": importlib.metadata.version("fastavro")}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
