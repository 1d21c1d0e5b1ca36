"""The fleet simulator: determinism, Agentao's event order, valid Avro, and a ground truth that matches intent."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from agentwatch.commands import simulate
from agentwatch.commands.simulate import TokenBucket
from agentwatch.config import Settings
from producers.ground_truth import US, TruthCounter, truth_from_events
from producers.incidents import (
    DEFAULT_RULES,
    DEFAULT_SPIKE,
    CacheChurn,
    ConfirmTimeouts,
    Llm5xxBurst,
    MaxIterationLoops,
    ModelSwap,
    ToolFailure,
    default_incidents,
    incident_from_dict,
    load_incidents,
    parse_duration,
)
from producers.simulator import DEFAULT_START_US, FleetSimulator
from schemas import contract
from schemas.codec import AvroCodec

ROOT = Path(__file__).resolve().parents[1]
W_US = 60 * US


def small_sim(seed: int = 3, **kw: Any) -> FleetSimulator:
    """~4,000 events: 3 tenants, 2 minutes, a tool failure incident."""
    args: dict[str, Any] = {"seed": seed, "tenants": 3, "duration_s": 120, "rate": 30.0,
                            "incidents": [ToolFailure(tenant=0, start_s=30, end_s=90)]}
    args.update(kw)
    return FleetSimulator(**args)


@pytest.fixture(scope="module")
def small_events() -> list[dict[str, Any]]:
    return list(small_sim().events())


# -- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_same_events_and_byte_identical_truth(small_events: list[dict[str, Any]], tmp_path: Path) -> None:
    again = list(small_sim().events())
    assert again == small_events
    assert len(small_events) > 1000
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    small_sim().write_ground_truth(a)
    small_sim().write_ground_truth(b)
    assert a.read_bytes() == b.read_bytes()
    other = list(small_sim(seed=4).events())
    assert [e["event_id"] for e in other[:50]] != [e["event_id"] for e in small_events[:50]]


def test_events_do_not_depend_on_hash_randomisation() -> None:
    code = ("import hashlib, json; from producers.simulator import FleetSimulator; "
            "from producers.incidents import ModelSwap; "
            "s = FleetSimulator(seed=5, tenants=2, duration_s=40, rate=20, incidents=[ModelSwap(0, 10, 30)]); "
            "print(hashlib.sha256(json.dumps(list(s.events()), sort_keys=True).encode()).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


# -- shape and order ---------------------------------------------------------------------------------------------


def test_per_session_seq_is_gap_free_and_times_ordered(small_events: list[dict[str, Any]]) -> None:
    last_seq: dict[str, int] = {}
    last_time: dict[str, int] = {}
    prev_time = 0
    for ev in small_events:
        sid = ev["session_id"]
        assert ev["seq"] == last_seq.get(sid, 0) + 1, f"gap or reorder in {sid}"
        assert ev["event_time"] > last_time.get(sid, 0)
        assert ev["event_time"] >= prev_time  # the whole stream is in event-time order
        assert ev["producer_time"] >= ev["event_time"]
        if ev["seq"] == 1:
            assert ev["type"] == "session_start"
        last_seq[sid], last_time[sid], prev_time = ev["seq"], ev["event_time"], ev["event_time"]
    sim = small_sim()
    assert all(sim.start_us <= e["event_time"] < sim.end_us for e in small_events)


def test_every_event_is_complete_and_encodes_with_the_contract(small_events: list[dict[str, Any]]) -> None:
    codec = AvroCodec()
    fields = set(contract.event_field_names())
    types = set(contract.event_types())
    ids = set()
    for ev in small_events:
        assert set(ev) == fields
        assert ev["type"] in types and ev["type"] != "unknown"
        assert len(ev["event_id"]) == 32 and int(ev["event_id"], 16) >= 0
        ids.add(ev["event_id"])
        if ev["payload"] is not None:
            assert isinstance(json.loads(ev["payload"]), dict)
        decoded = codec.decode(codec.encode_event(ev))
        assert decoded.events == [ev]
    assert len(ids) == len(small_events)
    batch = codec.decode(codec.encode_batch("sim", 1, DEFAULT_START_US, small_events[:500]))
    assert batch.events == small_events[:500]


def test_traffic_has_the_variety_asked_for(small_events: list[dict[str, Any]]) -> None:
    types = Counter(e["type"] for e in small_events)
    for t in ("session_start", "turn_begin", "turn_start", "llm_call_started", "llm_call_delta", "llm_call_completed",
              "llm_text", "tool_start", "tool_complete", "tool_result", "tool_confirmation", "confirm_resolved",
              "turn_end", "tool_output"):
        assert types[t] > 0, t
    per_tenant = Counter(e["tenant"] for e in small_events)
    sizes = [per_tenant[t] for t in small_sim().tenant_names]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 1.3 * sizes[-1]
    models = defaultdict(set)
    for e in small_events:
        if e["type"] == "llm_call_completed" and e["status"] == "ok":
            models[e["tenant"]].add(e["model"])
            assert e["prompt_tokens"] >= e["cache_read_tokens"] >= 0
            assert e["completion_tokens"] >= (e["reasoning_tokens"] or 0)
    assert all(len(m) >= 2 for m in models.values())
    outcomes = Counter(e["confirm_outcome"] for e in small_events if e["type"] == "confirm_resolved")
    assert outcomes["allow"] > outcomes["reject"] > 0


def test_rare_paths_follow_agentao() -> None:
    """Longer run: sub-agents, skills, retries, compaction and max-iterations bailouts appear, in Agentao's shape."""
    sim = FleetSimulator(seed=11, tenants=2, duration_s=600, rate=40.0,
                         incidents=[MaxIterationLoops(tenant=1, start_s=60, end_s=300),
                                    Llm5xxBurst(tenant=0, start_s=60, end_s=200)])
    events = list(sim.events())
    types = Counter(e["type"] for e in events)
    for t in ("agent_start", "agent_end", "skill_activated", "llm_retry", "context_compressed", "compaction_settled",
              "memory_write", "session_end"):
        assert types[t] > 0, t
    children = {e["child_task_id"] for e in events if e["type"] == "agent_start"}
    forwarded = [e for e in events if e["child_task_id"] and e["type"] == "tool_start"]
    assert forwarded and {e["child_task_id"] for e in forwarded} <= children
    for e in forwarded:  # the label stays in the payload, the typed tool name is bare (as the bridge maps it)
        assert json.loads(e["payload"])["tool"].startswith("[") and not e["tool_name"].startswith("[")
    retries = [e for e in events if e["type"] == "llm_retry"]
    assert all(e["http_status"] is None or 400 <= e["http_status"] <= 599 for e in retries)
    assert any(500 <= (e["http_status"] or 0) <= 599 for e in retries)
    assert any(e["type"] == "turn_end" and e["incomplete_reason"] == "max_iterations" for e in events)
    check_agentao_order(events)


