"""EventPublisher against a real Kafka: exact delivery in session order, bad input, broker outages, the spool.

Tests that stop and start a broker run their own ``LocalKafka`` on a fixed port (never the shared session broker).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import generate_latest

from agentwatch.broker.launcher import LocalKafka, free_ports
from agentwatch.config import Settings
from agentwatch.topics import TopicSpec, ensure_topics
from producers.normalize import COERCED, INVALID, OK, EventNormalizer
from producers.publisher import EventPublisher
from producers.scrub import TRUNCATION_MARKER, Scrubber
from producers.sharding import partition_of
from producers.spool import Spool, scan_frames
from producers.stamp import DeferredStamper, Stamper
from schemas.codec import AvroCodec, Decoded

UNREACHABLE = "127.0.0.1:9"
ROOT = Path(__file__).resolve().parents[1]


# -- helpers --------------------------------------------------------------------------------------------------------


def consume_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[tuple[int, Decoded]]:
    """Every record of ``topic`` up to its current end, decoded, as (partition, Decoded) in partition order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    codec = AvroCodec()
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pos = dict.fromkeys(partitions, 0)
        out: list[tuple[int, Decoded]] = []
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"consumed {pos} of {ends}"
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                out.append((msg.partition(), codec.decode(msg.value())))
                pos[msg.partition()] = msg.offset() + 1
        return out
    finally:
        consumer.close()


def events_of(records: list[tuple[int, Decoded]]) -> list[dict[str, Any]]:
    return [e for _, d in records for e in d.events]


def assert_exactly_once_in_order(events: list[dict[str, Any]], expected_ids: set[str]) -> None:
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates"
    missing, unexpected = expected_ids - set(ids), set(ids) - expected_ids
    assert not missing and not unexpected, f"missing {len(missing)}, unexpected {len(unexpected)}"
    last: dict[str, int] = defaultdict(int)
    for e in events:
        assert e["seq"] > last[e["session_id"]], f"session {e['session_id']} out of order at seq {e['seq']}"
        last[e["session_id"]] = e["seq"]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def spooled_events(directory: Path) -> list[dict[str, Any]]:
    """Decode what a (closed) spool directory holds, in replay order."""
    codec = AvroCodec()
    out = []
    for seg in sorted(directory.glob("seg-*.spool")):
        for frame in scan_frames(seg.read_bytes()).frames:
            out.extend(codec.decode(frame.value).events)
    return out


