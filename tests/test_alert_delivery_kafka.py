"""The alert sink on a real broker: alerts-topic records in (AlertCodec), webhook notifications out, the open set
rebuilt from the topic on restart, offsets committed only after delivery."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fakes.http_receiver import FakeHttpReceiver
from test_alert_delivery import alert

from sinks.alert_delivery import RetryPolicy
from sinks.alert_sink import AlertDispatcher, AlertSink, UrllibSender
from sinks.receivers import REASON_HEADER, WebhookReceiver
from streams.alerts import FIRING, RESOLVED, Alert, AlertCodec

FAST = RetryPolicy(max_attempts=4, base_s=0.01, max_backoff_s=0.05, max_elapsed_s=5.0)


def produce(bootstrap: str, topic: str, *alerts: Alert) -> None:
    codec = AlertCodec()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for a in alerts:
        producer.produce(topic, key=a.key(), value=codec.encode(a))
    assert producer.flush(10) == 0


def committed(bootstrap: str, topic: str, group: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def make_sink(bootstrap: str, topic: str, group: str, url: str, *, retry: RetryPolicy = FAST,
              resend_interval_s: float | None = 3600.0, **kwargs) -> AlertSink:
    dispatcher = AlertDispatcher([WebhookReceiver(url, "hook")], retry=retry, resend_interval_s=resend_interval_s,
                                 sender=UrllibSender(timeout_s=2.0))
    return AlertSink(bootstrap, topic, dispatcher, group_id=group, **kwargs)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def summary(received) -> list[tuple[str, str, str]]:
    """(reason, status, tenant of the group) per accepted request."""
    return [(r.headers[REASON_HEADER], r.json()["status"], r.json()["groupLabels"]["tenant"]) for r in received]


def test_restart_rebuilds_the_active_set_and_sends_each_transition_once(kafka_bootstrap, make_topic):
    topic = make_topic()
    group = f"test-alert-sink-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, alert(tenant="a"), alert(tenant="b"), alert(tenant="b"))  # b twice upstream
    with FakeHttpReceiver() as rx:
        first = make_sink(kafka_bootstrap, topic, group, rx.url, new_group_start="earliest")
        stats = first.run(until_end=True, idle_timeout_s=20)
        assert summary(rx.accepted()) == [("transition", FIRING, "a"), ("transition", FIRING, "b")]
        assert stats.duplicates == 1
        assert committed(kafka_bootstrap, topic, group) == 3

        # while the sink is down: a resolves, and the detector writes b's firing once more (a re-evaluation)
        produce(kafka_bootstrap, topic, alert(RESOLVED, tenant="a"), alert(tenant="b"))
        second = make_sink(kafka_bootstrap, topic, group, rx.url)
        stats = second.run(until_end=True, idle_timeout_s=20)
        after = summary(rx.accepted()[2:])
        # the rebuilt open set is re-sent first (a and b were open at the last commit), then the new transition;
        # b's duplicate is not a second "firing" transition
        assert sorted(after[:2]) == [("resend", FIRING, "a"), ("resend", FIRING, "b")]
        assert after[2:] == [("transition", RESOLVED, "a")]
        assert stats.replayed == 3 and stats.records == 2 and stats.duplicates == 1
        assert [a.labels["tenant"] for a in second.dispatcher.state.paged()] == ["b"]
        assert committed(kafka_bootstrap, topic, group) == 5


def test_a_new_group_rebuilds_state_without_paging_history(kafka_bootstrap, make_topic):
    topic = make_topic()
    produce(kafka_bootstrap, topic, alert(tenant="a"), alert(tenant="b"), alert(RESOLVED, tenant="a"))
    with FakeHttpReceiver() as rx:
        sink = make_sink(kafka_bootstrap, topic, f"test-alert-sink-{uuid.uuid4().hex[:8]}", rx.url)
        stats = sink.run(until_end=True, idle_timeout_s=20)
        assert summary(rx.accepted()) == [("resend", FIRING, "b")]  # only what is open now, as a re-send
        assert stats.replayed == 3 and stats.transitions == 0


def test_a_new_group_that_crashes_before_its_first_commit_still_delivers(kafka_bootstrap, make_topic):
    topic = make_topic()
    group = f"test-alert-sink-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, alert(tenant="history"))
    with FakeHttpReceiver() as rx:
        sink = make_sink(kafka_bootstrap, topic, group, rx.url, resend_on_start=False)
        errors: list[BaseException] = []

        def crash(offsets: list[TopicPartition]) -> None:
            raise RuntimeError("killed before the commit")

        def run() -> None:
            try:
                sink.run(idle_timeout_s=20, before_commit=crash)
            except RuntimeError as exc:
                errors.append(exc)

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        wait_until(lambda: sink.ready)
        assert committed(kafka_bootstrap, topic, group) == 1  # the new group's start, pinned before any delivery
        produce(kafka_bootstrap, topic, alert(tenant="new"))
        runner.join(20)
        assert errors and summary(rx.accepted()) == [("transition", FIRING, "new")]

        restarted = make_sink(kafka_bootstrap, topic, group, rx.url, resend_on_start=False)
        restarted.run(until_end=True, idle_timeout_s=20)
        # delivered again (at-least-once), not mistaken for history
        assert summary(rx.accepted()) == [("transition", FIRING, "new")] * 2
        assert committed(kafka_bootstrap, topic, group) == 2


def test_offsets_are_committed_only_after_delivery(kafka_bootstrap, make_topic):
    topic = make_topic()
    group = f"test-alert-sink-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, alert(tenant="a"))
    with FakeHttpReceiver() as rx:
        rx.always(503)
        slow_retry = RetryPolicy(max_attempts=100, base_s=0.2, max_backoff_s=0.2, jitter=0.0, max_elapsed_s=60)
        sink = make_sink(kafka_bootstrap, topic, group, rx.url, retry=slow_retry, new_group_start="earliest")
        stop = threading.Event()
        runner = threading.Thread(target=sink.run, kwargs={"stop": stop}, daemon=True)
        runner.start()
        rx.wait_for(2, accepted_only=False, timeout=20)  # retrying
        stop.set()  # stopped mid-retry: not delivered, so not committed
        runner.join(10)
        assert not runner.is_alive()
        assert committed(kafka_bootstrap, topic, group) == 0  # only the new group's starting point

        # a crash between delivery and commit: delivered, not committed, so delivered again after the restart
        rx.always(None)
        crashing = make_sink(kafka_bootstrap, topic, group, rx.url, new_group_start="earliest")

        def crash(offsets: list[TopicPartition]) -> None:
            raise RuntimeError("killed before the commit")

        with pytest.raises(RuntimeError, match="killed before the commit"):
            crashing.run(until_end=True, idle_timeout_s=20, before_commit=crash)
        assert committed(kafka_bootstrap, topic, group) == 0
        restarted = make_sink(kafka_bootstrap, topic, group, rx.url, new_group_start="earliest")
        restarted.run(until_end=True, idle_timeout_s=20)
        assert summary(rx.accepted()) == [("transition", FIRING, "a"), ("transition", FIRING, "a")]
        assert committed(kafka_bootstrap, topic, group) == 1

        # a receiver that gives up does not hold the topic back: counted, committed, moving on
        rx.always(500)
        produce(kafka_bootstrap, topic, alert(RESOLVED, tenant="a"))
        gives_up = make_sink(kafka_bootstrap, topic, group, rx.url, resend_on_start=False)
        stats = gives_up.run(until_end=True, idle_timeout_s=20)
        assert stats.receivers["hook"].gave_up == 1
        assert committed(kafka_bootstrap, topic, group) == 2


def test_the_running_sink_resends_open_alerts_and_never_pages_backfill(kafka_bootstrap, make_topic):
    topic = make_topic()
    with FakeHttpReceiver() as rx:
        sink = make_sink(kafka_bootstrap, topic, f"test-alert-sink-{uuid.uuid4().hex[:8]}", rx.url,
                         resend_interval_s=0.3)
        stop = threading.Event()
        runner = threading.Thread(target=sink.run, kwargs={"stop": stop}, daemon=True)
        runner.start()
        try:
            wait_until(lambda: sink.ready)  # a new group starts at the end: produce once it is there
            produce(kafka_bootstrap, topic, alert(tenant="old", backfill=True), alert(tenant="live"))
            got = rx.wait_for(4, timeout=20)  # the transition, then re-sends every 0.3 s
        finally:
            stop.set()
            runner.join(10)
        assert summary(got[:4]) == [("transition", FIRING, "live")] + [("resend", FIRING, "live")] * 3
        assert all(r.json()["groupLabels"]["tenant"] == "live" for r in rx.received)
        assert sink.dispatcher.stats.backfill == 1


def _run_cli(argv: list[str], settings) -> int:
    import argparse

    from agentwatch.commands import alerts as alerts_command

    parser = argparse.ArgumentParser(prog="agentwatch")
    alerts_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args, settings)


def test_cli_deliver_and_tail(kafka_settings, tmp_path, capsys):
    topic = kafka_settings.topics.alerts
    produce(kafka_settings.bootstrap_servers, topic, alert(tenant="a"), alert(tenant="b", backfill=True),
            alert(RESOLVED, tenant="a"), alert(tenant="c"))
    jsonl = tmp_path / "alerts.jsonl"
    with FakeHttpReceiver() as rx:
        code = _run_cli(["alerts", "deliver", "--webhook", f"oncall={rx.url}/hook", "--alertmanager", rx.url,
                         "--jsonl", str(jsonl), "--console", "--from", "earliest", "--until-end",
                         "--idle-timeout", "20", "--group", f"test-cli-{uuid.uuid4().hex[:8]}"], kafka_settings)
        assert code == 0
        hooks = [r.json() for r in rx.accepted() if r.path == "/hook"]
        pushes = [r.json() for r in rx.accepted() if r.path == "/api/v2/alerts"]
    assert [(h["receiver"], h["status"], h["groupLabels"]["tenant"]) for h in hooks] == [
        ("oncall", FIRING, "a"), ("oncall", RESOLVED, "a"), ("oncall", FIRING, "c")]
    assert sorted(i["labels"]["tenant"] for p in pushes for i in p) == ["a", "a", "c"]
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [(x["groupLabels"]["tenant"], x["status"], x["backfill"]) for x in lines] == [
        ("a", FIRING, False), ("b", FIRING, True), ("a", RESOLVED, False), ("c", FIRING, False)]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "[FIRING] alertname=ToolFailureRateHigh tenant=a" in out[0]

    assert _run_cli(["alerts", "tail", "-n", "2"], kafka_settings) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "RESOLVED" in out[0] and "tenant=a" in out[0] and "tenant=c" in out[1]
    assert _run_cli(["alerts", "tail", "--active", "--backfill"], kafka_settings) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split("tenant=")[1].split()[0] for line in out) == ["b", "c"]
    assert "[backfill]" in next(line for line in out if "tenant=b" in line)


def test_cli_deliver_until_end_fails_when_it_gave_up(kafka_settings, capsys):
    import socket

    topic = kafka_settings.topics.alerts
    produce(kafka_settings.bootstrap_servers, topic, alert(tenant="a"), alert(tenant="b"))
    with socket.socket() as s:  # a receiver that is down: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    code = _run_cli(["alerts", "deliver", "--webhook", f"oncall={dead}", "--from", "earliest", "--until-end",
                     "--idle-timeout", "20", "--max-attempts", "2", "--backoff", "0.01", "--max-retry-time", "2",
                     "--timeout", "1", "--group", f"test-cli-{uuid.uuid4().hex[:8]}"], kafka_settings)
    assert code == 1
    assert "2 notification(s) not delivered (given up or rejected); exit status 1" in capsys.readouterr().err


def test_delivery_counters_are_exposed_per_receiver_and_outcome():
    from prometheus_client import CollectorRegistry

    from agentwatch.commands.alerts import DeliveryCollector
    from sinks.alert_sink import DispatchStats, ReceiverStats

    stats = DispatchStats(receivers={"oncall": ReceiverStats(delivered=5, retries=3, gave_up=1, skipped=1,
                                                             rejected=1), "file": ReceiverStats(delivered=2)})
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(stats))

    def value(receiver: str, outcome: str) -> float | None:
        return registry.get_sample_value("agentwatch_alert_deliveries_total",
                                         {"receiver": receiver, "outcome": outcome})

    assert (value("oncall", "delivered"), value("oncall", "retried"), value("oncall", "given_up")) == (5, 3, 3)
    assert (value("file", "delivered"), value("file", "given_up")) == (2, 0)
    stats.receivers["oncall"].delivered += 1  # read at scrape time
    assert value("oncall", "delivered") == 6
