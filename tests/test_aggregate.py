"""Per-tenant window aggregates: what counts, merging, the label guard, records and their Avro codec."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from schemas import contract
from schemas.codec import DecodeError
from streams.aggregate import (
    OTHER,
    LabelGuard,
    TenantGuards,
    TenantWindowAggregate,
    TenantWindowOps,
    attempt_status,
    skill_of,
)
from streams.metrics_codec import MetricsCodec
from streams.windows import TumblingWindows, WindowEngine

S = 1_000_000
T0 = 1_767_225_600 * S
BLANK = dict.fromkeys(contract.event_field_names())


def ev(type_: str, **fields: Any) -> dict[str, Any]:
    """A decoded-looking AgentEvent: every contract field present, null unless given."""
    out = dict(BLANK)
    out.update(event_id="0" * 32, event_time=T0 + 1, producer_time=T0 + 1, tenant="acme", session_id="s", seq=1)
    out.update(type=type_, **fields)
    return out


def llm(model: str = "m1", p: int | None = 100, c: int | None = 10, **kw: Any) -> dict[str, Any]:
    kw.setdefault("status", "ok")
    return ev("llm_call_completed", model=model, prompt_tokens=p, completion_tokens=c, **kw)


def agg_of(events: list[dict[str, Any]], **kw: Any) -> TenantWindowAggregate:
    agg = TenantWindowAggregate("acme", T0, T0 + 60 * S, **kw)
    for e in events:
        agg.add_event(e)
    return agg


# -- definitions -----------------------------------------------------------------------------------------------


def test_turns_max_iterations_and_turn_duration() -> None:
    rec = agg_of(
        [
            ev("turn_begin"),
            ev("turn_end", status="ok", duration_ms=1000),
            ev("turn_end", status="error", duration_ms=3000),
            ev("turn_end", status="ok", duration_ms=2000, incomplete_reason="max_iterations"),
            ev("turn_end", status="ok", duration_ms=None, incomplete_reason="llm_error"),
        ]
    ).to_record()
    assert (rec["turns"], rec["max_iterations_hits"]) == (4, 1)
    assert rec["turns_by_status"] == {"error": 1, "ok": 3}
    assert rec["incomplete_reasons"] == {"llm_error": 1, "max_iterations": 1}
    assert rec["turn_duration"]["count"] == 3 and rec["turn_duration"]["sum"] == 6000
    assert abs(rec["turn_duration"]["p50"] - 2000) <= 20
    assert rec["events"] == 5 and rec["events_by_type"] == {"turn_begin": 1, "turn_end": 4}


def test_tool_calls_failures_and_durations_by_tool() -> None:
    rec = agg_of(
        [
            ev("tool_start", tool_name="read"),
            ev("tool_complete", tool_name="read", status="ok", duration_ms=10),
            ev("tool_complete", tool_name="read", status="error", duration_ms=30),
            ev("tool_complete", tool_name="shell", status="cancelled", duration_ms=0),
            ev("tool_result", tool_name="shell", status="cancelled"),
            ev("tool_complete", tool_name=None, status="ok", duration_ms=None),
        ]
    ).to_record()
    assert (rec["tool_calls"], rec["tool_failures"], rec["tool_cancelled"]) == (4, 1, 1)
    tools = {t["tool"]: t for t in rec["tools"]}
    assert list(tools) == ["read", "shell", "unknown"]  # sorted
    assert (tools["read"]["calls"], tools["read"]["failures"]) == (2, 1)
    assert tools["read"]["duration"]["count"] == 2 and tools["read"]["duration"]["max"] == 30
    assert tools["shell"]["duration"]["zero_count"] == 1 and tools["shell"]["cancelled"] == 1
    assert rec["tool_duration"]["count"] == 3 and rec["tool_duration"]["sum"] == 40


def test_tokens_null_usage_is_not_zero_tokens() -> None:
    rec = agg_of(
        [
            llm("m1", 1000, 50, cache_read_tokens=400, cache_creation_tokens=100, reasoning_tokens=7),
            llm("m1", None, None),  # provider sent no usage
            llm("m2", 0, 0),  # usage reported as zero: a call with usage
            llm("m2", 200, None),  # partial usage still counts as reported
        ]
    ).to_record()
    assert rec["llm_calls"] == 4 and rec["llm_calls_without_usage"] == 1
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cache_read_tokens"]) == (1200, 50, 400)
    assert (rec["cache_creation_tokens"], rec["reasoning_tokens"], rec["total_tokens"]) == (100, 7, 1250)
    assert rec["tokens_by_model"] == {"m1": 1050, "m2": 200}
    models = {m["label"]: m for m in rec["models"]}
    assert models["m1"]["llm_calls_without_usage"] == 1 and models["m2"]["llm_calls"] == 2
    assert rec["tokens_per_turn"] is None  # no turns


def test_llm_errors_attempts_and_5xx() -> None:
    rec = agg_of(
        [
            ev("llm_retry", http_status=503),  # a failed attempt, retried
            ev("llm_retry", http_status=None, error_class="RemoteProtocolError"),
            llm(status="error", p=None, c=None, http_status=503, error_class="InternalServerError"),
            llm(status="error", p=None, c=None, http_status=500, error_class="InternalServerError"),
            llm(status="error", p=None, c=None, http_status=429, error_class="RateLimitError"),
            llm(status="error", p=None, c=None, error_class="APIConnectionError"),
            llm(status="error", p=None, c=None),
            llm(status="ok"),
        ]
    ).to_record()
    assert (rec["llm_calls"], rec["llm_errors"], rec["llm_retries"], rec["llm_attempts"]) == (6, 5, 2, 8)
    assert rec["llm_5xx"] == 3 and rec["llm_errors_5xx"] == 2  # attempts vs final failures
    assert rec["llm_errors_by_type"] == {
        "APIConnectionError": 1,
        "InternalServerError": 2,
        "RateLimitError": 1,
        "unknown": 1,
    }
    assert rec["llm_failed_attempts_by_status"] == {
        "429": 1,
        "500": 1,
        "503": 2,
        "APIConnectionError": 1,
        "RemoteProtocolError": 1,
        "unknown": 1,
    }
    assert rec["llm_calls_without_usage"] == 5  # failed calls carry no usage
    assert attempt_status(302, "X") == "302" and attempt_status(None, None) == "unknown"


def test_confirmations_by_outcome_and_tokens_per_turn_and_skills() -> None:
    rec = agg_of(
        [
            ev("tool_confirmation", tool_name="shell"),
            ev("tool_confirmation", tool_name="shell"),
            ev("tool_confirmation", tool_name="write"),
            ev("confirm_resolved", confirm_outcome="allow"),
            ev("confirm_resolved", confirm_outcome="timeout"),
            ev("confirm_resolved", confirm_outcome="reject"),
            ev("confirm_resolved", confirm_outcome="allow"),
            llm(p=300, c=30, payload=json.dumps({"attempt": 1, "skill": "review"})),
            llm(p=100, c=10, payload=json.dumps({"attempt": 2})),
            llm(p=None, c=None, payload=json.dumps({"skill": "review"})),
            ev("turn_end", duration_ms=5),
            ev("turn_end", duration_ms=5),
        ]
    ).to_record()
    assert (rec["confirm_requests"], rec["confirm_allows"], rec["confirm_rejects"], rec["confirm_timeouts"]) == (
        3,
        2,
        1,
        1,
    )
    assert rec["tokens_per_turn"] == 440 / 2
    assert rec["tokens_by_skill"] == {"review": 330}
    assert [(s["label"], s["llm_calls"], s["llm_calls_without_usage"]) for s in rec["skills"]] == [("review", 2, 1)]


def test_skill_of_reads_only_a_real_skill_key() -> None:
    assert skill_of(json.dumps({"a": 1, "skill": "rev"})) == "rev"
    assert skill_of(json.dumps({"skill": 'with "quotes"'})) == 'with "quotes"'
    assert skill_of(json.dumps({"msg": 'the "skill": x', "skill": "ok"})) == "ok"
    assert skill_of(json.dumps({"kind": "skill"})) is None
    assert skill_of('{"skill": 5}') is None and skill_of('{"skill": ""}') is None


# -- merging ---------------------------------------------------------------------------------------------------


# priced flat, priced with a 200k-token tier, priced by time of day, and one without a price
MODEL_NAMES = ("gpt-4o-mini", "claude-sonnet-4-5", "deepseek-reasoner", "no-price-model")


def random_events(seed: int, n: int = 600, tools: int = 8, models: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = [MODEL_NAMES[i % len(MODEL_NAMES)] if i < len(MODEL_NAMES) else f"m{i}" for i in range(models + 1)]
    out = []
    for _ in range(n):
        kinds = (
            "tool_complete",
            "llm_call_completed",
            "llm_retry",
            "turn_end",
            "tool_confirmation",
            "confirm_resolved",
        )
        kind = rng.choice(kinds)
        if kind == "tool_complete":
            status = rng.choice(("ok", "ok", "error", "cancelled"))
            out.append(ev(kind, tool_name=f"t{rng.randrange(tools)}", status=status, duration_ms=rng.randint(0, 9000)))
        elif kind == "llm_call_completed":
            failed = rng.random() < 0.1
            usage = not failed and rng.random() < 0.9
            out.append(
                llm(
                    rng.choice(names),
                    rng.choice((rng.randint(0, 5000), rng.randint(190_000, 210_000))) if usage else None,
                    rng.randint(0, 500) if usage else None,
                    status="error" if failed else "ok",
                    http_status=rng.choice((500, 503, 429, None)) if failed else None,
                    error_class="Boom" if failed else None,
                    cache_read_tokens=rng.randint(0, 100) if usage else None,
                    cache_creation_tokens=rng.randint(0, 50) if usage else None,
                    reasoning_tokens=rng.randint(0, 20) if usage else None,
                    event_time=T0 + rng.randrange(86_400) * S,
                    user_id=rng.choice((None, "ann", "bob", "cy")),
                    duration_ms=rng.randint(1, 20_000),
                    payload=json.dumps({"skill": rng.choice(("a", "b"))}) if rng.random() < 0.5 else None,
                )
            )
        elif kind == "turn_end":
            reason = rng.choice((None, None, "max_iterations"))
            status = rng.choice(("ok", "ok", "error", None))
            out.append(ev(kind, status=status, duration_ms=rng.randint(100, 100_000), incomplete_reason=reason))
        elif kind == "confirm_resolved":
            out.append(ev(kind, confirm_outcome=rng.choice(("allow", "reject", "timeout"))))
        elif kind == "llm_retry":
            out.append(ev(kind, http_status=rng.choice((503, 429, None)), error_class=rng.choice(("E1", None))))
        else:
            out.append(ev(kind))
    return out


def merged(*parts: TenantWindowAggregate) -> TenantWindowAggregate:
    out = TenantWindowAggregate("acme", T0, T0 + 60 * S)
    for p in parts:
        out.merge(p)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_merge_of_partials_equals_the_whole_and_is_associative_and_commutative(seed: int) -> None:
    events = random_events(seed)
    rng = random.Random(seed)
    split: list[list[dict[str, Any]]] = [[], [], []]
    for e in events:
        split[rng.randrange(3)].append(e)
    whole = agg_of(events).to_record()
    a, b, c = (agg_of(p) for p in split)
    before = [x.to_record() for x in (a, b, c)]
    assert merged(merged(a, b), c).to_record() == whole
    assert merged(a, merged(b, c)).to_record() == whole
    assert merged(c, a, b).to_record() == whole
    assert [x.to_record() for x in (a, b, c)] == before  # merge does not change its argument
    ab = agg_of(split[0])
    ab.merge(b)
    assert ab.to_record() == merged(a, b).to_record()


def test_merge_refuses_another_window_or_tenant() -> None:
    a = agg_of([ev("turn_end")])
    with pytest.raises(ValueError):
        a.merge(TenantWindowAggregate("acme", T0 + 60 * S, T0 + 120 * S))
    with pytest.raises(ValueError):
        a.merge(TenantWindowAggregate("other", T0, T0 + 60 * S))


# -- records, state, codec -------------------------------------------------------------------------------------


def test_record_encodes_decodes_and_rebuilds_a_mergeable_aggregate() -> None:
    codec = MetricsCodec()
    agg = agg_of(random_events(7))
    rec = agg.to_record()
    value = codec.encode(rec)
    assert value[:2] == b"\xc3\x01" and value[2:10] == codec.fingerprint
    back = codec.decode(value)
    assert back == rec  # every field round-trips (ints stay ints where Avro says long)
    rebuilt = TenantWindowAggregate.from_record(back)
    assert rebuilt.to_record() == rec
    # a second stage merges records from two partitions
    other = agg_of(random_events(8))
    stage2 = TenantWindowAggregate.from_record(codec.decode(codec.encode(other.to_record())))
    stage2.merge(rebuilt)
    assert stage2.to_record() == merged(agg, other).to_record()


def test_record_of_an_empty_window_encodes() -> None:
    codec = MetricsCodec()
    rec = TenantWindowAggregate("acme", T0, T0 + 60 * S).to_record(final=False)
    assert rec["turn_duration"]["p50"] is None and rec["final"] is False
    assert codec.decode(codec.encode(rec)) == rec


def test_state_round_trips_through_json_and_keeps_folding() -> None:
    events = random_events(3)
    whole = agg_of(events, label_limit=4)
    part = agg_of(events[:300], label_limit=4)
    restored = TenantWindowAggregate.from_state(json.loads(json.dumps(part.to_state())))
    for e in events[300:]:
        restored.add_event(e)
    assert restored.to_record() == whole.to_record()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x00\x01abc", "bad_magic"),
        (b"\xc3\x01\x01\x02", "truncated_header"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown_fingerprint"),
    ],
)
def test_codec_rejects_bad_values(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        MetricsCodec().decode(value)
    assert info.value.reason == reason


def test_codec_rejects_truncated_and_trailing_bodies() -> None:
    codec = MetricsCodec()
    good = codec.encode(agg_of(random_events(1, n=50)).to_record())
    for bad in (good[:-5], good + b"\x00"):
        with pytest.raises(DecodeError) as info:
            codec.decode(bad)
        assert info.value.reason == "invalid_avro"


# -- label cardinality -----------------------------------------------------------------------------------------


def tool_calls(names: list[str]) -> list[dict[str, Any]]:
    return [ev("tool_complete", tool_name=n, status="ok", duration_ms=1) for n in names]


def test_labels_beyond_the_limit_fold_into_other_and_are_counted() -> None:
    names = ["a", "b", "c", "d", "e", "d", "e", "e"]
    rec = agg_of(tool_calls(names), label_limit=3).to_record()
    tools = {t["tool"]: t["calls"] for t in rec["tools"]}
    assert tools == {"a": 1, "b": 1, "c": 1, OTHER: 5}  # first come while there is no history
    assert rec["tool_calls"] == 8 and rec["folded_label_values"]["tool"] == 2


def test_guard_prefers_the_top_names_seen_so_far() -> None:
    ops = TenantWindowOps(label_limit=2)
    first = ops.new("acme", T0, T0 + 60 * S)
    for e in tool_calls(["rare1", "rare2", "hot", "hot", "hot", "warm", "warm"]):
        first.add_event(e)
    assert {t["tool"] for t in first.to_record()["tools"]} == {"rare1", "rare2", OTHER}
    ops.on_close(first)  # the guard learns hot=3, warm=2 from the folded counts
    assert ops.guards_for("acme").tool.preferred == {"hot", "warm"}
    second = ops.new("acme", T0 + 60 * S, T0 + 120 * S)
    for e in tool_calls(["rare1", "hot", "new", "warm"]):
        second.add_event(e)
    tools = {t["tool"]: t["calls"] for t in second.to_record()["tools"]}
    assert tools == {"hot": 1, "warm": 1, OTHER: 2}  # places kept for the preferred names
    # guards persist as plain data
    ops2 = TenantWindowOps(label_limit=2)
    ops2.restore_guards(json.loads(json.dumps(ops.snapshot_guards())))
    assert ops2.guards_for("acme").tool.preferred == {"hot", "warm"}


def test_guard_memory_is_bounded() -> None:
    g = LabelGuard(limit=3)
    for i in range(100):
        g.observe({f"n{i}": i + 1})
    assert len(g.counts) <= 12 and g.preferred == {"n99", "n98", "n97"}


def test_merge_beyond_the_limit_folds_the_smallest_labels() -> None:
    a = agg_of(tool_calls(["x", "x", "x", "y"]), label_limit=2)
    b = agg_of(tool_calls(["z", "z", "y"]), label_limit=2)
    m = TenantWindowAggregate("acme", T0, T0 + 60 * S, label_limit=2)
    m.merge(a)
    m.merge(b)
    rec = m.to_record()
    assert {t["tool"]: t["calls"] for t in rec["tools"]} == {"x": 3, "y": 2, OTHER: 2}
    assert rec["tool_calls"] == 7 and rec["folded_label_values"]["tool"] == 1


def test_guards_apply_to_models_skills_error_types_and_attempt_statuses() -> None:
    events = [llm(f"m{i}", payload=json.dumps({"skill": f"s{i}"})) for i in range(4)]
    events += [llm(status="error", p=None, c=None, error_class=f"E{i}", http_status=500 + i) for i in range(4)]
    rec = agg_of(events, label_limit=2).to_record()
    assert len(rec["models"]) == 3 and len(rec["skills"]) == 3 and len(rec["llm_errors_by_type"]) == 3
    assert len(rec["llm_failed_attempts_by_status"]) == 3
    assert rec["folded_label_values"] == {"tool": 0, "model": 2, "skill": 2, "error_type": 2, "attempt_status": 2}
    assert rec["llm_calls"] == 8 and sum(rec["llm_errors_by_type"].values()) == 4 and rec["llm_5xx"] == 4
    guards = TenantGuards(2)
    guards.observe(agg_of(events, label_limit=2))
    assert guards.error_type.preferred == {"E0", "E1"}


# -- agreement with the simulator's ground truth ---------------------------------------------------------------


def test_windows_agree_with_the_simulator_ground_truth() -> None:
    """The engine + aggregate over simulated traffic give the truth's counts exactly and its quantiles within 1 %."""
    from producers.incidents import ConfirmTimeouts, Llm5xxBurst, MaxIterationLoops, ToolFailure
    from producers.simulator import FleetSimulator

    incidents = [
        Llm5xxBurst(0, 30, 150),
        ToolFailure(1, 0, 120),
        ConfirmTimeouts(1, 60, 180),
        MaxIterationLoops(0, 0, 180),
    ]
    sim = FleetSimulator(seed=5, tenants=2, duration_s=180, incidents=incidents)
    events = list(sim.events())
    truth = {(w["tenant"], w["window_start_us"]): w for w in sim.ground_truth(60, events=events)["windows"]}

    engine = WindowEngine(TumblingWindows(60), TenantWindowOps(), grace_s=0)
    for i in range(0, len(events), 500):
        engine.process(0, events[i : i + 500], "sim", i)
    engine.add(0, "end", 1 << 61, lambda agg: None)
    got = {(c.key, c.start_us): c.aggregate.to_record() for c in engine.close_due(0)}
    assert engine.late_counts(0) == {}
    assert set(got) == set(truth) and len(got) >= 6

    checked = users_checked = 0
    for key, want in truth.items():
        rec = got[key]
        for name in (
            "events", "events_by_type", "turns", "turns_by_status", "incomplete_reasons", "max_iterations_hits",
            "tool_calls", "tool_failures", "tool_cancelled", "llm_calls", "llm_attempts", "llm_retries",
            "llm_errors", "llm_errors_by_type", "llm_5xx", "llm_failed_attempts_by_status",
            "llm_calls_without_usage", "tokens_by_model", "cost_nusd", "llm_calls_unpriced",
        ):  # fmt: skip
            assert rec[name] == want[name], (key, name)
        tokens = want["tokens"]
        assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (
            tokens["prompt"],
            tokens["completion"],
            tokens["total"],
        )
        assert (rec["cache_read_tokens"], rec["cache_creation_tokens"], rec["reasoning_tokens"]) == (
            tokens["cache_read"],
            tokens["cache_creation"],
            tokens["reasoning"],
        )
        confirm = want["confirm"]
        assert (rec["confirm_requests"], rec["confirm_allows"], rec["confirm_rejects"], rec["confirm_timeouts"]) == (
            confirm["request"],
            confirm["allow"],
            confirm["reject"],
            confirm["timeout"],
        )
        assert want["tokens_per_turn"] == (None if rec["tokens_per_turn"] is None else round(rec["tokens_per_turn"], 6))
        assert {k: v for k, v in rec["cost_by_model"].items() if v} == want["cost_by_model"], key
        spent = rec["top_spenders"]
        assert spent["total_nusd"] == sum(want["cost_by_user"].values())
        for u in spent["users"]:  # the sketch's stated bounds, against the exact per-user cost
            assert u["cost_nusd"] - u["error_nusd"] <= want["cost_by_user"].get(u["user"], 0) <= u["cost_nusd"]
            assert u["error_nusd"] * spent["capacity"] <= spent["total_nusd"]
        if len(want["cost_by_user"]) <= spent["capacity"]:
            users_checked += 1
            assert {u["user"]: u["cost_nusd"] for u in spent["users"] if u["cost_nusd"]} == want["cost_by_user"]
        assert want["cost_per_turn_usd"] == (
            None if rec["cost_per_turn_usd"] is None else round(rec["cost_per_turn_usd"], 6)
        )
        tools = {t["tool"]: t for t in rec["tools"]}
        assert set(tools) == set(want["tools"])
        pairs = [(rec["turn_duration"], want["turn_duration_ms"])]
        for name, w in want["tools"].items():
            assert (tools[name]["calls"], tools[name]["failures"], tools[name]["cancelled"]) == (
                w["calls"],
                w["failures"],
                w["cancelled"],
            )
            pairs.append((tools[name]["duration"], w["duration_ms"]))
        for mine, exact in pairs:
            assert mine["count"] == exact["count"]
            if exact["count"]:
                assert (mine["sum"], mine["min"], mine["max"]) == (exact["sum"], exact["min"], exact["max"])
                for q in ("p50", "p95", "p99"):
                    assert abs(mine[q] - exact[q]) <= 0.01 * exact[q] + 1e-9, (key, q)
                    checked += 1
    assert checked > 100 and users_checked > 0
    totals = {
        k: sum(w[k] for w in truth.values()) for k in ("llm_5xx", "tool_failures", "max_iterations_hits", "cost_nusd")
    }
    assert all(totals.values()), totals  # the incidents did produce what is being compared