def test_agentao_order_within_turns(small_events: list[dict[str, Any]]) -> None:
    check_agentao_order(small_events)


def check_agentao_order(events: list[dict[str, Any]]) -> None:
    """turn_begin..turn_end framing; started before completed; confirm before start; start/complete 1:1 per call
    before its tool_result; agent_start..agent_end around the child's events."""
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_session[e["session_id"]].append(e)
    for evs in by_session.values():
        turn: str | None = None
        llm_open = False
        started: dict[str, int] = {}
        completed: set[str] = set()
        confirmed: dict[str, str] = {}
        children: set[str] = set()
        for e in evs:
            t = e["type"]
            if t == "turn_begin":
                assert turn is None
                turn = e["turn_id"]
                started, completed, confirmed = {}, set(), {}
            elif t == "turn_end":
                assert turn == e["turn_id"] and not llm_open and not children
                assert set(started) == completed  # every started call completed inside the turn
                turn = None
            elif t in ("session_start", "session_end", "model_changed") and turn is None:
                continue
            else:
                assert turn is not None and e["turn_id"] == turn, t
            if t == "llm_call_started":
                assert not llm_open
                llm_open = True
            elif t in ("llm_retry", "llm_call_delta", "llm_text", "thinking"):
                assert llm_open, t
            elif t == "llm_call_completed":
                assert llm_open
                llm_open = False
            elif t == "tool_confirmation":
                confirmed[e["call_id"]] = "asked"
            elif t == "confirm_resolved":
                assert confirmed.get(e["call_id"]) == "asked"
                confirmed[e["call_id"]] = e["confirm_outcome"]
            elif t == "tool_start":
                assert e["call_id"] not in started and not llm_open
                assert confirmed.get(e["call_id"], "allow") != "asked"
                started[e["call_id"]] = 1
            elif t == "tool_complete":
                assert e["call_id"] in started and e["call_id"] not in completed
                completed.add(e["call_id"])
                if confirmed.get(e["call_id"]) in ("reject", "timeout"):
                    assert e["status"] == "cancelled" and e["error_message"] == "not approved"
            elif t == "tool_result":
                assert e["call_id"] in completed
            elif t == "agent_start":
                children.add(e["child_task_id"])
            elif t == "agent_end":
                children.remove(e["child_task_id"])
            if e["child_task_id"] and t not in ("agent_start", "agent_end"):
                assert e["child_task_id"] in children


