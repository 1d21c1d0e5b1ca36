"""The comparison of bench/bench_worker.py written with Pathway: 1-minute event-time tumbling counts per tenant.

Runs in its own venv (``bench/.venv-pathway``, from ``bench/requirements-pathway.txt``), started by
``bench_worker.py`` as a subprocess. Pathway's Kafka reader hands over the bench's ``AgentEventBatch`` records as
raw bytes; a Python UDF decodes each with the project's ``schemas.codec.AvroCodec`` (only fastavro is needed, so
every consumer in the comparison pays the same decode) and explodes it into (tenant, event time) rows:

    pw.io.kafka.read(format="raw", mode="static") -> decode UDF -> flatten -> windowby(event time,
    tumbling(60 s), instance=tenant) -> reduce(count) -> pw.io.subscribe (final counts kept in memory)

``mode="static"`` reads what the topic holds when the run starts and then ends the computation, so every window
is final when ``pw.run()`` returns: the measured job includes emitting every count. Pathway's engine is
incremental: a window updated by a later batch is retracted and re-emitted; the subscriber keeps the newest.
``PATHWAY_THREADS`` (``--threads``) sets its worker threads (default 1, like the other consumers).

Clock: first record decoded -> ``pw.run()`` returned. With ``mode="static"`` the reader may hand the engine much
of the topic in one minibatch before the first UDF call, so this clock can leave the Kafka fetch out;
``run_seconds`` (``pw.run()`` called -> returned) includes it, and the engine's start, and is printed too.
Prints one JSON line and writes the per-window counts to ``--out``
(``[[tenant, window start us, count], ...]``) for the bench to check against its ground truth::

    bench/.venv-pathway/bin/python bench/pathway_baseline.py --bootstrap-servers 127.0.0.1:19092 --topic T \\
        --events N --out counts.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MINUTE_US = 60_000_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap-servers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--events", type=int, required=True, help="data events in the topic (end-of-input excluded)")
    ap.add_argument("--end-tenant", default="zz-end-of-input", help="prefix of the end-of-input tenants (dropped)")
    ap.add_argument("--threads", type=int, default=1, help="Pathway engine threads (PATHWAY_THREADS; default 1)")
    ap.add_argument("--out", required=True, help="file for the per-window counts (JSON)")
    args = ap.parse_args(argv)
    os.environ["PATHWAY_THREADS"] = str(args.threads)  # read when the engine starts

    import pathway as pw

    from schemas.codec import AvroCodec

    codec = AvroCodec()
    end_prefix = args.end_tenant
    state: dict[str, Any] = {"first": None, "decoded": 0}

    @pw.udf(deterministic=True)
    def explode(data: bytes) -> list[tuple[str, int]]:
        if state["first"] is None:
            state["first"] = time.perf_counter()
        rows = [(ev["tenant"], ev["event_time"]) for ev in codec.decode(data).events
                if not ev["tenant"].startswith(end_prefix)]
        state["decoded"] += len(rows)
        return rows

    settings = {"bootstrap.servers": args.bootstrap_servers, "group.id": f"bench-pathway-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest", "enable.auto.commit": "false"}
    records = pw.io.kafka.read(settings, topic=args.topic, format="raw", mode="static", autogenerate_key=True)
    rows = records.select(row=explode(pw.this.data)).flatten(pw.this.row)
    rows = rows.select(tenant=pw.this.row[0], t=pw.this.row[1])
    counts = rows.windowby(pw.this.t, window=pw.temporal.tumbling(duration=MINUTE_US, origin=0),
                           instance=pw.this.tenant).reduce(tenant=pw.this._pw_instance,
                                                           start=pw.this._pw_window_start, n=pw.reducers.count())
    newest: dict[Any, tuple[str, int, int]] = {}

    def on_change(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:  # noqa: A002
        if is_addition:
            newest[key] = (row["tenant"], row["start"], row["n"])
        elif newest.get(key) == (row["tenant"], row["start"], row["n"]):
            del newest[key]

    pw.io.subscribe(counts, on_change=on_change)
    started = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    done = time.perf_counter()
    rows_out = [[tenant, int(start), int(n)] for tenant, start, n in newest.values()]
    Path(args.out).write_text(json.dumps(rows_out))
    first = state["first"] or done
    total = sum(r[2] for r in rows_out)
    print(json.dumps({
        "counted_events": total, "seconds": done - first, "run_seconds": done - started,
        "decoded_events": state["decoded"],
        "windows": len(rows_out), "threads": args.threads, "complete": total >= args.events,
        "versions": {"pathway": importlib.metadata.version("pathway"),
                     "fastavro": importlib.metadata.version("fastavro")}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
