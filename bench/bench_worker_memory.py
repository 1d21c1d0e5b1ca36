"""Resident size of one streams worker holding the window state of ``--tenants`` tenants x ``--tools`` tools.

One window's worth of ``tool_complete`` events (every tenant calls each of its tools ``--calls`` times; a tenant's
events all go to one partition, so each tenant has exactly one open window slot of ``--tools`` tools), stamped
with the current time, is published to a fresh 2-partition topic while the real ``agentwatch worker`` runs with
1-day windows (``--window 86400``, hopping off), so the window stays open while it is measured. The bench waits
until the worker has counted every event and written its state (two flush intervals), then reads ``VmRSS`` (and
the peak, ``VmHWM``) from ``/proc/<pid>/status``.

Baseline: the same worker's RSS after it joined its group, before any event (an empty worker). Also measured, in
this process: the RSS growth of the window engine alone (``streams.ingest.Ingest`` fed the same records, no Faust,
no table copy). Figures printed, no assertions::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_worker_memory.py

``--lateness-minutes M`` measures the cost of the allowed lateness instead: each tenant's calls are spread over the
last ``M`` minutes, and the worker runs with 1-minute windows and a 1-hour allowed lateness, so it keeps every
window of the last hour (closed, emitted, still open for late data) in both stages; older ones are dropped (sealed),
which bounds the state. Use fewer tenants there (the state is ``M`` windows per tenant)::

    ... bench/bench_worker_memory.py --tenants 1000 --tools 10 --lateness-minutes 60
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shlex
import sys
import tempfile
import time
import tracemalloc
import uuid
import zlib
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_worker import (  # noqa: E402
    EVENTS,
    WorkerProcess,
    command_line,
    create_topic,
    create_worker_topics,
    delete_topics,
    publish,
    versions,
    wait_for,
    worker_settings,
)

from schemas.codec import AvroCodec  # noqa: E402
from streams.ingest import Ingest  # noqa: E402

US = 1_000_000
PARTITIONS = 2
WINDOW_S = 86400  # one open window for the whole measurement (a day: a boundary is rarely near)


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def window_records(tenants: int, tools: int, calls: int, batch: int, now_us: int, seed: int, span_us: int = US,
                   ) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` batch records: every tenant's tool calls, a tenant in one partition."""
    codec = AvroCodec()
    rng = random.Random(seed)
    per_part: list[list[dict[str, Any]]] = [[] for _ in range(PARTITIONS)]
    seq = 0
    for t in range(tenants):
        tenant = f"tenant-{t:05d}"
        part = zlib.crc32(tenant.encode()) % PARTITIONS
        for k in range(tools):
            for _ in range(calls):
                seq += 1
                per_part[part].append({
                    "event_id": f"{rng.getrandbits(128):032x}", "event_time": now_us - rng.randrange(span_us),
                    "producer_time": now_us, "tenant": tenant, "session_id": f"{tenant}-s{k % 4}", "seq": seq,
                    "type": "tool_complete", "tool_name": f"tool_{k:02d}",
                    "status": "error" if rng.random() < 0.05 else "ok",
                    "duration_ms": int(rng.lognormvariate(5, 1.5)) + 1})
    records = []
    for part, events in enumerate(per_part):
        events.sort(key=lambda e: e["event_time"])
        for i in range(0, len(events), batch):
            value = codec.encode_batch(f"bench-mem-{part}", i // batch + 1, now_us, events[i:i + batch])
            records.append((part, f"mem-{part}".encode(), value))
    return records


def feed(records: list[tuple[int, bytes, bytes]]) -> Ingest:
    ingest = Ingest(AvroCodec(), WINDOW_S, 10.0, None, 50)
    for offset, (part, _key, value) in enumerate(records):
        ingest.handle(part, offset, value)
    return ingest


def engine_alone(records: list[tuple[int, bytes, bytes]]) -> tuple[int, int, int, int]:
    """An ``Ingest`` (window engine + aggregates) fed the records in this process: its RSS growth (KiB), the
    Python heap its window state holds (KiB, tracemalloc over a second run that folds events decoded beforehand:
    tracing the decode too would take minutes), its open slots, and the bytes of the values it writes to the
    worker's changelog table (``streams.app.encode_state``: the worker holds them in memory too)."""
    from streams.app import encode_state

    gc.collect()
    before = rss_kib()
    ingest = feed(records)
    gc.collect()
    grown = rss_kib() - before
    slots = sum(ingest.counters(p)["open_panes"] for p in range(PARTITIONS))
    table = sum(len(encode_state(v)) for p in range(PARTITIONS) for _k, v in ingest.state_changes(p) if v is not None)
    del ingest
    codec = AvroCodec()
    decoded = [(part, codec.decode(value)) for part, _key, value in records]
    engine = Ingest(codec, WINDOW_S, 10.0, None, 50).engine
    gc.collect()
    tracemalloc.start()
    heap_before = tracemalloc.get_traced_memory()[0]
    for part, batch in decoded:
        engine.process(part, batch.events, batch.producer_id, batch.batch_seq)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - heap_before
    tracemalloc.stop()
    return grown, held // 1024, slots, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=10_000)
    ap.add_argument("--tools", type=int, default=50)
    ap.add_argument("--calls", type=int, default=1, help="calls per tenant and tool (default 1)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--worker-args", default="", help="extra flags for `agentwatch worker`, e.g. '--gc-threshold 0'")
    ap.add_argument("--lateness-minutes", type=int, default=0,
                    help="spread the events over the last M minutes and run 1-minute windows with 1 h of allowed "
                    "lateness (default 0: one open 1-day window)")
    args = ap.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("set KAFKA_BOOTSTRAP_SERVERS, or run under `python -m agentwatch.broker -- ...`", file=sys.stderr)
        return 2
    print(f"command: {command_line(bootstrap)}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    n = args.tenants * args.tools * args.calls

    late_mode = args.lateness_minutes > 0
    if late_mode:
        window_args = ["--window", "60", "--allowed-lateness", "3600", "--hop", "0"]
        span_us = args.lateness_minutes * 60 * US
        print(f"allowed lateness mode: events over the last {args.lateness_minutes} minutes, 1-minute windows, 1 h of "
              "allowed lateness (closed windows are kept for late data)")
    else:
        window_args = ["--window", str(WINDOW_S), "--hop", "0"]
        span_us = US
        # the events must stay inside one open window until measured: not within 3 minutes of its end
        left = WINDOW_S - time.time() % WINDOW_S
        if left < 180:
            print(f"waiting {left:.0f}s for the next {WINDOW_S}s window to start", flush=True)
            time.sleep(left + 1)
    t0 = time.perf_counter()
    records = window_records(args.tenants, args.tools, args.calls, args.batch, time.time_ns() // 1000, args.seed,
                             span_us)
    print(f"{n} events ({args.tenants} tenants x {args.tools} tools x {args.calls}) in {len(records)} records, "
          f"made in {time.perf_counter() - t0:.1f}s", flush=True)

    topic = create_topic(bootstrap, f"bench.memory.{uuid.uuid4().hex[:10]}.events", PARTITIONS)
    settings = worker_settings(bootstrap, topic, PARTITIONS)
    created = create_worker_topics(settings)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        worker = WorkerProcess(settings, Path(tmp), *window_args, *shlex.split(args.worker_args))
        try:
            # the empty worker: joined its group, both partitions assigned, nothing to read
            wait_for(lambda: (worker.counters() or {}).get('agentwatch_worker_partitions{role="events"}', 0)
                     == PARTITIONS, 120, 0.2)
            time.sleep(3)
            baseline = worker.rss_kib()
            started = time.perf_counter()
            publish(bootstrap, topic, records)
            wait_for(lambda: (worker.counters() or {}).get(EVENTS, 0) >= n, 900, 0.5)
            consumed_s = time.perf_counter() - started
            time.sleep(3)  # two flush intervals: the state is in the changelog table too
            loaded, peak = worker.rss_kib(), rss_kib(worker.pid, "VmHWM")
            counters = worker.counters() or {}
        finally:
            worker.stop()
            delete_topics(bootstrap, [topic, *created])
    windows = counters.get('agentwatch_worker_windows_emitted_total{kind="tumbling"}', 0.0)
    if late_mode:
        held = loaded - baseline
        print(f"\nworker ({n} events consumed in {consumed_s:.1f}s; {windows:.0f} windows emitted and kept for late "
              "data):")
        print(f"  empty worker RSS (baseline)      {baseline / 1024:8.1f} MiB")
        print(f"  holding {args.lateness_minutes} minutes of windows    {loaded / 1024:8.1f} MiB  (peak "
              f"{peak / 1024:.1f} MiB); ratio to baseline {loaded / baseline:.2f}x")
        print(f"  state held = difference          {held / 1024:8.1f} MiB = {held / args.tenants:.1f} KiB per tenant, "
              f"{held / (args.tenants * args.lateness_minutes):.2f} KiB per (tenant, minute)")
        return 0
    grown, heap, slots, table = engine_alone(records)

    mib = 1024.0
    held = loaded - baseline
    print(f"\nworker ({n} events consumed in {consumed_s:.1f}s; {windows:.0f} windows emitted, so the state is "
          f"still open):")
    print(f"  empty worker RSS (baseline)      {baseline / mib:8.1f} MiB")
    print(f"  holding the window state         {loaded / mib:8.1f} MiB  (peak {peak / mib:.1f} MiB); "
          f"ratio to baseline {loaded / baseline:.2f}x")
    print(f"  state held = difference          {held / mib:8.1f} MiB = {held / args.tenants:.1f} KiB per tenant, "
          f"{held * 1024 / (args.tenants * args.tools):.0f} B per (tenant, tool)")
    print(f"engine alone, in this process (no Faust, no table copy), {slots} open tenant windows: RSS growth "
          f"{grown / mib:.1f} MiB = {grown / args.tenants:.1f} KiB per tenant ({grown / max(held, 1):.2f}x of the "
          f"worker's); Python heap held {heap / mib:.1f} MiB = {heap / args.tenants:.1f} KiB per tenant = "
          f"{heap * 1024 / (args.tenants * args.tools):.0f} B per (tenant, tool)")
    print(f"changelog table values of that state: {table / 2**20:.1f} MiB of JSON = "
          f"{table / (args.tenants * args.tools):.0f} B per (tenant, tool)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
