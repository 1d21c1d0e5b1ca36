"""The audit sink: decode, classify, append, fsync, commit; effectively once across crashes and re-consumes."""

from __future__ import annotations

import argparse
import uuid

import pytest
from confluent_kafka import Producer

from agentwatch.commands import audit as audit_cmd
from agentwatch.config import Settings
from schemas.codec import AvroCodec
from sinks.audit_classify import AuditPolicy
from sinks.audit_log import AuditLog
from sinks.audit_sink import AuditSink
from sinks.audit_store import iter_records
from sinks.audit_verify import verify_root

KEY = b"test-hmac-key-0123456789abcdef"
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
