"""The comparison of bench/bench_worker.py written with Quix Streams: 1-minute tumbling window counts per tenant.

Runs in its own venv (``bench/.venv-quix``: quixstreams 3.28 needs confluent-kafka 2.12.x, older than the
project's), started by ``bench_worker.py`` as a subprocess. It reads the bench's ``AgentEventBatch`` records and
decodes them with the project's ``schemas.codec.AvroCodec`` (it needs only fastavro, so the repository root on
``sys.path`` is enough and every consumer in the comparison pays the same decode), then the usual Quix pipeline:

    decode -> explode (expand=True) into (tenant, type, event time) rows -> set_timestamp(event time)
    -> group_by(tenant) (a repartition topic) -> tumbling_window(60 s, grace).count().current()

Clock: the first record decoded to the last event counted into its window (``current()`` emits one update per
event). Why not ``final()``: the repartition topic interleaves the two source partitions as fast as each is read,
so its stream time runs up to the whole hour ahead of the slower partition, and a record that closes every window
(the bench's end-of-input) reaches it before the other partition's data, which Quix then drops as late. So the
end-of-input events are filtered out here, the grace (``--grace``, default one hour) covers the skew, and the
measured work is the aggregation itself, not the emission of ~1,200 final counts. It stops once every event is
counted, or when the input is consumed and nothing was counted for ``--settle`` seconds (the shortfall is what Quix
dropped as late; ``late`` counts them through the ``on_late`` callback). Prints one JSON line::

    bench/.venv-quix/bin/python bench/quix_baseline.py --bootstrap-servers 127.0.0.1:19092 --topic T \\
        --group G --events N --state-dir DIR
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

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.records = 0
        self.decoded = 0
        self.counted = 0
        self.windows: set[tuple[Any, int]] = set()
        self.late = 0
        self.first: float | None = None
        self.decoded_all: float | None = None
        self.last_count: float | None = None
        self.done = threading.Event()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True, help="consumer group (Quix names its internal topics after it)")
    ap.add_argument("--events", type=int, required=True, help="data events in the topic (end-of-input excluded)")
    ap.add_argument("--end-tenant", default="zz-end-of-input", help="prefix of the end-of-input tenants (dropped)")
    ap.add_argument("--grace", type=float, default=3600.0, help="window grace in seconds (default 3600)")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)

    tally = Tally(args.events)
    codec = AvroCodec()
    end_prefix = args.end_tenant

    def explode(value: bytes) -> list[dict[str, Any]]:
        if tally.first is None:
            tally.first = time.perf_counter()
        tally.records += 1
        rows = [{"tenant": ev["tenant"], "type": ev["type"], "ts": ev["event_time"] // 1000}
                for ev in codec.decode(value).events if not ev["tenant"].startswith(end_prefix)]
        tally.decoded += len(rows)
        if tally.decoded >= tally.expected and tally.decoded_all is None:
            tally.decoded_all = time.perf_counter()
        return rows

    def on_update(result: dict[str, Any], key: Any, *_: Any) -> None:
        tally.counted += 1
        tally.windows.add((key, result["start"]))
        tally.last_count = time.perf_counter()
        if tally.counted >= tally.expected:
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
    sdf = sdf.tumbling_window(60_000, grace_ms=int(args.grace * 1000), on_late=on_late).count().current()
    sdf = sdf.update(on_update, metadata=True)

    def watchdog() -> None:
        deadline = time.monotonic() + args.timeout
        while not tally.done.wait(0.5):
            now = time.perf_counter()
            settled = (tally.decoded_all is not None
                       and now - max(tally.decoded_all, tally.last_count or 0.0) > args.settle)
            if settled or time.monotonic() > deadline:
                break
        app.stop()

    threading.Thread(target=watchdog, daemon=True).start()
    app.run()
    first = tally.first or 0.0
    print(json.dumps({
        "counted_events": tally.counted, "seconds": (tally.last_count or first) - first,
        "decode_seconds": (tally.decoded_all or first) - first, "records": tally.records,
        "decoded_events": tally.decoded, "windows": len(tally.windows), "late": tally.late,
        "complete": tally.counted >= tally.expected,
        "versions": {"quixstreams": importlib.metadata.version("quixstreams"),
                     "confluent-kafka": confluent_kafka.version(), "librdkafka": confluent_kafka.libversion()[0],
                     "fastavro": importlib.metadata.version("fastavro")}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
