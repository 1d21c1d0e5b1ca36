"""The audit log writer: layout and modes, hostile tenant ids, idempotence, crash repair, full disk, encryption,
retention."""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sinks import audit_log as audit_log_module
from sinks.audit_classify import AuditPolicy, Classification
from sinks.audit_format import DecryptError, RecordCipher, canonical, seal_record, tenant_dirname
from sinks.audit_log import DAY_US, SEALED_MODE, AuditCorruption, AuditError, AuditLog, AuditLogFull
from sinks.audit_store import iter_records
from sinks.audit_verify import verify_root

KEY = b"test-hmac-key-0123456789abcdef"
T0 = 1_750_000_000_000_000
POLICY = AuditPolicy(business_tools=("crm_update",))


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def ev(i: int = 0, etype: str = "session_start", tenant: str = "acme", **fields: object) -> dict[str, object]:
    return {"event_id": uuid.uuid4().hex, "schema_version": 1, "event_time": T0 + i, "producer_time": T0 + i,
            "tenant": tenant, "session_id": f"sess-{i}", "seq": i, "type": etype, "user_id": "u1",
            "payload": json.dumps({"note": f"event {i}"}), **fields}


def cls(event: dict[str, object]) -> Classification:
    c = POLICY.classify(event)
    assert c is not None
    return c


def append_all(log: AuditLog, events: list[dict[str, object]]) -> None:
    for e in events:
        log.append(e, cls(e))


def records(root: Path, tenant: str = "acme") -> list[dict]:
    return list(iter_records(root, tenant))


def verify_ok(root: Path, **kw) -> None:
    report = verify_root(root, KEY, **kw)
    assert report.ok, report.render()


# -- layout, modes -------------------------------------------------------------------------------------------------

def test_files_0600_dirs_0700_closed_segments_0400(tmp_path):
    old = os.umask(0)  # a permissive umask must not widen anything
    try:
        root = tmp_path / "audit"
        with AuditLog(root, KEY, segment_max_bytes=2000, checkpoint_every=3) as log:
            append_all(log, [ev(i) for i in range(12)])
    finally:
        os.umask(old)
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*")}
    dirs = [p for p in root.rglob("*") if p.is_dir()] + [root]
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in dirs)
    segs = sorted(k for k in modes if "/seg-" in k)
    assert len(segs) >= 3
    assert all(modes[s] == 0o400 for s in segs[:-1]) and modes[segs[-1]] == 0o600
    assert all(m == 0o600 for k, m in modes.items() if "/seg-" not in k and not (root / k).is_dir())
    verify_ok(root)


def test_records_chain_and_keep_every_field_unscrubbed(tmp_path):
    secret = "api_key=sk-live-THIS-STAYS-IN-THE-AUDIT-LOG"
    e = ev(1, "confirm_resolved", confirm_outcome="allow", tool_name="run_shell_command",
           payload=json.dumps({"args": {"cmd": secret}}))
    with AuditLog(tmp_path, KEY) as log:
        first = log.append(ev(0), cls(ev(0)))
        second = log.append(e, cls(e))
    assert (first.seq, second.seq) == (1, 1)  # one chain per retention class
    [rec] = [r for r in records(tmp_path) if r["stream"] == "approval"]
    assert rec["event"] == e and secret in rec["event"]["payload"]
    assert rec["class"] == "tool_approved" and rec["retention"] == "approval"
    assert rec["expires_at"] == T0 + 1 + 365 * DAY_US or rec["expires_at"] >= rec["recorded_at"] + 365 * DAY_US
    verify_ok(tmp_path)


def test_backdated_event_cannot_shorten_retention(tmp_path):
    clock = Clock()
    old = ev(0, "permission_decision", permission_decision="deny")
    old["event_time"] = T0 - 400 * DAY_US
    with AuditLog(tmp_path, KEY, clock=clock) as log:
        log.append(old, cls(old))
    [rec] = records(tmp_path)
    assert rec["expires_at"] == T0 + 90 * DAY_US


