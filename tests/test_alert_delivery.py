"""Alert delivery, pure part: active set and dedup, grouping into v4 payloads, /api/v2 items, retry schedule."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from sinks.alert_delivery import (
    ActiveAlerts,
    Batcher,
    Grouper,
    Outcome,
    RetryPolicy,
    Verdict,
    classify_status,
    go_quote,
    label_set_string,
    parse_retry_after,
    postable,
)
from streams.alerts import FIRING, RESOLVED, ZERO_TIME, Alert, parse_rfc3339, rfc3339

T0 = 1_764_064_800_000_000  # 2025-11-25T10:00:00Z
MIN = 60_000_000


def alert(status: str = FIRING, *, name: str = "ToolFailureRateHigh", tenant: str = "acme", tool: str = "search",
          starts: int = T0, ends: int | None = None, backfill: bool = False, summary: str = "23% > 10%") -> Alert:
    return Alert(labels={"alertname": name, "tenant": tenant, "tool": tool, "severity": "warning"},
                 annotations={"summary": f"{tool}: {summary}", "runbook_url": "https://runbooks/tools"},
                 status=status, starts_at_us=starts,
                 ends_at_us=(ends if ends is not None else starts + 5 * MIN) if status == RESOLVED else None,
                 window_start_us=starts, window_end_us=starts + MIN, value=0.23, threshold=0.1, backfill=backfill,
                 generator_url=f"http://grafana/d/agents?tenant={tenant}")


# -- the active set ---------------------------------------------------------------------------------------------


def test_firing_then_resolved_opens_and_closes_the_alert():
    state = ActiveAlerts()
    fire = alert()
    applied = state.apply(fire, 0)
    assert (applied.outcome, applied.page) == (Outcome.NEW, True)
    assert fire.fingerprint in state and state.paged() == [fire]
    applied = state.apply(alert(RESOLVED), 0)
    assert (applied.outcome, applied.page) == (Outcome.NEW, True)
    assert len(state) == 0 and state.paged() == []


def test_a_transition_seen_twice_is_delivered_once():
    state = ActiveAlerts()
    assert state.apply(alert()).deliver
    again = state.apply(alert())
    assert again.outcome is Outcome.DUPLICATE and not again.deliver
    assert state.apply(alert(RESOLVED)).deliver
    assert state.apply(alert(RESOLVED)).outcome is Outcome.DUPLICATE
    # the same alert firing again later is a new transition (a new startsAt)
    assert state.apply(alert(starts=T0 + 30 * MIN)).outcome is Outcome.NEW


def test_an_old_resolution_does_not_close_a_newer_run():
    state = ActiveAlerts()
    state.apply(alert(starts=T0 + 30 * MIN))
    stale = state.apply(alert(RESOLVED, starts=T0))
    assert stale.outcome is Outcome.STALE and not stale.deliver
    assert alert().fingerprint in state
    assert state.apply(alert(starts=T0)).outcome is Outcome.STALE


def test_backfill_changes_state_but_never_pages_not_even_its_resolution():
    state = ActiveAlerts()
    applied = state.apply(alert(backfill=True))
    assert applied.deliver and not applied.page
    assert alert().fingerprint in state and state.paged() == []
    resolved = state.apply(alert(RESOLVED))  # a live resolution of an alert whose firing never paged
    assert resolved.deliver and not resolved.page


def test_a_live_copy_of_a_backfill_firing_that_is_still_open_pages_once():
    state = ActiveAlerts()
    state.apply(alert(backfill=True))
    promoted = state.apply(alert())
    assert (promoted.outcome, promoted.page) == (Outcome.PROMOTED, True)
    assert state.paged() == [alert()]
    assert state.apply(alert()).outcome is Outcome.DUPLICATE
    assert state.apply(alert(RESOLVED)).page


def test_a_resolution_without_a_known_firing_still_pages():
    state = ActiveAlerts()
    applied = state.apply(alert(RESOLVED))
    assert applied.deliver and applied.page


def test_revoked_partitions_forget_their_alerts():
    state = ActiveAlerts()
    state.apply(alert(tenant="a"), 0)
    state.apply(alert(tenant="b"), 1)
    assert state.drop_partitions([1]) == 1
    assert [a.labels["tenant"] for a in state.paged()] == ["a"]


# -- grouping and the v4 payload --------------------------------------------------------------------------------


def test_group_key_is_route_key_and_go_quoted_group_labels():
    g = Grouper()
    assert g.group_key(alert()) == '{}:{alertname="ToolFailureRateHigh", tenant="acme"}'
    assert Grouper(("tenant", "missing")).group_key(alert()) == '{}:{tenant="acme"}'
    assert label_set_string({"b": 'say "hi"\n', "a": "x\\y"}) == '{a="x\\\\y", b="say \\"hi\\"\\n"}'
    assert go_quote("caf\u00e9\x01\x7f\u200b") == '"caf\u00e9\\x01\\x7f\\u200b"'


def test_firing_and_resolved_become_v4_notifications_with_every_field():
    batcher = Batcher(ActiveAlerts(), Grouper())
    plan = batcher.plan([(alert(tool="search"), 0), (alert(tool="fetch", summary="40% > 10%"), 0)])
    assert len(plan.paging) == 1 and not plan.backfill
    body = plan.paging[0].webhook_payload("oncall", external_url="http://agentwatch:9000")
    assert body["version"] == "4"
    assert body["groupKey"] == '{}:{alertname="ToolFailureRateHigh", tenant="acme"}'
    assert body["status"] == "firing" and body["receiver"] == "oncall" and body["truncatedAlerts"] == 0
    assert body["groupLabels"] == {"alertname": "ToolFailureRateHigh", "tenant": "acme"}
    assert body["commonLabels"] == {"alertname": "ToolFailureRateHigh", "tenant": "acme", "severity": "warning"}
    assert body["commonAnnotations"] == {"runbook_url": "https://runbooks/tools"}
    assert body["externalURL"] == "http://agentwatch:9000"
    assert [a["labels"]["tool"] for a in body["alerts"]] == ["fetch", "search"]  # by startsAt, then fingerprint
    first = body["alerts"][0]
    assert set(first) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert first["status"] == "firing" and first["endsAt"] == ZERO_TIME
    assert first["startsAt"] == "2025-11-25T10:00:00Z"
    assert first["generatorURL"] == "http://grafana/d/agents?tenant=acme"
    assert first["fingerprint"] == alert(tool="fetch").fingerprint

    plan = batcher.plan([(alert(RESOLVED, tool="search"), 0)])
    body = plan.paging[0].webhook_payload("oncall")
    # Alertmanager semantics: the group's notification carries its still-firing alerts too
    assert body["status"] == "firing"
    assert [(a["labels"]["tool"], a["status"]) for a in body["alerts"]] == [("fetch", "firing"),
                                                                           ("search", "resolved")]
    resolved = body["alerts"][1]
    assert resolved["endsAt"] == rfc3339(T0 + 5 * MIN)

    body = batcher.plan([(alert(RESOLVED, tool="fetch"), 0)]).paging[0].webhook_payload("oncall")
    assert body["status"] == "resolved" and [a["status"] for a in body["alerts"]] == ["resolved"]


def test_groups_split_by_alertname_and_tenant():
    plan = Batcher(ActiveAlerts(), Grouper()).plan(
        [(alert(tenant="acme"), 0), (alert(tenant="globex"), 0), (alert(name="TokenSpike", tenant="acme"), 0)])
    assert [n.group_labels for n in plan.paging] == [
        {"alertname": "ToolFailureRateHigh", "tenant": "acme"},
        {"alertname": "ToolFailureRateHigh", "tenant": "globex"},
        {"alertname": "TokenSpike", "tenant": "acme"}]


def test_fired_and_resolved_in_one_batch_are_two_notifications_in_order():
    plan = Batcher(ActiveAlerts(), Grouper()).plan([(alert(), 0), (alert(), 0), (alert(RESOLVED), 0)])
    assert [(n.status, len(n.alerts)) for n in plan.paging] == [("firing", 1), ("resolved", 1)]


def test_backfill_goes_to_its_own_notifications():
    outcomes: list = []
    plan = Batcher(ActiveAlerts(), Grouper()).plan([(alert(backfill=True), 0), (alert(tenant="live"), 0)], outcomes)
    assert [n.group_labels["tenant"] for n in plan.paging] == ["live"]
    assert [(n.group_labels["tenant"], n.backfill) for n in plan.backfill] == [("acme", True)]
    assert [o.page for o in outcomes] == [False, True]


def test_truncation_counts_the_alerts_left_out():
    batcher = Batcher(ActiveAlerts(), Grouper())
    plan = batcher.plan([(alert(tool=f"t{i}"), 0) for i in range(5)])
    body = plan.paging[0].webhook_payload("r", max_alerts=2)
    assert len(body["alerts"]) == 2 and body["truncatedAlerts"] == 3
    assert body["commonLabels"]["alertname"] == "ToolFailureRateHigh"


def test_resend_groups_every_open_alert():
    state = ActiveAlerts()
    Batcher(state, Grouper()).plan([(alert(tool="a"), 0), (alert(tool="b"), 0), (alert(tenant="z"), 0),
                                    (alert(tenant="q", backfill=True), 0)])
    notes = Grouper().resend(state.paged())
    assert [(n.reason, n.group_labels["tenant"], len(n.alerts)) for n in notes] == [("resend", "acme", 2),
                                                                                  ("resend", "z", 1)]


# -- /api/v2/alerts ---------------------------------------------------------------------------------------------


def test_postable_firing_ends_a_few_intervals_ahead_and_resolved_in_the_past():
    now = T0 + 10 * MIN
    item = postable(alert(), now, 4 * MIN)
    assert set(item) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert parse_rfc3339(item["endsAt"]) == now + 4 * MIN
    assert item["startsAt"] == rfc3339(T0)
    done = postable(alert(RESOLVED), now, 4 * MIN)
    assert parse_rfc3339(done["endsAt"]) == T0 + 5 * MIN < now
    # a resolution stamped in the future (skewed producer clock) is clamped to now, or Alertmanager keeps it firing
    future = postable(alert(RESOLVED, ends=now + 60 * MIN), now, 4 * MIN)
    assert parse_rfc3339(future["endsAt"]) == now


# -- retries ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.OK), (204, Verdict.OK), (None, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY),
    (429, Verdict.RETRY), (408, Verdict.RETRY), (400, Verdict.REJECTED), (401, Verdict.REJECTED),
    (404, Verdict.REJECTED), (413, Verdict.REJECTED), (301, Verdict.REJECTED)])
def test_which_answers_are_retried(status, verdict):
    assert classify_status(status) is verdict


def test_backoff_grows_exponentially_with_bounded_jitter_and_a_cap():
    policy = RetryPolicy(base_s=1.0, factor=2.0, max_backoff_s=10.0, jitter=0.5)
    rng = random.Random(7)
    for retry, raw in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(raw * 0.5 <= d <= raw for d in delays)
        assert max(delays) - min(delays) > raw * 0.3  # jitter actually spreads them
    assert RetryPolicy(base_s=1.0, jitter=0.0).backoff(3) == 4.0


def test_gives_up_after_max_attempts_or_max_elapsed():
    policy = RetryPolicy(max_attempts=3, base_s=1.0, jitter=0.0, max_elapsed_s=100.0)
    assert policy.next_delay(1, 0.0) == 1.0
    assert policy.next_delay(2, 1.0) == 2.0
    assert policy.next_delay(3, 3.0) is None
    assert RetryPolicy(base_s=1.0, jitter=0.0, max_elapsed_s=5.0).next_delay(3, 2.0) is None  # 2 + 4 > 5


def test_retry_after_replaces_the_backoff_within_a_cap():
    policy = RetryPolicy(base_s=0.01, max_retry_after_s=30.0, max_elapsed_s=100.0)
    assert policy.next_delay(1, 0.0, 7.0) == 7.0
    assert policy.next_delay(1, 0.0, 3600.0) == 30.0
    assert policy.next_delay(1, 80.0, 30.0) is None


def test_parse_retry_after_seconds_and_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(datetime(2025, 1, 1, tzinfo=UTC), usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
