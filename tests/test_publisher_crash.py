"""The publisher's disk buffer under faults, against a real broker of the test's own (stopped and started here):
SIGKILL of the publishing process while Kafka is away, and a spool whose file system fills up during an outage.

Ground truth is the set of events ``publish()`` accepted; what arrives is read from the events topic and
deduplicated the way the stream worker does (a batch whose ``(producer_id, batch_seq)`` is not above the highest
already applied for that producer on that partition is a redelivery and skipped), then counted by ``event_id``.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from agentwatch.broker.launcher import LocalKafka, free_ports
from agentwatch.config import Settings
from agentwatch.topics import TopicSpec, ensure_topics
from producers.publisher import EventPublisher
from producers.stamp import Stamper
from schemas.codec import AvroCodec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker on a fixed port with a persistent data dir, started; tests stop and start it."""
    port = free_ports(1)[0]
    kafka = LocalKafka(Settings.from_env().home, port=port, data_dir=tmp_path_factory.mktemp("crash-kafka"),
                       stop_timeout=30)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def delivered_once(bootstrap: str, topic: str, timeout: float = 60.0) -> tuple[Counter[str], int]:
    """Event ids on ``topic`` after skipping redelivered batches as the worker does; and how many were skipped."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    codec = AvroCodec()
    counts: Counter[str] = Counter()
    applied: dict[tuple[int, str], int] = {}
    skipped = 0
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pos = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"consumed {pos} of {ends}"
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                pos[msg.partition()] = msg.offset() + 1
                d = codec.decode(msg.value())
                assert d.is_batch and d.producer_id is not None and d.batch_seq is not None
                key = (msg.partition(), d.producer_id)
                if d.batch_seq <= applied.get(key, -1):
                    skipped += 1
                    continue
                applied[key] = d.batch_seq
                counts.update(e["event_id"] for e in d.events)
    finally:
        consumer.close()
    return counts, skipped


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"no line from the child in {timeout} s")
        return proc.stdout.readline().strip()
    finally:
        sel.close()


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from producers.publisher import EventPublisher
from producers.stamp import Stamper
bootstrap, topic, spool, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pub = EventPublisher(bootstrap, topic, spool_dir=spool, linger_ms=5, batch_max_events=50, stall_timeout_s=0.5)
print("producer", pub.producer_id, flush=True)
stamper = Stamper(tenant="crash")
def send(lo, hi):
    for i in range(lo, hi):
        ev = stamper.stamp("tool_complete", {{"tool_name": "t", "status": "ok"}}, session_id=f"s{{i % 40}}")
        ev["event_id"] = f"ev-{{i}}"
        assert pub.publish(ev)
        if i % 500 == 0:
            time.sleep(0.01)
send(0, n // 2)
assert pub.flush(60)
print("half", pub.stats["delivered"], flush=True)
sys.stdin.readline()  # the broker is stopped now
send(n // 2, n)
while pub.stats["spooled"] < n or pub.stats["buffer_depth"]:
    time.sleep(0.05)
time.sleep(1.0)  # the client retries what it holds against the dead broker
s = pub.stats
print("ready", s["spooled"], s["delivered"], s["inflight_batches"], s["dropped"], flush=True)
time.sleep(600)
"""


def test_sigkill_during_an_outage_then_a_new_publisher_delivers_every_event_once(
        broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap_servers
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    spool = tmp_path / "spool"
    n = 6000
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT)), bootstrap, topic, str(spool),
                              str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        producer_id = read_line(child, 60).split()[1]
        half = read_line(child, 90).split()
        assert half[0] == "half" and int(half[1]) == n // 2
        broker.stop()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        ready = read_line(child, 90).split()
        assert ready[0] == "ready"
        spooled, delivered, inflight, dropped = map(int, ready[1:])
        assert (spooled, delivered, dropped) == (n, n // 2, 0)
        assert inflight > 0  # records were handed to librdkafka and sat in its memory when the process died
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    broker.start()
    with EventPublisher(bootstrap, topic, spool_dir=spool) as second:
        assert second.producer_id == producer_id  # the same identity: its re-sent batches are recognised
        recovered = second.stats["spool_recovered_events"]
        assert recovered >= n // 2  # the whole outage half (and acknowledged frames the checkpoint missed)
        assert second.flush(120), second.stats
        assert second.stats["spool_events"] == 0 and second.stats["dropped"] == 0
    counts, _skipped = delivered_once(bootstrap, topic)
    assert set(counts) == {f"ev-{i}" for i in range(n)}
    assert max(counts.values()) == 1


MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def big_events(stamper: Stamper, lo: int, hi: int) -> list[dict[str, Any]]:
    out = []
    for i in range(lo, hi):
        ev = stamper.stamp("tool_output", {"payload": {"chunk": f"{i:08d}" + os.urandom(300).hex()}},
                           session_id=f"s{i % 25}")
        ev["event_id"] = f"ev-{i}"
        out.append(ev)
    return out


def test_a_full_spool_disk_during_an_outage_counts_every_drop_and_delivers_nothing_twice(
        broker: LocalKafka, small_disk: Path) -> None:
    if not broker.running():
        broker.start()
    bootstrap = broker.bootstrap_servers
    topic = f"full-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    spool = small_disk / "spool"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (256 * 1024))  # someone else's data: freed later ("space returns")
    stamper = Stamper(tenant="full")
    before = big_events(stamper, 0, 500)
    during = big_events(stamper, 500, 4000)  # ~2.5 MB of spool frames: far more than the disk holds
    first = EventPublisher(bootstrap, topic, spool_dir=spool, linger_ms=5, batch_max_events=20,
                           stall_timeout_s=0.5)
    for e in before:
        assert first.publish(e)
    assert first.flush(60)
    broker.stop()
    for i, e in enumerate(during):
        assert first.publish(e)  # accepted into memory; the sender finds the disk full and counts
        if i % 200 == 0:
            time.sleep(0.02)
    assert first.flush(5) is False
    first.close(timeout=2)
    dropped = first.dropped_by_reason()
    assert set(dropped) == {"spool_full"} and 0 < dropped["spool_full"] < len(during)
    assert first.stats["spool_write_errors"] > 0
    assert first.stats["undelivered"] == len(during) - dropped["spool_full"]
    # the next publisher starts on the full disk (degraded writes, not a crash) ...
    second = EventPublisher(bootstrap, topic, spool_dir=spool, linger_ms=5)
    assert second.stats["spool_recovered_events"] == len(during) - dropped["spool_full"]
    second.close(timeout=1)
    # ... and once space returns and Kafka is back, a third one delivers what was kept, nothing twice
    filler.unlink()
    broker.start()
    with EventPublisher(bootstrap, topic, spool_dir=spool) as third:
        assert third.flush(120), third.stats
    counts, _skipped = delivered_once(bootstrap, topic)
    assert max(counts.values()) == 1
    ids = {e["event_id"] for e in before + during}
    assert set(counts) <= ids and {e["event_id"] for e in before} <= set(counts)
    assert len(counts) == len(ids) - dropped["spool_full"]  # every accepted event delivered or counted as dropped
