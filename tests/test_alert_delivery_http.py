"""Alert delivery against a local HTTP receiver (no Kafka): v4 webhooks, /api/v2/alerts, retries, re-sends,
backfill, and the JSONL / console receivers."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from fakes.http_receiver import FakeHttpReceiver, free_port
from test_alert_delivery import MIN, T0, alert

from sinks.alert_delivery import RetryPolicy
from sinks.alert_sink import AlertDispatcher, Delivery, UrllibSender
from sinks.receivers import (
    REASON_HEADER,
    AlertmanagerReceiver,
    ConsoleReceiver,
    JsonlReceiver,
    WebhookReceiver,
)
from streams.alerts import FIRING, RESOLVED, ZERO_TIME, parse_rfc3339

FAST = RetryPolicy(max_attempts=6, base_s=0.01, max_backoff_s=0.05, max_retry_after_s=0.2, max_elapsed_s=5.0)


class Clock:
    """Settable wall clock for the re-send schedule and /api/v2 endsAt."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rx():
    with FakeHttpReceiver() as server:
        yield server


def dispatcher(*receivers, retry: RetryPolicy = FAST, clock=None, timeout_s: float = 2.0,
               resend_interval_s: float | None = 60.0) -> AlertDispatcher:
    return AlertDispatcher(list(receivers), retry=retry, sender=UrllibSender(timeout_s=timeout_s),
                           clock=clock or time.time, resend_interval_s=resend_interval_s)


def send(d: AlertDispatcher, *alerts) -> Delivery:
    return d.deliver(d.ingest([(a, 0) for a in alerts]))


def test_firing_then_resolved_arrive_as_v4_payloads(rx):
    d = dispatcher(WebhookReceiver(rx.url + "/hook", "oncall", external_url="http://agentwatch.local"))
    assert send(d, alert()) is Delivery.DONE
    assert send(d, alert(RESOLVED)) is Delivery.DONE
    got = rx.wait_for(2)
    assert [r.path for r in got] == ["/hook", "/hook"]
    assert got[0].headers["Content-Type"] == "application/json"
    assert [r.headers[REASON_HEADER] for r in got] == ["transition", "transition"]
    fired, resolved = (r.json() for r in got)
    for body in (fired, resolved):
        assert body["version"] == "4" and body["receiver"] == "oncall"
        assert body["groupKey"] == '{}:{alertname="ToolFailureRateHigh", tenant="acme"}'
        assert body["groupLabels"] == {"alertname": "ToolFailureRateHigh", "tenant": "acme"}
        assert body["commonLabels"] == alert().labels
        assert body["commonAnnotations"] == alert().annotations
        assert body["externalURL"] == "http://agentwatch.local" and body["truncatedAlerts"] == 0
        [item] = body["alerts"]
        assert item["fingerprint"] == alert().fingerprint and item["labels"] == alert().labels
        assert item["startsAt"] == "2025-11-25T10:00:00Z"
        assert item["generatorURL"] == "http://grafana/d/agents?tenant=acme"
    assert fired["status"] == FIRING and fired["alerts"][0]["endsAt"] == ZERO_TIME
    assert resolved["status"] == RESOLVED and resolved["alerts"][0]["status"] == RESOLVED
    assert parse_rfc3339(resolved["alerts"][0]["endsAt"]) == T0 + 5 * MIN
    assert d.stats.receivers["oncall"].delivered == 2 and d.stats.receivers["oncall"].retries == 0


def test_retries_after_500s_then_delivers(rx):
    rx.fail_next(3, status=503)
    d = dispatcher(WebhookReceiver(rx.url, "hook"))
    assert send(d, alert()) is Delivery.DONE
    statuses = [r.status for r in rx.received]
    assert statuses == [503, 503, 503, 200]
    assert len({r.body for r in rx.received}) == 1  # the same payload each time
    rs = d.stats.receivers["hook"]
    assert (rs.attempts, rs.retries, rs.delivered, rs.gave_up) == (4, 3, 1, 0)


def test_retry_after_is_honoured_on_429(rx):
    rx.fail_next(1, status=429, retry_after="1")  # longer than the backoff (<= 0.05 s), capped at 0.2 s
    rx.fail_next(1, status=503, retry_after="0")
    d = dispatcher(WebhookReceiver(rx.url, "hook"))
    assert send(d, alert()) is Delivery.DONE
    got = rx.received
    assert [r.status for r in got] == [429, 503, 200]
    assert got[1].at - got[0].at >= 0.2 - 0.01  # waited what Retry-After asked, up to the cap
    assert got[2].at - got[1].at < 0.2


