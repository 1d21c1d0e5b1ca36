"""One tenant never stalls the others: a tenant the log refuses (over its cap, or corrupt) is isolated, its events
held in order on disk, counted and logged, while the rest flow; held events go back once the log takes them."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from schemas.codec import AvroCodec
from sinks.audit_classify import AuditPolicy
from sinks.audit_held import HeldQueue
from sinks.audit_log import AuditLog
from sinks.audit_sink import AuditSink
from sinks.audit_store import iter_records
from sinks.audit_verify import verify_root

KEY = b"test-hmac-key-0123456789abcdef"
T0 = 1_750_000_000_000_000
POLICY = AuditPolicy()
CAP = 40_000  # a few of "big"'s records (~8.5 kB each), all of a small tenant's (20 of ~1.2 kB)


def ev(i: int, tenant: str, pad: int = 100) -> dict[str, object]:
    return {"event_id": uuid.UUID(int=i).hex, "event_time": T0 + i, "producer_time": T0 + i, "tenant": tenant,
            "session_id": f"s{i}", "seq": i, "type": "session_start", "payload": json.dumps({"pad": "x" * pad})}


def traffic(n: int = 60) -> list[dict[str, object]]:
    """Interleaved tenants; "big" has large events and overruns CAP after a few."""
    out = []
    for i in range(n):
        out.append(ev(i, "big", pad=8000))
        out.append(ev(10_000 + i, f"small-{i % 3}"))
    return out


def values(events: list[dict[str, object]], per_record: int = 4) -> list[bytes]:
    codec = AvroCodec()
    return [codec.encode_batch("p1", n, T0, events[n:n + per_record]) for n in range(0, len(events), per_record)]


def ids(root: Path, tenant: str) -> list[str]:
    return [r["event_id"] for r in iter_records(root, tenant) if r["kind"] == "event"]


def test_a_tenant_over_its_cap_is_isolated_in_order_while_the_others_flow(tmp_path, caplog):
    events = traffic()
    root = tmp_path / "audit"
    caplog.set_level(logging.WARNING, logger="sinks.audit_sink")
    with AuditLog(root, KEY, max_tenant_bytes=CAP) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY, held_retry_s=3600)
        sink.process(values(events), [("t", 0, i) for i in range(len(values(events)))])
        sink.flush()
        sink.held.close()
    big = [e["event_id"] for e in events if e["tenant"] == "big"]
    stored = ids(root, "big")
    assert 0 < len(stored) < len(big) and stored == big[:len(stored)]
    for t in range(3):  # every other tenant got everything
        assert ids(root, f"small-{t}") == [e["event_id"] for e in events if e["tenant"] == f"small-{t}"]
    held = HeldQueue(root / ".held")
    assert held.counts() == {"big": len(big) - len(stored)} == dict(sink.stats.held)
    assert sink.stats.held_pending == len(big) - len(stored)
    assert "held for 1 isolated tenant(s)" in sink.stats.line()
    isolated = [r.message for r in caplog.records if "isolated" in r.message]
    assert isolated and "tenant 'big' isolated (tenant 'big': audit log size cap reached" in isolated[0]
    assert len(isolated) == 1  # logged once per interval, not per event
    assert verify_root(root, KEY).ok
    assert oct(os.stat(root / ".held").st_mode & 0o777) == "0o700"
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (root / ".held").iterdir())

    # the cap is raised and the sink restarted: the held events go in first, in order, once each
    with AuditLog(root, KEY, max_tenant_bytes=10 * CAP * 10) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY)
        assert sink.retry_held() == len(big) - len(stored)
        sink.process(values(events[:8]))  # a redelivered batch on top: duplicates, nothing new
        sink.held.close()
    assert ids(root, "big") == big
    assert HeldQueue(root / ".held").counts() == {}
    assert sink.stats.released == {"big": len(big) - len(stored)}
    report = verify_root(root, KEY)
    assert report.ok and not report.warnings, report.render()


def test_later_events_of_an_isolated_tenant_queue_behind_the_held_ones_even_if_they_would_fit(tmp_path):
    root = tmp_path / "audit"
    with AuditLog(root, KEY, max_tenant_bytes=CAP) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY, held_retry_s=3600)
        sink.process(values([ev(i, "big", pad=8000) for i in range(20)]))
        held_before = sink.held.count("big")
        assert held_before > 0
        sink.process(values([ev(100, "big", pad=0)]))  # small enough to fit, but it must not jump the queue
        assert sink.held.count("big") == held_before + 1
        sink.held.close()
    assert uuid.UUID(int=100).hex not in ids(root, "big")


def test_held_events_of_an_encrypted_log_are_encrypted_and_a_torn_line_is_cut(tmp_path):
    key = os.urandom(32)
    root = tmp_path / "audit"
    marker = "SECRET-CANARY-1234"
    events = [{**ev(i, "big", pad=1000), "user_id": marker} for i in range(20)]
    with AuditLog(root, KEY, enc_key=key, max_tenant_bytes=CAP) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY, held_retry_s=3600)
        sink.process(values(events))
        sink.held.close()
        n = sink.held.count("big")
    [path] = (root / ".held").iterdir()
    assert n > 0 and marker.encode() not in path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"torn":')  # a crash mid-append
    with AuditLog(root, KEY, enc_key=key, max_tenant_bytes=100 * CAP) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY)
        assert sink.held.count("big") == n
        assert sink.retry_held() == n
        sink.held.close()
    assert ids(root, "big") == [e["event_id"] for e in events]


def test_a_tenant_refused_as_corrupt_is_isolated_too(tmp_path):
    root = tmp_path / "audit"
    with AuditLog(root, KEY) as log:
        for e in [ev(i, "acme") for i in range(3)] + [ev(50, "other")]:
            log.append(e, POLICY.classify(e))
    seg = next((root / "t-acme" / "session").glob("seg-*.jsonl"))
    os.chmod(seg, 0o600)
    seg.write_bytes(seg.read_bytes().replace(b'"s2"', b'"s9"'))  # the last record, tampered while no writer ran
    with AuditLog(root, KEY) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY, held_retry_s=3600)
        sink.process(values([ev(10, "acme"), ev(11, "other"), ev(12, "acme")], per_record=1))
        assert sink.held.counts() == {"acme": 2} and sink.stats.appended == 1
        sink.held.close()
    assert ids(root, "other") == [uuid.UUID(int=50).hex, uuid.UUID(int=11).hex]


def test_full_disk_while_holding_stops_the_batch_cleanly_and_loses_nothing(tmp_path, monkeypatch):
    import errno

    import pytest

    from sinks import audit_held
    from sinks.audit_log import AuditLogFull

    root = tmp_path / "audit"
    with AuditLog(root, KEY, max_tenant_bytes=CAP) as log:
        sink = AuditSink("127.0.0.1:9", "t", log, POLICY, held_retry_s=3600)
        sink.process(values([ev(i, "big", pad=8000) for i in range(10)]))
        sink.flush()
        held = sink.held.count("big")
        path = sink.held.path("big")
        size = path.stat().st_size
        real_write = os.write

        def enospc(fd: int, data: bytes) -> int:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(audit_held.os, "write", enospc)
        with pytest.raises(AuditLogFull, match="could not hold an event of isolated tenant 'big'.*not committed"):
            sink.process(values([ev(50, "big", pad=8000)]))
        monkeypatch.undo()
        assert path.stat().st_size == size and sink.held.count("big") == held  # cut back, nothing half-written
        sink.process(values([ev(50, "big", pad=8000)]))  # the re-delivered batch, once space is back
        sink.held.close()
    assert HeldQueue(root / ".held").counts() == {"big": held + 1}
