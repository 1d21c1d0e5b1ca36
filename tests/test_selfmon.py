"""Self-monitoring (agentwatch.selfmon): the contract's metric names, connectivity transitions counted once, and on
a real broker the committed offsets and lag of a group read without joining it."""

from __future__ import annotations

import logging
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from agentwatch.selfmon import SelfMetrics, SelfMonitor, start_selfmon

CONTRACT = ("agentwatch_component_info", "agentwatch_kafka_connected", "agentwatch_kafka_disconnects_total",
            "agentwatch_consumer_lag_records", "agentwatch_consumer_committed_offset",
            "agentwatch_last_progress_timestamp_seconds")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_connectivity_transitions_are_counted_and_said_once(caplog):
    registry = CollectorRegistry()
    m = SelfMetrics("replay", registry)
    [info] = [s for f in registry.collect() if f.name == "agentwatch_component_info" for s in f.samples]
    assert info.labels["component"] == "replay" and info.labels["version"] and info.value == 1
    with caplog.at_level(logging.WARNING, logger="agentwatch.selfmon"):
        m.set_connected(True)
        for _ in range(5):
            m.set_connected(False, "transport failure")
        m.set_connected(True)
        m.set_connected(False)
    assert value(registry, "agentwatch_kafka_connected", component="replay") == 0
    assert value(registry, "agentwatch_kafka_disconnects_total", component="replay") == 2
    lines = [r.getMessage() for r in caplog.records]
    assert sum("Kafka unreachable" in line for line in lines) == 2  # once per outage, not per probe
    assert sum("reachable again" in line for line in lines) == 1


def test_an_unreachable_start_is_not_a_disconnect():
    registry = CollectorRegistry()
    m = SelfMetrics("audit", registry)
    m.set_connected(False)
    assert value(registry, "agentwatch_kafka_disconnects_total", component="audit") == 0


def test_lag_committed_and_progress():
    registry = CollectorRegistry()
    m = SelfMetrics("traces", registry)
    start = value(registry, "agentwatch_last_progress_timestamp_seconds", component="traces")
    assert start is not None and abs(start - time.time()) < 5
    m.note_progress(when=100.0)
    assert not m.set_offsets({("t", 0): (5, 0, 12), ("t", 1): (None, 3, 10)})  # first sight: not progress
    assert value(registry, "agentwatch_consumer_lag_records", component="traces", topic="t", partition="0") == 7
    assert value(registry, "agentwatch_consumer_lag_records", component="traces", topic="t", partition="1") == 7
    assert value(registry, "agentwatch_consumer_committed_offset", component="traces", topic="t",
                 partition="1") is None
    assert value(registry, "agentwatch_last_progress_timestamp_seconds", component="traces") == 100.0
    assert not m.set_offsets({("t", 0): (5, 0, 20)})  # lag grows, nothing committed: a stall
    assert value(registry, "agentwatch_consumer_lag_records", component="traces", topic="t", partition="0") == 15
    assert value(registry, "agentwatch_last_progress_timestamp_seconds", component="traces") == 100.0
    assert m.set_offsets({("t", 0): (20, 0, 20)})
    assert value(registry, "agentwatch_consumer_lag_records", component="traces", topic="t", partition="0") == 0
    assert value(registry, "agentwatch_last_progress_timestamp_seconds", component="traces") > 100.0


def test_no_broker_means_connected_0_on_the_endpoint():
    mon = start_selfmon("exporter", "g", ["t"], 0, bootstrap_servers="127.0.0.1:9", interval_s=1.0)
    try:
        mon.probe_once()
        body = urllib.request.urlopen(f"http://127.0.0.1:{mon.port}/metrics", timeout=5).read().decode()
    finally:
        mon.close()
    assert 'agentwatch_kafka_connected{component="exporter"} 0.0' in body
    for name in CONTRACT[:3] + CONTRACT[5:]:
        assert name in body


def test_the_probe_reads_a_groups_offsets_without_joining_it(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    group = f"test-selfmon-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, value=b"x", partition=i % 2)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)  # partition 1 never committed

    mon = SelfMonitor("replay", kafka_bootstrap, group_id=group, topics=[topic])
    try:
        mon.probe_once()
        reg = mon.registry
        assert value(reg, "agentwatch_kafka_connected", component="replay") == 1
        assert value(reg, "agentwatch_consumer_committed_offset", component="replay", topic=topic,
                     partition="0") == 3
        assert value(reg, "agentwatch_consumer_lag_records", component="replay", topic=topic, partition="0") == 2
        assert value(reg, "agentwatch_consumer_lag_records", component="replay", topic=topic, partition="1") == 5
        before = value(reg, "agentwatch_last_progress_timestamp_seconds", component="replay")
        time.sleep(0.01)
        consumer.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
        mon.probe_once()
        assert value(reg, "agentwatch_consumer_lag_records", component="replay", topic=topic, partition="0") == 0
        assert value(reg, "agentwatch_last_progress_timestamp_seconds", component="replay") > before
    finally:
        mon.close()
        consumer.close()