def test_connection_refused_is_retried_until_the_receiver_is_up():
    port = free_port()
    late = FakeHttpReceiver(port=port)
    timer = threading.Timer(0.4, late.start)
    timer.start()
    try:
        policy = RetryPolicy(max_attempts=50, base_s=0.05, max_backoff_s=0.1, max_elapsed_s=10.0)
        d = dispatcher(WebhookReceiver(f"http://127.0.0.1:{port}/hook", "late"), retry=policy)
        assert send(d, alert()) is Delivery.DONE
        timer.join()
        got = late.wait_for(1, timeout=2)
        assert got[0].json()["status"] == FIRING
        rs = d.stats.receivers["late"]
        assert rs.retries >= 2 and rs.delivered == 1 and "Connection" in rs.last_error
    finally:
        timer.cancel()
        late.stop()


def test_400_is_not_retried_and_counted(rx):
    rx.always(400)
    d = dispatcher(WebhookReceiver(rx.url, "strict"))
    assert send(d, alert(tenant="a"), alert(tenant="b")) is Delivery.DONE
    assert [r.status for r in rx.received] == [400, 400]  # one attempt each; a rejection does not stop the rest
    rs = d.stats.receivers["strict"]
    assert (rs.rejected, rs.retries, rs.delivered, rs.gave_up) == (2, 0, 0, 0)


def test_giving_up_counts_and_skips_the_rest_of_the_delivery(rx):
    rx.always(500)
    policy = RetryPolicy(max_attempts=3, base_s=0.01, max_backoff_s=0.01)
    d = dispatcher(WebhookReceiver(rx.url, "down"), retry=policy)
    assert send(d, alert(tenant="a"), alert(tenant="b"), alert(tenant="c")) is Delivery.DONE
    assert len(rx.received) == 3  # three attempts for the first notification, none for the others
    rs = d.stats.receivers["down"]
    assert (rs.gave_up, rs.skipped, rs.delivered) == (1, 2, 0)
    rx.always(None)
    assert send(d, alert(RESOLVED, tenant="a")) is Delivery.DONE  # the next batch is tried again
    assert rx.accepted()[-1].json()["status"] == RESOLVED


def test_a_slow_receiver_times_out_and_is_retried(rx):
    rx.delay_s = 0.5
    d = dispatcher(WebhookReceiver(rx.url, "slow"), timeout_s=0.1,
                   retry=RetryPolicy(max_attempts=2, base_s=0.01, max_elapsed_s=5.0))
    assert send(d, alert()) is Delivery.DONE
    rs = d.stats.receivers["slow"]
    assert rs.attempts == 2 and rs.gave_up == 1 and "timed out" in rs.last_error


def test_stop_interrupts_a_retry_wait(rx):
    rx.always(503)
    stop = threading.Event()
    d = dispatcher(WebhookReceiver(rx.url, "hook"), retry=RetryPolicy(base_s=5.0, jitter=0.0, max_elapsed_s=60))
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert d.deliver(d.ingest([(alert(), 0)]), stop) is Delivery.INTERRUPTED
    assert time.monotonic() - started < 2.0


def test_periodic_resend_of_active_alerts(rx):
    clock = Clock(1_800_000_000.0)
    d = dispatcher(WebhookReceiver(rx.url, "hook"), clock=clock, resend_interval_s=60.0)
    send(d, alert(tool="a"), alert(tool="b"), alert(tenant="other"))
    assert len(rx.wait_for(2)) == 2
    d.schedule_resends()
    assert not d.resend_due()
    clock.now += 59
    assert not d.resend_due()
    clock.now += 1
    assert d.resend_due()
    assert d.resend() is Delivery.DONE
    resent = rx.wait_for(4)[2:]
    assert [r.headers[REASON_HEADER] for r in resent] == ["resend", "resend"]
    bodies = sorted((r.json() for r in resent), key=lambda b: b["groupKey"])
    assert [len(b["alerts"]) for b in bodies] == [2, 1] and all(b["status"] == FIRING for b in bodies)
    assert not d.resend_due()  # next one an interval later

    send(d, alert(RESOLVED, tool="a"), alert(RESOLVED, tool="b"))
    clock.now += 60
    d.resend()
    last = rx.wait_for(6)[-1]
    assert last.headers[REASON_HEADER] == "resend"
    assert last.json()["groupLabels"]["tenant"] == "other"  # the resolved group is no longer re-sent
    assert d.stats.receivers["hook"].resends == 3


