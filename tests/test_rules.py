"""Threshold rules on crafted window sequences: thresholds, volume guards, persistence, hysteresis, config."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.alerts import FIRING, RESOLVED, Alert
from streams.heavy_hitters import SpaceSaving
from streams.rules import (
    DAY_US,
    BudgetSpec,
    RuleEngine,
    RulesConfigError,
    RuleSet,
    ToolCounts,
    UserSpendSpec,
    WindowMetrics,
    load_budget,
    load_rules,
    load_user_spend,
)

T0 = 1_764_064_800_000_000  # 2025-11-25T10:00:00Z, a minute boundary
MIN = 60_000_000


DEFAULT_RULES = load_rules().rules


def win(i: int, tenant: str = "acme", **counts) -> WindowMetrics:
    """Window ``i`` (one minute) of ``tenant``; keyword args are WindowMetrics counters."""
    tools = counts.pop("tools", {})
    return WindowMetrics(tenant, T0 + i * MIN, T0 + (i + 1) * MIN,
                         tools={k: ToolCounts(*v) for k, v in tools.items()}, **counts)


def failures(i: int, calls: int, failed: int, tenant: str = "acme") -> WindowMetrics:
    return win(i, tenant, tool_calls=calls, tool_failures=failed)


def engine(**overrides) -> RuleEngine:
    """The default rules, with per-rule field overrides as ``{rule name: {field: value}}``."""
    return RuleEngine([dataclasses.replace(r, **overrides.get(r.name, {})) for r in DEFAULT_RULES])


def run(eng: RuleEngine, windows: list[WindowMetrics]) -> list[tuple[int, str, str, dict[str, str]]]:
    """(window index, alertname, status, labels) of every transition."""
    out = []
    for w in windows:
        for a in eng.evaluate(w):
            out.append(((w.window_start_us - T0) // MIN, a.alertname, a.status, a.labels))
    return out


def statuses(eng: RuleEngine, windows: list[WindowMetrics], alertname: str = "ToolFailureRateHigh"):
    return [(i, status) for i, name, status, _ in run(eng, windows) if name == alertname]


# -- thresholds -------------------------------------------------------------------------------------------------


def test_exactly_at_the_threshold_does_not_fire_just_above_does():
    assert statuses(engine(), [failures(0, 20, 2)]) == []  # 2/20 = 10 % exactly
    assert statuses(engine(), [failures(0, 200, 20)]) == []  # 10 % at a larger volume
    assert statuses(engine(), [failures(0, 200, 21)]) == [(0, FIRING)]  # 10.5 %
    assert statuses(engine(), [failures(0, 20, 3)]) == [(0, FIRING)]


def test_volume_one_below_the_guard_gives_no_verdict():
    assert statuses(engine(), [failures(0, 19, 19)]) == []  # 100 % failures, but 19 < 20 calls
    assert statuses(engine(), [failures(0, 20, 19)]) == [(0, FIRING)]


def test_below_the_guard_the_state_stays_as_it_is():
    # pending run of 2 is neither broken nor advanced by a low-volume window
    eng = engine(ToolFailureRateHigh={"for_windows": 2})
    assert statuses(eng, [failures(0, 50, 25), failures(1, 5, 0), failures(2, 50, 25)]) == [(2, FIRING)]
    # an open alert is not resolved by a low-volume window with no failures
    eng = engine()
    assert statuses(eng, [failures(0, 50, 25), failures(1, 19, 0)]) == [(0, FIRING)]
    assert eng.firing() == [("ToolFailureRateHigh", "acme", None)]


def test_persistence_n_minus_one_vs_n_windows():
    seq = [failures(i, 100, 30) for i in range(3)]
    eng = engine(ToolFailureRateHigh={"for_windows": 3})
    assert statuses(eng, seq[:2]) == []
    fired = eng.evaluate(seq[2])
    assert [(a.alertname, a.status) for a in fired] == [("ToolFailureRateHigh", FIRING)]
    assert fired[0].starts_at_us == T0  # the start of the first breaching window, not of the third


def test_a_non_breaching_window_breaks_a_pending_run():
    eng = engine(ToolFailureRateHigh={"for_windows": 2})
    seq = [failures(0, 100, 30), failures(1, 100, 8), failures(2, 100, 30), failures(3, 100, 30)]
    assert statuses(eng, seq) == [(3, FIRING)]


def test_hysteresis_between_resolve_and_fire_stays_firing_then_resolves():
    eng = engine()
    seq = [
        failures(0, 100, 15),  # 15 % fires
        failures(1, 100, 8),  # 8 %: between 7 and 10, stays firing
        failures(2, 100, 7),  # exactly 7 %: not below the resolve threshold
        failures(3, 100, 12),  # breaching again while open: no second firing transition
        failures(4, 200, 13),  # 6.5 % resolves
    ]
    assert statuses(eng, seq) == [(0, FIRING), (4, RESOLVED)]
    assert eng.firing() == []


def test_resolved_alert_carries_the_lifecycle_fields():
    eng = engine()
    (fired,) = eng.evaluate(failures(0, 100, 15))
    assert eng.evaluate(failures(1, 100, 9)) == []
    (resolved,) = eng.evaluate(failures(2, 100, 1))
    assert fired.labels == resolved.labels == {"alertname": "ToolFailureRateHigh", "tenant": "acme",
                                               "severity": "warning"}
    assert fired.fingerprint == resolved.fingerprint
    assert fired.ends_at == "0001-01-01T00:00:00Z" and fired.starts_at == "2025-11-25T10:00:00Z"
    assert resolved.starts_at == fired.starts_at and resolved.ends_at == "2025-11-25T10:03:00Z"
    assert (fired.value, fired.threshold) == (0.15, 0.10)
    assert (resolved.value, resolved.threshold) == (0.01, 0.07)
    assert "15.0%" in fired.annotations["summary"] and "10%" in fired.annotations["summary"]
    assert "15/100" in fired.annotations["summary"]
    assert "1.0%" in resolved.annotations["summary"] and resolved.annotations["resolve_reason"] == "recovered"
    assert fired.annotations["description"] == "Tools broken or misconfigured."
    assert (fired.window_start_us, fired.window_end_us) == (T0, T0 + MIN)
    assert (resolved.window_start_us, resolved.window_end_us) == (T0 + 2 * MIN, T0 + 3 * MIN)


def test_per_tool_failure_labels():
    eng = engine()
    w = win(0, tool_calls=130, tool_failures=10, tools={"search": (30, 10), "read_file": (100, 0)})
    alerts = eng.evaluate(w)  # tenant-wide 7.7 % does not fire; search alone is 33 %
    assert [(a.status, a.labels) for a in alerts] == [
        (FIRING, {"alertname": "ToolFailureRateHigh", "tenant": "acme", "severity": "warning", "tool": "search"}),
    ]
    assert "tool search" in alerts[0].annotations["summary"]
    assert alerts[0].annotations["description"] == "Tool search is broken or misconfigured."
    # the same alertname for the tenant as a whole is a different alert (different labels, fingerprint)
    both = engine().evaluate(win(0, tool_calls=40, tool_failures=20, tools={"search": (40, 20)}))
    assert sorted(a.labels.get("tool", "-") for a in both) == ["-", "search"]
    assert len({a.fingerprint for a in both}) == 2


def test_a_tool_that_stops_being_called_resolves_after_stale_windows():
    eng = engine()
    seq = [win(0, tool_calls=40, tool_failures=20, tools={"search": (40, 20)})]
    seq += [win(i, tool_calls=100, tool_failures=0, tools={"read_file": (100, 0)}) for i in range(1, 7)]
    transitions = [(i, s, labels.get("tool")) for i, name, s, labels in run(eng, seq)]
    # tenant-wide: clears at once on 0 % ; per tool: no calls means no verdict, resolved after 5 such windows
    assert transitions == [(0, FIRING, None), (0, FIRING, "search"), (1, RESOLVED, None), (5, RESOLVED, "search")]
    (expired,) = [a for a in _replay(seq) if a.status == RESOLVED and a.labels.get("tool") == "search"]
    assert expired.annotations["resolve_reason"] == "no_data" and expired.value is None


def _replay(seq: list[WindowMetrics]) -> list[Alert]:
    eng = engine()
    return [a for w in seq for a in eng.evaluate(w)]


def test_cache_rule_fires_when_low_and_resolves_when_high():
    eng = engine()
    seq = [
        win(0, prompt_tokens=100_000, cache_read_tokens=80_000),  # 80 %: fine
        win(1, prompt_tokens=100_000, cache_read_tokens=30_000),  # exactly 30 %: no fire
        win(2, prompt_tokens=100_000, cache_read_tokens=29_999),  # below 30 %: fires
        win(3, prompt_tokens=100_000, cache_read_tokens=35_000),  # between 30 and 40: stays
        win(4, prompt_tokens=100_000, cache_read_tokens=40_000),  # exactly 40 %: stays
        win(5, prompt_tokens=100_000, cache_read_tokens=45_000),  # above 40 %: resolves
    ]
    assert statuses(eng, seq, "CacheHitRateLow") == [(2, FIRING), (5, RESOLVED)]
    assert statuses(engine(), [win(0, prompt_tokens=49_999, cache_read_tokens=0)], "CacheHitRateLow") == []


@pytest.mark.parametrize(("alertname", "bad", "at_threshold", "below_guard"), [
    ("LLM5xxRateHigh", dict(llm_attempts=100, llm_5xx=3), dict(llm_attempts=100, llm_5xx=2),
     dict(llm_attempts=99, llm_5xx=50)),
    ("MaxIterationsRateHigh", dict(turns=20, max_iterations_hits=2), dict(turns=20, max_iterations_hits=1),
     dict(turns=19, max_iterations_hits=19)),
    ("ConfirmTimeoutRateHigh", dict(confirm_allows=15, confirm_rejects=2, confirm_timeouts=3),
     dict(confirm_allows=16, confirm_rejects=2, confirm_timeouts=2),
     dict(confirm_requests=100, confirm_allows=10, confirm_timeouts=9)),
])
def test_each_seed_rule(alertname, bad, at_threshold, below_guard):
    assert statuses(engine(), [win(0, **bad)], alertname) == [(0, FIRING)]
    assert statuses(engine(), [win(0, **at_threshold)], alertname) == []
    assert statuses(engine(), [win(0, **below_guard)], alertname) == []


def test_only_the_breached_rule_fires():
    w = win(0, tool_calls=100, tool_failures=1, llm_attempts=200, llm_5xx=20, turns=50,
            prompt_tokens=500_000, cache_read_tokens=400_000, confirm_allows=30)
    assert [(name, s) for _, name, s, _ in run(engine(), [w])] == [("LLM5xxRateHigh", FIRING)]


def test_tenants_are_independent():
    eng = engine()
    seq = [failures(0, 100, 50, "a"), failures(0, 100, 0, "b"), failures(1, 100, 0, "a")]
    assert [(i, s, labels["tenant"]) for i, _, s, labels in run(eng, seq)] == [(0, FIRING, "a"), (1, RESOLVED, "a")]


# -- order, re-delivery, backfill, state ------------------------------------------------------------------------


def test_redelivered_or_older_windows_are_ignored():
    eng = engine()
    assert len(eng.evaluate(failures(1, 100, 50))) == 1
    assert eng.evaluate(failures(1, 100, 50)) == []  # the same final result delivered again
    assert eng.evaluate(failures(0, 100, 0)) == []  # an older window, even one that would resolve
    assert eng.firing() == [("ToolFailureRateHigh", "acme", None)]
    assert [a.status for a in eng.evaluate(failures(2, 100, 0))] == [RESOLVED]


def test_backfill_alerts_are_marked():
    eng = engine()
    (a,) = eng.evaluate(failures(0, 100, 50), backfill=True)
    assert a.backfill is True and a.to_record()["backfill"] is True
    (b,) = eng.evaluate(failures(1, 100, 0))
    assert b.backfill is False


def _sequence() -> list[WindowMetrics]:
    rows = []
    for i, rate in enumerate([0, 15, 15, 9, 12, 5, 0, 30, 30, 30, 8, 2]):
        rows.append(win(i, "acme", tool_calls=100, tool_failures=rate, tools={"search": (50, rate)},
                        llm_attempts=100, llm_5xx=rate // 5, prompt_tokens=100_000,
                        cache_read_tokens=100_000 - rate * 5000))
        rows.append(win(i, "beta", tool_calls=30, tool_failures=3 * (i % 3)))
    return rows


@pytest.mark.parametrize("cut", [1, 5, 10, 17])
def test_snapshot_restore_mid_sequence_yields_the_same_transitions(cut):
    seq = _sequence()
    overrides = {"ToolFailureRateHigh": {"for_windows": 2}}
    ref = engine(**overrides)
    whole = [a.to_record() for w in seq for a in ref.evaluate(w)]
    assert len(whole) >= 6  # the sequence does exercise firing and resolving

    first = engine(**overrides)
    got = [a.to_record() for w in seq[:cut] for a in first.evaluate(w)]
    snap = json.loads(json.dumps(first.snapshot()))  # through JSON, as a table would store it
    second = engine(**overrides)
    second.restore(snap)
    got += [a.to_record() for w in seq[cut:] for a in second.evaluate(w)]
    assert got == whole

    # per-tenant snapshots (a table keyed by tenant) restore the same way
    third = engine(**overrides)
    part = [a.to_record() for w in seq[:cut] for a in third.evaluate(w)]
    fourth = engine(**overrides)
    for tenant in third.tenants():
        fourth.restore_tenant(tenant, json.loads(json.dumps(third.snapshot_tenant(tenant))))
    part += [a.to_record() for w in seq[cut:] for a in fourth.evaluate(w)]
    assert part == whole


def test_snapshot_keeps_only_pending_or_firing_keys():
    eng = engine()
    eng.evaluate(win(0, tool_calls=100, tool_failures=0, tools={f"t{i}": (100, 0) for i in range(50)}))
    assert eng.snapshot_tenant("acme") == {"last_window_end_us": T0 + MIN, "keys": []}
    eng.evaluate(win(1, tool_calls=100, tool_failures=50, tools={"t1": (100, 50)}))
    keys = eng.snapshot_tenant("acme")["keys"]
    assert [(k["rule"], k["tool"]) for k in keys] == [("ToolFailureRateHigh", None),
                                                      ("ToolFailureRateHighPerTool", "t1")]


def test_window_metrics_from_record():
    record = {
        "tenant": "acme", "window_start_us": T0, "window_end_us": T0 + MIN, "tool_calls": 40, "tool_failures": None,
        "tools": [{"tool": "search", "calls": 40, "failures": 20, "cancelled": 1}],
        "tokens_by_model": {"m1": 120}, "tokens_by_skill": {"code": 70}, "something_else": [1, 2],
    }
    m = WindowMetrics.from_record(record)
    assert (m.tenant, m.window_start_us, m.window_end_us, m.tool_calls, m.tool_failures) == ("acme", T0, T0 + MIN,
                                                                                             40, 0)
    assert m.tools == {"search": ToolCounts(40, 20)}
    assert m.tokens_by_model == {"m1": 120} and m.tokens_by_skill == {"code": 70}
    assert WindowMetrics.from_record({**record, "tools": {"search": {"calls": 3, "failures": 1}}}).tools == {
        "search": ToolCounts(3, 1)}
    with pytest.raises(ValueError, match="tenant"):
        WindowMetrics.from_record({"window_start_us": 0, "window_end_us": 1})
    # the engine takes the dict directly
    assert [a.labels.get("tool") for a in RuleEngine().evaluate(record)] == ["search"]


def test_reads_the_aggregators_window_record():
    """Contract with streams.aggregate: its WindowedMetrics record carries what the rules read."""
    from streams.aggregate import TenantWindowAggregate

    agg = TenantWindowAggregate("acme", T0, T0 + MIN)
    for i in range(40):
        agg.add_event({"type": "tool_complete", "tool_name": "search" if i < 25 else "read_file",
                       "status": "error" if i < 5 else "ok", "duration_ms": 10})
    for i in range(120):
        agg.add_event({"type": "llm_call_completed", "model": "m1", "status": "error" if i < 3 else "ok",
                       "http_status": 503 if i < 3 else None, "prompt_tokens": None if i < 3 else 1000,
                       "completion_tokens": None if i < 3 else 100, "cache_read_tokens": 0 if i < 3 else 200})
    for i in range(25):
        agg.add_event({"type": "turn_end", "status": "ok",
                       "incomplete_reason": "max_iterations" if i < 2 else None, "duration_ms": 100})
    for outcome in ["allow"] * 18 + ["timeout"] * 3:
        agg.add_event({"type": "confirm_resolved", "confirm_outcome": outcome})
    m = WindowMetrics.from_record(agg.to_record())
    assert (m.tool_calls, m.tool_failures, m.tools["search"]) == (40, 5, ToolCounts(25, 5))
    assert (m.llm_calls, m.llm_errors_5xx, m.llm_calls_without_usage) == (120, 3, 3)
    assert (m.prompt_tokens, m.completion_tokens, m.cache_read_tokens) == (117_000, 11_700, 23_400)
    assert m.tokens_by_model == {"m1": 128_700}
    assert (m.turns, m.max_iterations_hits, m.confirm_resolved, m.confirm_timeouts) == (25, 2, 21, 3)
    fired = {(a.alertname, a.labels.get("tool")) for a in RuleEngine().evaluate(m)}
    assert fired == {("ToolFailureRateHigh", None), ("ToolFailureRateHigh", "search"), ("LLM5xxRateHigh", None),
                     ("MaxIterationsRateHigh", None), ("CacheHitRateLow", None), ("ConfirmTimeoutRateHigh", None)}


def test_generator_url_template():
    eng = RuleEngine(generator_url="http://grafana/d/agents?var-tenant={tenant}&var-tool={tool}")
    (a,) = eng.evaluate(failures(0, 100, 50))
    assert a.generator_url == "http://grafana/d/agents?var-tenant=acme&var-tool="


# -- configuration ----------------------------------------------------------------------------------------------


def test_defaults_are_the_seeds_thresholds():
    rules = {r.name: r for r in load_rules().rules}
    assert {n: (r.op, r.fire) for n, r in rules.items()} == {
        "ToolFailureRateHigh": (">", 0.10), "ToolFailureRateHighPerTool": (">", 0.10),
        "LLM5xxRateHigh": (">", 0.02), "MaxIterationsRateHigh": (">", 0.05), "CacheHitRateLow": ("<", 0.30),
        "ConfirmTimeoutRateHigh": (">", 0.10),
    }
    assert rules["ToolFailureRateHighPerTool"].alertname == "ToolFailureRateHigh"
    assert rules["ToolFailureRateHighPerTool"].per == "tool"


def test_yaml_override_of_thresholds(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent("""
        defaults:
          for_windows: 2
        rules:
          - {name: ToolFailureRateHigh, fire: 0.20, resolve: 0.15, severity: page}
          - {name: CacheHitRateLow, enabled: false}
          - name: ToolCancelRate
            alertname: LLMErrorsAny
            metric: llm_5xx_rate
            op: ">"
            fire: 0.5
            resolve: 0.4
            min_volume: 10
            summary: "{value_pct:.0f}% of LLM calls failed for {subject}"
            labels: {team: agents}
    """))
    ruleset = load_rules(path)
    assert isinstance(ruleset, RuleSet) and ruleset.source == str(path)
    rules = {r.name: r for r in ruleset.rules}
    assert "CacheHitRateLow" not in rules
    tenant_rule = rules["ToolFailureRateHigh"]
    assert (tenant_rule.fire, tenant_rule.resolve, tenant_rule.severity, tenant_rule.min_volume) == (0.2, 0.15,
                                                                                                    "page", 20)
    assert rules["ToolFailureRateHighPerTool"].fire == 0.10  # untouched
    assert all(r.for_windows == 2 for r in rules.values())
    eng = RuleEngine(ruleset)
    assert statuses(eng, [failures(0, 100, 15), failures(1, 100, 15)]) == []  # 15 % no longer breaches
    assert statuses(eng, [failures(2, 100, 25), failures(3, 100, 25)]) == [(3, FIRING)]
    eng = RuleEngine(ruleset)
    assert eng.evaluate(win(0, llm_attempts=10, llm_5xx=6)) == []  # for_windows 2 (and 5xx > 2 % pending)
    alerts = {a.alertname: a for a in eng.evaluate(win(1, llm_attempts=10, llm_5xx=6))}
    assert alerts["LLMErrorsAny"].labels["team"] == "agents"
    assert alerts["LLMErrorsAny"].annotations["summary"] == "60% of LLM calls failed for tenant acme"


@pytest.mark.parametrize(("text", "message"), [
    ("rules: [ {name: X, fire: 0.1", r"not valid YAML at line \d+, column \d+"),
    ("- just a list", "top level must be a mapping"),
    ("version: 2", "version 2 is not supported"),
    ("rulez: []", r"unknown top-level keys \['rulez'\]"),
    ("rules: [{name: ToolFailureRateHigh, for_window: 3}]", r"ToolFailureRateHigh.*unknown keys \['for_window'\]"),
    ("rules: [{name: ToolFailureRateHigh, fire: abc}]", "fire must be a number between 0 and 1"),
    ("rules: [{name: ToolFailureRateHigh, fire: 10}]", "fire must be a number between 0 and 1"),
    ("rules: [{name: ToolFailureRateHigh, resolve: 0.2}]", r"with op '>' resolve \(0.2\) must be <= fire"),
    ("rules: [{name: CacheHitRateLow, resolve: 0.2}]", r"with op '<' resolve \(0.2\) must be >= fire"),
    ("rules: [{name: ToolFailureRateHigh, op: '>='}]", "op must be '>' or '<'"),
    ("rules: [{name: ToolFailureRateHigh, min_volume: 0}]", "min_volume must be an integer >= 1"),
    ("rules: [{name: ToolFailureRateHigh, for_windows: 1.5}]", "for_windows must be an integer >= 1"),
    ("rules: [{name: LLM5xxRateHigh, per: tool}]", "has no per-tool breakdown"),
    ("rules: [{name: New, metric: tool_failure_rate}]", r"rules\[0\] \(New\): missing required key 'op'"),
    ("rules: [{name: New, metric: tokens, op: '>', fire: 0.1, resolve: 0.1, min_volume: 1, summary: x}]",
     "metric 'tokens' is unknown"),
    ("rules: [{name: ToolFailureRateHigh, summary: 'rate {valeu}'}]", r"unknown placeholders \['valeu'\]"),
    ("rules: [{name: ToolFailureRateHigh, summary: 'rate {value:%%}'}]", "cannot be rendered"),
    ("rules: [{name: ToolFailureRateHigh, labels: {tenant: x}}]", "set by the engine"),
    ("rules: [{name: 'bad name'}]", "name must be an identifier"),
    ("rules: [{name: A1, enabled: false}, {name: A1, enabled: false}]", "appears twice"),
    ("defaults: {fire: 0.5}", r"defaults: unknown keys \['fire'\]"),
])
def test_invalid_yaml_gives_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RulesConfigError, match=message) as err:
        load_rules(path)
    assert str(path) in str(err.value)


def test_missing_rules_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesConfigError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")


# -- daily cost budget -------------------------------------------------------------------------------------------

USD = 1_000_000_000  # nano-USD
DAY0 = T0 - T0 % DAY_US  # 2025-11-25T00:00:00Z
PER_DAY = DAY_US // MIN


def spend(i: int, cost_usd: float, tenant: str = "acme", unpriced: int = 0) -> WindowMetrics:
    """Window ``i`` minutes after midnight of DAY0, costing ``cost_usd``."""
    return WindowMetrics(tenant, DAY0 + i * MIN, DAY0 + (i + 1) * MIN, cost_nusd=round(cost_usd * USD),
                         llm_calls_unpriced=unpriced)


def budget_engine(daily: float | None = 10.0, **tenants: float | None) -> RuleEngine:
    return RuleEngine([], budget=BudgetSpec(daily_usd=daily, tenants=tuple(sorted(tenants.items()))))


def test_budget_fires_once_above_the_daily_spend_and_resolves_when_the_utc_day_is_over():
    eng = budget_engine(10.0)
    assert eng.evaluate(spend(0, 4)) == [] and eng.evaluate(spend(1, 6)) == []  # exactly 10: not above
    (fired,) = eng.evaluate(spend(2, 0.000000001, unpriced=3))
    assert (fired.status, fired.labels) == (FIRING, {"alertname": "DailyCostBudgetExceeded", "tenant": "acme",
                                                     "severity": "warning"})
    assert (fired.value, fired.threshold, fired.starts_at_us) == (10.000000001, 10.0, DAY0 + 2 * MIN)
    ann = fired.annotations
    assert (ann["spend_usd"], ann["budget_usd"], ann["day"], ann["llm_calls_unpriced"]) == (
        "10.000000", "10.000000", "2025-11-25", "3")
    assert "$10.00" in ann["summary"] and "unpriced" in ann["summary"]
    assert eng.evaluate(spend(3, 50)) == []  # one page per tenant and day
    (resolved,) = eng.evaluate(spend(PER_DAY + 5, 1))  # the next UTC day
    assert (resolved.status, resolved.ends_at_us, resolved.fingerprint) == (RESOLVED, DAY0 + DAY_US,
                                                                             fired.fingerprint)
    assert resolved.annotations["resolve_reason"] == "day_over" and resolved.annotations["spend_usd"] == "60.000000"
    assert eng.evaluate(spend(PER_DAY + 6, 9)) == []  # a new day starts from zero: 1 + 9 = 10, not above
    assert [a.status for a in eng.evaluate(spend(PER_DAY + 7, 0.01))] == [FIRING]


def test_per_tenant_budgets_override_the_default_and_null_means_none():
    eng = budget_engine(10.0, big=100.0, internal=None)
    out = [a.labels["tenant"] for t in ("acme", "big", "internal") for a in eng.evaluate(spend(0, 50, t))]
    assert out == ["acme"]
    only_listed = budget_engine(None, big=1.0)
    assert [a.labels["tenant"] for t in ("acme", "big") for a in only_listed.evaluate(spend(0, 5, t))] == ["big"]
    assert BudgetSpec().active is False and BudgetSpec(daily_usd=0).budget_nusd("x") == 0


def test_late_cost_of_today_counts_and_fires_with_the_next_window():
    eng = budget_engine(10.0)
    eng.evaluate(spend(0, 9))
    before, after = spend(0, 9), spend(0, 12)  # a revision of window 0 adds $3
    assert eng.revision_alerts(before, after, 1) == []
    assert [a.status for a in eng.evaluate(spend(1, 0))] == [FIRING]
    eng.revision_alerts(None, spend(PER_DAY * 3, 100), 1)  # another day's late window: not today's spend
    assert eng.snapshot_tenant("acme")["budget"][1] == 12 * USD


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(min_value=0, max_value=4 * USD), min_size=1, max_size=40),
       gaps=st.lists(st.sampled_from([1, 1, 1, 300, PER_DAY]), min_size=40, max_size=40),
       cut=st.integers(min_value=0, max_value=40))
def test_budget_state_survives_a_restart_at_any_window(costs: list[int], gaps: list[int], cut: int):
    """Snapshot (JSON, as the changelog table holds it), a fresh engine, restore: the same alerts as no restart."""
    windows, i = [], 0
    for c, g in zip(costs, gaps, strict=False):
        windows.append(WindowMetrics("acme", DAY0 + i * MIN, DAY0 + (i + 1) * MIN, cost_nusd=c))
        i += g
    straight = budget_engine(5.0)
    want = [(a.status, a.starts_at_us, a.value) for w in windows for a in straight.evaluate(w)]
    first = budget_engine(5.0)
    got = [(a.status, a.starts_at_us, a.value) for w in windows[:cut] for a in first.evaluate(w)]
    second = budget_engine(5.0)
    snap = first.snapshot_tenant("acme")
    second.restore_tenant("acme", json.loads(json.dumps(snap)) if snap is not None else None)
    got += [(a.status, a.starts_at_us, a.value) for w in windows[cut:] for a in second.evaluate(w)]
    assert got == want
    total_by_day: dict[int, int] = {}
    for w in windows:
        total_by_day[w.window_start_us // DAY_US] = total_by_day.get(w.window_start_us // DAY_US, 0) + w.cost_nusd
    assert sum(s == FIRING for s, _, _ in want) == sum(v > 5 * USD for v in total_by_day.values())


def test_budget_config_from_the_rules_file(tmp_path):
    assert load_budget() is None  # packaged: no budget set
    assert load_rules().budget is None
    f = tmp_path / "rules.yaml"
    f.write_text("cost_budget: {daily_usd: 25, tenants: {acme: 100.5, free: null}, labels: {team: ai}}\n")
    spec = load_rules(f).budget
    assert spec is not None and (spec.budget_nusd("x"), spec.budget_nusd("acme"), spec.budget_nusd("free")) == (
        25 * USD, 100_500_000_000, None)
    eng = RuleEngine(load_rules(f))
    (a,) = eng.evaluate(spend(0, 26, "x"))
    assert a.labels["team"] == "ai"
    f.write_text("cost_budget: {daily_usd: 25, enabled: false}\n")
    assert load_rules(f).budget is None
    for bad, msg in (("cost_budget: {daily_usd: -1}", "daily_usd must be a number"),
                     ("cost_budget: {daily_usd: yes}", "daily_usd must be a number"),
                     ("cost_budget: {tenants: [a]}", "tenants must map"),
                     ("cost_budget: {tenants: {a: '5'}}", "tenants.a must be a number"),
                     ("cost_budget: {monthly_usd: 5}", "unknown keys ['monthly_usd']"),
                     ("cost_budget: {daily_usd: 1, labels: {tenant: x}}", "set by the engine")):
        f.write_text(bad + "\n")
        with pytest.raises(RulesConfigError, match="cost_budget") as info:
            load_rules(f)
        assert msg in str(info.value), (bad, str(info.value))


# -- per-user spend ------------------------------------------------------------------------------------------------


def users(i: int, spent: dict[str, float], tenant: str = "acme", capacity: int = 20) -> WindowMetrics:
    """Window ``i`` whose users spent ``spent`` (USD), as the aggregate's sketch reports it."""
    sketch = SpaceSaving(capacity)
    for user, usd in spent.items():
        sketch.add(user, round(usd * USD))
    return WindowMetrics.from_record({"tenant": tenant, "window_start_us": T0 + i * MIN,
                                      "window_end_us": T0 + (i + 1) * MIN, "top_spenders": sketch.to_record()})


