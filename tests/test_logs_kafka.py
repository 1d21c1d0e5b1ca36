"""``agentwatch logs run`` on a real broker: topic to per-tenant files (secrets planted in tool arguments never reach
them, offsets committed to the end, /metrics counts lines and drops), and SIGKILL at random moments with ground truth:
every produced event exactly once in the files."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agentwatch.cli import main
from schemas.codec import AvroCodec
from sinks.archive import tenant_dirname
from sinks.logs import parse_log_name
from sinks.logs_sink import LogsCollector, LogsSink
from sinks.logs_store import LogWriter

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]
US = 1_000_000
SECRET = "sk-proj-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt" * 2
GH = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2


def ev(i: int, tenant: str, t_us: int, etype: str = "tool_start", **fields: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "event_time": t_us, "producer_time": t_us, "tenant": tenant,
            "session_id": f"s{i % 7}", "seq": i + 1, "type": etype, "user_id": f"u{i % 3}", **fields}


def produce(bootstrap: str, topic: str, events: list[dict[str, Any]], per_record: int) -> None:
    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for n in range(0, len(events), per_record):
        chunk = events[n:n + per_record]
        value = codec.encode_event(chunk[0]) if len(chunk) == 1 else codec.encode_batch("p", n, chunk[0][
            "event_time"], chunk)
        producer.produce(topic, key=chunk[0]["session_id"].encode(), value=value)
    assert producer.flush(30) == 0


def lines(root: Path) -> list[dict[str, Any]]:
    """Every line under ``root``; read again when a file was gzipped (renamed) while it was being listed."""
    for _attempt in range(20):
        try:
            return _lines(root)
        except FileNotFoundError:
            time.sleep(0.05)
    return _lines(root)


def _lines(root: Path) -> list[dict[str, Any]]:
    out = []
    for tdir in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in sorted(os.listdir(tdir)):
            if parse_log_name(name) is None:
                continue
            opener = gzip.open if name.endswith(".gz") else open
            with opener(tdir / name, "rb") as fh:
                out += [json.loads(line) for line in fh]
    return out


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10)}
    finally:
        c.close()


def test_logs_run_from_topic_to_files_scrubbed(kafka_bootstrap: str, make_topic: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(partitions=2)
    now = int(time.time() * US)
    events = []
    for i in range(60):
        tenant = ["acme", "../evil", "Globex Ünïcode"][i % 3]
        args = {"command": f"curl -H 'Authorization: Bearer {SECRET}' https://x", "token": GH} if i % 4 == 0 \
            else {"path": f"/tmp/{i}"}
        events.append(ev(i, tenant, now - (i % 2) * 86_400 * US, payload=json.dumps({"args": args}),
                         tool_name="run_shell_command", call_id=f"c{i}"))
    produce(kafka_bootstrap, topic, events, per_record=4)
    produce(kafka_bootstrap, topic, [ev(99, "acme", now, "log", payload=json.dumps(
        {"logger": "agentao", "level": "WARNING", "message": f"retrying with key {SECRET}"}))], per_record=1)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(topic, value=b"not avro at all")
    assert p.flush(10) == 0
    root = tmp_path / "logs"
    group = f"logs-{uuid.uuid4().hex[:8]}"
    assert main(["logs", "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--dir", str(root),
                 "--group", group, "--until-end", "--idle-timeout", "30"]) == 0
    got = lines(root)
    ids = [r["event_id"] for r in got]
    assert len(ids) == len(set(ids)) == len(events) + 1
    assert set(ids) >= {e["event_id"] for e in events}
    raw = b"".join(p_.read_bytes() for p_ in root.rglob("*.jsonl"))
    assert SECRET.encode() not in raw and GH.encode() not in raw and b"[REDACTED:" in raw
    assert {r["tenant_id"] for r in got} == {"acme", "../evil", "Globex Ünïcode"}
    assert (root / tenant_dirname("../evil")).is_dir() and not (tmp_path / "evil").exists()
    log = next(r for r in got if r["event_type"] == "log")
    assert log["level"] == "warning" and "[REDACTED:" in log["data"]["message"]
    assert all(r["ts"].endswith("Z") for r in got)
    ends = committed(kafka_bootstrap, topic, group, 2)
    assert sum(ends.values()) == len(events) // 4 + 2  # every record, the undecodable one too
    assert "1 undecodable" in capsys.readouterr().err


def test_metrics_endpoint_counts_lines_and_drops(kafka_bootstrap: str, make_topic: Any, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    topic = make_topic(partitions=1)
    now = int(time.time() * US)
    produce(kafka_bootstrap, topic, [ev(i, "acme", now) for i in range(5)]
            + [ev(9, "acme", now - 40 * 86_400 * US)], per_record=1)  # the last one is past retention
    writer = LogWriter(tmp_path / "logs", fsync=False)
    sink = LogsSink(kafka_bootstrap, topic, writer, group_id=f"m-{uuid.uuid4().hex[:6]}")
    sink.run(until_end=True, idle_timeout_s=30)
    writer.close()
    registry = CollectorRegistry()
    registry.register(LogsCollector(sink))
    text = generate_latest(registry).decode()
    assert 'agentwatch_logs_lines_written_total{event_type="tool_start"} 5.0' in text
    assert 'agentwatch_logs_lines_dropped_total{reason="expired"} 1.0' in text
    assert 'agentwatch_logs_lines_dropped_total{reason="undecodable"} 0.0' in text


_DRIVER = """
import sys
from sinks.logs_sink import LogsSink
from sinks.logs_store import LogWriter
bootstrap, topic, group, root, until_end = sys.argv[1:6]
writer = LogWriter(root)
sink = LogsSink(bootstrap, topic, writer, group_id=group, batch_size=int(sys.argv[6]),
                consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
sink.run(until_end=until_end == "1", idle_timeout_s=60)
writer.close()
"""


def test_sigkill_at_random_moments_every_event_exactly_once(kafka_bootstrap: str, make_topic: Any,
                                                            tmp_path: Path) -> None:
    """The sink in a subprocess (a short session timeout, so a restart does not wait out the dead member), killed
    three times while it writes (at random progress points, each caught by a 20 ms poll: anywhere in a batch's
    write, fsync or commit), restarted at once, then run to the end: the files hold every produced event exactly
    once (ground truth: the event ids produced)."""
    topic = make_topic(partitions=3)
    now = int(time.time() * US)
    rng = random.Random(7)
    events = [ev(i, f"tenant-{i % 5}", now - rng.randrange(2 * 86_400) * US, payload=json.dumps(
        {"args": {"text": "x" * rng.randrange(50, 400)}})) for i in range(30_000)]
    produce(kafka_bootstrap, topic, events, per_record=7)
    root, group = tmp_path / "logs", f"kill-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(until_end: bool) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", _DRIVER, kafka_bootstrap, topic, group, str(root),
                                 "1" if until_end else "0", "200"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def written() -> int:
        """Lines on disk (newlines counted, gzipped segments included), cheap enough to poll."""
        n = 0
        for path in root.rglob("*.jsonl*") if root.exists() else ():
            try:
                n += (gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()).count(
                    b"\n")
            except (FileNotFoundError, EOFError, OSError):
                pass  # renamed or half-written while listed: the next poll sees it
        return n

    kills = []
    for target in sorted(rng.uniform(0.1, 0.8) * len(events) for _ in range(3)):  # progress points, random
        proc = start(False)
        deadline = time.monotonic() + 120
        while written() < target and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        kills.append(written())
    assert 0 < kills[0] and kills[-1] < len(events), f"killed mid-stream: lines on disk at each kill {kills}"
    done = subprocess.run([sys.executable, "-c", _DRIVER, kafka_bootstrap, topic, group, str(root), "1", "200"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = [r["event_id"] for r in lines(root)]
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} lines written twice"
    assert set(got) == {e["event_id"] for e in events}
