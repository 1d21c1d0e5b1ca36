"""Signed heads published to an external witness (file, HTTP, a compacted Kafka topic) and checked by verify."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentwatch.commands import audit as audit_cmd
from agentwatch.config import Settings
from sinks.audit_anchor import AnchorError, AnchorPublisher, FileWitness, HttpWitness, KafkaWitness, open_witness
from sinks.audit_classify import Classification
from sinks.audit_format import tenant_dirname
from sinks.audit_log import AuditLog

KEY = b"test-hmac-key-0123456789abcdef"
T0 = 1_750_000_000_000_000
SESSION = Classification("session_start", "session", 365)


def ev(i: int, tenant: str = "acme") -> dict[str, object]:
    return {"event_id": uuid.UUID(int=i).hex, "event_time": T0 + i, "producer_time": T0 + i, "tenant": tenant,
            "session_id": f"s{i}", "seq": i, "type": "session_start"}


def write(root: Path, publisher: AnchorPublisher, first: int, n: int, tenants: tuple[str, ...] = ("acme",)) -> None:
    with AuditLog(root, KEY, checkpoint_every=3, on_checkpoint=publisher.publish) as log:
        for tenant in tenants:
            for i in range(first, first + n):
                log.append(ev(i, tenant), SESSION)
        publisher.flush()
    assert publisher.close()


def test_publisher_keeps_the_newest_head_per_stream_and_retries_after_a_failure(tmp_path):
    witness = FileWitness(tmp_path / "not-yet" / "anchors.jsonl")
    pub = AnchorPublisher(witness)
    with AuditLog(tmp_path / "a", KEY, checkpoint_every=2, on_checkpoint=pub.publish) as log:
        for i in range(7):
            log.append(ev(i, "acme" if i % 2 else "globex"), SESSION)
        assert pub.pending == 2
        assert pub.flush() is False and pub.failures == 1  # the witness is unreachable: counted, kept
        (tmp_path / "not-yet").mkdir()
        log.append(ev(99), SESSION)
    assert pub.close() and pub.failures == 1 and pub.pending == 0
    seen = witness.read()
    assert sorted((cp["tenant"], cp["sealed"]) for cp in seen) == [("acme", True), ("globex", True)]  # the newest
    assert (tmp_path / "not-yet" / "anchors.jsonl").stat().st_mode & 0o777 == 0o600


class WitnessServer:
    """A minimal HTTP witness: POST stores a checkpoint, GET returns them all as JSON lines."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.items.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                body = b"".join(item + b"\n" for item in outer.items)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/anchors"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_witness() -> Iterator[WitnessServer]:
    server = WitnessServer()
    yield server
    server.close()


def verify_cli(monkeypatch, root: Path, *extra: str) -> int:
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", KEY.decode())
    parser = argparse.ArgumentParser()
    audit_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["audit", "verify", "--dir", str(root), *extra])
    return args.func(args, Settings.from_env().with_(home=root.parent))


def test_http_witness_catches_rollback_through_the_cli(tmp_path, http_witness, monkeypatch, capsys):
    root = tmp_path / "a"
    write(root, AnchorPublisher(HttpWitness(http_witness.url)), 0, 5)
    snapshot = tmp_path / "snap"
    shutil.copytree(root, snapshot)
    write(root, AnchorPublisher(HttpWitness(http_witness.url)), 100, 5)
    assert verify_cli(monkeypatch, root, "--anchors", http_witness.url) == 0
    assert capsys.readouterr().out.startswith("OK:")
    shutil.rmtree(root)
    shutil.copytree(snapshot, root)  # rolled back to the older, valid, sealed state
    assert verify_cli(monkeypatch, root) == 0  # without the anchor: undetectable
    capsys.readouterr()
    assert verify_cli(monkeypatch, root, "--anchors", http_witness.url) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 problem(s)" in out and "[anchor_rollback]" in out and "tenant 'acme' / session" in out


def test_witness_specs_and_errors_are_clear(tmp_path, monkeypatch, capsys):
    assert open_witness("none", bootstrap_servers="x", default_topic="t") is None
    assert isinstance(open_witness("kafka", bootstrap_servers="x", default_topic="t"), KafkaWitness)
    assert open_witness("kafka:other", bootstrap_servers="x", default_topic="t").topic == "other"
    with pytest.raises(AnchorError, match="unknown anchors witness 'ftp://x'"):
        open_witness("ftp://x", bootstrap_servers="x", default_topic="t")
    root = tmp_path / "a"
    write(root, AnchorPublisher(FileWitness(tmp_path / "anchors.jsonl")), 0, 2)
    assert verify_cli(monkeypatch, root, "--anchors", f"file:{tmp_path / 'missing.jsonl'}") == 2
    assert capsys.readouterr().err.startswith(f"audit verify: anchors file {tmp_path / 'missing.jsonl'}:")
    assert verify_cli(monkeypatch, root, "--anchors", f"file:{tmp_path / 'anchors.jsonl'}") == 0


