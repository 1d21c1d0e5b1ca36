"""The audit sink: decode, classify, append, fsync, commit; effectively once across crashes and re-consumes."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from agentwatch.commands import audit as audit_cmd
from agentwatch.config import Settings
from schemas.codec import AvroCodec
from sinks.audit_classify import AuditPolicy
from sinks.audit_format import seal_record
from sinks.audit_log import AuditLog
from sinks.audit_sink import AuditSink
from sinks.audit_store import iter_records
from sinks.audit_verify import verify_root

KEY = b"test-hmac-key-0123456789abcdef"
ENC = bytes(range(32))
T0 = 1_750_000_000_000_000
POLICY = AuditPolicy(business_tools=("crm_update",))


def ev(i: int, etype: str, tenant: str = "acme", **fields: object) -> dict[str, object]:
    return {"event_id": uuid.uuid4().hex, "event_time": T0 + i, "producer_time": T0 + i, "tenant": tenant,
            "session_id": f"s{i % 7}", "seq": i, "type": etype, **fields}


def traffic(n_sessions: int = 20) -> tuple[list[dict[str, object]], int]:
    """A mix of events, and how many of them the audit log must keep."""
    events, audited = [], 0
    for i in range(n_sessions):
        tenant = f"tenant-{i % 3}"
        events += [ev(i, "session_start", tenant), ev(i, "turn_begin", tenant),
                   ev(i, "llm_call_completed", tenant, status="ok"),
                   ev(i, "permission_decision", tenant, permission_decision="deny" if i % 2 else "allow"),
                   ev(i, "confirm_resolved", tenant, confirm_outcome=("allow", "reject", "timeout")[i % 3]),
                   ev(i, "tool_complete", tenant, tool_name="crm_update" if i % 4 == 0 else "read_file", status="ok"),
                   ev(i, "turn_end", tenant, status="ok")]
        audited += 1 + (i % 2) + (i % 3 == 0) + (i % 4 == 0)
        if i == 5:
            events.append(ev(i, "memory_cleared", tenant, payload='{"memories_cleared": 4}'))
            audited += 1
    return events, audited


def test_process_classifies_dedups_and_counts_undecodable_without_kafka(tmp_path):
    codec = AvroCodec()
    events, audited = traffic()
    values = [codec.encode_batch("p1", n, T0, events[n:n + 10]) for n in range(0, len(events), 10)]
    values += [b"", b"\x07garbage", values[0]]  # two bad records and a redelivered batch
    with AuditLog(tmp_path, KEY) as log:
        sink = AuditSink("127.0.0.1:9", "unused", log, POLICY, codec=codec)
        sink.process(values)
    st = sink.stats
    assert (st.appended, st.events, st.undecodable) == (audited, len(events) + 10, {"empty": 1, "bad_magic": 1})
    assert st.duplicates == sum(1 for e in events[:10] if POLICY.classify(e))
    assert sum(1 for t in range(3) for _ in iter_records(tmp_path, f"tenant-{t}")) == audited
    assert verify_root(tmp_path, KEY).ok


class Crash(Exception):
    pass


@pytest.mark.kafka
def test_end_to_end_through_kafka_with_a_crash_between_fsync_and_commit(kafka_bootstrap, make_topic, tmp_path,
                                                                        monkeypatch, capsys):
    topic = make_topic(partitions=3)
    codec = AvroCodec()
    events, audited = traffic(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for n in range(0, len(events), 8):  # batches keyed by tenant, plus single-event records and a bad one
        chunk = events[n:n + 8]
        producer.produce(topic, key=b"k%d" % n, value=codec.encode_batch("p1", n, T0, chunk))
    producer.produce(topic, key=b"x", value=codec.encode_event(ev(99, "session_start", "solo")))
    producer.produce(topic, key=b"x", value=b"not avro at all")
    assert producer.flush(30) == 0
    audited += 1
    root = tmp_path / "audit"
    group = f"audit-{uuid.uuid4().hex[:8]}"

    # 1. the first run crashes after its first batch is on disk, before the offsets are committed
    def crash(_offsets: object) -> None:
        raise Crash()

    with AuditLog(root, KEY) as log, pytest.raises(Crash):
        AuditSink(kafka_bootstrap, topic, log, POLICY, group_id=group, batch_size=5).run(
            until_end=True, idle_timeout_s=20, before_commit=crash)
    partial = sum(1 for t in ("tenant-0", "tenant-1", "tenant-2", "solo") for _ in iter_records(root, t))
    assert 0 < partial < audited

    # 2. restart in the same group: the uncommitted batch is re-delivered and deduplicated, nothing is missing
    with AuditLog(root, KEY) as log:
        stats = AuditSink(kafka_bootstrap, topic, log, POLICY, group_id=group).run(until_end=True, idle_timeout_s=20)
    assert stats.appended == audited - partial and stats.duplicates == partial
    assert stats.undecodable == {"bad_magic": 1}

    # 3. a full re-consume from the beginning (new group) adds nothing
    with AuditLog(root, KEY) as log:
        again = AuditSink(kafka_bootstrap, topic, log, POLICY, group_id=group + "-b").run(
            until_end=True, idle_timeout_s=20)
    assert (again.appended, again.duplicates) == (0, audited)

    # 4. the same through the CLI: `agentwatch audit run --until-end`, then `audit verify`
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("AGENTWATCH_AUDIT_ANCHORS", f"file:{tmp_path / 'anchors.jsonl'}")
    parser = argparse.ArgumentParser()
    audit_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["audit", "run", "--dir", str(root), "--bootstrap", kafka_bootstrap, "--topic", topic,
                              "--group", group + "-cli", "--until-end", "--idle-timeout", "20",
                              "--business-tools", "crm_update", "--insecure-plaintext"])
    assert args.func(args, Settings.from_env()) == 0
    assert f"0 audited, {audited} duplicates" in capsys.readouterr().err
    args = parser.parse_args(["audit", "verify", "--dir", str(root), "--anchors"])
    assert args.func(args, Settings.from_env()) == 0

    recs = [r for t in ("tenant-0", "tenant-1", "tenant-2", "solo") for r in iter_records(root, t)]
    assert len(recs) == audited == len({r["event_id"] for r in recs})
    assert all(r["src"]["topic"] == topic and r["src"]["offset"] >= 0 for r in recs)  # each record says its source
    expected = {e["event_id"] for e in events if POLICY.classify(e)}
    assert expected <= {r["event_id"] for r in recs}
    report = verify_root(root, KEY)
    assert report.ok and not report.warnings, report.render()


@pytest.mark.kafka
def test_one_tenant_over_its_cap_never_stalls_the_others_through_kafka(kafka_bootstrap, make_topic, tmp_path):
    topic = make_topic(partitions=3)
    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    events = []
    for i in range(90):  # "big" audits large events and runs over its cap early; the others are small
        tenant = "big" if i % 3 == 0 else f"small-{i % 3}"
        events.append(ev(i, "session_start", tenant, payload="x" * (8000 if tenant == "big" else 10)))
    for n in range(0, len(events), 3):  # each record mixes "big" with the others, on all partitions
        producer.produce(topic, key=b"k%d" % n, value=codec.encode_batch("p1", n, T0, events[n:n + 3]))
    assert producer.flush(30) == 0
    root, group = tmp_path / "audit", f"audit-{uuid.uuid4().hex[:8]}"
    by_tenant = {t: {e["event_id"] for e in events if e["tenant"] == t} for t in ("big", "small-1", "small-2")}

    with AuditLog(root, KEY, max_tenant_bytes=40_000) as log:
        sink = AuditSink(kafka_bootstrap, topic, log, POLICY, group_id=group, held_retry_s=3600)
        stats = sink.run(until_end=True, idle_timeout_s=20)
        sink.held.close()
    stored = {t: [r["event_id"] for r in iter_records(root, t)] for t in by_tenant}
    assert set(stored["small-1"]) == by_tenant["small-1"] and set(stored["small-2"]) == by_tenant["small-2"]
    assert 0 < len(stored["big"]) < len(by_tenant["big"])
    assert stats.held["big"] == len(by_tenant["big"]) - len(stored["big"]) == stats.held_pending
    assert stats.records == len(events) // 3  # every record consumed, none re-delivered: the offsets moved on

    with AuditLog(root, KEY, max_tenant_bytes=40_000) as log:  # same group, still over the cap: nothing re-read
        again = AuditSink(kafka_bootstrap, topic, log, POLICY, group_id=group).run(until_end=True, idle_timeout_s=20)
    assert again.records == 0 and again.held_pending == stats.held_pending

    with AuditLog(root, KEY, max_tenant_bytes=10_000_000) as log:  # the cap raised: held events go in at start
        sink = AuditSink(kafka_bootstrap, topic, log, POLICY, group_id=group)
        last = sink.run(until_end=True, idle_timeout_s=20)
        sink.held.close()
    assert last.released == {"big": stats.held_pending} and last.held_pending == 0
    big = [r["event_id"] for r in iter_records(root, "big")]
    assert big[:len(stored["big"])] == stored["big"] and len(big) == len(set(big)) and set(big) == by_tenant["big"]
    report = verify_root(root, KEY)
    assert report.ok and not report.warnings, report.render()


def _audit_run(root: Path, topic: str, bootstrap: str, group: str, env: dict[str, str], *extra: str,
               ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "agentwatch", "audit", "run", "--dir", str(root), "--topic", topic,
                             "--bootstrap-servers", bootstrap, "--group", group, *extra],
                            env=env, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.kafka
def test_sigkilled_writer_restarts_confirms_its_tail_and_refuses_a_forged_one(kafka_bootstrap, make_topic,
                                                                             tmp_path):
    """SIGKILL `audit run` with records on disk past the last checkpoint; restart at once: the genuine tail is
    confirmed against the topic and sealed, every event once (ground truth: what was produced). A copy of the killed
    log with one forged record appended (chain recomputed) is refused for that tenant and never signed over."""
    topic = make_topic(partitions=2)
    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    events = [ev(i, "session_start", f"tenant-{i % 3}") for i in range(300)]
    for n in range(0, len(events), 10):
        producer.produce(topic, key=b"k%d" % n, value=codec.encode_batch("p1", n, T0, events[n:n + 10]))
    assert producer.flush(30) == 0
    truth = {t: {e["event_id"] for e in events if e["tenant"] == t} for t in ("tenant-0", "tenant-1", "tenant-2")}
    root, group = tmp_path / "audit", f"audit-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "AGENTWATCH_AUDIT_HMAC_KEY": KEY.decode(), "AGENTWATCH_AUDIT_ENC_KEY": base64.b64encode(ENC).decode(),
           "AGENTWATCH_AUDIT_ANCHORS": f"file:{tmp_path / 'anchors.jsonl'}"}

    proc = _audit_run(root, topic, kafka_bootstrap, group, env)
    deadline = time.monotonic() + 60
    while sum(1 for t in truth for _ in iter_records(root, t)) < len(events) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # idle, every record on disk, none checkpointed past the genesis
    proc.communicate(timeout=10)
    report = verify_root(root, KEY)
    assert report.ok and {f.check for f in report.warnings} == {"unanchored"}, report.render()
    assert all("crashed or was killed" in f.message for f in report.warnings)

    forged_root = tmp_path / "forged"
    shutil.copytree(root, forged_root)
    shutil.copy(tmp_path / "anchors.jsonl", tmp_path / "anchors-forged.jsonl")
    seg = next((forged_root / "t-tenant-1" / "session").glob("seg-*.jsonl"))
    last = json.loads(seg.read_bytes().splitlines()[-1])
    body = {k: v for k, v in last.items() if k != "hash"}  # a genuine ciphertext and offset, re-chained as new
    body.update(seq=last["seq"] + 1, prev_hash=last["hash"], event_id="f" * 32)
    with open(seg, "ab") as fh:
        fh.write(seal_record(body)[1])

    # verify can do what the restarting writer does: check the unanchored tails against the topic
    def verify_confirm(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agentwatch", "audit", "verify", "--dir", str(path),
                               "--bootstrap-servers", kafka_bootstrap, "--confirm-tail", "--quiet"],
                              env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)

    genuine, forged_check = verify_confirm(root), verify_confirm(forged_root)
    assert genuine.returncode == 0, genuine.stdout + genuine.stderr
    assert forged_check.returncode == 1 and forged_check.stdout.count("[unconfirmed_record]") == 1
    assert "tenant 'tenant-1' / session / seq 101: [unconfirmed_record]" in forged_check.stdout
    assert "its ciphertext does not open" in forged_check.stdout

    # restart right after the crash: the tail is confirmed against the topic and sealed. (In its own group, which
    # re-reads everything as duplicates: the killed member's group cannot be joined until its session times out, and
    # `--until-end` then fails in sinks/topic_end.py, issue 9 item 4, not fixed here.)
    again = _audit_run(root, topic, kafka_bootstrap, group + "-r", env, "--until-end", "--idle-timeout", "30")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    recs = {t: [r["event_id"] for r in iter_records(root, t)] for t in truth}
    assert {t: set(v) for t, v in recs.items()} == truth and all(len(v) == len(set(v)) for v in recs.values())
    report = verify_root(root, KEY, enc_key=ENC)
    assert report.ok and not report.warnings, report.render()
    assert all(s.sealed for s in report.streams)

    env_forged = {**env, "AGENTWATCH_AUDIT_ANCHORS": f"file:{tmp_path / 'anchors-forged.jsonl'}"}
    forged = _audit_run(forged_root, topic, kafka_bootstrap, group + "-f", env_forged, "--until-end",
                        "--idle-timeout", "30")
    out, err = forged.communicate(timeout=120)
    text = err.decode()
    assert forged.returncode == 0, text
    assert "tenant 'tenant-1' refused" in text and "is not confirmed by the source topic" in text
    assert "held (isolated tenants, kept in order for later): 'tenant-1'=100" in text
    report = verify_root(forged_root, KEY)
    [t1] = [s for s in report.streams if s.tenant == "tenant-1"]
    assert t1.anchored_seq == 0 and t1.head_seq == 101 and not t1.sealed  # the forged seq 101 was never signed
    assert all(s.sealed for s in report.streams if s.tenant != "tenant-1")