def test_stored_line_is_exactly_the_canonical_record_even_for_awkward_events():
    awkward = [{"kind": "x", ',"kind":': 1, "hash": "fake", "nested": {"kind": [1, {"hash": None}]}},
               {"payload": '{"kind": "evil", "hash": 1}', "tenant": ',"kind":"z"', "é": "租\u0000"}]
    for i, event in enumerate(awkward):
        body = {"v": 1, "kind": "event", "tenant": ',"kind":"t"', "stream": "session", "seq": i, "event_id": "e",
                "class": "session_start", "retention": "session", "expires_at": None, "recorded_at": 0,
                "event": event, "prev_hash": "ab" * 32}
        record, line = seal_record(body)
        assert line == canonical(record) + b"\n" and json.loads(line) == record


# -- hostile tenant ids --------------------------------------------------------------------------------------------

HOSTILE = ["../escape", "../../etc/passwd", "/abs/path", "a/b", "nul\x00byte", "x" * 10_000, "ünïcødé-租户",
           "", ".", "..", "Acme", "acme", "%41cme", "t-acme", "~", "a" * 200 + "~" + "b" * 50, "\ud800" * 3,
           "CON", "line\nbreak", " space "]


def test_hostile_tenant_ids_stay_inside_the_root_and_never_collide(tmp_path):
    root = tmp_path / "root"
    with AuditLog(root, KEY) as log:
        for i, tenant in enumerate(HOSTILE):
            e = ev(i, tenant=tenant)
            log.append(e, cls(e))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written beside the root
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == len(HOSTILE)  # collision-free
    for p in dirs:
        assert len(p.name.encode()) <= 255 and set(p.name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-%~t")
    for i, tenant in enumerate(HOSTILE):
        [rec] = records(root, tenant)
        assert rec["tenant"] == tenant and rec["event"]["seq"] == i
    verify_ok(root)
    verify_ok(root, tenant="../escape")


def test_tenant_dirname_is_injective_on_random_ids():
    rng = random.Random(7)
    alphabet = "aA.%~/-_\x00é租\ud800 0"
    ids = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(20_000)}
    ids |= {"%" * n for n in range(100)} | {"a" * n for n in range(100, 140)}
    names = {tenant_dirname(t) for t in ids}
    assert len(names) == len(ids)
    assert all(n.startswith("t-") and "/" not in n and "\x00" not in n and len(n) <= 160 for n in names)


# -- idempotence ---------------------------------------------------------------------------------------------------

def test_redelivery_appends_each_event_once_also_across_restarts_and_policy_changes(tmp_path):
    events = [ev(i) for i in range(5)] + [ev(9, "tool_complete", tool_name="crm_update", status="ok")]
    with AuditLog(tmp_path, KEY) as log:
        append_all(log, events)
        again = [log.append(e, cls(e)) for e in events]
    assert all(a.duplicate for a in again)
    with AuditLog(tmp_path, KEY) as log:  # after a restart: the index is rebuilt from the segments
        assert all(log.append(e, cls(e)).duplicate for e in events)
        moved = Classification("business_data_modified", "session", 365)  # a policy change moves it elsewhere
        assert log.append(events[-1], moved).duplicate
    assert len(records(tmp_path)) == 6
    verify_ok(tmp_path)


def test_event_without_id_is_kept_and_still_deduplicated(tmp_path):
    e = ev(1)
    e["event_id"] = ""
    with AuditLog(tmp_path, KEY) as log:
        assert not log.append(e, cls(e)).duplicate
        assert log.append(dict(e), cls(e)).duplicate
    [rec] = records(tmp_path)
    assert rec["event_id"].startswith("sha256:")


def test_one_writer_per_root(tmp_path):
    with AuditLog(tmp_path, KEY):
        with pytest.raises(AuditError, match="in use by another audit writer"):
            AuditLog(tmp_path, KEY)
    AuditLog(tmp_path, KEY).close()  # free again after close


# -- crash safety --------------------------------------------------------------------------------------------------

