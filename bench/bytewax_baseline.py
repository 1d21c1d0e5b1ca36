"""The comparison of bench/bench_worker.py written with Bytewax: 1-minute event-time tumbling counts per tenant.

Runs in its own venv (``bench/.venv-bytewax``, from ``bench/requirements-bytewax.txt``), started by
``bench_worker.py`` as a subprocess. It reads the bench's ``AgentEventBatch`` records with Bytewax's own Kafka
connector and decodes them with the project's ``schemas.codec.AvroCodec`` (only fastavro is needed, so the
repository root on ``sys.path`` is enough and every consumer in the comparison pays the same decode):

    KafkaSource(tail=False) -> flat_map(decode + explode to (tenant, event time)) -> key_on(tenant)
    -> fold_window(EventClock(event time, wait), TumblingWindower(60 s)) counting -> collected in memory

``tail=False`` ends the dataflow at the end of the topic as it was when the run started, which closes every open
window, so what is measured is the whole job including the emission of every final count (unlike the Quix side,
which stops at its last ``current()`` update). Bytewax's event clock keeps one watermark per operator, not per
Kafka partition: the two partitions are read at different speeds, so the watermark runs ahead of the slower one
by up to the whole hour of data, and anything older than watermark - ``--wait`` is late. The default wait (2 h)
covers that; with 1 h, 650 events were dropped as late in an earlier session. Late events are counted (``late``).

Clock: first record decoded -> the dataflow returned (every window emitted). Prints one JSON line and writes the
per-window counts to ``--out`` (``[[tenant, window start us, count], ...]``) for the bench to check against its
ground truth::

    bench/.venv-bytewax/bin/python bench/bytewax_baseline.py --bootstrap-servers 127.0.0.1:19092 --topic T \\
        --events N --out counts.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bytewax.operators as op  # noqa: E402
import bytewax.operators.windowing as win  # noqa: E402
import confluent_kafka  # noqa: E402
from bytewax.connectors.kafka import KafkaSource  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.testing import TestingSink, run_main  # noqa: E402

from schemas.codec import AvroCodec  # noqa: E402

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--events", type=int, required=True, help="data events in the topic (end-of-input excluded)")
    ap.add_argument("--end-tenant", default="zz-end-of-input", help="prefix of the end-of-input tenants (dropped)")
    ap.add_argument("--wait", type=float, default=7200.0,
                    help="EventClock wait_for_system_duration in seconds: must cover the event-time skew between "
                    "the partitions (default 7200)")
    ap.add_argument("--out", required=True, help="file for the per-window counts (JSON)")
    args = ap.parse_args(argv)

    codec = AvroCodec()
    end_prefix = args.end_tenant
    state = {"first": None, "decoded": 0}

    def explode(msg: Any) -> list[tuple[str, int]]:
        if state["first"] is None:
            state["first"] = time.perf_counter()
        rows = [(ev["tenant"], ev["event_time"]) for ev in codec.decode(msg.value).events
                if not ev["tenant"].startswith(end_prefix)]
        state["decoded"] += len(rows)
        return rows

    def event_time(row: tuple[str, int]) -> datetime:
        return EPOCH + timedelta(microseconds=row[1])

    def count(acc: int, _row: tuple[str, int]) -> int:
        return acc + 1

    def merge(a: int, b: int) -> int:
        return a + b

    source = KafkaSource([args.bootstrap_servers], [args.topic], tail=False)  # assigns partitions: no group
    flow = Dataflow("bench-bytewax")
    msgs = op.input("kafka", flow, source)
    rows = op.flat_map("decode", msgs, explode)
    keyed = op.key_on("tenant", rows, lambda row: row[0])
    clock = win.EventClock(event_time, wait_for_system_duration=timedelta(seconds=args.wait))
    windower = win.TumblingWindower(length=timedelta(minutes=1), align_to=EPOCH)
    out = win.fold_window("count", keyed, clock, windower, lambda: 0, count, merge)
    counts: list[tuple[str, tuple[int, int]]] = []
    late: list[Any] = []
    metas: list[tuple[str, tuple[int, Any]]] = []
    op.output("counts", out.down, TestingSink(counts))
    op.output("late", out.late, TestingSink(late))
    op.output("meta", out.meta, TestingSink(metas))
    run_main(flow)
    done = time.perf_counter()

    # window id -> start: TumblingWindower numbers windows from align_to, so start = id * length
    starts = {(tenant, wid): meta.open_time for tenant, (wid, meta) in metas}
    rows_out = []
    for tenant, (wid, n) in counts:
        opened = starts.get((tenant, wid), EPOCH + timedelta(minutes=wid))
        rows_out.append([tenant, (opened - EPOCH) // timedelta(microseconds=1), n])
    Path(args.out).write_text(json.dumps(rows_out))
    first = state["first"] or done
    print(json.dumps({
        "counted_events": sum(r[2] for r in rows_out), "seconds": done - first, "decoded_events": state["decoded"],
        "windows": len(rows_out), "late": len(late), "complete": sum(r[2] for r in rows_out) >= args.events,
        "versions": {"bytewax": importlib.metadata.version("bytewax"), "confluent-kafka": confluent_kafka.version(),
                     "librdkafka": confluent_kafka.libversion()[0],
                     "fastavro": importlib.metadata.version("fastavro")}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