# -- counting ----------------------------------------------------------------------------------------------------


def _ev(t_s: float, type_: str, tenant: str = "t1", **fields: Any) -> dict[str, Any]:
    ev = dict.fromkeys(contract.event_field_names())
    ev.update(event_time=DEFAULT_START_US + int(t_s * US), tenant=tenant, type=type_, **fields)
    return ev


def test_truth_definitions_on_crafted_events() -> None:
    events = [
        _ev(0, "tool_complete", tool_name="read_file", status="ok", duration_ms=10),
        _ev(1, "tool_complete", tool_name="read_file", status="error", duration_ms=30),
        _ev(2, "tool_complete", tool_name="write_file", status="cancelled", duration_ms=0),
        _ev(3, "llm_retry", http_status=503),
        _ev(4, "llm_retry", http_status=429),
        _ev(5, "llm_retry", error_class="RemoteProtocolError"),
        _ev(6, "llm_call_completed", status="ok", model="m", prompt_tokens=1000, completion_tokens=100,
            cache_read_tokens=600, cache_creation_tokens=0, reasoning_tokens=20),
        _ev(7, "llm_call_completed", status="error", error_class="InternalServerError", http_status=502),
        _ev(8, "tool_confirmation"), _ev(9, "tool_confirmation"),
        _ev(10, "confirm_resolved", confirm_outcome="allow"), _ev(11, "confirm_resolved", confirm_outcome="timeout"),
        _ev(12, "turn_end", status="ok", incomplete_reason="max_iterations", duration_ms=5000),
        _ev(13, "turn_end", status="ok", duration_ms=1000),
        _ev(60, "turn_end", status="cancelled", duration_ms=10),  # exactly on the next window's start
        _ev(61, "tool_complete", tenant="t2", tool_name="glob", status="ok", duration_ms=5),
    ]
    truth = truth_from_events(events, window_s=60)
    w0, w1, t2 = truth["windows"]
    assert (w0["tenant"], w0["window_start_us"], w1["window_start_us"]) == ("t1", DEFAULT_START_US,
                                                                            DEFAULT_START_US + W_US)
    assert (w0["tool_calls"], w0["tool_failures"], w0["tool_cancelled"]) == (3, 1, 1)
    assert w0["tools"]["read_file"]["calls"] == 2 and w0["tools"]["read_file"]["failure_rate"] == 0.5
    assert w0["tools"]["read_file"]["duration_ms"]["p50"] == 10
    assert (w0["llm_calls"], w0["llm_retries"], w0["llm_attempts"], w0["llm_errors"]) == (2, 3, 5, 1)
    assert w0["llm_5xx"] == 2  # the 503 retry and the final 502; not the 429 nor the connection error
    assert w0["llm_failed_attempts_by_status"] == {"429": 1, "502": 1, "503": 1, "RemoteProtocolError": 1}
    assert w0["llm_errors_by_type"] == {"InternalServerError": 1}
    assert w0["llm_calls_without_usage"] == 1
    assert w0["tokens"] == {"prompt": 1000, "completion": 100, "cache_read": 600, "cache_creation": 0,
                            "reasoning": 20, "total": 1100}
    assert w0["tokens_by_model"] == {"m": 1100}
    assert w0["confirm"] == {"request": 2, "allow": 1, "reject": 0, "timeout": 1}
    assert (w0["turns"], w0["max_iterations_hits"], w0["tokens_per_turn"]) == (2, 1, 550.0)
    assert w0["rates"] == {"tool_failure_rate": round(1 / 3, 6), "llm_5xx_rate": 0.4, "max_iterations_rate": 0.5,
                           "cache_hit_rate": 0.6, "confirm_timeout_rate": 0.5}
    assert w0["turn_duration_ms"] == {"count": 2, "sum": 6000, "min": 1000, "max": 5000, "p50": 1000,
                                      "p95": 5000, "p99": 5000}
    assert (w1["turns"], w1["turns_by_status"]) == (1, {"cancelled": 1})
    assert t2["tenant"] == "t2" and truth["tenants"]["t2"]["tool_calls"] == 1
    assert truth["totals"]["events"] == len(events)
    assert truth["totals"]["events_by_type"]["turn_end"] == 3
    assert truth["crossings"] == []  # volumes are below every guard


