"""The archive on disk: exactly-once over at-least-once delivery, crashes, full disks, hostile ids, retention.

The reference for every crash test is one uninterrupted pass over the same records; the archive must come out
byte-identical (content and mtimes) however the run was cut, re-delivered or resumed. Records are decoded through
``ArchiveSink.process`` exactly as the Kafka loop does, with offsets committed the way it commits them.
"""

from __future__ import annotations

import errno
import json
import os
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
from agentao.replay import ReplayReader

from producers.simulator import FleetSimulator
from schemas.codec import AvroCodec
from sinks.archive import parse_filename, safe_session, tenant_dirname, tenant_from_dirname
from sinks.archive_sink import ArchiveSink
from sinks.archive_store import ArchiveCorruption, ArchiveFull, ArchiveLocked, ArchiveWriter

T0 = 1_767_225_600_000_000
PARTITIONS = 3


def fleet(seconds: float = 40, seed: int = 7) -> list[dict[str, Any]]:
    return list(FleetSimulator(seed=seed, tenants=["acme", "globex"], services=1, duration_s=seconds).events())


def to_records(events: list[dict[str, Any]], per_record: int = 4) -> list[tuple[int, int, bytes]]:
    """Events batched per (partition of the session) like the publisher: one session -> one partition, in order."""
    codec = AvroCodec()
    by_part: dict[int, list[list[dict[str, Any]]]] = {}
    open_batch: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        p = zlib.crc32(e["session_id"].encode()) % PARTITIONS
        batch = open_batch.setdefault(p, [])
        batch.append(e)
        if len(batch) >= per_record:
            by_part.setdefault(p, []).append(open_batch.pop(p))
    for p, batch in open_batch.items():
        by_part.setdefault(p, []).append(batch)
    # interleave partitions the way a consumer sees them
    records, offsets = [], dict.fromkeys(by_part, 0)
    queues = {p: list(bs) for p, bs in by_part.items()}
    while any(queues.values()):
        for p in sorted(queues):
            if queues[p]:
                batch = queues[p].pop(0)
                records.append((p, offsets[p], codec.encode_batch(f"prod-{p}", offsets[p], T0, batch)))
                offsets[p] += 1
    return records


class Run:
    """Consumes records like ``ArchiveSink.run`` (process, flush, commit) and remembers the committed offsets."""

    def __init__(self, root: Path, **writer_kw: Any) -> None:
        self.writer = ArchiveWriter(root, **writer_kw)
        self.sink = ArchiveSink("127.0.0.1:9", "unused", self.writer)
        self.committed: dict[int, int] = {}

    def consume(self, records: list[tuple[int, int, bytes]], batch: int = 10) -> None:
        for i in range(0, len(records), batch):
            nxt = self.sink.process(records[i:i + batch])
            self.writer.flush()
            for tp in self.sink.commit_offsets(nxt):
                self.committed[tp.partition] = tp.offset


def resume_from(records: list[tuple[int, int, bytes]], committed: dict[int, int]) -> list[tuple[int, int, bytes]]:
    """What a new consumer is given after a restart: every record at or after its partition's committed offset."""
    return [r for r in records if r[1] >= committed.get(r[0], 0)]


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*.jsonl"))}


def reference(tmp_path: Path, records: list[tuple[int, int, bytes]], **kw: Any) -> dict[str, tuple[bytes, int]]:
    run = Run(tmp_path / "reference", **kw)
    run.consume(records)
    run.writer.close()
    return tree(tmp_path / "reference")


@pytest.fixture(scope="module")
def records() -> list[tuple[int, int, bytes]]:
    return to_records(fleet())