def test_two_stage_aggregation_equals_one_stage() -> None:
    """Per-partition pre-aggregation, then a keyed stage merging the partial windows (via records), gives the same
    windows as one engine over all events."""
    rng = random.Random(21)
    events = []
    for i, e in enumerate(random_events(30, n=1200)):
        e.update(tenant=rng.choice(("acme", "globex")), event_time=T0 + i * 250_000, session_id=f"s{rng.randrange(9)}")
        events.append(e)

    single = WindowEngine(TumblingWindows(60), TenantWindowOps(), grace_s=0)
    single.process(0, events)
    single.add(0, "end", 1 << 61, lambda agg: None)
    expected = {(c.key, c.start_us): c.aggregate.to_record() for c in single.close_due(0)}

    codec = MetricsCodec()
    stage1 = WindowEngine(TumblingWindows(60), TenantWindowOps(), grace_s=0)
    partials: list[bytes] = []
    for part in (0, 1):  # sessions hashed to two partitions
        stage1.process(part, [e for e in events if hash(e["session_id"]) % 2 == part])
        stage1.add(part, "end", 1 << 61, lambda agg: None)
        partials += [codec.encode(c.aggregate.to_record()) for c in stage1.close_due(part)]
    # the keyed stage sees the partial windows in window order (here: sorted; live: a grace covering partition skew)
    stage2 = WindowEngine(TumblingWindows(60), TenantWindowOps(), grace_s=0)
    for rec in sorted((codec.decode(v) for v in partials), key=lambda r: r["window_start_us"]):
        partial = TenantWindowAggregate.from_record(rec)
        stage2.add(0, rec["tenant"], rec["window_start_us"], lambda agg, p=partial: agg.merge(p))
    stage2.add(0, "end", 1 << 61, lambda agg: None)
    got = {(c.key, c.start_us): c.aggregate.to_record() for c in stage2.close_due(0)}
    assert got == expected and len(got) >= 10


