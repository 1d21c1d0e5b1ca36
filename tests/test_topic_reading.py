"""Reading a topic to the end offsets seen at start: the sinks' ``until_end`` and the commands' whole-topic reads."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agentwatch.commands.consume import consume_all
from agentwatch.topic_reading import WholeTopic
from schemas.codec import AvroCodec
from sinks.topic_end import end_offsets, reached_ends

CODEC = AvroCodec()


def _event(i: int) -> dict:
    return {"event_id": f"{i:032x}", "event_time": 1_767_225_600_000_000 + i, "producer_time": 0,
            "tenant": "acme" if i % 2 else "globex", "session_id": f"s{i % 3}", "seq": i, "type": "turn_begin"}


def _produce(bootstrap: str, topic: str, per_partition: dict[int, list[bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, values in per_partition.items():
        for value in values:
            producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


def _consumer(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group or f"test-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})


def test_a_whole_topic_is_read_to_the_ends_seen_at_start(kafka_bootstrap: str, make_topic: Callable[..., str]):
    topic = make_topic(3)
    _produce(kafka_bootstrap, topic, {0: [CODEC.encode_event(_event(i)) for i in range(5)],
                                      1: [CODEC.encode_event(_event(i)) for i in range(5, 7)] + [b"not avro"]})
    consumer = _consumer(kafka_bootstrap)
    try:
        whole = WholeTopic(consumer, topic)
        assert whole.ends == {0: 5, 1: 3, 2: 0} and whole.pending == {0, 1} and not whole.done
        _produce(kafka_bootstrap, topic, {2: [CODEC.encode_event(_event(99))]})  # after the start: not awaited
        seen: dict[int, list[int]] = {}
        for _ in range(60):
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    seen.setdefault(msg.partition(), []).append(msg.offset())
                    whole.saw(msg)
            if whole.done:
                break
        assert whole.done and seen[0] == [0, 1, 2, 3, 4] and seen[1] == [0, 1, 2]
    finally:
        consumer.close()

    tally = consume_all(kafka_bootstrap, topic, CODEC, idle_timeout=30, progress=False)
    assert (tally.records, tally.events, dict(tally.bad)) == (9, 8, {"bad_magic": 1})
    assert sum(n for (tenant, _t), n in tally.per_tenant_type.items() if tenant == "acme") == 4


def test_a_missing_topic_is_a_clear_error(kafka_bootstrap: str):
    consumer = _consumer(kafka_bootstrap)
    try:
        missing = f"test-missing-{uuid.uuid4().hex[:8]}"
        with pytest.raises(RuntimeError, match=f"topic '{missing}' is not available"):
            WholeTopic(consumer, missing)
    finally:
        consumer.close()
    with pytest.raises(SystemExit, match="is not available"):
        consume_all(kafka_bootstrap, missing, CODEC, idle_timeout=1, progress=False)


def test_partitions_an_earlier_run_committed_count_as_read(kafka_bootstrap: str, make_topic: Callable[..., str]):
    topic = make_topic(2)
    _produce(kafka_bootstrap, topic, {0: [b"a", b"b"], 1: [b"c"]})
    group = f"test-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(kafka_bootstrap, group)
    try:
        ends = end_offsets(consumer, topic)
        assert ends == {0: (0, 2), 1: (0, 1)}
        assert not reached_ends(consumer, topic, ends, {})
        assert not reached_ends(consumer, topic, ends, {0: 2})  # partition 1 neither read nor committed
        consumer.commit(offsets=[TopicPartition(topic, 1, 1)], asynchronous=False)
        positions = {0: 2}
        assert reached_ends(consumer, topic, ends, positions) and positions == {0: 2, 1: 1}
        assert not reached_ends(consumer, topic, ends, {0: 1, 1: 1})  # read short of the end of partition 0
    finally:
        consumer.close()