def test_redelivered_events_are_never_written_twice(tmp_path, records):
    ref = reference(tmp_path, records)
    run = Run(tmp_path / "a")
    run.consume(records)
    rows = run.writer.stats.rows
    run.consume(records[5:40])  # a re-delivered stretch while running: recognised by seq
    run.consume(records)
    assert run.writer.stats.rows == rows and run.writer.stats.duplicates > 0
    run.writer.close()
    again = Run(tmp_path / "a")  # a new process re-reading everything: recognised by the rows on disk
    again.consume(records)
    assert again.writer.stats.rows == 0 and again.writer.stats.present > 0
    again.writer.close()
    assert tree(tmp_path / "a") == ref


@pytest.mark.parametrize("seed", range(6))
def test_crash_between_write_and_commit_leaves_no_gap_and_no_duplicate(tmp_path, records, seed):
    """Cut the run anywhere, tear the files written since the last commit at random byte offsets (a crash in
    the middle of the flush), restart from the committed offsets: identical to the uninterrupted run."""
    rng = random.Random(seed)
    ref = reference(tmp_path, records)
    root = tmp_path / "crashed"
    run = Run(root)
    cut = rng.randrange(20, len(records) - 20)
    run.consume(records[:cut])
    at_commit = {path: path.stat().st_size for path in root.rglob("*.jsonl")}
    nxt = run.sink.process(records[cut:cut + 10])  # one more batch is written, its offsets never committed
    run.writer.flush()
    assert nxt  # it had something
    run.writer.close(flush=False)
    for path in root.rglob("*.jsonl"):
        size = path.stat().st_size
        floor = at_commit.get(path, 0)
        if size > floor and rng.random() < 0.7:
            with open(path, "r+b") as fh:
                fh.truncate(rng.randrange(floor, size + 1))
    again = Run(root)
    again.consume(resume_from(records, run.committed))
    again.writer.close()
    assert tree(root) == ref
    assert again.writer.stats.present > 0 or again.writer.repairs or not run.committed


def test_unwritten_thinking_holds_the_commit_back(tmp_path):
    """Thinking pieces are joined until the session's next event; a restart must see them again."""
    events = fleet(seconds=60, seed=11)
    thinking = [i for i, e in enumerate(events) if e["type"] == "thinking"]
    assert thinking
    records = to_records(events, per_record=1)
    ref = reference(tmp_path, records)
    # stop right after a record holding a thinking piece
    first = events[thinking[0]]["event_id"]
    codec = AvroCodec()
    idx = next(i for i, r in enumerate(records) if any(e["event_id"] == first for e in codec.decode(r[2]).events))
    run = Run(tmp_path / "b")
    run.consume(records[:idx + 1], batch=idx + 1)
    p, off, _ = records[idx]
    assert run.writer.safe_offsets()[p] == off and run.committed[p] == off
    run.writer.close()  # a clean stop: the piece is not written, its record not committed
    again = Run(tmp_path / "b")
    again.consume(resume_from(records, run.committed))
    again.writer.close()
    assert tree(tmp_path / "b") == ref


def test_a_stale_thinking_stretch_is_written_after_its_partition_moved_on(tmp_path):
    def e(seq: int, etype: str, session: str = "s1", **kw: Any) -> dict[str, Any]:
        return {"event_id": f"{session}-{seq:08d}", "event_time": T0 + seq, "producer_time": T0, "tenant": "t",
                "session_id": session, "seq": seq, "type": etype, "turn_id": "turn-1", **kw}

    with ArchiveWriter(tmp_path, thought_record_span=100) as w:
        w.add(e(1, "session_start"), (0, 0))
        w.add(e(2, "thinking", payload='{"text": "abandoned"}'), (0, 1))
        for off in range(2, 101):
            w.advance(0, off)
            w.add(e(off, "turn_start", session="s2"), (0, off))
        assert w.safe_offsets() == {0: 1}
        w.advance(0, 101)  # 100 records past the piece: written, the commit may move on
        assert w.safe_offsets() == {}
    rows = ReplayReader(next(tmp_path.rglob("s1.*.jsonl"))).events()
    assert rows[-1]["kind"] == "assistant_thought_chunk" and rows[-1]["payload"]["text"] == "abandoned"