@pytest.mark.kafka
def test_kafka_witness_compacted_topic_round_trip_and_rollback(kafka_bootstrap, make_topic, tmp_path, monkeypatch,
                                                               capsys):
    topic = make_topic(cleanup_policy="compact", retention_ms=-1)
    witness = KafkaWitness(kafka_bootstrap, topic)
    witness.check()
    with pytest.raises(AnchorError, match="does not exist"):
        KafkaWitness(kafka_bootstrap, f"{topic}-missing").check()
    root = tmp_path / "a"
    write(root, AnchorPublisher(witness), 0, 5, tenants=("acme", "globex"))
    seen = KafkaWitness(kafka_bootstrap, topic).read()
    newest = {(cp["tenant"], cp["stream"]): cp for cp in seen}  # the last per key is the seal
    assert set(newest) == {("acme", "session"), ("globex", "session")} and all(c["sealed"] for c in newest.values())
    assert verify_cli(monkeypatch, root, "--bootstrap-servers", kafka_bootstrap, "--anchors", f"kafka:{topic}") == 0
    capsys.readouterr()
    # roll globex back: drop its seal and the checkpoint before it (the records they covered stay: a crash look)
    cp_path = root / tenant_dirname("globex") / "session" / "checkpoints.jsonl"
    cp_path.write_bytes(b"".join(cp_path.read_bytes().splitlines(keepends=True)[:-2]))
    assert verify_cli(monkeypatch, root) == 0  # locally it looks like a crashed writer's tail (a warning)
    capsys.readouterr()
    assert verify_cli(monkeypatch, root, "--bootstrap-servers", kafka_bootstrap, "--anchors", f"kafka:{topic}") == 1
    out = capsys.readouterr().out
    assert "tenant 'globex' / session / checkpoints.jsonl: [anchor_rollback]" in out
    assert "'acme'" not in out.split("signed heads")[0].replace("FAILED", "")  # the untouched tenant passes
    json.dumps(seen)  # what the witness holds is plain JSON (another party can keep it)


def test_the_writer_refuses_to_continue_a_rolled_back_or_removed_stream(tmp_path):
    """Continuing a rolled-back stream would publish older heads over the witness's newer ones: refused instead."""
    from sinks.audit_anchor import newest_per_stream
    from sinks.audit_log import AuditRolledBack

    root, witness = tmp_path / "a", FileWitness(tmp_path / "anchors.jsonl")
    write(root, AnchorPublisher(witness), 0, 4, tenants=("acme", "globex", "initech"))
    snapshot = tmp_path / "snap"
    shutil.copytree(root, snapshot)
    write(root, AnchorPublisher(witness), 100, 4, tenants=("acme", "globex", "initech"))
    heads = newest_per_stream(witness.read())
    with AuditLog(root, KEY, witness_heads=heads) as log:  # untouched: nothing to refuse
        assert log.recover() == {}
    shutil.rmtree(root / tenant_dirname("acme"))
    shutil.copytree(snapshot / tenant_dirname("acme"), root / tenant_dirname("acme"))  # acme rolled back
    shutil.rmtree(root / tenant_dirname("globex") / "session")  # globex's stream removed
    shutil.rmtree(root / tenant_dirname("initech"))  # initech removed entirely
    pub = AnchorPublisher(witness)
    with AuditLog(root, KEY, witness_heads=heads, on_checkpoint=pub.publish) as log:
        refused = log.recover()
        assert set(refused) == {"acme", "globex", "initech"}
        assert all(isinstance(e, AuditRolledBack) for e in refused.values())
        assert "anchors witness saw checkpoint" in str(refused["acme"]) and "rolled back" in str(refused["acme"])
        assert "the stream was removed" in str(refused["globex"])
        with pytest.raises(AuditRolledBack):
            log.append(ev(500, "acme"), SESSION)
    assert pub.close()
    assert newest_per_stream(witness.read()) == heads  # nothing older was published over the witness


@pytest.mark.kafka
def test_audit_run_fails_fast_with_one_line_when_the_anchors_topic_is_missing(kafka_bootstrap, make_topic, tmp_path,
                                                                             monkeypatch, capsys):
    import base64

    topic = make_topic()
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("AGENTWATCH_AUDIT_ENC_KEY", base64.b64encode(bytes(32)).decode())
    monkeypatch.setenv("AGENTWATCH_AUDIT_ANCHORS", f"kafka:{topic}-anchors-missing")
    parser = argparse.ArgumentParser()
    audit_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["audit", "run", "--dir", str(tmp_path / "a"), "--topic", topic,
                              "--bootstrap-servers", kafka_bootstrap, "--until-end"])
    assert args.func(args, Settings.from_env()) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"audit run: anchors topic {topic}-anchors-missing does not exist at {kafka_bootstrap}; create it "
                   "(`agentwatch topics create`) or choose another witness with AGENTWATCH_AUDIT_ANCHORS")