# The killed writer appends event i read from offset i of topic SRC_TOPIC; WrittenTopic is that topic as the
# restarting writer re-reads it (the same events at the same offsets), so its tail can be confirmed or refuted.
SRC_TOPIC = "audit-src"
_WRITER_EVENT = """
def writer_event(i):
    return {"event_id": "%032x" % i, "event_time": i, "producer_time": i, "tenant": "acme", "session_id": "s",
            "seq": i, "type": "session_start", "payload": json.dumps({"pad": "x" * 300})}
"""
_WRITER = "import json\n" + _WRITER_EVENT + """
import sys
from sinks.audit_log import AuditLog
from sinks.audit_classify import Classification
root, key, every, seg_bytes = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
log = AuditLog(root, key, fsync="always", checkpoint_every=every, checkpoint_max_age_s=3600,
               segment_max_bytes=seg_bytes)
c = Classification("session_start", "session", 365)
i = 0
while True:
    i += 1
    log.append(writer_event(i), c, ("audit-src", 0, i))
    if i == 40:
        print("ready", flush=True)
"""
_ns: dict[str, object] = {"json": json}
exec(_WRITER_EVENT, _ns)
writer_event = _ns["writer_event"]


class WrittenTopic:
    """The source topic of the killed writer: offset i of partition 0 holds writer_event(i); ``edits`` changes one."""

    def __init__(self, edits: dict[int, dict[str, object]] | None = None) -> None:
        self.edits = edits or {}
        self.fetched: list[tuple[str, int, int]] = []

    def fetch(self, refs):
        out = {}
        for ref in refs:
            self.fetched.append(ref)
            topic, partition, offset = ref
            if topic == SRC_TOPIC and partition == 0 and 0 < offset < 100_000:
                out[ref] = [self.edits.get(offset, writer_event(offset))]
        return out