def test_a_restarted_session_opens_a_new_instance_and_closes_the_previous_one(tmp_path):
    def e(n: int, seq: int, etype: str, **kw: Any) -> dict[str, Any]:
        return {"event_id": f"{n:032x}", "event_time": T0 + n, "producer_time": T0, "tenant": "t",
                "session_id": "same", "seq": seq, "type": etype, **kw}

    first = [e(1, 1, "session_start"), e(2, 2, "turn_begin", turn_id="a", payload='{"user_message":"hi"}')]
    second = [e(3, 1, "session_start"), e(4, 2, "turn_begin", turn_id="b", payload='{"user_message":"again"}'),
              e(5, 3, "turn_end", turn_id="b", status="ok"), e(6, 4, "session_end")]
    with ArchiveWriter(tmp_path) as w:
        for x in first + second + first[:1]:  # the last one: a re-sent first event of an earlier instance
            w.add(x)
    files = sorted(tmp_path.rglob("*.jsonl"), key=lambda p: ReplayReader(p).events()[0]["ts"])
    assert len(files) == 2
    old, new = (ReplayReader(f).events() for f in files)
    assert [r["kind"] for r in old] == ["replay_header", "session_started", "turn_started", "user_message",
                                        "replay_footer"]
    assert [r["kind"] for r in new][-2:] == ["session_ended", "replay_footer"]
    assert old[0]["instance_id"] != new[0]["instance_id"]


def test_hostile_tenant_and_session_ids_stay_inside_the_root(tmp_path):
    hostile = ["../../etc", "/abs/path", "a\0b", "x" * 5000, "ünï/cødé ☃", ".", "..", "", "Acme", "acme",
               "con", "a%2e%2e", "t-acme", "\ud800lone"]
    root = tmp_path / "root"
    events = []
    for i, tenant in enumerate(hostile):
        session = hostile[-1 - i]
        events.append({"event_id": f"{i:032x}", "event_time": T0 + i, "producer_time": T0, "tenant": tenant,
                       "session_id": session, "seq": 1, "type": "session_start"})
    with ArchiveWriter(root) as w:
        for e in events:
            w.add(e)
    real_root = os.path.realpath(root)
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == len(hostile)  # collision-free: Acme and acme, "" and ".", ... all apart
    for p in root.rglob("*"):
        assert os.path.realpath(p).startswith(real_root + os.sep)
        assert len(p.name.encode("utf-8", "surrogatepass")) <= 255
    for tenant in hostile:
        name = tenant_dirname(tenant)
        assert (root / name).is_dir() and name not in (".", "..") and "/" not in name and "\0" not in name
        if len(tenant) < 40:
            assert tenant_from_dirname(name) == tenant  # reversible
    for path in root.rglob("*.jsonl"):
        rows = ReplayReader(path).events()
        assert rows and rows[0]["kind"] == "replay_header"
        assert parse_filename(path.name)[0] == safe_session(rows[0]["session_id"])
    assert not (tmp_path / "etc").exists() and not Path("/abs/path").exists()


def test_size_cap_is_a_clear_error_and_a_restart_with_room_completes_the_archive(tmp_path, records):
    ref = reference(tmp_path, records)
    root = tmp_path / "capped"
    run = Run(root, max_tenant_bytes=60_000)
    with pytest.raises(ArchiveFull, match="would exceed its archive cap of 60,000 bytes"):
        run.consume(records)
    run.writer.close(flush=False)
    for path in root.rglob("*.jsonl"):
        data = path.read_bytes()
        assert data.endswith(b"\n")
        assert [json.loads(line)["seq"] for line in data.splitlines()] == list(range(1, data.count(b"\n") + 1))
    assert all(sum(p.stat().st_size for p in d.glob("*.jsonl")) <= 60_000 for d in root.iterdir() if d.is_dir())
    again = Run(root)
    again.consume(resume_from(records, run.committed))
    again.writer.close()
    assert tree(root) == ref


