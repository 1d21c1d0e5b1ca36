"""Per-tenant structured logs: LogWriter throughput against a plain JSON-lines append in the same run, the restart
cost (watermarks read back from the files), and the agent-thread cost of a record through AgentaoLogBridge.

    .venv/bin/python bench/bench_logs.py [--events 100000] [--tenants 5] [--batch 500] [--rounds 3] [--dir /tmp]

Every variant writes the same decoded events (tool_start with a small payload, one of them in ten with a secret in
its arguments) to a fresh directory, in batches of ``--batch`` with one flush (and fsync of each touched file)
per batch, as the sink does per poll batch:

* baseline: ``json.dumps(event)`` + newline appended to one file per tenant, fsync per batch;
* logs: ``LogWriter.add`` (payload parsed and scrubbed with the producer's scrubber, line built, position check)
  + ``flush`` per batch.

Restart: a new LogWriter on the written directory re-adding the first event of each tenant (reads every line's
position back). Log bridge: ``logger.info`` through ``AgentaoLogBridge`` into a list-appending publisher against
``logger.info`` into a ``NullHandler`` (the floor of Python logging). Rounds alternate; the figure is the best.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers.agentao_bridge import AgentaoBridge, AgentaoLogBridge  # noqa: E402
from producers.stamp import Stamper  # noqa: E402
from sinks.logs_store import LogWriter  # noqa: E402

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2


def synth(n: int, tenants: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1_000_000)
    out = []
    for i in range(n):
        cmd = f"curl -H 'Authorization: Bearer {SECRET}' https://x/{i}" if i % 10 == 0 else f"ls /tmp/{i}"
        out.append({"event_id": uuid.uuid4().hex, "schema_version": 3, "event_time": now - (n - i) * 1000,
                    "producer_time": now, "tenant": f"tenant-{i % tenants}", "session_id": f"s{i % 97}", "seq": i,
                    "type": "tool_start", "user_id": f"u{i % 13}", "turn_id": "t", "tool_name": "run_shell_command",
                    "call_id": f"c{i}", "payload": json.dumps({"args": {"command": cmd}}), "evidence": None})
    return out


def baseline(events: list[dict[str, Any]], root: Path, batch: int) -> float:
    t0 = time.perf_counter()
    files: dict[str, Any] = {}
    for start in range(0, len(events), batch):
        touched = set()
        for e in events[start:start + batch]:
            fh = files.get(e["tenant"])
            if fh is None:
                fh = files[e["tenant"]] = open(root / f"{e['tenant']}.jsonl", "a")
            fh.write(json.dumps(e) + "\n")
            touched.add(fh)
        for fh in touched:
            fh.flush()
            os.fsync(fh.fileno())
    for fh in files.values():
        fh.close()
    return time.perf_counter() - t0


def logs(events: list[dict[str, Any]], root: Path, batch: int) -> float:
    t0 = time.perf_counter()
    w = LogWriter(root)
    for start in range(0, len(events), batch):
        for off in range(start, min(len(events), start + batch)):
            w.add(events[off], (0, off, 0))
        w.flush()
    w.close()
    return time.perf_counter() - t0


def restart(events: list[dict[str, Any]], root: Path, tenants: int) -> float:
    t0 = time.perf_counter()
    w = LogWriter(root)
    for off in range(tenants):
        w.add(events[off], (0, off, 0))
    assert w.stats.present == tenants
    w.close()
    return time.perf_counter() - t0


class ListPublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, event: dict[str, Any]) -> bool:
        self.events.append(event)
        return True


def log_bridge(n: int) -> tuple[float, float]:
    null = logging.Logger("null")
    null.addHandler(logging.NullHandler())
    null.setLevel(logging.DEBUG)
    bridge = AgentaoBridge(ListPublisher(), tenant="t", session_id="s", stamper=Stamper(tenant="t"))
    bridge.start()
    lb = AgentaoLogBridge(bridge, rate=1e12, burst=10**9)
    t0 = time.perf_counter()
    for i in range(n):
        null.info("[%s] LLM REQUEST model=%s", i, "m")
    t_null = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        lb.logger.info("[%s] LLM REQUEST model=%s", i, "m")
    t_bridge = time.perf_counter() - t0
    assert lb.stats()["emitted"] == n
    return t_null, t_bridge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--tenants", type=int, default=5)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    events = synth(args.events, args.tenants)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in ("baseline", "logs", "restart", "bridge"):
            tmp = Path(tempfile.mkdtemp(dir=args.dir))
            try:
                if name == "baseline":
                    t = baseline(events, tmp, args.batch)
                elif name == "logs":
                    t = logs(events, tmp, args.batch)
                elif name == "restart":
                    logs(events, tmp, args.batch)
                    t = restart(events, tmp, args.tenants)
                else:
                    t_null, t = log_bridge(args.events)
                    best["null"] = min(best.get("null", t_null), t_null)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            best[name] = min(best.get(name, t), t)
    n = args.events
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; best of "
          f"{args.rounds} rounds; {n:,} events, {args.tenants} tenants, batches of {args.batch}")
    print(f"baseline json.dumps + append + fsync/batch: {n / best['baseline']:>10,.0f} events/s")
    print(f"LogWriter (scrub, line, positions, fsync):  {n / best['logs']:>10,.0f} events/s  "
          f"({best['baseline'] / best['logs']:.2f}x the baseline)")
    print(f"restart, watermarks read back from {n:,} lines: {best['restart'] * 1000:,.0f} ms")
    print(f"agent thread per record: NullHandler {best['null'] / n * 1e6:.2f} us, AgentaoLogBridge "
          f"{best['bridge'] / n * 1e6:.2f} us ({best['bridge'] / best['null']:.1f}x)")


if __name__ == "__main__":
    main()
