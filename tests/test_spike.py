"""Token-spike detector on crafted sequences: warm-up, 2x / 1.5x thresholds, no-usage windows, contributors."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from streams.alerts import FIRING, RESOLVED
from streams.rules import RulesConfigError, WindowMetrics
from streams.spike import SpikeConfig, SpikeDetector, load_spike_config

T0 = 1_764_064_800_000_000  # 2025-11-25T10:00:00Z
MIN = 60_000_000

# Tokens per window only, small volume guard: most tests isolate one measure.
CFG = SpikeConfig(measures=("tokens",), baseline_windows=5, min_tokens=1_000)


def win(i: int, tokens: int, *, tenant: str = "acme", turns: int = 10, llm_calls: int = 10, no_usage: int = 0,
        models: dict[str, int] | None = None, skills: dict[str, int] | None = None) -> WindowMetrics:
    return WindowMetrics(tenant, T0 + i * MIN, T0 + (i + 1) * MIN, turns=turns, llm_calls=llm_calls,
                         llm_calls_without_usage=no_usage, prompt_tokens=tokens * 3 // 4,
                         completion_tokens=tokens - tokens * 3 // 4,
                         tokens_by_model={"m1": tokens} if models is None else models,
                         tokens_by_skill=skills or {})


def run(det: SpikeDetector, windows: list[WindowMetrics]) -> list[tuple[int, str]]:
    return [((w.window_start_us - T0) // MIN, a.status) for w in windows for a in det.evaluate(w)]


def history(n: int = 5, tokens: int = 10_000) -> list[WindowMetrics]:
    return [win(i, tokens) for i in range(n)]


def test_warm_up_not_yet_complete_gives_no_verdict():
    det = SpikeDetector(CFG)
    assert run(det, history(4) + [win(4, 100_000)]) == []  # only 4 windows of history
    det = SpikeDetector(CFG)
    assert run(det, history(5) + [win(5, 100_000)]) == [(5, FIRING)]


def test_exactly_two_times_fires_and_just_below_does_not():
    assert run(SpikeDetector(CFG), history() + [win(5, 20_000)]) == [(5, FIRING)]
    assert run(SpikeDetector(CFG), history() + [win(5, 19_900)]) == []  # 1.99x


def test_resolves_below_one_and_a_half_not_at_one_point_six():
    seq = history() + [win(5, 25_000), win(6, 16_000), win(7, 15_000), win(8, 14_999)]
    det = SpikeDetector(CFG)
    assert run(det, seq) == [(5, FIRING), (8, RESOLVED)]  # 1.6x and exactly 1.5x keep it open


def test_the_firing_alert_explains_itself():
    det = SpikeDetector(CFG)
    for w in history():
        det.evaluate(w)
    (a,) = det.evaluate(win(5, 26_000))
    assert a.labels == {"alertname": "TokenSpike", "tenant": "acme", "severity": "warning"}
    assert (a.value, a.threshold, a.starts_at_us, a.ends_at_us) == (2.6, 2.0, T0 + 5 * MIN, None)
    ann = a.annotations
    assert (ann["measure"], ann["current"], ann["baseline"], ann["ratio"]) == ("tokens", "26000", "10000", "2.60")
    assert ann["largest_contributor"] == "model:m1" and ann["largest_contributor_change"] == "+16000"
    assert "26,000" in ann["summary"] and "2.60x" in ann["summary"] and ">= 2x" in ann["summary"]
    assert "median of the last 5 windows" in ann["description"]
    (r,) = det.evaluate(win(6, 10_000))
    assert (r.status, r.value, r.threshold, r.ends_at_us) == (RESOLVED, 1.0, 1.5, T0 + 7 * MIN)
    assert r.fingerprint == a.fingerprint and r.starts_at_us == a.starts_at_us


def test_no_usage_windows_are_skipped_not_zeroed():
    no_usage = [win(i, 0, llm_calls=10, no_usage=10) for i in range(5, 8)]
    det = SpikeDetector(CFG)
    assert run(det, history() + no_usage + [win(8, 20_000)]) == [(8, FIRING)]  # baseline still 10,000
    # real zero-token windows (no LLM calls at all) are data: three of them pull the median to 0 -> no verdict
    zeros = [win(i, 0, llm_calls=0) for i in range(5, 8)]
    det = SpikeDetector(CFG)
    assert run(det, history() + zeros + [win(8, 20_000)]) == []
    assert det.snapshot_tenant("acme")["history"]["tokens"][-1][0] == 20_000  # admitted: not a breach, no verdict


def test_no_usage_windows_do_not_count_as_warm_up():
    no_usage = [win(i, 0, llm_calls=10, no_usage=10) for i in range(4, 10)]
    det = SpikeDetector(CFG)
    assert run(det, history(4) + no_usage + [win(10, 50_000)]) == []


def test_partial_usage_uses_what_was_reported_and_says_so():
    det = SpikeDetector(CFG)
    run(det, history())
    (a,) = det.evaluate(win(5, 30_000, llm_calls=10, no_usage=4))
    assert a.annotations["llm_calls_without_usage"] == "4"


def test_minimum_volume():
    cfg = dataclasses.replace(CFG, min_tokens=50_000)
    assert run(SpikeDetector(cfg), history(tokens=20_000) + [win(5, 49_999)]) == []  # 2.5x but too small
    assert run(SpikeDetector(cfg), history(tokens=20_000) + [win(5, 50_000)]) == [(5, FIRING)]


def test_largest_contributor_is_the_swapped_model():
    base = [win(i, 10_000, models={"gpt-4.1": 10_000}, skills={"code": 6_000, "search": 4_000}) for i in range(5)]
    spike = win(5, 25_000, models={"gpt-4.1-verbose": 25_000}, skills={"code": 15_000, "search": 10_000})
    det = SpikeDetector(CFG)
    run(det, base)
    (a,) = det.evaluate(spike)
    assert a.annotations["largest_contributor"] == "model:gpt-4.1-verbose"
    assert (a.annotations["largest_contributor_baseline"], a.annotations["largest_contributor_current"]) == ("0",
                                                                                                           "25000")
    assert "model gpt-4.1-verbose" in a.annotations["summary"]


def test_largest_contributor_can_be_a_skill():
    base = [win(i, 10_000, models={"m": 10_000}, skills={"code": 10_000}) for i in range(5)]
    spike = win(5, 30_000, models={"m": 30_000}, skills={"code": 8_000, "deep-research": 22_000})
    det = SpikeDetector(CFG)
    run(det, base)
    (a,) = det.evaluate(spike)
    assert a.annotations["largest_contributor"] == "skill:deep-research"  # +22,000 beats model m's +20,000


def test_a_long_anomaly_is_not_absorbed_into_the_baseline():
    seq = history() + [win(i, 25_000) for i in range(5, 20)]
    assert run(SpikeDetector(CFG), seq) == [(5, FIRING)]  # stays open for all 15 windows
    # opt-in absorption: after 3 open windows, windows enter the baseline and the median catches up
    det = SpikeDetector(dataclasses.replace(CFG, absorb_after_windows=3))
    transitions = run(det, seq)
    assert transitions[0] == (5, FIRING) and transitions[1][1] == RESOLVED and len(transitions) == 2


def test_tokens_per_turn_measure():
    cfg = SpikeConfig(measures=("tokens", "tokens_per_turn"), baseline_windows=5, min_tokens=1_000, min_turns=5)
    base = [win(i, 100_000, turns=10) for i in range(5)]
    # same tokens per window, half the turns: tokens per turn doubled
    det = SpikeDetector(cfg)
    run(det, base)
    (a,) = det.evaluate(win(5, 100_000, turns=5))
    assert a.annotations["measure"] == "tokens_per_turn" and a.annotations["ratio"] == "2.00"
    assert a.annotations["tokens_ratio"] == "1.00" and a.annotations["tokens_per_turn_baseline"] == "10000"
    # fewer turns than min_turns: no per-turn verdict
    det = SpikeDetector(cfg)
    run(det, base)
    assert det.evaluate(win(5, 100_000, turns=4)) == []
    # a model swap doubles both; one alert, the larger ratio explains it
    det = SpikeDetector(cfg)
    run(det, base)
    (b,) = det.evaluate(win(5, 260_000, turns=10))
    assert b.labels["alertname"] == "TokenSpike" and b.value == 2.6


def test_stale_windows_resolve_an_open_spike_when_usage_data_stops():
    seq = history() + [win(5, 30_000)] + [win(i, 0, llm_calls=10, no_usage=10) for i in range(6, 11)]
    det = SpikeDetector(CFG)
    assert run(det, seq) == [(5, FIRING), (10, RESOLVED)]


def test_redelivered_or_older_windows_are_ignored():
    det = SpikeDetector(CFG)
    run(det, history())
    assert len(det.evaluate(win(5, 30_000))) == 1
    assert det.evaluate(win(5, 30_000)) == []
    assert det.evaluate(win(4, 10_000)) == []
    assert det.firing() == ["acme"]


def test_backfill_flag():
    det = SpikeDetector(CFG)
    run(det, history())
    (a,) = det.evaluate(win(5, 30_000), backfill=True)
    assert a.backfill is True


def _sequence() -> list[WindowMetrics]:
    tokens = [10, 12, 9, 11, 10, 25, 30, 16, 11, 10, 0, 10, 31, 12, 10]
    rows = []
    for i, k in enumerate(tokens):
        rows.append(win(i, k * 1000, models={"a": k * 600, "b": k * 400}, skills={"s": k * 1000}))
        rows.append(win(i, 50_000 if i != 9 else 200_000, tenant="beta", no_usage=10 if i == 3 else 0))
    return rows


@pytest.mark.parametrize("cut", [3, 11, 14, 20])
def test_snapshot_restore_mid_sequence_yields_the_same_transitions(cut):
    cfg = dataclasses.replace(CFG, measures=("tokens", "tokens_per_turn"), min_turns=5)
    seq = _sequence()
    ref = SpikeDetector(cfg)
    whole = [a.to_record() for w in seq for a in ref.evaluate(w)]
    assert len(whole) >= 4
    first = SpikeDetector(cfg)
    got = [a.to_record() for w in seq[:cut] for a in first.evaluate(w)]
    second = SpikeDetector(cfg)
    second.restore(json.loads(json.dumps(first.snapshot())))
    got += [a.to_record() for w in seq[cut:] for a in second.evaluate(w)]
    assert got == whole


def test_defaults_come_from_the_packaged_rules_file():
    assert load_spike_config() == SpikeConfig()
    cfg = load_spike_config()
    assert (cfg.fire_ratio, cfg.resolve_ratio) == (2.0, 1.5)


def test_yaml_override_and_validation(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent("""
        token_spike:
          baseline_windows: 3
          measures: [tokens]
          min_tokens: 1000
          labels: {team: finops}
    """))
    cfg = load_spike_config(path)
    assert (cfg.baseline_windows, cfg.measures, cfg.fire_ratio) == (3, ("tokens",), 2.0)
    det = SpikeDetector(cfg)
    assert run(det, history(3) + [win(3, 20_000)]) == [(3, FIRING)]  # warm-up is 3 windows now
    assert det.evaluate(win(4, 10_000))[0].labels["team"] == "finops"
    for bad, message in [
        ("token_spike: {fire_ratio: 0}", "fire_ratio must be a number > 0"),
        ("token_spike: {resolve_ratio: 3}", r"resolve_ratio \(3.0\) must be <= fire_ratio"),
        ("token_spike: {baseline_window: 3}", r"unknown keys \['baseline_window'\]"),
        ("token_spike: {measures: [cost]}", "measures must be a non-empty list"),
        ("token_spike: {labels: {alertname: x}}", "set by the engine"),
        ("token_spike: [1]", "token_spike must be a mapping"),
    ]:
        path.write_text(bad)
        with pytest.raises(RulesConfigError, match=message):
            load_spike_config(path)


def test_disabled_detector_says_nothing():
    det = SpikeDetector(dataclasses.replace(CFG, enabled=False))
    assert run(det, history() + [win(5, 100_000)]) == []


def test_firing_alert_carries_the_windows_cost_and_the_baselines():
    det = SpikeDetector(SpikeConfig(baseline_windows=5, min_tokens=1_000, min_turns=5))
    for i in range(5):  # baseline: $0.10 per window (and $0.01 per turn), then a model swap costs 8x
        det.evaluate(dataclasses.replace(win(i, 10_000), cost_nusd=100_000_000 + i))
    (a,) = det.evaluate(dataclasses.replace(win(5, 30_000), cost_nusd=800_000_000, llm_calls_unpriced=2))
    ann = a.annotations
    unit = "_per_turn" if ann["measure"] == "tokens_per_turn" else ""
    per = 10 if unit else 1
    assert ann[f"cost{unit}_usd"] == f"{0.8 / per:.6f}"
    assert ann[f"cost{unit}_usd_baseline"] == f"{100_000_002 / 1e9 / per:.6f}"  # the median window
    assert ann["llm_calls_unpriced"] == "2" and "unpriced" in ann["summary"] and "cost $" in ann["summary"]


def test_spike_state_written_before_cost_existed_restores():
    det = SpikeDetector(CFG)
    for w in history():
        det.evaluate(w)
    snap = json.loads(json.dumps(det.snapshot_tenant("acme")))
    snap["history"] = {m: [o[:4] for o in h] for m, h in snap["history"].items()}
    fresh = SpikeDetector(CFG)
    fresh.restore_tenant("acme", snap)
    (a,) = fresh.evaluate(dataclasses.replace(win(5, 30_000), cost_nusd=5))
    assert a.annotations["cost_usd_baseline"] == "0.000000" and a.annotations["cost_usd"] == "0.000000"