def test_disk_full_mid_write_cuts_the_file_back_and_resumes_cleanly(tmp_path, records, monkeypatch):
    ref = reference(tmp_path, records)
    root = tmp_path / "full"
    run = Run(root)
    run.consume(records[:30])
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            real_write(fd, bytes(data[: len(data) // 2]))  # half a batch reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("sinks.archive_store.os.write", failing_write)
    with pytest.raises(ArchiveFull, match="No space left on device.*cut back"):
        run.consume(records[30:])
    monkeypatch.undo()
    run.writer.close()
    for path in root.rglob("*.jsonl"):
        assert path.read_bytes().endswith(b"\n")  # nothing torn
    again = Run(root)
    again.consume(resume_from(records, run.committed))
    again.writer.close()
    assert tree(root) == ref


def test_a_torn_last_line_is_repaired_and_a_foreign_edit_is_refused(tmp_path, records):
    ref = reference(tmp_path, records)
    root = tmp_path / "torn"
    run = Run(root)
    run.consume(records)
    run.writer.close()
    victim = max(root.rglob("*.jsonl"), key=lambda p: p.stat().st_size)
    with open(victim, "ab") as fh:
        fh.write(b'{"event_id": "0123')
    again = Run(root)
    again.consume(records)
    again.writer.close()
    assert [r.path for r in again.writer.repairs] == [victim]
    assert tree(root) == ref
    lines = victim.read_bytes().splitlines()
    lines[3] = b"not json"
    victim.write_bytes(b"\n".join(lines) + b"\n")
    broken = Run(root)
    with pytest.raises(ArchiveCorruption, match="line 4: not JSON"):
        broken.consume(records)
    broken.writer.close(flush=False)


def test_retention_keeps_the_newest_instances_per_tenant_and_never_an_open_one(tmp_path):
    def session(n: int, start: int, end: int | None, tenant: str = "t") -> list[dict[str, Any]]:
        base = {"tenant": tenant, "session_id": f"s{n}", "producer_time": T0}
        out = [{**base, "event_id": f"{n:04d}{0:028x}", "event_time": T0 + start, "seq": 1, "type": "session_start"}]
        if end is not None:
            out.append({**base, "event_id": f"{n:04d}{1:028x}", "event_time": T0 + end, "seq": 2,
                        "type": "session_end"})
        return out

    events = session(0, 0, None)  # the oldest session is still running
    for n in range(1, 7):
        events += session(n, n * 10, n * 10 + 5)
    events += session(9, 1, 2, tenant="other")
    with ArchiveWriter(tmp_path, max_instances=3) as w:
        for e in sorted(events, key=lambda e: e["event_time"]):
            w.add(e)
        w.flush()
        kept = sorted(ReplayReader(p).events()[0]["session_id"] for p in (tmp_path / tenant_dirname("t")).iterdir())
        assert kept == ["s0", "s4", "s5", "s6"]  # the 3 newest by last event, and s0: old but still open
        assert len(w.pruned) == 3
        assert w.prune() == []
    for p in tmp_path.rglob("s6.*.jsonl"):
        assert p.stat().st_mtime_ns == (T0 + 65) * 1000  # mtime = last row ts: Agentao's order agrees
    with ArchiveWriter(tmp_path, max_instances=1) as w:
        assert sorted(p.name.split(".")[0] for p in w.prune()) == ["s4", "s5"]
    assert len(list((tmp_path / tenant_dirname("other")).iterdir())) == 1


def test_one_writer_per_root(tmp_path):
    with ArchiveWriter(tmp_path):
        with pytest.raises(ArchiveLocked):
            ArchiveWriter(tmp_path)
    ArchiveWriter(tmp_path).close()
