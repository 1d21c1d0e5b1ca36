"""Acceptance for issue 12, on a real broker: canary secrets of every kind, planted in every scanned string field and
in the payload of every event type, never show in clear downstream of a default producer.

Path: EventPublisher (default policy, an evidence public key) -> spool (Kafka unreachable first) -> Kafka -> the
archive sink, the audit sink, the exporter's /metrics. Scanned for the canaries: the spool files, every record value
of the topic (decompressed: the broker's log files hold the same batches lz4-compressed, so their bytes cannot show a
canary even when one is there; the records as consumed can), the archive files, the audit files, /metrics (exporter
and producer), every log record and everything printed. The one place a canary may appear is ``audit show`` with the
private key, and it must (a positive control: the scan does find the canaries when they are there).

Second configuration: every capture flag on at the producer and the archive. The flagged content (full LLM I/O,
full tool results, full plugin output) reaches the archive, scrubbed, and no canary shows anywhere else either.
Not covered: the streams worker and its alerts topic (too heavy for this test; it reads only typed numeric fields and
labels), and identity fields (tenant, session, user ids ...), which are not scanned by design (producers.scrub).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from agentwatch.cli import main
from producers.publisher import EventPublisher
from producers.scrub import Scrubber
from producers.stamp import Stamper
from schemas import contract
from schemas.evidence import EvidenceSealer, generate_keypair, load_public_key
from schemas.redaction import DEFAULT_CAPTURE_FLAGS
from sinks.archive_sink import ArchiveSink
from sinks.archive_store import ArchiveWriter
from sinks.audit_classify import AuditPolicy
from sinks.audit_log import AuditLog
from sinks.audit_sink import AuditSink
from sinks.prometheus import ExporterState

pytestmark = pytest.mark.kafka

UNREACHABLE = "127.0.0.1:9"
HMAC = b"h" * 32
CANARY = "\n".join([
    "openai sk-proj-CANARYaaaa1111bbbb2222cccc3333",
    "aws id AKIACANARY0000000001",
    "aws_secret_access_key = CanaryAwsSecretKey/0123456789+abcdefGHIJ",
    "gh ghp_CANARYghtoken0123456789abcdefghijklmn",
    "jwt eyJhbGciOiJIUzI1NiJ9.eyJjYW5hcnkiOiIxIn0.CANARYsignature123",
    "-----BEGIN RSA PRIVATE KEY-----\nCANARYPEMBODY0123456789\n-----END RSA PRIVATE KEY-----",
    "db postgres://app:CanaryUrlPass99@db.internal/app",
    "mail canary.person@example.com",
    "card 4111 1111 1111 1111",
    "Authorization: Bearer CANARYbearer0123456789abcdef",
    '{"password": "CanaryJsonPass42"}',
])
NEEDLES = ["CANARYaaaa1111", "AKIACANARY", "CanaryAwsSecretKey", "CANARYghtoken", "CANARYsignature", "CANARYPEMBODY",
           "CanaryUrlPass99", "canary.person@", "4111 1111 1111 1111", "CANARYbearer", "CanaryJsonPass42"]
# what each capture flag lets through: a marker (no secret) next to the canary, inside the flagged content
FLAGGED = {"capture_full_llm_io": "MARK-LLM-IO", "capture_tool_result_full": "MARK-TOOL-RESULT",
           "capture_plugin_hook_output_full": "MARK-PLUGIN", "capture_llm_delta": "MARK-DELTA"}


# every string field of the schema but the identities and labels (not scanned by design) and the two JSON fields
IDENTITY_FIELDS = {"event_id", "tenant", "session_id", "user_id", "service", "agent_name", "turn_id", "child_task_id",
                   "traceparent", "call_id"}
FREE_TEXT_FIELDS = [f["name"] for f in contract.current().event_json["fields"]
                    if "string" in (f["type"] if isinstance(f["type"], list) else [f["type"]])
                    and f["name"] not in IDENTITY_FIELDS | {"payload", "evidence"}]


def _payload(etype: str) -> dict[str, Any]:
    text = f"{etype} says:\n{CANARY}"
    payload: dict[str, Any] = {"text": text, "nested": {"list": [text, {"deep": text}]}}
    if etype == "llm_call_io":
        payload["messages"] = [{"role": "user", "content": f"{FLAGGED['capture_full_llm_io']} {text}"}]
        payload["tools"] = [{"name": "t", "description": text}]
    if etype == "llm_call_delta":
        payload["added_messages"] = [{"role": "assistant", "content": f"{FLAGGED['capture_llm_delta']} {text}"}]
    # over the caps (8,000 chars, 20 % head; 500, half head), each marker where the head/tail cut removes it
    if etype == "tool_result":
        payload["content"] = text + " " + "x" * 3_000 + f" {FLAGGED['capture_tool_result_full']} " + "y" * 9_000
    if etype == "plugin_hook_fired":
        marker = FLAGGED["capture_plugin_hook_output_full"]
        payload["output_preview"] = text + " " + "x" * 200 + f" {marker} " + "y" * 600
    for key in ("chunk", "answer", "value"):
        payload[key] = text
    return payload


def _events() -> list[dict[str, Any]]:
    stamper = Stamper()
    events = []
    for i, etype in enumerate(t for t in contract.event_types() if t != "unknown"):
        fields = {name: f"{name}: {CANARY}" for name in FREE_TEXT_FIELDS}
        events.append(stamper.stamp(etype, {**fields, "payload": _payload(etype)}, tenant="acme",
                                    session_id=f"s-{i % 3}"))
    # audited shapes (what the audit classifier keeps), with the canary in their free text
    audited = [("session_start", {}), ("confirm_resolved", {"confirm_outcome": "allow", "tool_name": "crm_update"}),
               ("permission_decision", {"permission_decision": "deny", "tool_name": "crm_update"}),
               ("tool_complete", {"status": "ok", "tool_name": "crm_update"}), ("memory_cleared", {})]
    for etype, typed in audited:
        events.append(stamper.stamp(etype, {**typed, "error_message": f"boom: {CANARY}",
                                            "payload": {"detail": CANARY}}, tenant="acme", session_id="s-audit"))
    return events


def _leaks(where: str, data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [f"{where}: {n}" for n in NEEDLES if n in text]


def _files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()]


def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scan-{topic}", "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[tuple[int, bytes]] = []
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < partitions:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            out.append((msg.partition(), msg.value()))
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        return out
    finally:
        consumer.close()


def test_the_canaries_are_planted_in_every_free_text_field() -> None:
    assert len(FREE_TEXT_FIELDS) >= 9 and "error_message" in FREE_TEXT_FIELDS


@pytest.mark.parametrize("flags_on", [False, True], ids=["default-flags", "every-capture-flag-on"])
def test_no_canary_in_clear_anywhere_but_opened_audit_evidence(kafka_bootstrap, make_topic, tmp_path, caplog,
                                                                 capsys, flags_on) -> None:
    caplog.set_level(logging.DEBUG)
    flags = dict.fromkeys(DEFAULT_CAPTURE_FLAGS, True) if flags_on else {}
    private, public = generate_keypair()
    (tmp_path / "evidence.key").write_bytes(private)
    sealer = EvidenceSealer(load_public_key(public))
    topic = make_topic(partitions=3)
    events = _events()
    half = len(events) // 2
    spool = tmp_path / "spool"

    # 1. Kafka away: the first half goes to the spool, and the spool is scanned while it holds them
    first = EventPublisher(UNREACHABLE, topic, spool_dir=spool, stall_timeout_s=0.2, linger_ms=5,
                           scrubber=Scrubber(flags, evidence=sealer))
    for e in events[:half]:
        assert first.publish(e)
    first.close(2)
    spooled = _files(spool)
    assert spooled and sum(p.stat().st_size for p in spooled) > 0
    leaks = [leak for p in spooled for leak in _leaks(str(p), p.read_bytes())]

    # 2. Kafka back: a new publisher resends the spool and publishes the rest
    second = EventPublisher(kafka_bootstrap, topic, spool_dir=spool, linger_ms=5,
                            scrubber=Scrubber(flags, evidence=sealer))
    for e in events[half:]:
        assert second.publish(e)
    assert second.flush(30)
    leaks += _leaks("producer /metrics", generate_latest(second.registry))
    second.close(5)
    assert second.stats["delivered"] + first.stats["delivered"] >= len(events) - half

    # 3. the topic, every record, decompressed
    records = _consume_all(kafka_bootstrap, topic, 3)
    assert records
    leaks += [leak for _p, value in records for leak in _leaks("topic record", value)]

    # 4. the archive (the same flags: the producer's are the widest it can see)
    archive = tmp_path / "archive"
    writer = ArchiveWriter(archive, flags=flags)
    ArchiveSink(kafka_bootstrap, topic, writer, group_id=f"archive-{topic}").run(until_end=True)
    writer.close()
    archive_text = "".join(p.read_text() for p in _files(archive))
    leaks += _leaks("archive", archive_text)

    # 5. the audit log (default settings; the policy names the business tool)
    audit_root = tmp_path / "audit"
    policy = AuditPolicy().with_business_tools(["crm_*"])
    with AuditLog(audit_root, HMAC) as log:
        stats = AuditSink(kafka_bootstrap, topic, log, policy, group_id=f"audit-{topic}").run(until_end=True,
                                                                                              idle_timeout_s=20)
    assert sum(stats.per_class.values()) >= 5
    leaks += [leak for p in _files(audit_root) for leak in _leaks(str(p), p.read_bytes())]

    # 6. the exporter's /metrics
    state = ExporterState(topic)
    state.process_batch(records)
    registry = state.register(CollectorRegistry())
    leaks += _leaks("exporter /metrics", generate_latest(registry))

    # 7. audit show without the key: scrubbed values and the "sealed" notice only
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(audit_root), "--json"]) == 0
    shown = capsys.readouterr()
    leaks += _leaks("audit show without key", shown.out + shown.err)
    assert "evidence_sealed" in shown.out

    # nothing the sinks wrote is readable by group or others (issue 12 item 4; the spool is the publisher's own)
    loose = [f"{p} {p.stat().st_mode & 0o777:o}" for root in (archive, audit_root)
             for p in [root, *root.rglob("*")] if p.stat().st_mode & 0o077]
    assert loose == []

    # 8. every log record and everything printed so far
    leaks += _leaks("logs", "\n".join(r.getMessage() for r in caplog.records))
    assert leaks == []

    # the positive control: with the private key, audit show opens the evidence and the canaries are there
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(audit_root), "--json",
                 "--evidence-key", str(tmp_path / "evidence.key")]) == 0
    opened = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    evidence = [r["evidence_opened"] for r in opened if "evidence_opened" in r]
    assert len(evidence) >= 5
    for raw in evidence:
        assert _leaks("evidence", json.dumps(raw, ensure_ascii=False)) == [f"evidence: {n}" for n in NEEDLES]

    # with a capture flag on, its content reaches the archive (scrubbed: no canary above); off, it does not
    for flag, marker in FLAGGED.items():
        expected = flags_on or DEFAULT_CAPTURE_FLAGS[flag]
        assert (marker in archive_text) == expected, flag
        if not expected:
            assert not any(marker.encode() in value for _p, value in records), flag  # not on the bus either