def spend_engine(threshold: float = 10.0, resolve: float | None = None, minutes: int = 60) -> RuleEngine:
    return RuleEngine([], user_spend=UserSpendSpec(threshold, threshold if resolve is None else resolve, minutes))


def test_a_users_rolling_spend_above_the_threshold_fires_naming_the_user_and_resolves_when_it_rolls_off():
    eng = spend_engine(10.0, minutes=5)
    assert eng.evaluate(users(0, {"ann": 4, "bob": 1})) == []
    assert eng.evaluate(users(1, {"ann": 6, "bob": 1})) == []  # ann: exactly 10, not above
    (a,) = eng.evaluate(users(2, {"ann": 0.5, "bob": 1}))
    assert a.status == FIRING and a.labels == {"alertname": "UserSpendHigh", "tenant": "acme", "user": "ann",
                                                "severity": "warning"}
    assert (a.value, a.threshold, a.annotations["spend_usd"]) == (10.5, 10.0, "10.500000")
    assert "User ann of tenant acme spent at least $10.50" in a.annotations["summary"]
    assert eng.evaluate(users(3, {"bob": 1})) == [] and eng.evaluate(users(4, {})) == []
    (r,) = eng.evaluate(users(5, {}))  # window 0 (ann's $4) left the 5-minute span: $6.50 <= $10
    assert (r.status, r.labels["user"], r.fingerprint, r.ends_at_us) == (RESOLVED, "ann", a.fingerprint, T0 + 6 * MIN)