def test_streaming_counter_equals_batch_function(small_events: list[dict[str, Any]]) -> None:
    counter = TruthCounter(30)
    for ev in small_events:
        counter.add(ev)
    assert counter.result() == truth_from_events(reversed(small_events), 30)


# -- the default scenario: baseline below every threshold, each incident crosses exactly its own --------------


@dataclass
class IntentStats:
    """What the scripted incidents did, measured from the events themselves."""

    sim: FleetSimulator
    tool: Counter[str] = field(default_factory=Counter)
    llm: Counter[str] = field(default_factory=Counter)
    confirm: Counter[str] = field(default_factory=Counter)
    loops: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    swap: Counter[str] = field(default_factory=Counter)
    _asked: dict[str, int] = field(default_factory=dict)
    _begun: dict[str, int] = field(default_factory=dict)
    _call_started: dict[str, int] = field(default_factory=dict)

    def span(self, kind: str) -> tuple[str, int, int]:
        inc = next(i for i in self.sim.incidents if i.kind == kind)
        return str(inc.tenant), self.sim.start_us + int(inc.start_s * US), self.sim.start_us + int(inc.end_s * US)

    def add(self, e: dict[str, Any]) -> None:
        t, typ, tenant = e["event_time"], e["type"], e["tenant"]
        ten, s, end = self.span("tool_failure")
        tool = next(i for i in self.sim.incidents if i.kind == "tool_failure").tool
        if typ == "tool_complete" and tenant == ten and e["tool_name"] == tool and s <= t < end:
            self.tool["ran"] += e["status"] != "cancelled"  # rejected or denied calls never ran
            self.tool["failed"] += e["status"] == "error"
        ten, s, end = self.span("llm_5xx")
        if typ in ("llm_retry", "llm_call_completed") and tenant == ten and s <= t < end:
            self.llm["attempts"] += 1
            self.llm["5xx"] += 500 <= (e["http_status"] or 0) <= 599
        ten, s, end = self.span("confirm_timeout")
        if tenant == ten and typ == "tool_confirmation" and s <= t < end:
            self._asked[e["call_id"]] = t
        elif tenant == ten and typ == "confirm_resolved" and e["call_id"] in self._asked:
            self.confirm["resolved"] += 1
            self.confirm["timeout"] += e["confirm_outcome"] == "timeout"
        ten, s, end = self.span("max_iterations")
        if tenant == ten and typ == "turn_begin" and s <= t < end:
            self._begun[e["turn_id"]] = t
        elif tenant == ten and typ == "turn_end" and e["turn_id"] in self._begun:
            self.loops["turns"] += 1
            self.loops["hits"] += e["incomplete_reason"] == "max_iterations"
        ten, s, end = self.span("cache_churn")
        if tenant == ten and typ == "llm_call_completed" and e["prompt_tokens"]:
            where = "in" if s <= t < end else "out"
            self.cache[f"read_{where}"] += e["cache_read_tokens"]
            self.cache[f"prompt_{where}"] += e["prompt_tokens"]
        ten, s, end = self.span("model_swap")
        if tenant == ten and typ == "llm_call_started":
            self._call_started[e["session_id"]] = t
        elif tenant == ten and typ == "llm_call_completed" and e["prompt_tokens"]:
            t = self._call_started[e["session_id"]]  # the model is chosen when the call starts
            where = "in" if s <= t < end else "before" if t < s else "after"
            self.swap[f"calls_{where}"] += 1
            self.swap[f"tokens_{where}"] += e["prompt_tokens"] + e["completion_tokens"]
            new_model = next(i for i in self.sim.incidents if i.kind == "model_swap").model
            self.swap[f"new_model_{where}"] += e["model"] == new_model


