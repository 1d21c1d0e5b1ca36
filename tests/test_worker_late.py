"""Late data, re-sent single events and a hostile corpus through a real worker on a real broker.

Acceptance of "trustworthy streams": live traffic, then a 10-minute backlog of older events (what a producer's spool
sends after an outage), plus single-event records sent twice; the newest revision of every window on the metrics
topic equals the ground truth exactly. And a hostile corpus (extreme numbers, far-past and far-future times, hostile
tenant strings) leaves the good tenants exact, with every rejected event in the dead-letter topic with its reason.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
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

from agentwatch.config import Settings
from producers.simulator import DEFAULT_START_US, FleetSimulator
from schemas.codec import AvroCodec
from schemas.keys import parse_metrics_key

WINDOW_S = 60
BACKLOG_FROM_S, BACKLOG_TO_S = 180, 780  # the outage: 10 minutes of some sessions' events held back


def _latest_complete(settings: Settings, truth: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]] | None:
    metrics = read_metrics(settings)
    return metrics if not count_mismatches(metrics, truth, WINDOW_S) else None


def test_a_backlog_after_an_outage_and_resent_single_events_converge_to_the_truth(
        kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings
    sim = FleetSimulator(seed=3, tenants=4, duration_s=960)
    events = list(sim.events())
    truth = sim.ground_truth(WINDOW_S, events=events)
    sessions = sorted({e["session_id"] for e in events})
    held = set(sessions[::3])  # a third of the sessions sat behind a producer that lost Kafka
    lo, hi = DEFAULT_START_US + BACKLOG_FROM_S * US, DEFAULT_START_US + BACKLOG_TO_S * US

    def is_backlog(e: dict[str, Any]) -> bool:
        return e["session_id"] in held and lo <= e["event_time"] < hi

    backlog = [e for e in events if is_backlog(e)]
    live = [e for e in events if not is_backlog(e)]
    singles = [e for e in live if e["type"] == "tool_complete"][:40]  # sent as single-event records, twice
    single_ids = {e["event_id"] for e in singles}
    live = [e for e in live if e["event_id"] not in single_ids]
    assert len(backlog) > 500 and len(singles) == 40

    worker = start_worker(settings, tmp_path, "--allowed-lateness", "3600")
    try:
        publish_events(settings, live)
        codec = AvroCodec()
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
        for _round in range(2):  # the same events again, as new records: a retrying proxy
            for e in singles:
                producer.produce(settings.topics.events, codec.encode_event(e), e["session_id"].encode())
            assert producer.flush(30) == 0
        publish_events(settings, backlog)  # minutes behind stream time: beyond the grace, within the lateness
        publish_end_of_input(settings, sim.end_us + 300 * US, settings.events_partitions)
        metrics = wait_until(lambda: _latest_complete(settings, truth), 240, alive=[worker])
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert count_mismatches(metrics, truth, WINDOW_S) == []
    revised = [r for r in tumbling(metrics, WINDOW_S).values() if r["revision"] > 0]
    assert len(revised) >= 10, "the backlog should have revised many windows"
    assert read_topic(settings.bootstrap_servers, settings.topics.late) == []  # nothing beyond the lateness
    # hopping windows (newest revision) agree with the newest tumbling windows they span
    tumb = tumbling(metrics, WINDOW_S)
    for (tenant, start, end), rec in metrics.items():
        if end - start == 300 * US and (tenant, end - WINDOW_S * US) in tumb and start >= DEFAULT_START_US:
            spanned = sum(tumb[(tenant, s)]["events"] for s in range(start, end, WINDOW_S * US) if (tenant, s) in tumb)
            assert rec["events"] == spanned, (tenant, start, rec["revision"])
    log = worker.log()
    assert "Traceback" not in log


def _event(tenant: str, t_us: int, type_: str = "turn_end", **extra: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "event_time": t_us, "producer_time": t_us, "tenant": tenant,
            "session_id": f"s-{tenant[:20]}", "seq": 1, "type": type_, **extra}


def test_a_hostile_corpus_leaves_the_good_tenants_exact_and_every_rejection_in_the_dead_letter_topic(
        kafka_settings: Settings, tmp_path: Path) -> None:
    settings = kafka_settings
    codec = AvroCodec()
    t0 = DEFAULT_START_US
    good = [_event(tenant, t0 + (i % 50) * US, "llm_call_completed", model="m", prompt_tokens=100,
                   completion_tokens=7, duration_ms=300, status="ok")
            for tenant in ("good-a", "good-b") for i in range(60)]
    hostile = {
        "out_of_range:duration_ms": _event("evil", t0 + US, "tool_complete", tool_name="t", duration_ms=(1 << 62)),
        "out_of_range:prompt_tokens": _event("evil", t0 + US, "llm_call_completed", prompt_tokens=-5),
        "out_of_range:completion_tokens": _event("good-a", t0 + US, "llm_call_completed",
                                                 completion_tokens=(1 << 63) - 1),
        "out_of_range:http_status": _event("evil", t0 + US, "llm_retry", http_status=99999),
        "future_time": _event("evil", t0 + 200 * 365 * 86400 * US),  # the year 2226
        "too_old": _event("evil", 86400 * US),  # 1970
        "invalid:tenant": _event("bad\x00tenant", t0 + US),
    }
    odd_tenants = ["a|b|1|2", "%7C", "ünï©ødé-テナント", "x" * 256]
    odd = [_event(t, t0 + 2 * US) for t in odd_tenants]
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    records = [codec.encode_batch("corpus", 1, t0, good[:30] + list(hostile.values())[:3] + good[30:60]),
               codec.encode_batch("corpus", 2, t0, good[60:] + list(hostile.values())[3:] + odd)]
    for value in records:
        producer.produce(settings.topics.events, value, b"corpus", partition=0)
    assert producer.flush(30) == 0
    publish_end_of_input(settings, t0 + 600 * US, settings.events_partitions)
    worker = start_worker(settings, tmp_path)
    try:
        def done() -> Any:
            m = {k: r for k, r in read_metrics(settings).items() if k[2] - k[1] == 60 * US}
            dead = read_topic(settings.bootstrap_servers, settings.topics.dead_letter)
            return (m, dead) if len(m) >= 2 + len(odd_tenants) and len(dead) >= len(hostile) else None
        metrics, dead = wait_until(done, 120, alive=[worker])
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    reasons = sorted(dict(m.headers())["dlq.reason"].decode() for m in dead)
    assert reasons == sorted(hostile)
    for msg in dead:
        h = dict(msg.headers())
        ev = codec.decode(msg.value()).events[0]  # the rejected event alone, decodable
        assert hostile[h["dlq.reason"].decode()]["event_id"] == ev["event_id"] == h["dlq.event_id"].decode()
        assert h["dlq.source.partition"] == b"0" and h["dlq.source.topic"].decode() == settings.topics.events
    for tenant in ("good-a", "good-b"):
        rec = metrics[(tenant, t0, t0 + 60 * US)]
        assert (rec["events"], rec["llm_calls"], rec["prompt_tokens"], rec["completion_tokens"]) == (60, 60, 6000, 420)
    for tenant in odd_tenants:  # each hostile tenant string has its own, unambiguous key
        assert metrics[(tenant, t0, t0 + 60 * US)]["events"] == 1
    keys = [m.key() for m in read_topic(settings.bootstrap_servers, settings.topics.metrics)]
    assert len({parse_metrics_key(k) for k in keys}) == len(set(keys))
    assert "Traceback" not in worker.log()