# -- cost ------------------------------------------------------------------------------------------------------


def test_cost_per_model_skill_turn_and_unpriced_calls() -> None:
    from schemas.pricing import default_prices

    prices = default_prices()
    a = prices.cost_nusd("gpt-4o-mini", T0 + 1, 1000, 50, 400, 0, 7)
    b = prices.cost_nusd("claude-sonnet-4-5", T0 + 1, 250_000, 10)  # above the 200k tier
    assert a and b and b > 250_000 * 3000  # the tier price, not the base
    rec = agg_of(
        [
            llm("gpt-4o-mini", 1000, 50, cache_read_tokens=400, reasoning_tokens=7, payload='{"skill": "pdf"}'),
            llm("claude-sonnet-4-5", 250_000, 10),
            llm("no-price-model", 10, 10, payload='{"skill": "pdf"}'),  # tokens counted, cost unknown
            llm("gpt-4o-mini", None, None, status="error"),  # no usage: neither cost nor unpriced
            ev("turn_end", status="ok"),
            ev("turn_end", status="ok"),
        ]
    ).to_record()
    assert rec["cost_nusd"] == a + b and rec["llm_calls_unpriced"] == 1
    assert rec["cost_by_model"] == {"claude-sonnet-4-5": b, "gpt-4o-mini": a, "no-price-model": 0}
    assert rec["cost_by_skill"] == {"pdf": a}
    assert rec["cost_per_turn_usd"] == (a + b) / 2 / 1e9
    models = {m["label"]: m for m in rec["models"]}
    assert models["no-price-model"]["llm_calls_unpriced"] == 1 and models["gpt-4o-mini"]["llm_calls_unpriced"] == 0
    assert {s["label"]: s["llm_calls_unpriced"] for s in rec["skills"]} == {"pdf": 1}
    assert MetricsCodec().decode(MetricsCodec().encode(rec)) == rec


