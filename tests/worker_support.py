"""Helpers for the worker's integration tests: load a simulated fleet, run ``agentwatch worker``, read results.

Kept out of the test modules so the ground-truth, crash and rebalance tests share one definition of "the true
counts" and one way to start and stop a worker process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from agentwatch.config import Settings
from producers.publisher import EventPublisher
from schemas.codec import AvroCodec
from schemas.keys import parse_metrics_key
from streams.alerts import Alert, AlertCodec
from streams.metrics_codec import MetricsCodec

US = 1_000_000
FLUSH_TENANT = "zz-end-of-input"


def publish_events(settings: Settings, events: Iterable[dict[str, Any]], slice_s: float = 5.0,
                   timeout: float = 120.0) -> int:
    """Publish through the real EventPublisher (batched records, keyed by session shard); returns the count.

    Simulated history is published in event-time slices of ``slice_s`` with a flush after each, as a live fleet
    would send it: otherwise one batch record spans minutes of event time and the next record of the same
    partition, from another shard, starts minutes back, far beyond any grace period.
    """
    publisher = EventPublisher(settings.bootstrap_servers, settings.topics.events, batch_max_events=500)
    n = 0
    slice_us = int(slice_s * US)
    boundary: int | None = None
    try:
        for ev in events:
            if boundary is None:
                boundary = ev["event_time"] + slice_us
            elif ev["event_time"] >= boundary:
                assert publisher.flush(timeout), "publisher did not flush"
                boundary = ev["event_time"] + slice_us
            publisher.publish(ev)
            n += 1
        assert publisher.flush(timeout), "publisher did not flush"
    finally:
        publisher.close(10)
    return n


def publish_end_of_input(settings: Settings, event_time_us: int, partitions: int) -> None:
    """One single-event record per events partition, far past the data: closes every window deterministically.

    Its tenant's own window never closes (nothing comes after it), so it never reaches the metrics topic unless
    the wall-clock heartbeat runs for longer than a window.
    """
    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for p in range(partitions):
        ev = {"event_id": uuid.uuid4().hex, "event_time": event_time_us, "producer_time": event_time_us,
              "tenant": FLUSH_TENANT, "session_id": f"end-{p}", "seq": 1, "type": "session_end"}
        producer.produce(settings.topics.events, codec.encode_event(ev), f"end-{p}".encode(), partition=p)
    assert producer.flush(30) == 0


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[Any]:
    """Every record of ``topic`` up to its current end (confluent Message objects)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-read-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.partition.eof": True})
    out: list[Any] = []
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: _high_watermark(consumer, topic, p) for p in md.partitions}
        todo = {p for p, high in ends.items() if high > 0}
        if not todo:
            return out
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(msg.error().str())
                    continue
                if msg.offset() < ends[msg.partition()]:
                    out.append(msg)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.discard(msg.partition())
        assert not todo, f"could not read {topic} to its end"
    finally:
        consumer.close()
    return out


def _high_watermark(consumer: Consumer, topic: str, partition: int, attempts: int = 20) -> int:
    """A fresh topic's leader may not be known to this client yet: retry briefly."""
    for attempt in range(attempts):
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def read_metrics(settings: Settings) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The metrics topic as compaction would leave it: the newest revision per (tenant, start, end)."""
    codec = MetricsCodec()
    out: dict[tuple[str, int, int], dict[str, Any]] = {}
    for msg in read_topic(settings.bootstrap_servers, settings.topics.metrics):
        rec = codec.decode(msg.value())
        key = (rec["tenant"], rec["window_start_us"], rec["window_end_us"])
        assert parse_metrics_key(msg.key()) == key
        if key not in out or rec["revision"] >= out[key]["revision"]:
            out[key] = rec
    return out


def read_alerts(settings: Settings) -> list[Alert]:
    codec = AlertCodec()
    return [codec.decode(m.value()) for m in read_topic(settings.bootstrap_servers, settings.topics.alerts)]


def tumbling(metrics: dict[tuple[str, int, int], dict[str, Any]], window_s: int = 60,
             ) -> dict[tuple[str, int], dict[str, Any]]:
    return {(t, s): r for (t, s, e), r in metrics.items() if e - s == window_s * US and t != FLUSH_TENANT}


# -- comparing with the ground truth -----------------------------------------------------------------------------

_TOKENS = {"prompt": "prompt_tokens", "completion": "completion_tokens", "cache_read": "cache_read_tokens",
           "cache_creation": "cache_creation_tokens", "reasoning": "reasoning_tokens", "total": "total_tokens"}


def as_truth(rec: dict[str, Any]) -> dict[str, Any]:
    """A WindowedMetrics record in the ground truth's terms (the counts only: quantiles are sketches)."""
    return {
        "events": rec["events"],
        "events_by_type": rec["events_by_type"],
        "turns": rec["turns"],
        "turns_by_status": rec["turns_by_status"],
        "incomplete_reasons": rec["incomplete_reasons"],
        "max_iterations_hits": rec["max_iterations_hits"],
        "turn_count": rec["turn_duration"]["count"],
        "tool_calls": rec["tool_calls"],
        "tool_failures": rec["tool_failures"],
        "tool_cancelled": rec["tool_cancelled"],
        "tools": {t["tool"]: [t["calls"], t["failures"], t["cancelled"]] for t in rec["tools"]},
        "llm_calls": rec["llm_calls"],
        "llm_attempts": rec["llm_attempts"],
        "llm_retries": rec["llm_retries"],
        "llm_errors": rec["llm_errors"],
        "llm_errors_by_type": rec["llm_errors_by_type"],
        "llm_5xx": rec["llm_5xx"],
        "llm_failed_attempts_by_status": rec["llm_failed_attempts_by_status"],
        "llm_calls_without_usage": rec["llm_calls_without_usage"],
        "tokens": {k: rec[v] for k, v in _TOKENS.items()},
        "tokens_by_model": {k: v for k, v in rec["tokens_by_model"].items()},
        "cost_nusd": rec["cost_nusd"],
        "llm_calls_unpriced": rec["llm_calls_unpriced"],
        "cost_by_model": {k: v for k, v in rec["cost_by_model"].items() if v},
        "confirm": {"request": rec["confirm_requests"], "allow": rec["confirm_allows"],
                    "reject": rec["confirm_rejects"], "timeout": rec["confirm_timeouts"]},
    }