class GatedSender:
    """Holds the publisher's sender thread inside normalisation until ``open()``: makes "buffer full" deterministic."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        inner = publisher._normalizer.normalize
        outer_thread = threading.current_thread()

        def gated(event: Any, counters: Any = None) -> Any:
            if threading.current_thread() is not outer_thread and not self.gate.is_set():
                self.entered.set()
                self.gate.wait(30)
            return inner(event, counters)

        publisher._normalizer.normalize = gated  # type: ignore[method-assign]

    def open(self) -> None:
        self.gate.set()


def good_events(stamper: Stamper, n: int, sessions: int = 10, prefix: str = "s") -> list[dict[str, Any]]:
    return [stamper.stamp("tool_complete", {"tool_name": f"tool{i % 5}", "status": "ok", "duration_ms": i,
                                            "payload": {"i": i}}, session_id=f"{prefix}{i % sessions}")
            for i in range(n)]


# -- normalisation: bad input decided and routed, never raised --------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    def __repr__(self) -> str:
        raise RuntimeError("no")


def test_unknown_top_level_keys_move_into_the_payload() -> None:
    ev = Stamper().stamp("tool_start", {"tool_name": "t", "payload": {"args": {"a": 1}}, "mystery": [1, 2],
                                        "args": "collides"})
    clean, status = EventNormalizer().normalize(ev)
    assert status == OK and clean is not None
    assert json.loads(clean["payload"]) == {"args": {"a": 1}, "mystery": [1, 2], "_extra_args": "collides"}
    assert "mystery" not in clean


def test_the_callers_dict_is_never_modified() -> None:
    ev = Stamper().stamp("nonsense_type", {"prompt_tokens": "12", "extra": 1, "error_message": "x" * 20_000,
                                           "payload": {"nested": [1, {"a": b"bytes"}]}})
    before = copy.deepcopy(ev)
    clean, status = EventNormalizer(scrubber=Scrubber()).normalize(ev)
    assert status == COERCED and clean is not None and clean is not ev
    assert ev == before


def test_wrong_types_are_coerced_when_the_meaning_is_clear() -> None:
    ev = Stamper().stamp("llm_call_completed", {"prompt_tokens": "12", "completion_tokens": 7.0,
                                                "duration_ms": " 30 ", "http_status": True, "model": 4,
                                                "cache_read_tokens": "abc", "reasoning_tokens": float("nan"),
                                                "error_class": b"Boom"})
    clean, status = EventNormalizer().normalize(ev)
    assert status == COERCED and clean is not None
    assert (clean["prompt_tokens"], clean["completion_tokens"], clean["duration_ms"], clean["http_status"],
            clean["model"], clean["error_class"]) == (12, 7, 30, 1, "4", "Boom")
    assert clean["cache_read_tokens"] is None and clean["reasoning_tokens"] is None
    payload = json.loads(clean["payload"])
    assert payload["_invalid_fields"] == {"cache_read_tokens": "abc", "reasoning_tokens": "nan"}
    assert set(payload["_coerced_fields"]) == {"prompt_tokens", "completion_tokens", "duration_ms", "http_status",
                                               "model", "error_class"}
    AvroCodec().encode_event(clean)


def test_unknown_type_becomes_unknown_and_keeps_the_original() -> None:
    clean, status = EventNormalizer().normalize(Stamper().stamp("brand_new_agentao_event"))
    assert status == COERCED and clean is not None and clean["type"] == "unknown"
    assert json.loads(clean["payload"]) == {"_original_type": "brand_new_agentao_event"}


def test_values_json_cannot_hold_are_converted() -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    payload = {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "raw": b"\xffbytes", "tags": {"x"},
               "obj": object(), "nan": math.nan, "cycle": cyclic, "bad": Unprintable(), 7: "int key"}
    clean, status = EventNormalizer().normalize(Stamper().stamp("tool_result", {"payload": payload}))
    assert status == OK and clean is not None
    out = json.loads(clean["payload"])
    assert out["when"] == "2026-01-02T03:04:05+00:00" and out["raw"] == "\ufffdbytes" and out["tags"] == ["x"]
    assert out["obj"].startswith("<object object") and out["nan"] is None
    assert out["cycle"] == {"name": "loop", "self": "<cycle>"} and out["bad"] == "<unprintable Unprintable>"
    assert out["7"] == "int key"


def test_strings_over_a_megabyte_are_bounded() -> None:
    huge = "x" * 1_500_000
    ev = Stamper().stamp("tool_result", {"error_message": huge, "payload": {"content": huge, "small": "kept"}})
    normalizer = EventNormalizer()
    counters: dict[str, int] = {}
    clean, _ = normalizer.normalize(ev, counters)
    assert clean is not None
    assert len(clean["error_message"]) <= normalizer.max_field_chars + len(TRUNCATION_MARKER)
    assert len(clean["payload"]) <= normalizer.max_payload_chars
    out = json.loads(clean["payload"])
    assert out["small"] == "kept" and TRUNCATION_MARKER in out["content"]
    many = {f"k{i}": "y" * 60_000 for i in range(30)}  # each string under the cap, together far over it
    clean, _ = normalizer.normalize(Stamper().stamp("tool_result", {"payload": many}), counters)
    assert clean is not None and len(clean["payload"]) <= normalizer.max_payload_chars
    assert json.loads(clean["payload"])["original_chars"] > normalizer.max_payload_chars
    assert counters["truncated"] == 3
    assert len(AvroCodec().encode_event(clean)) < 300_000


@pytest.mark.parametrize("bad", [None, [], "text", 42, {"type": "turn_begin"},
                                 {**Stamper().stamp("turn_begin"), "event_time": "yesterday"},
                                 {**Stamper().stamp("turn_begin"), "session_id": None},
                                 {**Stamper().stamp("turn_begin"), "seq": 2**70}])
def test_events_that_cannot_be_placed_are_invalid(bad: Any) -> None:
    assert EventNormalizer().normalize(bad) == (None, INVALID)


def test_payload_text_is_validated() -> None:
    stamper = Stamper()
    good, _ = EventNormalizer().normalize(stamper.stamp("thinking", {"payload": '{"text": "hm"}'}))
    assert good is not None and good["payload"] == '{"text": "hm"}'  # kept byte for byte
    broken, _ = EventNormalizer().normalize(stamper.stamp("thinking", {"payload": '{"text": '}))
    assert broken is not None and json.loads(broken["payload"]) == {"_raw": '{"text": '}
    listy, _ = EventNormalizer().normalize(stamper.stamp("thinking", {"payload": "[1, 2]"}))
    assert listy is not None and json.loads(listy["payload"]) == {"_value": [1, 2]}


# -- the publisher without a broker --------------------------------------------------------------------------------


def test_publish_never_raises_and_bad_events_are_counted(tmp_path: Path) -> None:
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", stall_timeout_s=0.2)
    garbage: list[Any] = [None, [], object(), {1: 2}, {"type": "turn_begin"}, "x" * 10, {"event_id": Unprintable()}]
    results = [pub.publish(g) for g in garbage]
    good = good_events(Stamper(), 5)
    results += [pub.publish(e) for e in good]
    assert all(isinstance(r, bool) for r in results)
    pub.close(timeout=1)
    assert pub.dropped_by_reason() == {"invalid": len(garbage)}
    assert pub.stats["enqueued"] == len(garbage) + len(good)
    assert pub.publish(good[0]) is False and pub.dropped_by_reason()["closed"] == 1
    assert sorted(e["event_id"] for e in spooled_events(tmp_path / "spool")) == sorted(e["event_id"] for e in good)


def test_captures_are_completed_on_the_sender_and_a_broken_one_is_counted(tmp_path: Path) -> None:
    """A Stamper.capture handed to publish is stamped by the sender thread; one that cannot be completed is dropped
    as invalid, never raised, and its batch goes on."""
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", stall_timeout_s=0.2)
    stamper = DeferredStamper(tenant="acme", service="svc")
    captures = [stamper.stamp("tool_complete", {"tool_name": "read_file", "status": "ok", "payload": {"i": i}},
                              session_id="s", turn_id="t") for i in range(5)]
    results = [pub.publish(c) for c in captures[:2]] + [pub.publish((object(), "x")), pub.publish(())]
    results += [pub.publish(c) for c in captures[2:]]
    assert all(isinstance(r, bool) for r in results)
    pub.close(timeout=1)
    assert pub.dropped_by_reason() == {"invalid": 2}
    events = spooled_events(tmp_path / "spool")
    assert [(e["session_id"], e["seq"], e["tenant"], e["service"], e["turn_id"]) for e in events] == [
        ("s", i, "acme", "svc", "t") for i in range(1, 6)]
    assert [json.loads(e["payload"])["i"] for e in events] == list(range(5))
    assert len({e["event_id"] for e in events}) == 5


def test_buffer_full_without_a_spool_drops_the_newest_and_returns_false() -> None:
    pub = EventPublisher(UNREACHABLE, "t", buffer_max_events=20)
    gate = GatedSender(pub)
    stamper = Stamper()
    first = pub.publish(stamper.stamp("turn_begin", session_id="s"))
    gate.entered.wait(5)  # the sender holds that event inside normalisation
    results = [pub.publish(stamper.stamp("turn_begin", session_id="s")) for _ in range(100)]
    assert first and results[:20] == [True] * 20 and results[20:] == [False] * 80
    assert pub.dropped_by_reason() == {"buffer_full": 80}
    assert pub.stats["buffer_depth"] == 20
    gate.open()
    pub.close(timeout=1)


def test_buffer_full_with_a_spool_writes_overflow_in_order(tmp_path: Path) -> None:
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", buffer_max_events=20, stall_timeout_s=0.2)
    gate = GatedSender(pub)
    events = good_events(Stamper(), 300, sessions=4)
    assert pub.publish(events[0])
    gate.entered.wait(5)
    assert all(pub.publish(e) for e in events[1:])
    assert pub.stats["spooled"] == 300 - 21  # 1 held by the sender, 20 buffered, the rest written by callers
    gate.open()
    pub.close(timeout=1)
    stats = pub.stats
    assert (stats["enqueued"], stats["spooled"], stats["dropped"]) == (300, 300, 0)
    assert_exactly_once_in_order(spooled_events(tmp_path / "spool"), {e["event_id"] for e in events})


def test_captures_overflowing_into_the_spool_are_completed_by_the_caller_in_order(tmp_path: Path) -> None:
    """Buffer full with a spool: the caller writes the event itself, so it completes a capture itself too."""
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", buffer_max_events=20, stall_timeout_s=0.2)
    gate = GatedSender(pub)
    stamper = DeferredStamper(tenant="acme")
    captures = [stamper.stamp("tool_complete", {"tool_name": "grep", "payload": {"i": i}}, session_id=f"s{i % 4}")
                for i in range(200)]
    assert pub.publish(captures[0])
    gate.entered.wait(5)
    assert all(pub.publish(c) for c in captures[1:])
    assert pub.stats["spooled"] == 200 - 21
    gate.open()
    pub.close(timeout=1)
    assert (pub.stats["enqueued"], pub.stats["spooled"], pub.stats["dropped"]) == (200, 200, 0)
    events = spooled_events(tmp_path / "spool")
    assert_exactly_once_in_order(events, {e["event_id"] for e in events})
    assert sorted(json.loads(e["payload"])["i"] for e in events) == list(range(200))
    assert {e["tenant"] for e in events} == {"acme"}


def test_spool_cap_drops_the_newest_and_counts(tmp_path: Path) -> None:
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", buffer_max_events=10,
                         spool_max_bytes=20_000, stall_timeout_s=0.2)
    gate = GatedSender(pub)
    pub.publish(Stamper().stamp("turn_begin"))
    gate.entered.wait(5)
    results = [pub.publish(e) for e in good_events(Stamper(), 400)]
    assert results.count(False) == pub.dropped_by_reason()["spool_full"] > 0
    assert pub.stats["spool_bytes"] <= 20_000
    gate.open()
    pub.close(timeout=2)


def test_flush_is_false_while_events_wait_in_the_spool_and_close_says_where(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", stall_timeout_s=0.3, linger_ms=5)
    stamper = Stamper()
    first = good_events(stamper, 50)
    for e in first:
        pub.publish(e)
    assert pub.flush(1.0) is False  # on disk, handed to the client, which cannot reach Kafka: not delivered
    assert pub.stats["spooled"] == 50 and pub.stats["undelivered"] == 50
    later = good_events(stamper, 50)  # the same sessions, later seqs
    for e in later:
        pub.publish(e)
    assert pub.flush(0.5) is False
    with caplog.at_level("WARNING", logger="producers.publisher"):
        assert pub.close(timeout=1) is False
    assert f"closed with 100 event(s) not delivered, kept in the spool {tmp_path / 'spool'}" in caplog.text
    # the disk buffer holds every record in hand-over order: per session, the first ones come first
    assert_exactly_once_in_order(spooled_events(tmp_path / "spool"), {e["event_id"] for e in first + later})


def test_an_unusable_spool_starts_degraded_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with caplog.at_level("ERROR", logger="producers.publisher"):
        pub = EventPublisher(UNREACHABLE, "t", spool_dir=blocker / "spool")  # must not raise
    assert "running DEGRADED without a disk buffer" in caplog.text
    assert pub.spool_degraded is not None and pub.stats["spool_degraded"] == 1
    assert pub.publish(Stamper().stamp("turn_begin"))
    assert 'agentwatch_producer_spool_degraded{producer_id="' in generate_latest(pub.registry).decode()
    pub.close(timeout=0.5)


def test_drops_are_logged_once_per_interval_with_their_count(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    pub = EventPublisher(UNREACHABLE, "t", spool_dir=tmp_path / "spool", spool_max_bytes=4_000, linger_ms=1,
                         batch_max_events=1)
    with caplog.at_level("WARNING", logger="producers.publisher"):
        for e in good_events(Stamper(), 300):
            assert pub.publish(e)
            time.sleep(0.001)  # many drains, many refused appends
        pub.flush(0.5)
    dropped = pub.dropped_by_reason()["spool_full"]
    lines = [r.getMessage() for r in caplog.records if "reason spool_full" in r.getMessage()]
    assert dropped > 100 and len(lines) == 1, lines
    assert f"(spool {tmp_path / 'spool'})" in lines[0]
    text = generate_latest(pub.registry).decode()
    assert f'agentwatch_producer_events_dropped_total{{producer_id="{pub.producer_id}",reason="spool_full"}} ' \
           f'{float(dropped)}' in text
    pub.close(timeout=0.5)


def test_metrics_are_exposed_on_a_private_registry_per_publisher(tmp_path: Path) -> None:
    a = EventPublisher(UNREACHABLE, "t", producer_id="pub-a")
    b = EventPublisher(UNREACHABLE, "t", producer_id="pub-b", buffer_max_events=1)
    gate = GatedSender(b)
    b.publish(Stamper().stamp("turn_begin"))
    gate.entered.wait(5)
    b.publish(Stamper().stamp("turn_begin"))
    b.publish(Stamper().stamp("turn_begin"))
    text = generate_latest(b.registry).decode()
    assert 'agentwatch_producer_events_enqueued_total{producer_id="pub-b"} 2.0' in text
    assert 'agentwatch_producer_events_dropped_total{producer_id="pub-b",reason="buffer_full"} 1.0' in text
    assert 'agentwatch_producer_buffer_depth{producer_id="pub-b"} 1.0' in text
    for name in ("delivered_total", "failed_total", "spooled_total", "spool_bytes"):
        assert f"agentwatch_producer_events_{name}" in text or f"agentwatch_producer_{name}" in text
    assert "pub-b" not in generate_latest(a.registry).decode()
    gate.open()
    a.close(timeout=1)
    b.close(timeout=1)


def test_interpreter_exit_flushes_into_the_spool(tmp_path: Path) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from producers.publisher import EventPublisher
from producers.stamp import Stamper
pub = EventPublisher({UNREACHABLE!r}, "t", spool_dir={str(tmp_path / 'spool')!r}, stall_timeout_s=0.2,
                     atexit_timeout_s=1)
s = Stamper()
for i in range(200):
    pub.publish(s.stamp("turn_begin", session_id=f"s{{i % 3}}"))
# no close(): the atexit hook must flush
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True)
    spool = Spool(tmp_path / "spool")
    assert spool.recovery.events == 200
    spool.close()


# -- against the session broker --------------------------------------------------------------------------------


def test_published_events_arrive_exactly_once_in_session_order(kafka_bootstrap: str,
                                                               make_topic: Callable[..., str]) -> None:
    topic = make_topic(3)
    stamper = Stamper(tenant="acme", service="svc")
    sent: list[dict[str, Any]] = []
    lock = threading.Lock()
    with EventPublisher(kafka_bootstrap, topic, shards=16, linger_ms=20) as pub:
        def agent(k: int) -> None:
            for i in range(1500):
                # stamp + publish under one lock: otherwise two threads of one session may hand events over in
                # the other order than their seqs (the publisher keeps hand-over order; consumers order by seq)
                with lock:
                    ev = stamper.stamp("llm_call_completed", {"model": "m", "prompt_tokens": i, "status": "ok",
                                                              "payload": {"k": k, "i": i}},
                                       session_id=f"s{(k * 7 + i) % 30}")
                    sent.append(ev)
                    assert pub.publish(ev)

        threads = [threading.Thread(target=agent, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert pub.flush(30)
        stats = pub.stats
    assert (stats["enqueued"], stats["delivered"], stats["dropped"], stats["spooled"]) == (6000, 6000, 0, 0)
    records = consume_all(kafka_bootstrap, topic)
    events = events_of(records)
    assert_exactly_once_in_order(events, {e["event_id"] for e in sent})
    by_id = {e["event_id"]: e for e in sent}
    for got in events[::97]:
        want = by_id[got["event_id"]]
        assert {k: got[k] for k in ("tenant", "service", "session_id", "seq", "type", "model", "prompt_tokens",
                                    "event_time")} == {k: want[k] for k in ("tenant", "service", "session_id",
                                                                            "seq", "type", "model",
                                                                            "prompt_tokens", "event_time")}
        assert json.loads(got["payload"]) == want["payload"] and got["producer_time"] >= got["event_time"]
    assert len(records) < 6000 / 5  # batching happened
    assert {d.producer_id for _, d in records} == {pub.producer_id}
    per_partition: dict[int, list[int]] = defaultdict(list)
    for partition, d in records:
        assert d.is_batch and d.batch_seq is not None
        per_partition[partition].append(d.batch_seq)
    for seqs in per_partition.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_captured_events_arrive_exactly_once_in_session_order(kafka_bootstrap: str,
                                                             make_topic: Callable[..., str]) -> None:
    """The agent-thread fast path (capture + publish, stamped on the sender) delivers what stamp + publish does."""
    topic = make_topic(2)
    stamper = DeferredStamper(tenant="acme", service="svc")
    lock = threading.Lock()
    with EventPublisher(kafka_bootstrap, topic, shards=8, linger_ms=20) as pub:
        def agent(k: int) -> None:
            for i in range(1000):
                with lock:  # hand-over order = seq order per session (see the test above)
                    assert pub.publish(stamper.stamp("llm_call_completed", {"model": "m", "prompt_tokens": i},
                                                     session_id=f"s{(k + i) % 7}", event_time_us=1_000 + i))

        threads = [threading.Thread(target=agent, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert pub.flush(30)
        stats = pub.stats
    assert (stats["enqueued"], stats["delivered"], stats["dropped"]) == (2000, 2000, 0)
    events = events_of(consume_all(kafka_bootstrap, topic))
    assert len(events) == 2000 and len({e["event_id"] for e in events}) == 2000
    last: dict[str, int] = defaultdict(int)
    for e in events:
        assert e["seq"] == last[e["session_id"]] + 1 and e["tenant"] == "acme" and e["model"] == "m"
        last[e["session_id"]] = e["seq"]
    assert sum(last.values()) == 2000
    assert sorted(e["prompt_tokens"] for e in events) == sorted(list(range(1000)) * 2)


def test_history_sent_in_bulk_stays_in_event_time_order_per_partition(kafka_bootstrap: str,
                                                                        make_topic: Callable[..., str]) -> None:
    topic = make_topic(3)
    stamper = Stamper()
    base = 1_700_000_000_000_000
    events = []
    for i in range(12_000):  # an hour and more of history from 40 sessions, in event-time order
        ev = stamper.stamp("tool_complete", {"tool_name": "t", "status": "ok"}, session_id=f"s{i % 40}")
        ev["event_time"] = base + i * 400_000
        events.append(ev)
    with EventPublisher(kafka_bootstrap, topic, buffer_max_events=len(events) + 1) as pub:
        wait_for(lambda: pub._partitions == 3, 10, "the partition count")
        gate = GatedSender(pub)
        assert pub.publish(events[0])
        gate.entered.wait(5)
        assert all(pub.publish(e) for e in events[1:])  # one big drain: the shape of a spool replay or a backfill
        gate.open()
        assert pub.flush(60)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    codec = AvroCodec()
    times: dict[int, list[int]] = defaultdict(list)
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        n, deadline = 0, time.monotonic() + 60
        while n < len(events):
            assert time.monotonic() < deadline
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    continue
                assert partition_of(msg.key(), 3) == msg.partition()  # librdkafka agrees with our murmur2
                batch = codec.decode(msg.value()).events
                times[msg.partition()].extend(e["event_time"] for e in batch)
                n += len(batch)
    finally:
        consumer.close()
    assert sum(map(len, times.values())) == len(events)
    for partition, ts in times.items():
        assert ts == sorted(ts), f"partition {partition} goes back in event time"


def test_bad_events_do_not_poison_their_batch(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic(1, config={"max.message.bytes": str(8 * 1024 * 1024)})
    stamper = Stamper()
    good = good_events(stamper, 30, sessions=1)
    coerced = stamper.stamp("llm_call_completed", {"prompt_tokens": "12", "surprise": {"a": object()}},
                            session_id="s0")
    huge = stamper.stamp("tool_result", {"payload": {"content": "z" * 1_200_000}}, session_id="s0")
    invalid = [{**stamper.stamp("turn_begin", session_id="s0"), "event_time": "never"}, {"nonsense": True}, None]
    mixed = good[:10] + [coerced] + invalid[:2] + good[10:20] + [huge, invalid[2]] + good[20:]
    with EventPublisher(kafka_bootstrap, topic) as pub:
        for e in mixed:
            pub.publish(e)
        assert pub.flush(30)
    assert pub.dropped_by_reason() == {"invalid": 3}
    assert pub.stats["coerced"] == 1 and pub.stats["truncated"] >= 1
    events = events_of(consume_all(kafka_bootstrap, topic))
    assert [e["event_id"] for e in events] == [e["event_id"] for e in mixed if e in good or e is coerced or e is huge]
    got = {e["event_id"]: e for e in events}
    c = got[coerced["event_id"]]
    assert c["prompt_tokens"] == 12 and json.loads(c["payload"])["surprise"]["a"].startswith("<object")
    h = json.loads(got[huge["event_id"]]["payload"])
    assert TRUNCATION_MARKER in h["content"] and len(h["content"]) < 70_000


def test_a_restarted_publisher_re_sends_the_spool(kafka_bootstrap: str, make_topic: Callable[..., str],
                                                  tmp_path: Path) -> None:
    topic = make_topic(3)
    spool_dir = tmp_path / "spool"
    events = good_events(Stamper(), 600, sessions=12)
    first = EventPublisher(UNREACHABLE, topic, spool_dir=spool_dir, stall_timeout_s=0.2, linger_ms=5)
    for i, e in enumerate(events):
        first.publish(e)
        if i % 200 == 199:
            time.sleep(0.3)
    first.close(timeout=3)
    assert first.stats["spooled"] == 600 and first.stats["delivered"] == 0
    with EventPublisher(kafka_bootstrap, topic, spool_dir=spool_dir) as second:
        assert second.stats["spool_recovered_events"] == 600
        wait_for(lambda: second.stats["resent"] == 600, 60, "the spool to be re-sent")
        assert second.stats["spool_bytes"] == 0
    assert list(spool_dir.glob("seg-*.spool")) == []
    assert_exactly_once_in_order(events_of(consume_all(kafka_bootstrap, topic)), {e["event_id"] for e in events})


@pytest.mark.parametrize("damage", ["torn_tail", "corrupt_middle"])
def test_a_damaged_spool_re_sends_what_is_intact_and_reports_the_rest(
        damage: str, kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = make_topic(1)
    spool_dir = tmp_path / "spool"
    events = good_events(Stamper(), 400, sessions=8)
    first = EventPublisher(UNREACHABLE, topic, spool_dir=spool_dir, stall_timeout_s=0.1, linger_ms=5,
                           batch_max_events=10)
    for i, e in enumerate(events):
        first.publish(e)
        if i % 100 == 99:
            time.sleep(0.25)
    first.close(timeout=3)
    codec = AvroCodec()
    segment = max(spool_dir.glob("seg-*.spool"), key=lambda p: p.stat().st_size)
    data = segment.read_bytes()
    frames = scan_frames(data).frames
    assert len(frames) >= 5
    victim = frames[-1] if damage == "torn_tail" else frames[len(frames) // 2]
    lost = {e["event_id"] for e in codec.decode(victim.value).events}
    if damage == "torn_tail":
        segment.write_bytes(data[: victim.end - 7])
    else:
        broken = bytearray(data)
        broken[victim.offset + 40] ^= 0xFF
        segment.write_bytes(bytes(broken))
    with EventPublisher(kafka_bootstrap, topic, spool_dir=spool_dir) as second:
        recovery = second.spool_recovery
        assert recovery is not None
        assert (recovery.torn_tails, recovery.corrupt_regions) == ((1, 0) if damage == "torn_tail" else (0, 1))
        assert second.stats["spool_recovered_events"] == 400 - len(lost)
        wait_for(lambda: second.stats["resent"] == 400 - len(lost), 60, "intact frames to be re-sent")
        quarantined = list((spool_dir / "quarantine").iterdir())
        assert len(quarantined) == 1
    expected = {e["event_id"] for e in events} - lost
    assert_exactly_once_in_order(events_of(consume_all(kafka_bootstrap, topic)), expected)


def test_overflow_through_the_spool_reaches_kafka_in_order(kafka_bootstrap: str, make_topic: Callable[..., str],
                                                           tmp_path: Path) -> None:
    topic = make_topic(3)
    events = good_events(Stamper(), 2000, sessions=6)
    with EventPublisher(kafka_bootstrap, topic, spool_dir=tmp_path / "spool", buffer_max_events=100) as pub:
        gate = GatedSender(pub)
        pub.publish(events[0])
        gate.entered.wait(5)
        assert all(pub.publish(e) for e in events[1:])
        gate.open()
        wait_for(lambda: pub.stats["delivered"] == 2000, 60, "all events to be delivered")
        assert pub.stats["spooled"] >= 2000 - 101  # the sender's own 101 went through the spool too (non-empty)
    assert_exactly_once_in_order(events_of(consume_all(kafka_bootstrap, topic)), {e["event_id"] for e in events})


# -- a broker of our own, stopped and started --------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A local broker on a fixed port with a persistent data dir, *not started*: the tests control it."""
    port = free_ports(1)[0]
    kafka = LocalKafka(Settings.from_env().home, port=port, data_dir=tmp_path_factory.mktemp("own-kafka"),
                       stop_timeout=30)
    kafka.port = port
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.mark.kafka
def test_broker_down_at_start_then_up(own_broker: LocalKafka, tmp_path: Path) -> None:
    assert not own_broker.running()
    bootstrap = f"127.0.0.1:{own_broker.requested_port}"
    topic = f"down-at-start-{uuid.uuid4().hex[:8]}"
    events = good_events(Stamper(), 900, sessions=9)
    with EventPublisher(bootstrap, topic, spool_dir=tmp_path / "spool", stall_timeout_s=0.5, linger_ms=10) as pub:
        for i, e in enumerate(events):
            assert pub.publish(e)
            if i % 300 == 299:
                time.sleep(0.6)
        assert pub.flush(1) is False  # the first batches wait inside the client
        assert pub.stats["spooled"] > 0 and pub.stats["delivered"] == 0
        own_broker.start()
        ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000)])
        wait_for(lambda: pub.stats["delivered"] == 900, 120, "delivery after the broker came up")
        assert pub.flush(10)
    assert pub.stats["dropped"] == 0
    assert_exactly_once_in_order(events_of(consume_all(bootstrap, topic)), {e["event_id"] for e in events})


