"""How the worker's cost grows with tenants and tools (issue 13, goal 7): one table of events/s and RSS.

    PYTHONPATH=. .venv/bin/python bench/bench_worker_scaling.py [--events 200000] [--tenants 20,1000,10000]
        [--tools 30,300]

Each cell (tenants x tools) runs in a fresh process: ``bench_worker.py``'s synthetic workload (one hour of
turn-shaped events, the same ``--events`` in every cell, batch records of 500) fed through both stages **in
process**, as ``bench_worker_replay.py`` does (``streams.ingest.Ingest`` -> the partials format, encoded and
decoded -> ``streams.merge.MergeStage`` -> the metrics-record encoder; 1-minute windows, 5-minute hopping windows,
1 hour of allowed lateness, rules and spike detection on), without Kafka, Faust or the changelog table. Why not a
Kafka run per cell: six worker runs of 200,000 events each take minutes per cell on a 2-core machine shared with
other work, and their wall clock swings 2x; CPU seconds of the process are steadier, and the ratio to decode alone
(measured in the same process) shows what the machine's load did.

Printed per cell: events per CPU second of the whole replay (the worker's events/s without I/O), decode alone,
the per-event CPU cost, its ratio to the 20-tenant cell with the same tools (goal: <= 1.5x at 10,000 tenants), and
RSS: of the process after the replay with its state still held (every window of the hour, kept for late data) and
the growth over the process before the replay (the input records included in both). Figures, no assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cell(events: int, tenants: int, tools: int, partitions: int) -> dict[str, Any]:
    """One cell in this process: workload, decode alone, then both stages holding their state."""
    from bench_worker import build_workload, synthetic_events
    from bench_worker_replay import replay, stages

    from schemas.codec import AvroCodec

    wl = build_workload(synthetic_events(events, tenants, tools, partitions, 7), 500, "synthetic")
    codec = AvroCodec()
    t0 = time.process_time()
    for _part, _key, value in wl.records:
        codec.decode(value)
    decode_s = time.process_time() - t0
    gc.collect()
    before = _rss_kib()
    held = stages(partitions)  # kept until the RSS is read: the state of every window of the hour
    t0 = time.process_time()
    n, size = replay(wl.records, partitions, held=held)
    replay_s = time.process_time() - t0
    gc.collect()
    after = _rss_kib()
    return {"tenants": tenants, "tools": tools, "events": wl.events, "windows": len(wl.windows),
            "replay_cpu_s": replay_s, "decode_cpu_s": decode_s, "records": n, "bytes": size,
            "rss_after_kib": after, "rss_growth_kib": after - before}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="events per cell (default 200,000)")
    ap.add_argument("--tenants", default="20,1000,10000", help="comma-separated tenant counts")
    ap.add_argument("--tools", default="30,300", help="comma-separated tool counts")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--cell", help=argparse.SUPPRESS)  # "tenants,tools": run one cell here, print its JSON
    args = ap.parse_args(argv)
    if args.cell:
        tenants, tools = (int(v) for v in args.cell.split(","))
        print(json.dumps(cell(args.events, tenants, tools, args.partitions)))
        return 0
    tenant_counts = [int(v) for v in args.tenants.split(",")]
    tool_counts = [int(v) for v in args.tools.split(",")]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.events:,} events per cell over one hour of event time, 1-minute windows + 5-minute hopping, 1 h of "
          "allowed lateness; both stages in process (no Kafka), each cell in a fresh process\n", flush=True)
    results: dict[tuple[int, int], dict[str, Any]] = {}
    for tools in tool_counts:
        for tenants in tenant_counts:
            proc = subprocess.run([sys.executable, __file__, "--cell", f"{tenants},{tools}", "--events",
                                   str(args.events), "--partitions", str(args.partitions)],
                                  capture_output=True, text=True, check=True)
            results[(tenants, tools)] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| tenants | tools | tenant-windows | events/CPU s (worker stages) | decode alone | per-event CPU us | "
          "x the 20-tenant cost | RSS with state (MiB) | state growth (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tools in tool_counts:
        base = results.get((min(tenant_counts), tools))
        for tenants in tenant_counts:
            r = results[(tenants, tools)]
            per_event = r["replay_cpu_s"] / r["events"] * 1e6
            ratio = per_event / (base["replay_cpu_s"] / base["events"] * 1e6) if base else float("nan")
            print(f"| {tenants:,} | {tools} | {r['windows']:,} | {r['events'] / r['replay_cpu_s']:,.0f} | "
                  f"{r['events'] / r['decode_cpu_s']:,.0f} | {per_event:.1f} | {ratio:.2f} | "
                  f"{r['rss_after_kib'] / 1024:.0f} | {r['rss_growth_kib'] / 1024:.0f} |")
    lo, hi = min(tenant_counts), max(tenant_counts)
    for tools in tool_counts:
        a, b = results[(lo, tools)], results[(hi, tools)]
        ratio = (b["replay_cpu_s"] / b["events"]) / (a["replay_cpu_s"] / a["events"])
        # the decode's own ratio shows how much of the change is the machine's load, not the tenants
        load = (b["decode_cpu_s"] / b["events"]) / (a["decode_cpu_s"] / a["events"])
        print(f"per-event cost {lo:,} -> {hi:,} tenants with {tools} tools: {ratio:.2f}x (goal <= 1.5x: "
              f"{'met' if ratio <= 1.5 else 'missed'}); decode alone {load:.2f}x in the same cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
