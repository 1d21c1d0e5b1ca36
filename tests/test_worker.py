"""``agentwatch worker`` against a real broker, checked against the simulator's ground truth.

One simulated fleet (6 tenants, 12 minutes, one scripted incident of each kind) is published once per module into
a 3-partition events topic, followed by one end-of-input event per partition far past the data, so the last
windows close deterministically (no waiting on the wall-clock heartbeat). Each test then runs its workers in
their own consumer group with their own partials, metrics, alerts and changelog topics, reading that same input.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from conftest import delete_topics
from worker_support import (
    US,
    count_mismatches,
    publish_end_of_input,
    publish_events,
    read_alerts,
    read_metrics,
    read_topic,
    start_worker,
    stop_all,
    tumbling,
    wait_until,
)

from agentwatch.config import Settings, TopicNames
from agentwatch.topics import TopicSpec, default_topics, ensure_topics
from producers.incidents import default_incidents
from producers.simulator import DEFAULT_START_US, FleetSimulator
from schemas.codec import AvroCodec
from streams.alerts import Alert

PARTITIONS = 3
WINDOW_S = 60


@dataclass
class Fleet:
    events_topic: str
    truth: dict[str, Any]
    n_events: int


def _settings(bootstrap: str, events_topic: str) -> Settings:
    prefix = f"test.{uuid.uuid4().hex[:12]}"
    topics = TopicNames(events=events_topic, dead_letter=f"{prefix}.dlq", metrics=f"{prefix}.metrics",
                        alerts=f"{prefix}.alerts", partials=f"{prefix}.partials", late=f"{prefix}.late")
    return Settings(bootstrap_servers=bootstrap, topics=topics, events_partitions=PARTITIONS,
                    app_id=f"{prefix}.streams")


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str) -> Iterator[Fleet]:
    names = FleetSimulator(seed=0).tenant_names
    sim = FleetSimulator(seed=0, duration_s=720,
                         incidents=default_incidents(names, DEFAULT_START_US, 600, WINDOW_S))
    events = list(sim.events())
    truth = sim.ground_truth(WINDOW_S, events=events)
    topic = f"test.worker-fleet.{uuid.uuid4().hex[:10]}.events"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, PARTITIONS, 3_600_000)])
    settings = _settings(kafka_bootstrap, topic)
    n = publish_events(settings, events)
    publish_end_of_input(settings, sim.end_us + 600 * US, PARTITIONS)
    yield Fleet(topic, truth, n)
    delete_topics(kafka_bootstrap, [topic])


@pytest.fixture
def outputs(kafka_bootstrap: str, fleet: Fleet) -> Iterator[Settings]:
    """Fresh output topics and consumer group over the shared events topic."""
    settings = _settings(kafka_bootstrap, fleet.events_topic)
    specs = [s for s in default_topics(settings) if s.name != fleet.events_topic]
    ensure_topics(kafka_bootstrap, specs)
    yield settings
    delete_topics(kafka_bootstrap, [s.name for s in specs])


def _complete(settings: Settings, truth: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]] | None:
    metrics = read_metrics(settings)
    return metrics if len(tumbling(metrics, WINDOW_S)) >= len(truth["windows"]) else None


def _transitions(alerts: list[Alert]) -> dict[str, Alert]:
    """One per transition (a redelivery after a crash may repeat a record; its transition key is the same)."""
    return {a.transition_key(): a for a in alerts}


def _check_alerts(alerts: list[Alert], truth: dict[str, Any]) -> None:
    """Each incident raised exactly its alerts, firing then resolved, and nothing else fired."""
    w = WINDOW_S * US
    by_key: dict[tuple[str, tuple[tuple[str, str], ...]], list[Alert]] = {}
    for a in sorted(_transitions(alerts).values(), key=lambda a: (a.window_end_us, a.status != "firing")):
        subject = tuple(sorted((k, v) for k, v in a.labels.items() if k in ("tenant", "tool")))
        by_key.setdefault((a.alertname, subject), []).append(a)
    expected = {(e["alertname"], tuple(sorted(e["labels"].items()))): e for e in truth["alerts"]["expected"]}
    assert set(by_key) == set(expected), (sorted(by_key), sorted(expected))
    for key, seq in by_key.items():
        e = expected[key]
        assert [a.status for a in seq] == ["firing", "resolved"], (key, [(a.status, a.starts_at) for a in seq])
        firing, resolved = seq
        assert firing.starts_at_us == min(e["crossing_windows_us"]), (key, firing.starts_at)
        assert resolved.starts_at_us == firing.starts_at_us
        assert max(e["crossing_windows_us"]) + w < resolved.ends_at_us <= e["end_us"] + 3 * w, (key, resolved)
        assert resolved.annotations["resolve_reason"] == "recovered"
        assert not firing.backfill


def test_one_worker_matches_the_ground_truth(outputs: Settings, fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.truth["totals"]["cost_nusd"] > 0  # cost is among the cells compared, and not vacuously 0
    worker = start_worker(outputs, tmp_path, "--metrics-port", "0")
    try:
        started = time.monotonic()
        metrics = wait_until(lambda: _complete(outputs, fleet.truth), 150, alive=[worker])
        elapsed = time.monotonic() - started
        time.sleep(3)  # alerts of the last windows travel in the same flush as their metrics
        alerts = read_alerts(outputs)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert count_mismatches(metrics, fleet.truth, WINDOW_S) == []
    hopping = [r for (t, s, e), r in metrics.items() if e - s == 300 * US]
    assert hopping and all(r["events"] >= metrics[(r["tenant"], r["window_end_us"] - 60 * US,
                                                   r["window_end_us"])]["events"] for r in hopping)
    _check_alerts(alerts, fleet.truth)
    assert read_topic(outputs.bootstrap_servers, outputs.topics.dead_letter) == []
    print(f"\none worker: {fleet.n_events} events to complete metrics in {elapsed:.1f}s (startup included)")


def test_worker_killed_mid_run_resumes_with_exact_counts(outputs: Settings, fleet: Fleet, tmp_path: Path) -> None:
    first = start_worker(outputs, tmp_path, "--hop", "0", name="first")
    try:
        # Kill once some windows are final, long before all are.
        wait_until(lambda: len(read_metrics(outputs)) >= 6, 120, interval=0.3, alive=[first])
    finally:
        first.kill()
    before = len(tumbling(read_metrics(outputs)))
    assert before < len(fleet.truth["windows"]), "the worker finished before it could be killed mid-run"
    second = start_worker(outputs, tmp_path, "--hop", "0", name="second")
    try:
        metrics = wait_until(lambda: _complete(outputs, fleet.truth), 150, alive=[second])
        time.sleep(3)
        alerts = read_alerts(outputs)
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    story = [[line for line in w.log().splitlines() if "agentwatch worker:" in line] for w in (first, second)]
    mismatches = count_mismatches(metrics, fleet.truth, WINDOW_S)
    print("\n".join(mismatches))  # all of them (the assertion's diff is cut)
    assert mismatches == [], story
    _check_alerts(alerts, fleet.truth)
    # the second worker resumed from the first one's changelog (open windows and detector state included)
    restored = [line for line in second.log().splitlines() if "restored from the table" in line]
    assert any("stream time None" not in line for line in restored if "events partition" in line), restored


def test_two_workers_in_one_group_give_the_same_results(outputs: Settings, fleet: Fleet, tmp_path: Path) -> None:
    workers = [start_worker(outputs, tmp_path, "--hop", "0", name=f"w{i}") for i in range(2)]
    try:
        metrics = wait_until(lambda: _complete(outputs, fleet.truth), 180, alive=workers)
        time.sleep(3)
        alerts = read_alerts(outputs)
    finally:
        codes = stop_all(workers)
    assert codes == [0, 0], [w.log()[-2000:] for w in workers]
    # on a mismatch, say what each worker owned and restored when (the order of rebalances explains most)
    story = [[line for line in w.log().splitlines() if "agentwatch worker:" in line] for w in workers]
    mismatches = count_mismatches(metrics, fleet.truth, WINDOW_S)
    print("\n".join(mismatches))  # all of them (the assertion's diff is cut)
    assert mismatches == [], story
    _check_alerts(alerts, fleet.truth)
    last_assignment = [[line for line in w.log().splitlines() if "assigned: events partitions" in line][-1]
                       for w in workers]
    assert all("events partitions []" not in line for line in last_assignment), last_assignment


def test_bad_records_go_to_the_dead_letter_topic_and_the_worker_keeps_going(
        kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings
    codec = AvroCodec()
    t0 = DEFAULT_START_US
    good = {"event_id": uuid.uuid4().hex, "event_time": t0 + 5 * US, "producer_time": t0 + 5 * US,
            "tenant": "acme", "session_id": "s1", "seq": 1, "type": "turn_end", "status": "ok"}
    valid = codec.encode_event(good)
    bad = {"random": b"\x8f\x02 random bytes \xff", "truncated": valid[: len(valid) // 2],
           "unknown_fp": valid[:2] + b"\x01" * 8 + valid[10:], "oversize": b"\xc3\x01" + bytes(300_000)}
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "message.max.bytes": 2_000_000})
    producer.produce(settings.topics.events, valid, b"k", partition=0)
    for name, value in bad.items():
        producer.produce(settings.topics.events, value, name.encode(), partition=0, headers=[("case", name.encode())])
    later = dict(good, event_id=uuid.uuid4().hex, event_time=t0 + 20 * US, seq=2)
    producer.produce(settings.topics.events, codec.encode_event(later), b"k", partition=0)
    assert producer.flush(30) == 0
    end = dict(good, event_id=uuid.uuid4().hex, tenant="zz-end", event_time=t0 + 600 * US)
    for p in range(settings.events_partitions):
        producer.produce(settings.topics.events, codec.encode_event(end), b"end", partition=p)
    assert producer.flush(30) == 0
    worker = start_worker(settings, tmp_path, "--max-record-bytes", "100000")
    try:
        dead = wait_until(lambda: (lambda m: m if len(m) >= 4 else None)(
            read_topic(settings.bootstrap_servers, settings.topics.dead_letter)), 90, alive=[worker])
        metrics = wait_until(lambda: {k: r for k, r in read_metrics(settings).items() if k[0] == "acme"}, 60,
                             alive=[worker])
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    reasons = {}
    for msg in dead:
        headers = dict(msg.headers())
        reasons[headers["case"].decode()] = headers["dlq.reason"].decode()
        assert headers["dlq.source.topic"].decode() == settings.topics.events
        assert headers["dlq.source.partition"] == b"0" and int(headers["dlq.source.offset"]) >= 1
        assert msg.value() == bad[headers["case"].decode()]  # the raw value, untouched
    assert reasons == {"random": "bad_magic", "truncated": "invalid_avro", "unknown_fp": "unknown_fingerprint",
                       "oversize": "oversize"}
    (rec,) = [r for (t, s, e), r in metrics.items() if e - s == 60 * US]
    assert rec["events"] == 2 and rec["turns"] == 2  # the good records on both sides of the bad ones


def test_cost_budget_and_user_spend_alerts_survive_a_kill(outputs: Settings, fleet: Fleet, tmp_path: Path) -> None:
    """Daily budgets at 80 % of each tenant's spend and a per-user threshold; the worker is SIGKILLed early, so the
    day's spend and the open alerts must come back from the changelog: each tenant's budget fires exactly once, in
    the window the ground truth's running sum crosses it, and every user named really spent that much."""
    from streams.rules import load_rules

    windows = sorted(fleet.truth["windows"], key=lambda w: (w["tenant"], w["window_start_us"]))
    totals = fleet.truth["tenants"]
    budgets = {t: round(0.8 * v["cost_nusd"] / 1e9, 6) for t, v in totals.items()}
    top_user = max(max(v["cost_by_user"].values()) for v in totals.values())
    threshold = round(0.6 * top_user / 1e9, 6)
    rules = tmp_path / "cost-rules.yaml"
    rules.write_text(json.dumps({"cost_budget": {"tenants": budgets},
                                 "user_spend": {"threshold_usd": threshold, "rolling_minutes": 60}}))
    spec = load_rules(rules)
    assert spec.budget is not None and spec.user_spend is not None
    want_budget: dict[str, int] = {}
    running: dict[str, int] = {}
    user_running: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for w in windows:
        t = w["tenant"]
        running[t] = running.get(t, 0) + w["cost_nusd"]
        if t not in want_budget and running[t] > spec.budget.budget_nusd(t):
            want_budget[t] = w["window_start_us"]
        for user, c in w["cost_by_user"].items():
            seq = user_running.setdefault((t, user), [])
            seq.append((w["window_end_us"], (seq[-1][1] if seq else 0) + c))
    fire_nusd = round(threshold * 1e9)
    # sure to fire: exact spend minus the sketches' largest possible shortfall (each window's total / capacity)
    slack = {t: v["cost_nusd"] // 20 for t, v in totals.items()}
    sure = {k for k, seq in user_running.items() if seq[-1][1] - slack[k[0]] > fire_nusd}
    assert sure and set(want_budget) == set(totals)

    first = start_worker(outputs, tmp_path, "--hop", "0", "--rules", str(rules), name="first")
    try:
        wait_until(lambda: len(read_metrics(outputs)) >= 6, 120, interval=0.3, alive=[first])
    finally:
        first.kill()
    assert len(read_metrics(outputs)) < len(windows) // 2, "killed too late to matter"
    second = start_worker(outputs, tmp_path, "--hop", "0", "--rules", str(rules), name="second")
    try:
        wait_until(lambda: _complete(outputs, fleet.truth), 150, alive=[second])
        time.sleep(3)
        alerts = list(_transitions(read_alerts(outputs)).values())
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    budget = [a for a in alerts if a.alertname == "DailyCostBudgetExceeded"]
    assert sorted((a.labels["tenant"], a.status, a.starts_at_us) for a in budget) == sorted(
        (t, "firing", s) for t, s in want_budget.items())
    named = [a for a in alerts if a.alertname == "UserSpendHigh"]
    assert all(a.status == "firing" for a in named)  # the rolling hour outlasts the run
    fired = [(a.labels["tenant"], a.labels["user"]) for a in named]
    assert len(fired) == len(set(fired)) and sure <= set(fired), (sorted(fired), sorted(sure))
    for a in named:  # never a user who did not spend it: the exact running sum at the firing window is above
        exact = max(c for end, c in user_running[(a.labels["tenant"], a.labels["user"])] if end <= a.window_end_us)
        assert exact > fire_nusd, (a.labels, exact, fire_nusd)