def truth_windows(truth: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for w in truth["windows"]:
        out[(w["tenant"], w["window_start_us"])] = {
            "events": w["events"], "events_by_type": w["events_by_type"], "turns": w["turns"],
            "turns_by_status": w["turns_by_status"], "incomplete_reasons": w["incomplete_reasons"],
            "max_iterations_hits": w["max_iterations_hits"], "turn_count": w["turn_duration_ms"]["count"],
            "tool_calls": w["tool_calls"], "tool_failures": w["tool_failures"],
            "tool_cancelled": w["tool_cancelled"],
            "tools": {t: [e["calls"], e["failures"], e["cancelled"]] for t, e in w["tools"].items()},
            "llm_calls": w["llm_calls"], "llm_attempts": w["llm_attempts"], "llm_retries": w["llm_retries"],
            "llm_errors": w["llm_errors"], "llm_errors_by_type": w["llm_errors_by_type"], "llm_5xx": w["llm_5xx"],
            "llm_failed_attempts_by_status": w["llm_failed_attempts_by_status"],
            "llm_calls_without_usage": w["llm_calls_without_usage"], "tokens": w["tokens"],
            "tokens_by_model": {k: v for k, v in w["tokens_by_model"].items() if v},
            "cost_nusd": w["cost_nusd"], "llm_calls_unpriced": w["llm_calls_unpriced"],
            "cost_by_model": {k: v for k, v in w["cost_by_model"].items() if v},
            "confirm": w["confirm"],
        }
    return out


def count_mismatches(metrics: dict[tuple[str, int, int], dict[str, Any]], truth: dict[str, Any],
                     window_s: int = 60) -> list[str]:
    """Every difference between the tumbling records and the true counts (missing, extra, or a differing field)."""
    got = {k: as_truth(r) for k, r in tumbling(metrics, window_s).items()}
    for rec in got.values():
        rec["tokens_by_model"] = {k: v for k, v in rec["tokens_by_model"].items() if v}
    want = truth_windows(truth)
    problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
    problems += [f"extra {k}" for k in sorted(set(got) - set(want))]
    for k in sorted(set(want) & set(got)):
        for field, value in want[k].items():
            if got[k][field] != value:
                problems.append(f"{k} {field}: got {got[k][field]!r}, true {value!r}")
    return problems


# -- running workers ---------------------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    term_sent: bool = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            if not self.term_sent:
                self.term()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def term(self) -> None:
        """SIGTERM, once: a second one while Faust shuts down finds its handler gone and kills the process."""
        self.term_sent = True
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def stop_all(workers: list[WorkerProcess], timeout: float = 30.0) -> list[int]:
    """SIGTERM every worker at once, then wait for each (as a deployment stops a group: stopping them one by one
    makes the last ones rebalance again and again on their way out)."""
    for w in workers:
        if w.proc.poll() is None:
            w.term()
    return [w.stop(timeout) for w in workers]


def start_worker(settings: Settings, workdir: Path, *args: str, name: str = "worker") -> WorkerProcess:
    """``agentwatch worker`` as a subprocess with the test's topics (its own process group, output to a file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    t = settings.topics
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "AGENTWATCH_EVENTS_TOPIC": t.events,
           "AGENTWATCH_DLQ_TOPIC": t.dead_letter, "AGENTWATCH_METRICS_TOPIC": t.metrics,
           "AGENTWATCH_ALERTS_TOPIC": t.alerts, "AGENTWATCH_PARTIALS_TOPIC": t.partials,
           "AGENTWATCH_LATE_TOPIC": t.late,
           "AGENTWATCH_APP_ID": settings.app_id, "AGENTWATCH_HOME": str(workdir / "home"),
           "PYTHONUNBUFFERED": "1"}
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed with it
    proc = subprocess.Popen([sys.executable, "-m", "agentwatch.cli", "worker", "--workdir", str(workdir / name),
                             *args], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()
    return WorkerProcess(proc, log_path)


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 1.0,
               alive: list[WorkerProcess] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the workers' logs if they died or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        for w in alive or ():
            if w.proc.poll() is not None:
                raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.log()[-4000:]}")
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(w.log()[-3000:] for w in alive or ())
            raise AssertionError(f"timed out after {timeout}s; last check: {value!r}\n{logs}")
        time.sleep(interval)
