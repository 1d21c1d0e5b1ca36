"""``agentwatch worker`` through a Kafka outage: its broker is stopped for 75 s while the worker is busy, then
started again on the same data directory; the worker must keep running, say once that Kafka was lost and once that
it is back, show ``agentwatch_kafka_connected 0`` and a counted disconnect on /metrics, keep its log short and free
of tracebacks, and its 1-minute windows on the metrics topic must equal the simulator's ground truth (nothing lost,
nothing counted twice).

The broker is the test's own (``LocalKafka`` on a free port, as tests/test_kafka_outage.py): the session broker is
shared and must not be stopped. The outage outlasts the log throttle's interval (60 s), so the throttled summaries
of aiokafka's reconnect errors are written during it, through Faust's log formatter. The fleet is split at an
event-time minute boundary: the first part is published before the worker starts and the broker is stopped as soon
as the worker has read its first records (it is then mid-stream: reading, writing changelogs and partials,
committing); the rest is published after the restart.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from pathlib import Path

import pytest
from test_kafka_outage import JAR_HOME, free_port, metric, wait_for
from worker_support import (
    US,
    count_mismatches,
    publish_end_of_input,
    publish_events,
    read_metrics,
    read_topic,
    start_worker,
    tumbling,
    wait_until,
)

from agentwatch.broker.launcher import LocalKafka
from agentwatch.config import Settings, TopicNames
from agentwatch.kafka_log import Throttle, ThrottleFilter
from agentwatch.topics import default_topics, ensure_topics
from producers.simulator import FleetSimulator

PARTITIONS = 3
WINDOW_S = 60
DURATION_S = 360
SPLIT_S = 180  # event-time second (from the fleet's start) where the second part begins; a window boundary
OUTAGE_S = 75  # longer than the log throttle's interval (60 s): its "held back" summaries are written too


def test_a_summary_of_held_back_lines_formats_under_fausts_log_formatter() -> None:
    # Faust (mode) formats the worker's log records with ExtensionFormatter, which turns ``record.args = None`` into
    # ``(None,)``: a summarised aiokafka line ("Unable connect to node with id %s: %s" plus "(N ... held back)")
    # then failed to format, and a worker cut off from Kafka for more than a minute printed a "--- Logging error
    # ---" traceback per summary instead of the summary (seen with a 150 s outage).
    from mode.utils.logging import ExtensionFormatter

    now = [0.0]
    flt = ThrottleFilter(Throttle(burst=1, interval_s=60.0, clock=lambda: now[0]))
    formatter = ExtensionFormatter(stream=io.StringIO(), fmt="%(levelname)s %(message)s")

    def record() -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "Unable connect to node with id %s: %s",
                                 (1, ConnectionRefusedError(111, "Connection refused")), None)

    assert flt.filter(first := record()) and not flt.filter(record()) and not flt.filter(record())
    now[0] = 61.0
    assert flt.filter(summary := record())
    assert formatter.format(first) == "ERROR Unable connect to node with id 1: [Errno 111] Connection refused"
    assert formatter.format(summary) == ("ERROR Unable connect to node with id 1: [Errno 111] Connection refused "
                                         "(2 similar messages held back)")


def _settings(bootstrap: str) -> Settings:
    prefix = f"outage.{uuid.uuid4().hex[:8]}"
    topics = TopicNames(events=f"{prefix}.events", dead_letter=f"{prefix}.dlq", metrics=f"{prefix}.metrics",
                        alerts=f"{prefix}.alerts", partials=f"{prefix}.partials", late=f"{prefix}.late")
    return Settings(bootstrap_servers=bootstrap, topics=topics, events_partitions=PARTITIONS,
                    app_id=f"{prefix}.streams")


@pytest.mark.kafka
def test_worker_survives_a_broker_outage_with_exact_windows(tmp_path: Path) -> None:
    sim = FleetSimulator(seed=3, duration_s=DURATION_S)
    events = list(sim.events())
    truth = sim.ground_truth(WINDOW_S, events=events)
    split_us = min(e["event_time"] for e in events) // (WINDOW_S * US) * WINDOW_S * US + SPLIT_S * US
    first = [e for e in events if e["event_time"] < split_us]
    rest = [e for e in events if e["event_time"] >= split_us]
    assert first and rest and len(truth["windows"]) > 12

    port = free_port()
    data = tmp_path / "broker"
    kafka = LocalKafka(JAR_HOME, port=port, data_dir=data).start()
    worker = None
    mport = free_port()
    seen_down: list[float] = []
    try:
        settings = _settings(kafka.bootstrap_servers)
        ensure_topics(kafka.bootstrap_servers, default_topics(settings))
        publish_events(settings, first)
        worker = start_worker(settings, tmp_path, "--metrics-port", str(mport))
        wait_for(lambda: metric(mport, "agentwatch_kafka_connected") == 1, 90, "the worker connected")
        wait_until(lambda: (metric(mport, "agentwatch_worker_records_total") or 0) > 0, 120, interval=0.1,
                   alive=[worker])

        kafka.stop()  # mid-stream: the first part is being read, its windows merged, written and committed
        read_before = metric(mport, "agentwatch_worker_events_total")
        down_at = time.monotonic()
        while time.monotonic() - down_at < OUTAGE_S:
            assert worker.proc.poll() is None, f"the worker exited during the outage:\n{worker.log()[-4000:]}"
            if metric(mport, "agentwatch_kafka_connected") == 0:
                seen_down.append(time.monotonic() - down_at)
            time.sleep(1)
        assert seen_down, "agentwatch_kafka_connected never showed 0 during the outage"

        kafka = LocalKafka(JAR_HOME, port=port, data_dir=data).start()
        wait_until(lambda: metric(mport, "agentwatch_kafka_connected") == 1, 90, alive=[worker])
        assert metric(mport, "agentwatch_kafka_disconnects_total") == 1
        publish_events(settings, rest)
        publish_end_of_input(settings, sim.end_us + 600 * US, PARTITIONS)

        def exact() -> dict | None:
            metrics = read_metrics(settings)
            return metrics if not count_mismatches(metrics, truth, WINDOW_S) else None

        try:
            metrics = wait_until(exact, 240, alive=[worker])
        except AssertionError:
            metrics = read_metrics(settings)
        mismatches = count_mismatches(metrics, truth, WINDOW_S)
        dead_letters = read_topic(settings.bootstrap_servers, settings.topics.dead_letter)
        late = read_topic(settings.bootstrap_servers, settings.topics.late)
        code = worker.stop()
    finally:
        if worker is not None and worker.proc.poll() is None:
            worker.kill()
        kafka.stop()
    log = worker.log()
    print(f"\nworker outage: {len(events)} events ({len(first)} published before the outage, {read_before:.0f} of "
          f"them read when the broker stopped), {len(truth['windows'])} window cells; connected=0 first seen "
          f"{seen_down[0]:.1f}s after the stop; worker log "
          f"{len(log.splitlines())} lines:\n{log}")
    assert mismatches == [], mismatches[:40]
    assert len(tumbling(metrics, WINDOW_S)) == len(truth["windows"])
    assert dead_letters == [] and late == []
    assert code == 0
    assert "Traceback" not in log
    assert log.count("Kafka unreachable") == 1 and log.count("Kafka reachable again") == 1
    # start banner (~14), progress lines, a throttled few about the outage (54 lines in all, seen); a Logging error
    # per throttle summary, as before the fix, made it ~500
    assert len(log.splitlines()) <= 80