def test_overrides_reach_the_aggregate_and_folded_models_are_priced_by_their_own_name() -> None:
    from schemas.pricing import PriceTable, parse_overrides

    table = PriceTable(parse_overrides({"models": {"my-llama": {"input_mtok": 1, "output_mtok": 2}}}))
    events = [llm(f"x{i}", 1, 1) for i in range(3)] + [llm("my-llama", 1_000_000, 1_000_000)]
    rec = agg_of(events, label_limit=1, prices=table).to_record()
    assert rec["cost_nusd"] == 3 * 10**9 and rec["llm_calls_unpriced"] == 3
    assert rec["cost_by_model"][OTHER] == 3 * 10**9  # my-llama folded into __other__, priced as my-llama


def test_state_written_before_cost_existed_restores_with_zero_cost() -> None:
    agg = agg_of([llm("gpt-4o-mini", 100, 10)])
    state = json.loads(json.dumps(agg.to_state()))
    state["models"] = {k: v[:-2] for k, v in state["models"].items()}  # the 9-value lists of before
    old = TenantWindowAggregate.from_state(state)
    assert old.to_record()["cost_nusd"] == 0 and old.to_record()["prompt_tokens"] == 100
    state["models"] = {k: v[:5] for k, v in state["models"].items()}
    with pytest.raises(ValueError, match="usage state"):
        TenantWindowAggregate.from_state(state)


def test_cost_sums_saturate_at_the_avro_long_instead_of_failing_the_record() -> None:
    from schemas.pricing import PriceTable, parse_overrides

    table = PriceTable(parse_overrides({"models": {"dear": {"input_mtok": 1_000_000, "output_mtok": 1_000_000}}}))
    flood = [llm("dear", 10**9, 10**9, user_id="mallory") for _ in range(5000)]  # 2e15 nano-USD per call
    rec = agg_of(flood, prices=table).to_record()
    assert rec["cost_nusd"] == 2**63 - 1 and rec["cost_by_model"]["dear"] == 2**63 - 1
    assert rec["top_spenders"]["users"][0]["cost_nusd"] == 2**63 - 1
    assert MetricsCodec().decode(MetricsCodec().encode(rec))["cost_nusd"] == 2**63 - 1