def test_only_certain_spend_fires_with_a_full_sketch():
    """With more users than the sketch keeps, a user is named only when its lower bound is above the threshold."""
    eng = spend_engine(10.0)
    crowd = {f"u{i}": 0.5 for i in range(40)} | {"whale": 11.0}
    (a,) = eng.evaluate(users(0, crowd, capacity=8))
    assert a.labels["user"] == "whale" and float(a.annotations["spend_usd"]) <= 11.0 <= float(
        a.annotations["spend_usd_upper"])


def test_user_spend_state_survives_a_restart():
    eng = spend_engine(10.0)
    eng.evaluate(users(0, {"ann": 6}))
    (a,) = eng.evaluate(users(1, {"ann": 6}))
    again = spend_engine(10.0)
    again.restore_tenant("acme", json.loads(json.dumps(eng.snapshot_tenant("acme"))))
    assert again.evaluate(users(2, {"ann": 1})) == []  # still open: no second page
    straight = spend_engine(10.0)
    for i, s in enumerate(({"ann": 6}, {"ann": 6}, {"ann": 1})):
        straight.evaluate(users(i, s))
    assert again.snapshot_tenant("acme") == straight.snapshot_tenant("acme")


def test_user_spend_config():
    assert load_user_spend() is None and load_rules().user_spend is None  # packaged: off


def test_user_spend_config_from_a_file(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("user_spend: {threshold_usd: 20, rolling_minutes: 30}\n")
    spec = load_rules(f).user_spend
    assert spec == UserSpendSpec(20.0, 20.0, 30)
    for bad, msg in (("user_spend: {threshold_usd: 5, resolve_usd: 6}", "must be <= threshold_usd"),
                     ("user_spend: {threshold_usd: 5, labels: {user: x}}", "set by the engine"),
                     ("user_spend: {threshold_usd: 5, rolling_minutes: 0}", "rolling_minutes"),
                     ("user_spend: {per_user: 5}", "unknown keys")):
        f.write_text(bad + "\n")
        with pytest.raises(RulesConfigError, match="user_spend") as info:
            load_rules(f)
        assert msg in str(info.value), (bad, str(info.value))