@pytest.mark.kafka
def test_broker_stopped_mid_stream_and_started_again(own_broker: LocalKafka, tmp_path: Path) -> None:
    if not own_broker.running():
        own_broker.start()
    bootstrap = own_broker.bootstrap_servers
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000)])
    stamper = Stamper()
    sent: list[str] = []
    stop = threading.Event()
    with EventPublisher(bootstrap, topic, spool_dir=tmp_path / "spool", stall_timeout_s=0.5, linger_ms=10) as pub:
        def agent() -> None:
            i = 0
            while not stop.is_set():
                ev = stamper.stamp("tool_output", {"payload": {"chunk": f"line {i}"}}, session_id=f"s{i % 15}")
                assert pub.publish(ev)
                sent.append(ev["event_id"])
                i += 1
                if i % 50 == 0:
                    time.sleep(0.01)

        thread = threading.Thread(target=agent)
        thread.start()
        try:
            wait_for(lambda: pub.stats["delivered"] > 2000, 60, "traffic before the stop")
            own_broker.stop()
            time.sleep(2)
            delivered_while_down = pub.stats["delivered"]
            time.sleep(1)
            assert pub.stats["delivered"] == delivered_while_down
            assert pub.stats["spooled"] > 0
            own_broker.start()
            time.sleep(1)
        finally:
            stop.set()
            thread.join()
        wait_for(lambda: pub.stats["delivered"] == len(sent), 120, "delivery after the restart")
    stats = pub.stats
    assert (stats["enqueued"], stats["delivered"], stats["dropped"]) == (len(sent), len(sent), 0)
    assert_exactly_once_in_order(events_of(consume_all(bootstrap, topic)), set(sent))