def kill_writer_midway(root: Path, checkpoint_every: int = 7, segment_max_bytes: int = 4000) -> None:
    """Run a writer in a subprocess (fsync always) and SIGKILL it mid-stream."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), KEY.decode(), str(checkpoint_every),
                             str(segment_max_bytes)], stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no close, no final checkpoint
    proc.wait(10)
    proc.stdout.close()


def test_killed_writer_then_torn_line_is_repaired_and_the_chain_continues(tmp_path):
    # A torn write lands in the open segment. When the kill came right after a segment was sealed and before the
    # next one existed, the newest segment is a sealed one (a torn tail there is corruption, not a crash: refused),
    # so kill again until the moment is the one this test is about.
    for attempt in range(10):
        root = tmp_path / f"audit-{attempt}"
        kill_writer_midway(root)
        stream = root / tenant_dirname("acme") / "session"
        last = sorted(stream.glob("seg-*.jsonl"))[-1]
        if os.stat(last).st_mode & 0o777 != SEALED_MODE:
            break
    intact = len(records(root))
    assert intact >= 40
    with open(last, "ab") as fh:  # what a power loss mid-write leaves: half a record
        fh.write(b'{"class":"session_start","event":{"event_id":"dead')
    with open(stream / "checkpoints.jsonl", "ab") as fh:
        fh.write(b'{"closed":fal')
    report = verify_root(root, KEY)
    assert report.ok and {f.check for f in report.warnings} >= {"torn_tail"}
    with AuditLog(root, KEY, source=WrittenTopic()) as log:
        append_all(log, [ev(i) for i in range(5)])
        assert {Path(r.path).name for r in log.repairs} == {last.name, "checkpoints.jsonl"}
    recs = records(root)
    assert len(recs) == intact + 5
    assert [r["seq"] for r in recs] == list(range(1, intact + 6))
    verify_ok(root)


def test_restart_signs_the_unanchored_tail_only_if_the_topic_confirms_it(tmp_path):
    for name in ("clean", "altered", "forged", "no-source"):  # only the genesis checkpoint before the kill
        kill_writer_midway(tmp_path / name, checkpoint_every=1_000_000, segment_max_bytes=1 << 30)
        report = verify_root(tmp_path / name, KEY)
        [stream] = report.streams
        assert report.ok and stream.anchored_seq == 0 and stream.head_seq >= 40
        assert [f.check for f in report.warnings] == ["unanchored"]
    topic = WrittenTopic()
    with AuditLog(tmp_path / "clean", KEY, source=topic) as log:  # a restart confirms the tail, and anchors it
        log.append(ev(1), cls(ev(1)))
    assert len(topic.fetched) >= 40
    report = verify_root(tmp_path / "clean", KEY)
    assert report.ok and not report.warnings, report.render()

    # the topic holds different content at offset 10 than the log claims (the log was edited and re-chained)
    with pytest.raises(AuditCorruption, match="seq 10, after the last signed checkpoint, is not confirmed by the "
                       "source topic: audit-src.0.@10 holds event .* with different content"):
        with AuditLog(tmp_path / "altered", KEY,
                      source=WrittenTopic({10: {**writer_event(10), "session_id": "z"}})) as log:
            log.append(ev(2), cls(ev(2)))

    # a record appended with a correctly recomputed chain, naming an offset the topic does not have
    seg = next((tmp_path / "forged").rglob("seg-*.jsonl"))
    last = json.loads(seg.read_bytes().splitlines()[-1])
    body = {k: v for k, v in last.items() if k != "hash"}
    body.update(seq=last["seq"] + 1, prev_hash=last["hash"], event_id="f" * 32,
                event={**last["event"], "event_id": "f" * 32, "user_id": "mallory"},
                src={"topic": SRC_TOPIC, "partition": 0, "offset": 999_999})
    with open(seg, "ab") as fh:
        fh.write(seal_record(body)[1])
    log = AuditLog(tmp_path / "forged", KEY, source=WrittenTopic())
    refused = log.recover()
    log.close()
    assert set(refused) == {"acme"} and "999999 is not on the topic" in str(refused["acme"])
    report = verify_root(tmp_path / "forged", KEY)  # nothing was signed over it
    assert [s.anchored_seq for s in report.streams] == [0]

    with pytest.raises(AuditCorruption, match="no source topic was given"):
        with AuditLog(tmp_path / "no-source", KEY) as log:
            log.append(ev(3), cls(ev(3)))


def test_corrupt_complete_record_is_refused_not_repaired(tmp_path):
    with AuditLog(tmp_path, KEY) as log:
        append_all(log, [ev(i) for i in range(3)])
    seg = next((tmp_path / tenant_dirname("acme") / "session").glob("seg-*.jsonl"))
    data = seg.read_bytes()
    seg.write_bytes(data[:-30] + b"X" * 29 + b"\n")  # a complete but altered last line
    with pytest.raises(AuditCorruption, match="audit verify"):
        with AuditLog(tmp_path, KEY) as log:
            log.append(ev(5), cls(ev(5)))
    assert seg.read_bytes() == data[:-30] + b"X" * 29 + b"\n"  # evidence left as found


# -- full disk / size cap ------------------------------------------------------------------------------------------

def test_size_cap_is_a_clear_error_and_nothing_is_corrupted(tmp_path):
    with AuditLog(tmp_path, KEY, max_tenant_bytes=3000) as log:
        written = 0
        with pytest.raises(AuditLogFull, match="size cap"):
            for i in range(100):
                e = ev(i)
                log.append(e, cls(e))
                written += 1
        blocked = e
        other = ev(0, tenant="other")
        log.append(other, cls(other))  # one tenant's cap does not stop the others
    assert 0 < written < 100 and len(records(tmp_path)) == written
    verify_ok(tmp_path)
    with AuditLog(tmp_path, KEY, max_tenant_bytes=10_000) as log:  # space freed: the blocked event goes in
        assert not log.append(blocked, cls(blocked)).duplicate
    verify_ok(tmp_path)


def test_enospc_mid_write_is_cut_back_to_the_last_record(tmp_path, monkeypatch):
    with AuditLog(tmp_path, KEY) as log:
        append_all(log, [ev(i) for i in range(3)])
        seg = next((tmp_path / tenant_dirname("acme") / "session").glob("seg-*.jsonl"))
        size = seg.stat().st_size
        real_write = os.write

        def half_then_enospc(fd: int, data: bytes) -> int:
            if len(data) > 200:  # a record, not a checkpoint
                real_write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(audit_log_module.os, "write", half_then_enospc)
        full = ev(7)
        with pytest.raises(AuditLogFull, match="filesystem full"):
            log.append(full, cls(full))
        assert seg.stat().st_size == size
        monkeypatch.undo()
        assert not log.append(full, cls(full)).duplicate  # not marked as seen: it goes in once space is back
    assert len(records(tmp_path)) == 4
    verify_ok(tmp_path)


# -- encryption at rest --------------------------------------------------------------------------------------------

def test_encryption_round_trip_and_no_plaintext_on_disk(tmp_path):
    key = os.urandom(32)
    marker = "PLAINTEXT-MARKER-4242"
    events = [ev(i, payload=json.dumps({"secret": marker})) for i in range(4)]
    with AuditLog(tmp_path, KEY, enc_key=key) as log:
        append_all(log, events)
    for p in tmp_path.rglob("seg-*.jsonl"):
        assert marker.encode() not in p.read_bytes() and b"sess-1" not in p.read_bytes()
    cipher = RecordCipher(key)
    recs = records(tmp_path)
    assert [cipher.decrypt(r) for r in recs] == events
    with pytest.raises(DecryptError):
        RecordCipher(os.urandom(32)).decrypt(recs[0])
    report = verify_root(tmp_path, KEY, enc_key=key)
    assert report.ok, report.render()
    verify_ok(tmp_path)  # integrity is checkable without the decryption key


def test_tampered_ciphertext_fails_authentication_and_the_chain(tmp_path):
    key = os.urandom(32)
    with AuditLog(tmp_path, KEY, enc_key=key) as log:
        append_all(log, [ev(i) for i in range(3)])
    seg = next(tmp_path.rglob("seg-*.jsonl"))
    lines = seg.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[1])
    ct = bytearray(base64.b64decode(rec["enc"]["ct"]))
    ct[5] ^= 0x01
    rec["enc"]["ct"] = base64.b64encode(bytes(ct)).decode()
    with pytest.raises(DecryptError, match="does not authenticate"):
        RecordCipher(key).decrypt(rec)
    os.chmod(seg, 0o600)
    lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    seg.write_bytes(b"".join(lines))
    report = verify_root(tmp_path, KEY, enc_key=key)
    assert {(f.check, f.seq) for f in report.errors} == {("hash_mismatch", 2), ("decrypt_failed", 2)}


def test_ciphertext_moved_to_another_record_does_not_decrypt(tmp_path):
    key = os.urandom(32)
    with AuditLog(tmp_path, KEY, enc_key=key) as log:
        append_all(log, [ev(i) for i in range(2)])
    a, b = records(tmp_path)
    b_with_a = {**b, "enc": a["enc"]}
    with pytest.raises(DecryptError):
        RecordCipher(key).decrypt(b_with_a)


# -- segments and retention ----------------------------------------------------------------------------------------

def test_segments_roll_by_age_and_prune_deletes_only_expired_whole_segments(tmp_path):
    clock = Clock()
    with AuditLog(tmp_path, KEY, clock=clock, segment_max_age_s=86_400, checkpoint_every=4) as log:
        for day in range(4):  # one denial segment per day; approvals (365 d) alongside
            clock.now = T0 + day * DAY_US
            denials = [ev(day * 10 + i, "permission_decision", permission_decision="deny") for i in range(3)]
            for e in denials:
                e["event_time"] = clock.now
            append_all(log, denials)
            approval = ev(day, "confirm_resolved", confirm_outcome="allow")
            log.append(approval, cls(approval))
        assert log.prune(T0 + 89 * DAY_US) == []  # nothing is 90 days old yet
        pruned = log.prune(T0 + 91 * DAY_US + 1)
        assert [(p.stream, p.first_seq, p.count) for p in pruned] == [("denial", 1, 3), ("denial", 4, 3)]
        assert log.prune(T0 + 91 * DAY_US + 1) == []  # idempotent
    stream = tmp_path / tenant_dirname("acme") / "denial"
    # seg 10 is over a day old by then, so the prune records start seg 13
    assert [p.name for p in sorted(stream.glob("seg-*"))] == ["seg-000000000007.jsonl", "seg-000000000010.jsonl",
                                                               "seg-000000000013.jsonl"]
    pruned_recs = [r for r in records(tmp_path) if r["kind"] == "segment_pruned"]
    assert [r["pruned"]["segment"] for r in pruned_recs] == ["seg-000000000001.jsonl", "seg-000000000004.jsonl"]
    report = verify_root(tmp_path, KEY)
    assert report.ok, report.render()
    assert sum(s.pruned_segments for s in report.streams) == 2
    assert len([r for r in records(tmp_path) if r["stream"] == "approval"]) == 4  # other classes untouched


def test_indefinite_records_are_never_pruned(tmp_path):
    clock = Clock()
    with AuditLog(tmp_path, KEY, clock=clock, segment_max_age_s=1) as log:
        for i in range(3):
            clock.now = T0 + i * DAY_US
            e = ev(i, "memory_cleared")
            log.append(e, cls(e))
        assert log.prune(T0 + 100 * 365 * DAY_US) == []
    assert len(records(tmp_path)) == 3


def test_interrupted_prune_is_finished_by_the_next_one(tmp_path, monkeypatch):
    clock = Clock()
    with AuditLog(tmp_path, KEY, clock=clock, segment_max_age_s=86_400) as log:
        for day in range(2):
            clock.now = T0 + day * DAY_US
            e = ev(day, "permission_decision", permission_decision="deny")
            e["event_time"] = clock.now
            log.append(e, cls(e))

        def crash(path: object) -> None:
            raise KeyboardInterrupt("killed between recording the prune and deleting the file")

        monkeypatch.setattr(audit_log_module.os, "unlink", crash)
        with pytest.raises(KeyboardInterrupt):
            log.prune(T0 + 95 * DAY_US)
        monkeypatch.undo()
    report = verify_root(tmp_path, KEY)
    assert report.ok and "incomplete_prune" in {f.check for f in report.warnings}
    with AuditLog(tmp_path, KEY, clock=clock) as log:
        again = log.prune(T0 + 95 * DAY_US)
    assert [p.segment for p in again] == ["seg-000000000002.jsonl"]  # seg 1 is not recorded twice ...
    stream = tmp_path / tenant_dirname("acme") / "denial"
    assert not (stream / "seg-000000000001.jsonl").exists()  # ... but its file is gone now
    assert len([r for r in records(tmp_path) if r["kind"] == "segment_pruned"]) == 2
    report = verify_root(tmp_path, KEY)
    assert report.ok and not report.warnings, report.render()


def test_recover_confirms_every_crashed_tail_with_one_fetch_and_refuses_only_the_bad_tenant(tmp_path):
    topic: dict[tuple[str, int, int], list[dict[str, object]]] = {}
    log = AuditLog(tmp_path, KEY, checkpoint_every=1_000_000, checkpoint_max_age_s=3600)
    for i in range(60):
        e = ev(i, tenant=f"t{i % 3}")
        ref = ("events", i % 2, i)
        topic[ref] = [e]
        log.append(e, cls(e), ref)
    log.flush()
    os.close(log._lock_fd)  # killed: every record unanchored, nothing sealed

    class Topic:
        calls: list[int] = []

        def fetch(self, refs):
            refs = list(refs)
            self.calls.append(len(refs))
            return {r: topic[r] for r in refs if r in topic}

    source = Topic()
    topic[("events", 1, 7)] = [{**topic[("events", 1, 7)][0], "user_id": "someone-else"}]  # t1's event 7 differs
    with AuditLog(tmp_path, KEY, source=source) as again:
        refused = again.recover()
    assert source.calls == [60]  # one fetch for the three tenants' tails
    assert set(refused) == {"t1"} and "seq 3, after the last signed checkpoint" in str(refused["t1"])
    report = verify_root(tmp_path, KEY)
    assert {s.tenant for s in report.streams if s.sealed} == {"t0", "t2"}
    assert [s.anchored_seq for s in report.streams if s.tenant == "t1"] == [0]  # nothing of t1 was signed
