"""Two exporter instances in one consumer group against the real broker: the sums of their counters are the truth.

The group is rebalanced twice while data flows (a second instance joins mid-stream; the first leaves), which is
where double counting would show: the sums must equal the simulator's ground truth exactly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producers.ground_truth import truth_from_events
from producers.incidents import ConfirmTimeouts, Llm5xxBurst, MaxIterationLoops, ToolFailure
from producers.sharding import shard_of
from producers.simulator import FleetSimulator
from schemas.codec import AvroCodec
from sinks.exporter import Exporter

PARTITIONS = 4
CODEC = AvroCodec()


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def summed(*registries: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """What ``sum without(instance)`` gives in PromQL."""
    total: dict[tuple[str, frozenset[tuple[str, str]]], float] = defaultdict(float)
    for reg in registries:
        for key, value in samples(reg).items():
            total[key] += value
    return total


def total(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in values.items()
               if n == name and all((k, m) in labels for k, m in match.items()))


def produce(bootstrap: str, topic: str, events: list[dict[str, Any]], producer_id: str, first_seq: int,
            per_record: int = 25) -> int:
    """Events as AgentEventBatch records, one session's events always on one partition; returns the next seq."""
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_partition[shard_of(ev["session_id"], PARTITIONS)].append(ev)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    seq = first_seq
    for partition, evs in sorted(by_partition.items()):
        for i in range(0, len(evs), per_record):
            producer.produce(topic, partition=partition,
                             value=CODEC.encode_batch(producer_id, seq, evs[i]["producer_time"], evs[i:i + per_record]))
            seq += 1
    assert producer.flush(30) == 0
    return seq


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Instance:
    """One exporter in a thread, with its own registry (as if it were its own process)."""

    def __init__(self, bootstrap: str, topic: str, group: str, dead_letter: str, slow_s: float = 0.0,
                 commit_interval_s: float = 0.2) -> None:
        self.exporter = Exporter(bootstrap, topic, group_id=group, dead_letter_topic=dead_letter, batch_size=20,
                                 poll_timeout_s=0.2, commit_interval_s=commit_interval_s, health_interval_s=0.3,
                                 consumer_config={"session.timeout.ms": 10_000})
        self.registry = self.exporter.register(CollectorRegistry())
        self.stop = threading.Event()
        self.counted = 0
        self.slow_s = slow_s  # a slow consumer: still mid-stream when the group rebalances
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.exporter.run(self.stop, on_batch=self._add)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _add(self, n: int) -> None:
        self.counted += n
        time.sleep(self.slow_s)

    def start(self) -> Instance:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and self.error is None, self.error