@pytest.fixture(scope="module")
def default_run() -> tuple[FleetSimulator, dict[str, Any], IntentStats]:
    """What `agentwatch simulate` does by default: 6 tenants, 10 minutes, one incident of each kind."""
    names = FleetSimulator(seed=0).tenant_names
    sim = FleetSimulator(seed=0, incidents=default_incidents(names, DEFAULT_START_US, 600, 60))
    counter, stats = TruthCounter(60), IntentStats(sim)
    for ev in sim.events():
        counter.add(ev)
        stats.add(ev)
    return sim, sim.ground_truth(60, counted=counter), stats


def test_each_incident_crosses_its_own_rule_in_every_window(default_run: Any) -> None:
    sim, truth, _ = default_run
    expected = truth["alerts"]["expected"]
    assert {a["alertname"] for a in expected} == {r.name for r in DEFAULT_RULES} | {DEFAULT_SPIKE.name}
    assert len({str(i.tenant) for i in sim.incidents}) == 6  # one tenant each
    for alert in expected:
        assert len(alert["full_windows_us"]) == 3, alert
        assert set(alert["full_windows_us"]) <= set(alert["crossing_windows_us"]), alert
        # and nothing long after the incident ended
        assert max(alert["crossing_windows_us"]) < alert["end_us"] + W_US


def test_baseline_stays_clearly_below_every_threshold(default_run: Any) -> None:
    sim, truth, _ = default_run
    assert truth["alerts"]["unexpected_crossings"] == []
    incident_spans = defaultdict(list)
    for inc in sim.incidents:
        incident_spans[(inc.rule, str(inc.tenant))].append(
            (sim.start_us + int(inc.start_s * US), sim.start_us + int(inc.end_s * US) + W_US))

    def quiet(rule: str, rec: dict[str, Any]) -> bool:
        w = rec["window_start_us"]
        return not any(s < w + W_US and w < e for s, e in incident_spans[(rule, rec["tenant"])])

    # "Clearly": at most half the threshold (twice it for the low-side cache rule) wherever the volume guard holds.
    margins = {"ToolFailureRateHigh": 0.05, "LLM5xxRateHigh": 0.01, "MaxIterationsRateHigh": 0.025,
               "CacheHitRateLow": 0.6, "ConfirmTimeoutRateHigh": 0.05}
    checked = Counter()
    for rec in truth["windows"]:
        for rule in DEFAULT_RULES:
            value, volume = rec["rates"][rule.value], rec["volumes"][rule.volume]
            if volume < rule.min_volume or not quiet(rule.name, rec):
                continue
            checked[rule.name] += 1
            if rule.op == "<":
                assert value >= margins[rule.name], (rule.name, rec["tenant"], rec["window_start"], value)
            else:
                assert value <= margins[rule.name], (rule.name, rec["tenant"], rec["window_start"], value)
    assert all(checked[r.name] >= 30 for r in DEFAULT_RULES), checked  # the guards let most windows through
    # Token use per tenant window stays within 1.7x of its trailing median outside the model swap.
    history: dict[str, list[int]] = defaultdict(list)
    for rec in sorted(truth["windows"], key=lambda r: (r["tenant"], r["window_start_us"])):
        past = history[rec["tenant"]]
        if len(past) >= 5 and quiet("TokenSpike", rec):
            base = sorted(past[-5:])[2]
            assert rec["tokens"]["total"] / base < 1.7, (rec["tenant"], rec["window_start"])
        past.append(rec["tokens"]["total"])


