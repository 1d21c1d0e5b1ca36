"""Stage 2 without Kafka: readiness by watermarks, idempotent replacement, late partials, quiet tenants, restore."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from streams.aggregate import TenantWindowAggregate
from streams.merge import MergeStage, metrics_key
from streams.partials import (
    Marker,
    Partial,
    PartialsFormatError,
    decode,
    decode_items,
    encode_items,
    encode_marker,
    encode_partial,
    tenant_partition,
)
from streams.rules import RuleEngine
from streams.spike import SpikeDetector

US = 1_000_000
W = 60 * US
T0 = 1_767_225_600 * US


def partial(source: int, start: int, tenant: str = "acme", tools: tuple[tuple[str, str], ...] = (),
            n: int = 1) -> Partial:
    agg = TenantWindowAggregate(tenant, start, start + W)
    for i in range(n):
        agg.add_event({"event_id": uuid.uuid4().hex, "event_time": start + i, "tenant": tenant, "type": "turn_end",
                       "status": "ok", "duration_ms": 10})
    for tool, status in tools:
        agg.add_event({"event_time": start, "tenant": tenant, "type": "tool_complete", "tool_name": tool,
                       "status": status, "duration_ms": 5})
    return Partial(source, agg.to_record(final=False))


def stage(sources: int = 2, hop: int | None = None) -> MergeStage:
    return MergeStage(60, sources, 1, RuleEngine(), SpikeDetector(), hop_size_s=hop)


def test_partials_and_markers_round_trip() -> None:
    p = partial(1, T0)
    key, value = encode_partial(p)
    assert key == b"acme" and decode(value) == p
    m = Marker(2, T0, idle=False)
    assert decode(encode_marker(m)[1]) == m
    assert decode(encode_marker(Marker(0, None, idle=True))[1]) == Marker(0, None, idle=True)
    # one record per partials partition: its partials, then the marker, in order
    key, value = encode_items(1, [p, partial(1, T0, tenant="beta"), m])
    assert key == b"@stage1/1" and decode_items(value) == [p, partial(1, T0, tenant="beta"), m]
    # format 1 (one item per record, before batching) is still read
    v1 = json.dumps({"v": 1, "type": "marker", "source_partition": 2, "watermark_us": T0, "idle": False})
    assert decode_items(v1.encode()) == [m]
    with pytest.raises(PartialsFormatError, match="one item"):
        decode(value)
    for bad in (b"", b"{", b'{"v": 9}', b'{"v": 1, "type": "x", "source_partition": 0}', b'{"v": 2}',
                b'{"v": 2, "items": [1]}', b'{"v": 2, "items": [{"type": "marker"}]}'):
        with pytest.raises(PartialsFormatError):
            decode(bad)
    assert {tenant_partition("acme", 6) for _ in range(3)} == {tenant_partition("acme", 6)}
    assert len({tenant_partition(f"t{i}", 6) for i in range(100)}) == 6


def test_window_is_final_only_when_every_source_watermark_passed_it() -> None:
    s = stage(sources=2)
    assert not s.handle(0, partial(0, T0, n=3)).metrics
    assert not s.handle(0, partial(1, T0, n=4)).metrics
    assert not s.handle(0, Marker(0, T0 + W)).metrics  # source 1 has not said anything yet
    assert not s.handle(0, Marker(1, T0)).metrics  # source 1 is not past the window's end yet
    out = s.handle(0, Marker(1, T0 + W))
    assert len(out.metrics) == 1 and out.metrics[0]["turns"] == 7 and out.metrics[0]["final"] is True
    assert metrics_key(out.metrics[0]) == f"acme|{T0}|{T0 + W}".encode()
    assert not s.handle(0, Marker(1, T0 + W)).metrics  # the same marker again: nothing new


def test_redelivered_partial_replaces_and_late_one_is_dropped() -> None:
    s = stage(sources=2)
    s.handle(0, partial(0, T0, n=3))
    s.handle(0, partial(0, T0, n=3))  # a redelivery (same source, same window): replaces, never adds
    s.handle(0, Marker(1, None, idle=True))
    out = s.handle(0, Marker(0, T0 + W))
    assert [m["turns"] for m in out.metrics] == [3]
    late = s.handle(0, partial(1, T0, n=5))  # the idle source woke up with data for a final window
    assert late.late_partials == 1 and not late.metrics


def test_finals_come_in_window_order_and_results_do_not_depend_on_arrival_order() -> None:
    a, b = stage(sources=2), stage(sources=2)
    items = [partial(0, T0, n=2), partial(1, T0, n=5), partial(0, T0 + W, n=1), partial(1, T0 + W, n=9),
             Marker(0, T0 + 2 * W), Marker(1, T0 + 2 * W)]
    out_a = [m for it in items for m in a.handle(0, it).metrics]
    out_b = [m for it in [items[3], items[1], items[2], items[0], items[5], items[4]] for m in b.handle(0, it).metrics]
    assert [(m["window_start_us"], m["turns"]) for m in out_a] == [(T0, 7), (T0 + W, 10)]
    assert out_a == out_b


def test_hopping_window_merges_the_tumbling_finals_of_its_span() -> None:
    s = stage(sources=1, hop=180)
    out = []
    for k in range(4):
        out += s.handle(0, partial(0, T0 + k * W, n=k + 1)).metrics
        out += s.handle(0, Marker(0, T0 + (k + 1) * W)).metrics
    hops = [m for m in out if m["window_end_us"] - m["window_start_us"] == 180 * US]
    assert [(m["window_start_us"], m["turns"]) for m in hops] == [
        (T0 - 2 * W, 1), (T0 - W, 3), (T0, 6), (T0 + W, 9)]


def test_open_alert_of_a_tenant_that_went_quiet_resolves_after_stale_windows() -> None:
    s = stage(sources=1)
    failing = tuple(("search", "error") for _ in range(30))
    out = s.handle(0, partial(0, T0, tools=failing))
    out = s.handle(0, Marker(0, T0 + W))
    fired = {(a.alertname, a.status) for a in out.alerts}
    assert ("ToolFailureRateHigh", "firing") in fired
    # the tenant sends nothing more; the watermark moves on (other tenants' traffic, or the heartbeat)
    out = s.handle(0, Marker(0, T0 + 5 * W))
    assert not out.alerts and not out.metrics  # 4 empty windows: not stale yet (stale_windows 5), no records
    out = s.handle(0, Marker(0, T0 + 6 * W))
    assert {(a.alertname, a.status) for a in out.alerts} == {("ToolFailureRateHigh", "resolved")}
    assert all(a.annotations["resolve_reason"] == "no_data" for a in out.alerts)
    assert not s.handle(0, Marker(0, T0 + 20 * W)).alerts


def test_state_pairs_restore_pending_watermarks_and_detectors() -> None:
    s = stage(sources=2)
    failing = tuple(("search", "error") for _ in range(30))
    s.handle(0, partial(0, T0, tools=failing))
    s.handle(0, partial(1, T0, n=2))
    s.handle(0, Marker(0, T0 + W))
    s.handle(0, Marker(1, T0 + W))  # fires ToolFailureRateHigh
    s.handle(0, partial(0, T0 + W, n=4))  # pending for the next window
    pairs = s.state_changes(0)
    kinds = [k.split("|")[0] for k, _ in pairs]
    # upserts of pending partials, watermarks, tenants, then deletes of the finalized partials
    assert kinds.index("w") > kinds.index("p") and kinds.index("t") > kinds.index("w")
    assert all(v is None for k, v in pairs[kinds.index("t") + 1:])
    table = {k: json.loads(json.dumps(v)) for k, v in pairs if v is not None}
    restored = stage(sources=2)
    restored.restore(0, table.items())
    assert restored.watermark(0) == T0 + W
    for st in (s, restored):  # both continue identically: the window closes, the alert stays open
        st.handle(0, partial(1, T0 + W, n=1))
    a = s.handle(0, Marker(0, T0 + 2 * W)).metrics + s.handle(0, Marker(1, T0 + 2 * W)).metrics
    b = restored.handle(0, Marker(0, T0 + 2 * W)).metrics + restored.handle(0, Marker(1, T0 + 2 * W)).metrics
    assert a == b and [m["turns"] for m in a] == [5]
    assert s.rules.firing() == restored.rules.firing() == [("ToolFailureRateHigh", "acme", None),
                                                           ("ToolFailureRateHighPerTool", "acme", "search")]


def test_restore_drops_partials_of_windows_already_final() -> None:
    s = stage(sources=1)
    s.handle(0, partial(0, T0, n=2))
    early = dict(s.state_changes(0))  # the partial is written ...
    s.handle(0, Marker(0, T0 + W))  # ... then the window is finalized, and the crash comes after the tenant state
    later = [(k, v) for k, v in s.state_changes(0) if v is not None]
    table: dict[str, Any] = {**early, **dict(later)}
    restored = stage(sources=1)
    restored.restore(0, table.items())
    assert not restored.handle(0, Marker(0, T0 + 2 * W)).metrics  # not finalized twice
    assert restored.state_changes(0)[-1] == (f"p|acme|{T0}|0", None)  # and the stale partial is deleted


def test_cost_rules_through_stage_two_and_a_restore() -> None:
    """Budget and per-user spend fed by real window records; the state pairs carry them over a restart; the
    budget alert of a tenant that went quiet resolves when its UTC day is over (empty windows)."""
    from schemas.pricing import default_prices
    from streams.rules import BudgetSpec, UserSpendSpec

    day_end = T0 + 86_400 * US  # T0 is a UTC midnight
    start = day_end - 3 * W

    def spending(source: int, at: int) -> Partial:
        agg = TenantWindowAggregate("acme", at, at + W)
        for user, p in (("ann", 1_000_000), ("bob", 100_000)):
            agg.add_event({"event_time": at, "tenant": "acme", "type": "llm_call_completed", "model": "gpt-4o",
                           "status": "ok", "prompt_tokens": p, "completion_tokens": 0, "user_id": user})
        return Partial(source, agg.to_record(final=False))

    ann_usd = default_prices().cost_nusd("gpt-4o", start, 1_000_000, 0) / 1e9  # $2.50
    assert ann_usd == 2.5

    def make() -> MergeStage:
        rules = RuleEngine([], budget=BudgetSpec(daily_usd=4.0), user_spend=UserSpendSpec(4.0, 4.0, 60))
        return MergeStage(60, 1, 1, rules, SpikeDetector())

    s = make()
    s.handle(0, spending(0, start))
    assert not s.handle(0, Marker(0, start + W)).alerts  # $2.75 spent today, ann $2.50
    table = {k: json.loads(json.dumps(v)) for k, v in s.state_changes(0) if v is not None}
    restarted = make()
    restarted.restore(0, table.items())
    restarted.handle(0, spending(0, start + W))
    out = restarted.handle(0, Marker(0, start + 2 * W))
    fired = sorted((a.alertname, a.labels.get("user", "")) for a in out.alerts if a.status == "firing")
    assert fired == [("DailyCostBudgetExceeded", ""), ("UserSpendHigh", "ann")]  # $5.50 > $4; ann $5 > $4
    out = restarted.handle(0, Marker(0, day_end + 2 * W))  # quiet: empty windows into the next UTC day
    assert ("DailyCostBudgetExceeded", "resolved") in {(a.alertname, a.status) for a in out.alerts}