def test_two_instances_in_one_group_sum_to_the_truth_across_rebalances(kafka_bootstrap, make_topic):
    topic = make_topic(PARTITIONS)
    dead_letter = make_topic(1)
    group = f"exporter-test-{uuid.uuid4().hex[:8]}"
    incidents = (Llm5xxBurst(0, 10, 100), ToolFailure(1, 10, 100), ConfirmTimeouts(2, 10, 100),
                 MaxIterationLoops(0, 10, 100))
    events = list(FleetSimulator(seed=11, tenants=3, duration_s=150, incidents=incidents).events())
    thirds = [events[: len(events) // 3], events[len(events) // 3: 2 * len(events) // 3],
              events[2 * len(events) // 3:]]
    truth = truth_from_events(events)
    dlq = Producer({"bootstrap.servers": kafka_bootstrap})
    for _ in range(3):
        dlq.produce(dead_letter, value=b"not avro")
    assert dlq.flush(10) == 0

    seq = produce(kafka_bootstrap, topic, thirds[0], "producer-1", 0)
    # A commits only when partitions leave it (on_revoke) or it stops: the hand-over alone must prevent double counts.
    a = Instance(kafka_bootstrap, topic, group, dead_letter, slow_s=0.3, commit_interval_s=3600).start()
    b: Instance | None = None
    try:
        wait_for(lambda: a.counted > 0, 60, "instance A to start counting")
        b = Instance(kafka_bootstrap, topic, group, dead_letter).start()  # joins mid-stream: a rebalance
        seq = produce(kafka_bootstrap, topic, thirds[1], "producer-1", seq)
        wait_for(lambda: b.exporter.state.partitions and a.counted + b.counted >= len(thirds[0]) + len(thirds[1]),
                 60, "both instances to own partitions and count phases 1 and 2")
        assert a.exporter.state.partitions, "the group did not split the partitions"
        assert b.counted > 0 and a.counted < len(thirds[0]) + len(thirds[1]), "the rebalance was not mid-stream"
        a.close()  # leaves the group: its partitions move to B, after a commit of what A counted
        # Phase 3, plus what only the dedup and the decode paths see: a batch re-sent with the same identity
        # (the spool's re-send) and a record that is not Avro.
        last_partition_events = [e for e in thirds[2] if shard_of(e["session_id"], PARTITIONS) == 0][:5]
        seq = produce(kafka_bootstrap, topic, thirds[2], "producer-1", seq)
        resend = Producer({"bootstrap.servers": kafka_bootstrap})
        resend.produce(topic, partition=0, value=CODEC.encode_batch("producer-2", 1, 0, last_partition_events))
        resend.produce(topic, partition=0, value=CODEC.encode_batch("producer-2", 1, 0, last_partition_events))
        resend.produce(topic, partition=1, value=b"\x00\x00garbage")
        assert resend.flush(10) == 0
        expected = len(events) + len(last_partition_events)
        wait_for(lambda: a.counted + b.counted >= expected, 60, "all events counted")
        time.sleep(1.5)  # anything counted twice would arrive now
        wait_for(lambda: total(samples(b.registry), "agentwatch_exporter_assigned_partitions") == PARTITIONS
                 and total(samples(b.registry), "agentwatch_exporter_consumer_lag") == 0, 30,
                 "B to own every partition with zero lag")
        b_samples = samples(b.registry)
        assert total(b_samples, "agentwatch_dead_letter_records") == 3
    finally:
        if b is not None:
            b.close()
        if a.thread.is_alive():
            a.close()

    assert a.counted > 0 and b.counted > 0
    assert a.counted + b.counted == expected
    s = summed(a.registry, b.registry)
    assert total(s, "agentwatch_exporter_events_total") == expected
    assert total(s, "agentwatch_exporter_records_total", outcome="duplicate") == 1
    assert total(s, "agentwatch_exporter_records_total", outcome="undecodable") == 1
    assert total(s, "agentwatch_exporter_rebalances_total", kind="revoke") >= PARTITIONS
    assert total(s, "agentwatch_exporter_rebalances_total", kind="lost") == 0
    # (an asynchronous commit racing a rebalance may fail with ILLEGAL_GENERATION: harmless, the revoke commits)
    extra = truth_from_events(last_partition_events)["tenants"]
    for tenant, t in truth["tenants"].items():
        x = extra.get(tenant, {})
        assert total(s, "agent_turns_total", tenant=tenant) == t["turns"] + x.get("turns", 0)
        assert total(s, "agent_tool_calls_total", tenant=tenant) == t["tool_calls"] + x.get("tool_calls", 0)
        assert total(s, "agent_tool_failures_total", tenant=tenant) == t["tool_failures"] + x.get("tool_failures", 0)
        assert total(s, "agent_llm_attempts_total", tenant=tenant) == t["llm_attempts"] + x.get("llm_attempts", 0)
        assert total(s, "agent_llm_errors_total", tenant=tenant) == t["llm_errors"] + x.get("llm_errors", 0)
        assert total(s, "agent_max_iterations_hits_total", tenant=tenant) == t["max_iterations_hits"] + x.get(
            "max_iterations_hits", 0)
        prompt = t["tokens"]["prompt"] + (x["tokens"]["prompt"] if x else 0)
        assert total(s, "agent_llm_tokens_total", tenant=tenant, type="prompt") == prompt
        timeouts = t["confirm"]["timeout"] + (x["confirm"]["timeout"] if x else 0)
        assert total(s, "agent_confirm_requests_total", tenant=tenant, outcome="timeout") == timeouts
        assert total(s, "agent_turn_duration_seconds_count", tenant=tenant) == t["turns"] + x.get("turns", 0)
    assert truth["totals"]["llm_5xx"] > 0 and truth["totals"]["tool_failures"] > 0