def test_incidents_do_what_they_script(default_run: Any) -> None:
    sim, _, stats = default_run
    scripted = {i.kind: i for i in sim.incidents}
    assert stats.tool["ran"] > 150
    assert stats.tool["failed"] / stats.tool["ran"] == pytest.approx(scripted["tool_failure"].failure_rate,
                                                                       abs=0.06)
    assert stats.llm["attempts"] > 500
    assert stats.llm["5xx"] / stats.llm["attempts"] == pytest.approx(scripted["llm_5xx"].error_rate, abs=0.025)
    assert stats.confirm["resolved"] > 150
    assert stats.confirm["timeout"] / stats.confirm["resolved"] == pytest.approx(
        scripted["confirm_timeout"].timeout_rate, abs=0.06)
    assert stats.loops["turns"] > 150
    assert stats.loops["hits"] / stats.loops["turns"] == pytest.approx(scripted["max_iterations"].loop_rate,
                                                                       abs=0.05)
    assert stats.cache["read_in"] / stats.cache["prompt_in"] < 0.1
    assert stats.cache["read_out"] / stats.cache["prompt_out"] > 0.6
    per_call_in = stats.swap["tokens_in"] / stats.swap["calls_in"]
    per_call_before = stats.swap["tokens_before"] / stats.swap["calls_before"]
    assert per_call_in / per_call_before == pytest.approx(scripted["model_swap"].token_factor, rel=0.2)
    assert stats.swap["new_model_in"] / stats.swap["calls_in"] > 0.97
    assert stats.swap["new_model_before"] == stats.swap["new_model_after"] == 0


# -- incidents ---------------------------------------------------------------------------------------------------


def test_incident_specs_load_from_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "inc.yaml"
    y.write_text("incidents:\n"
                 "  - {kind: tool_failure, tenant: 0, tool: web_fetch, start: 2m, end: 5m, failure_rate: 0.5}\n"
                 "  - {kind: llm_5xx, tenant: globex, start: 90, end: '3m', statuses: [503]}\n")
    j = tmp_path / "inc.json"
    j.write_text(json.dumps([{"kind": "cache_churn", "tenant": 1, "start": "30s", "end": "1h"}]))
    a, b = load_incidents(y)
    assert a == ToolFailure(tenant=0, start_s=120, end_s=300, tool="web_fetch", failure_rate=0.5)
    assert b == Llm5xxBurst(tenant="globex", start_s=90, end_s=180, statuses=(503,))
    assert load_incidents(j) == [CacheChurn(tenant=1, start_s=30, end_s=3600)]
    sim = FleetSimulator(seed=1, tenants=3, duration_s=60, incidents=[a, b])
    assert [i.tenant for i in sim.incidents] == ["acme", "globex"]
    with pytest.raises(ValueError, match="unknown incident kind"):
        incident_from_dict({"kind": "meteor", "tenant": 0, "start": 1, "end": 2})
    with pytest.raises(ValueError, match="unknown keys"):
        incident_from_dict({"kind": "llm_5xx", "tenant": 0, "start": 1, "end": 2, "rate": 0.5})
    with pytest.raises(ValueError, match="start < end"):
        ConfirmTimeouts(tenant=0, start_s=5, end_s=5)
    with pytest.raises(ValueError, match="unknown tenant"):
        FleetSimulator(tenants=2, incidents=[ModelSwap(tenant="nobody", start_s=1, end_s=2)])
    assert parse_duration("500ms") == 0.5 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_default_incidents_align_to_windows_and_need_enough_room() -> None:
    start = DEFAULT_START_US + 17 * US  # not on a window boundary
    incs = default_incidents(["a", "b", "c", "d", "e", "f"], start, 700, 60)
    assert len({i.kind for i in incs}) == 6 and len({i.tenant for i in incs}) == 6
    for inc in incs:
        assert (start + int(inc.start_s * US)) % W_US == 0 and inc.end_s - inc.start_s == 180
    swap = next(i for i in incs if isinstance(i, ModelSwap))
    assert swap.start_s >= (DEFAULT_SPIKE.warmup + 1) * 60 - 60
    with pytest.raises(ValueError, match="whole windows"):
        default_incidents(["a", "b", "c"], DEFAULT_START_US, 300, 60)
    with pytest.raises(ValueError, match="tenants"):
        default_incidents(["a", "b"], DEFAULT_START_US, 600, 60)


def test_rate_sizes_the_fleet() -> None:
    slow = FleetSimulator(seed=2, tenants=4, duration_s=300, rate=40.0)
    fast = FleetSimulator(seed=2, tenants=4, duration_s=300, rate=160.0)
    assert fast.expected_rate == pytest.approx(4 * slow.expected_rate, rel=0.15)
    n = sum(1 for _ in slow.events())
    assert n / 300 == pytest.approx(40.0, rel=0.35)


# -- the command line ---------------------------------------------------------------------------------------------


