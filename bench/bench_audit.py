"""Audit log append throughput, plain and encrypted, against a plain JSON-lines append in the same run.

    .venv/bin/python bench/bench_audit.py [--events 50000] [--tenants 5] [--rounds 3] [--dir /tmp]

Every variant writes the same already-classified events to a fresh directory and ends with one fsync (the audit
log's default ``fsync="batch"`` policy: records reach the OS per append, the disk on ``flush``; here one flush at
the end, as if one poll batch):

* baseline: ``json.dumps(event)`` + newline appended to one buffered file per tenant (what a logging handler does);
* audit: ``AuditLog.append`` (event-id index, canonical JSON, SHA-256 chain, one unbuffered ``write`` per record,
  HMAC checkpoint every 1,000 records);
* audit+enc: the same with AES-256-GCM per record.

Also times the restart cost: re-opening the log and rebuilding the event-id index from the segments. Rounds
alternate between variants so that a noisy shared machine slows all alike; the figure is the best round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinks.audit_classify import AuditPolicy, Classification  # noqa: E402
from sinks.audit_log import AuditLog  # noqa: E402

T0 = 1_767_225_600_000_000
KEY = b"bench-hmac-key-0123456789abcdef"
POLICY = AuditPolicy(business_tools=("crm_update",))


def synth(n: int, tenants: int) -> list[tuple[dict[str, Any], Classification]]:
    kinds = [("session_start", {}),
             ("confirm_resolved", {"confirm_outcome": "allow", "tool_name": "run_shell_command"}),
             ("permission_decision", {"permission_decision": "deny", "tool_name": "write_file"}),
             ("tool_complete", {"tool_name": "crm_update", "status": "ok", "duration_ms": 42})]
    out = []
    for i in range(n):
        etype, extra = kinds[i % len(kinds)]
        event = {"event_id": uuid.uuid4().hex, "schema_version": 1, "event_time": T0 + i, "producer_time": T0 + i,
                 "tenant": f"tenant-{i % tenants}", "session_id": uuid.uuid4().hex, "seq": i, "type": etype,
                 "user_id": f"user-{i % 97}", "service": "support-bot", "agent_name": "main",
                 "turn_id": uuid.uuid4().hex, "payload": json.dumps({"args": {"customer": i, "note": "x" * 120}}),
                 **extra}
        cls = POLICY.classify(event)
        assert cls is not None
        out.append((event, cls))
    return out


def run_baseline(events: list[tuple[dict[str, Any], Classification]], root: Path) -> None:
    files: dict[str, Any] = {}
    for event, _ in events:
        fh = files.get(event["tenant"])
        if fh is None:
            fh = files[event["tenant"]] = open(root / f"{event['tenant']}.jsonl", "a")  # noqa: SIM115
        fh.write(json.dumps(event) + "\n")
    for fh in files.values():
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()


def run_audit(events: list[tuple[dict[str, Any], Classification]], root: Path, enc_key: bytes | None) -> None:
    log = AuditLog(root, KEY, enc_key=enc_key)
    for i, (event, cls) in enumerate(events):
        log.append(event, cls, ("agentwatch.events", i % 6, i))  # the sink stores each record's source offset
    log.flush()
    log.close()


def reopen(events: list[tuple[dict[str, Any], Classification]], root: Path) -> None:
    """Restart cost: every tenant's index rebuilt (first touch), measured with one duplicate append per tenant."""
    seen: set[str] = set()
    with AuditLog(root, KEY) as log:
        for event, cls in events:
            if event["tenant"] not in seen:
                seen.add(event["tenant"])
                assert log.append(event, cls).duplicate


def timed(fn: Callable[[Path], None], base: Path, name: str) -> float:
    root = base / f"{name}-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    t = time.perf_counter()
    fn(root)
    elapsed = time.perf_counter() - t
    shutil.rmtree(root)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--tenants", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    events = synth(args.events, args.tenants)
    enc_key = os.urandom(32)
    variants: dict[str, Callable[[Path], None]] = {
        "baseline json-lines": lambda r: run_baseline(events, r),
        "audit log": lambda r: run_audit(events, r, None),
        "audit log + AES-GCM": lambda r: run_audit(events, r, enc_key),
    }
    best = {name: float("inf") for name in variants}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                best[name] = min(best[name], timed(fn, base, name.split()[0]))
        idx_root = base / "reopen"
        run_audit(events, idx_root, None)
        t = time.perf_counter()
        reopen(events, idx_root)
        rebuild = time.perf_counter() - t
        size = sum(p.stat().st_size for p in idx_root.rglob("seg-*"))
    print(f"audit append, {args.events:,} events over {args.tenants} tenants, best of {args.rounds} "
          f"(python {platform.python_version()}, {os.cpu_count()} cpus)")
    base_rate = args.events / best["baseline json-lines"]
    for name, secs in best.items():
        rate = args.events / secs
        print(f"  {name:<22} {rate:>10,.0f} records/s  {secs * 1e6 / args.events:7.1f} µs/record  "
              f"{rate / base_rate:5.2f}x baseline")
    print(f"  restart: index rebuilt from {size / 1e6:.1f} MB of segments in {rebuild:.2f} s "
          f"({args.events / rebuild:,.0f} records/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