def test_backfill_is_not_paged_but_recorded(rx, tmp_path):
    jsonl = JsonlReceiver(tmp_path / "alerts.jsonl")
    d = dispatcher(WebhookReceiver(rx.url, "hook"), AlertmanagerReceiver(rx.url, "am"), jsonl)
    send(d, alert(backfill=True), alert(tenant="live"))
    send(d, alert(RESOLVED))  # resolves the backfill alert: not paged either
    rx.wait_for(2)
    time.sleep(0.1)
    assert len(rx.received) == 2
    [hook] = [r.json() for r in rx.received if r.path == "/"]
    [push] = [r.json() for r in rx.received if r.path == "/api/v2/alerts"]
    assert hook["groupLabels"]["tenant"] == "live"
    assert [a["labels"]["tenant"] for a in push] == ["live"]
    assert d.stats.backfill == 2 and d.stats.transitions == 3
    d.close()
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(x["backfill"], x["status"], x["groupLabels"]["tenant"]) for x in lines] == [
        (True, FIRING, "acme"), (False, FIRING, "live"), (True, RESOLVED, "acme")]  # in topic order
    assert lines[0]["alerts"][0]["backfill"] is True and lines[1]["version"] == "4"


def test_alertmanager_api_v2_payload_shape(rx):
    clock = Clock(T0 / 1e6 + 600)
    am = AlertmanagerReceiver(rx.url + "/", "am", valid_for_s=240)
    d = dispatcher(am, clock=clock)
    send(d, alert(tool="a"), alert(tool="b"))
    send(d, alert(RESOLVED, tool="a"))
    got = rx.wait_for(2)
    assert [r.path for r in got] == ["/api/v2/alerts"] * 2
    first = got[0].json()
    assert isinstance(first, list) and len(first) == 2
    for item in first:
        assert set(item) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
        assert item["startsAt"] == "2025-11-25T10:00:00Z"
        assert parse_rfc3339(item["endsAt"]) == int((clock.now + 240) * 1e6)  # firing: now + valid_for
    second = {i["labels"]["tool"]: i for i in got[1].json()}
    assert parse_rfc3339(second["a"]["endsAt"]) == T0 + 5 * MIN < clock.now * 1e6  # resolved: in the past
    assert parse_rfc3339(second["b"]["endsAt"]) > clock.now * 1e6  # the group's open alert, refreshed
    clock.now += 60
    d.resend()
    [resent] = rx.wait_for(3)[2:]
    assert [i["labels"]["tool"] for i in resent.json()] == ["b"]
    assert parse_rfc3339(resent.json()[0]["endsAt"]) == int((clock.now + 240) * 1e6)


def test_alertmanager_keeps_an_alert_s_transitions_in_separate_requests(rx):
    d = dispatcher(AlertmanagerReceiver(rx.url, "am"))
    send(d, alert(), alert(RESOLVED))
    got = rx.wait_for(2)
    assert [[i["labels"]["tool"] for i in r.json()] for r in got] == [["search"], ["search"]]
    assert parse_rfc3339(got[0].json()[0]["endsAt"]) > time.time() * 1e6 > parse_rfc3339(got[1].json()[0]["endsAt"])


def test_receivers_are_independent(rx):
    with FakeHttpReceiver() as broken:
        broken.always(500)
        d = dispatcher(WebhookReceiver(rx.url, "good"), WebhookReceiver(broken.url, "bad"),
                       retry=RetryPolicy(max_attempts=3, base_s=0.01))
        send(d, alert())
        assert len(rx.accepted()) == 1 and len(broken.received) == 3
        assert d.stats.receivers["good"].delivered == 1 and d.stats.receivers["bad"].gave_up == 1
        d.close()


def test_console_prints_one_line_per_notification():
    out = io.StringIO()
    d = dispatcher(ConsoleReceiver(out))
    send(d, alert(tool="a"), alert(tenant="globex"), alert(backfill=True, tenant="old"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the backfill one is not shown by default
    assert "[FIRING] alertname=ToolFailureRateHigh tenant=acme: 1 alert(s): firing" in lines[0]
    assert "a: 23% > 10%" in lines[0] and "tenant=globex" in lines[1]


def test_a_redirect_is_a_rejection_not_a_silent_get(rx):
    rx.fail_next(1, status=302)  # Location: /redirected, which would answer a GET with 200
    d = dispatcher(WebhookReceiver(rx.url, "moved"))
    assert send(d, alert()) is Delivery.DONE
    assert [(r.method, r.status) for r in rx.received] == [("POST", 302)]
    assert d.stats.receivers["moved"].rejected == 1 and d.stats.receivers["moved"].delivered == 0