def cli_main(argv: list[str]) -> int:
    """``agentwatch simulate ...`` through the subcommand's own parser (independent of the other subcommands)."""
    parser = argparse.ArgumentParser(prog="agentwatch")
    simulate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args, Settings.from_env())


def test_token_bucket_paces_on_its_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(100.0, burst=10, clock=lambda: now[0], sleep=sleep)
    for _ in range(110):
        bucket.take()
    assert now[0] == pytest.approx(1.0, abs=0.02)  # 10 from the burst, 100 at 100/s


def test_cli_dry_run_writes_the_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "truth.json"
    code = cli_main(["simulate", "--dry-run", "--seed", "3", "--tenants", "3", "--duration", "2m",
                     "--fleet-rate", "30", "--incidents", "none", "--truth", str(out), "--window", "30", "-q"])
    assert code == 0
    truth = json.loads(out.read_text())
    assert truth["format"] == "agentwatch-ground-truth/1" and truth["window_s"] == 30
    assert truth["params"]["complete"] is True and truth["params"]["seed"] == 3
    assert truth["totals"] == truth_from_events(small_sim(incidents=[]).events(), 30)["totals"]
    printed = capsys.readouterr().out
    assert "acme" in printed and str(out) in printed


def test_cli_short_run_goes_without_default_incidents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    assert cli_main(["simulate", "--dry-run", "--duration", "20s", "--fleet-rate", "20", "--truth", str(out),
                     "-q"]) == 0
    assert json.loads(out.read_text())["incidents"] == []
    assert "no incidents" in capsys.readouterr().err


def test_cli_rejects_a_bad_incident_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"kind": "nope"}]')
    assert cli_main(["simulate", "--dry-run", "--incidents", str(bad), "--truth", str(tmp_path / "t.json")]) == 2


def consume_events(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    codec = AvroCodec()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"sim-test-{topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    events: list[dict[str, Any]] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + timeout_s
        while len(events) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    events.extend(codec.decode(msg.value()).events)
        # nothing more than expected arrives
        for msg in consumer.consume(1000, timeout=1.0):
            if msg.error() is None:
                events.extend(codec.decode(msg.value()).events)
    finally:
        consumer.close()
    return events


def test_simulate_to_kafka_matches_the_truth(kafka_bootstrap: str, make_topic: Any, tmp_path: Path) -> None:
    topic = make_topic(partitions=3)
    out = tmp_path / "truth.json"
    code = cli_main(["simulate", "--seed", "3", "--tenants", "3", "--duration", "2m", "--fleet-rate", "30",
                     "--incidents", "none", "--truth", str(out), "--bootstrap-servers", kafka_bootstrap,
                     "--topic", topic, "--no-create-topic", "-q"])
    assert code == 0
    truth = json.loads(out.read_text())
    consumed = consume_events(kafka_bootstrap, topic, truth["totals"]["events"])
    assert len(consumed) == truth["totals"]["events"] > 2000
    recount = truth_from_events(consumed, truth["window_s"])
    for key in ("totals", "tenants", "windows", "crossings"):
        assert recount[key] == truth[key], key
    # per session, Kafka kept the order (one session -> one partition)
    seqs: dict[str, list[int]] = defaultdict(list)
    for ev in consumed:
        seqs[ev["session_id"]].append(ev["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())
    assert hashlib.sha256(json.dumps(sorted(e["event_id"] for e in consumed)).encode()).hexdigest() == \
        hashlib.sha256(json.dumps(sorted(e["event_id"] for e in small_sim(incidents=[]).events())).encode()
                       ).hexdigest()


def test_simulate_exits_non_zero_and_says_where_undelivered_events_are(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    spool = tmp_path / "spool"
    code = cli_main(["simulate", "--seed", "1", "--tenants", "2", "--duration", "30s", "--fleet-rate", "20",
                     "--incidents", "none", "--truth", str(tmp_path / "truth.json"), "--bootstrap-servers",
                     "127.0.0.1:9", "--topic", "t", "--no-create-topic", "--spool-dir", str(spool),
                     "--flush-timeout", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    generated = json.loads((tmp_path / "truth.json").read_text())["totals"]["events"]
    assert f"simulate: NOT everything reached Kafka: 0 of {generated:,} events delivered; {generated:,} not " \
           f"delivered, kept in the spool {spool}" in err
