"""Event -> Prometheus metric mapping, units, the cardinality guard, dedup, late events and the HTTP endpoint."""

from __future__ import annotations

import argparse
import urllib.request
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentwatch.commands import exporter as exporter_cmd
from agentwatch.config import Settings
from producers.ground_truth import truth_from_events
from producers.incidents import ConfirmTimeouts, Llm5xxBurst, MaxIterationLoops, ModelSwap, ToolFailure
from producers.simulator import FleetSimulator
from schemas import contract
from schemas.codec import AvroCodec
from sinks.exporter import MetricsServer, SpoolDirCollector
from sinks.prometheus import (
    GENAI_DURATION_BUCKETS_S,
    GENAI_TOKEN_BUCKETS,
    TURN_BUCKETS_S,
    CardinalityGuard,
    CardinalityLimits,
    ExporterState,
    provider_of,
)

T0 = 1_767_225_600_000_000
CODEC = AvroCodec()
_TEMPLATE = dict.fromkeys(contract.event_field_names())


def event(type_: str, n: int = 0, tenant: str = "acme", t_us: int = T0, **fields: Any) -> dict[str, Any]:
    ev = dict(_TEMPLATE, event_id=f"{n:032x}", event_time=t_us, producer_time=t_us + 1000, tenant=tenant,
              session_id="s1", seq=n + 1, type=type_, schema_version=contract.current().version)
    ev.update(fields)
    return ev


def batches(events: list[dict[str, Any]], size: int = 50, producer: str = "p1", partition: int = 0
            ) -> list[tuple[int, bytes]]:
    return [(partition, CODEC.encode_batch(producer, i // size, T0, events[i:i + size]))
            for i in range(0, len(events), size)]


class Scrape:
    """A parsed exposition: ``value(sample_name, **labels)`` and ``series(sample_name)``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.text = generate_latest(registry).decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for fam in self.families.values():
            for s in fam.samples:
                self.samples[s.name].append((s.labels, s.value))

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.samples.get(name, [])

    def value(self, name: str, **labels: str) -> float:
        hits = [v for lab, v in self.series(name) if lab == labels]
        assert len(hits) == 1, (name, labels, self.series(name)[:5])
        return hits[0]

    def total(self, name: str, **match: str) -> float:
        return sum(v for lab, v in self.series(name) if all(lab.get(k) == m for k, m in match.items()))


def state_with(records: list[tuple[int, bytes | None]], **kwargs: Any) -> tuple[ExporterState, Scrape]:
    state = ExporterState("events", **kwargs)
    registry = state.register(CollectorRegistry())
    state.process_batch(records)
    return state, Scrape(registry)


# -- the mapping agrees with the simulator's ground truth ---------------------------------------------------------

@pytest.fixture(scope="module")
def fleet() -> tuple[list[dict[str, Any]], dict[str, Any], Scrape]:
    incidents = (Llm5xxBurst(0, 30, 240), ToolFailure(1, 30, 200), ConfirmTimeouts(2, 30, 240),
                 MaxIterationLoops(3, 30, 240), ModelSwap(1, 100, 200))
    events = list(FleetSimulator(seed=7, tenants=4, duration_s=300, incidents=incidents).events())
    truth = truth_from_events(events)
    totals = truth["totals"]  # the incidents make every mapped branch non-vacuous
    assert min(totals["llm_5xx"], totals["tool_failures"], totals["confirm"]["timeout"], totals["llm_errors"],
               totals["max_iterations_hits"]) > 0, totals
    _, scrape = state_with(batches(events))
    return events, truth, scrape


def test_counters_equal_the_simulator_truth_per_tenant(fleet):
    events, truth, s = fleet
    assert truth["tenants"], "the simulator produced no tenants"
    for tenant, t in truth["tenants"].items():
        assert s.value("agent_turns_total", tenant=tenant) == t["turns"]
        assert s.value("agent_max_iterations_hits_total", tenant=tenant) == t["max_iterations_hits"]
        assert s.total("agent_tool_calls_total", tenant=tenant) == t["tool_calls"]
        assert s.total("agent_tool_failures_total", tenant=tenant) == t["tool_failures"]
        assert s.total("agent_tool_calls_total", tenant=tenant, status="cancelled") == t["tool_cancelled"]
        for tool, per in t["tools"].items():
            assert s.total("agent_tool_calls_total", tenant=tenant, tool=tool) == per["calls"]
            assert s.value("agent_tool_failures_total", tenant=tenant, tool=tool) == per["failures"]
        assert s.total("agent_llm_calls_total", tenant=tenant) == t["llm_calls"]
        assert s.total("agent_llm_calls_total", tenant=tenant, status="error") == t["llm_errors"]
        assert s.total("agent_llm_errors_total", tenant=tenant) == t["llm_errors"]
        assert s.value("agent_llm_attempts_total", tenant=tenant) == t["llm_attempts"]
        failed = {lab["error_type"]: v for lab, v in s.series("agent_llm_failed_attempts_total")
                  if lab["tenant"] == tenant}
        assert failed == {k: float(v) for k, v in t["llm_failed_attempts_by_status"].items()}
        fivexx = sum(v for k, v in failed.items() if k.startswith("5") and len(k) == 3)
        assert fivexx == t["llm_5xx"]
        assert s.total("agent_llm_calls_without_usage_total", tenant=tenant) == t["llm_calls_without_usage"]
        tok = t["tokens"]
        for ttype, key in (("prompt", "prompt"), ("completion", "completion"), ("cached", "cache_read"),
                           ("cache_creation", "cache_creation"), ("reasoning", "reasoning")):
            assert s.total("agent_llm_tokens_total", tenant=tenant, type=ttype) == tok[key], ttype
        for outcome in ("request", "allow", "reject", "timeout"):
            assert s.total("agent_confirm_requests_total", tenant=tenant, outcome=outcome) == t["confirm"][outcome]
        # cost: the same integer nano-USD per model as the truth (exposed in USD), and the unpriced count
        cost = {lab["model"]: round(v * 1e9) for lab, v in s.series("agent_llm_cost_usd_total")
                if lab["tenant"] == tenant}
        assert {k: v for k, v in cost.items() if v} == t["cost_by_model"]
        assert sum(cost.values()) == t["cost_nusd"] > 0
        assert s.total("agent_llm_calls_unpriced_total", tenant=tenant) == t["llm_calls_unpriced"]
    assert s.total("agentwatch_exporter_events_total") == len(events)
    by_type = truth["totals"]["events_by_type"]
    for typ, n in by_type.items():
        assert s.value("agentwatch_exporter_events_total", type=typ) == n


def test_histograms_are_in_seconds_and_agree_with_the_events(fleet):
    events, truth, s = fleet
    for tenant in truth["tenants"]:
        turns = [e["duration_ms"] for e in events if e["type"] == "turn_end" and e["tenant"] == tenant]
        assert s.value("agent_turn_duration_seconds_count", tenant=tenant) == len(turns)
        assert s.value("agent_turn_duration_seconds_sum", tenant=tenant) == pytest.approx(sum(turns) / 1000)
        for bound in TURN_BUCKETS_S:
            le = repr(float(bound))
            expected = sum(1 for d in turns if d / 1000 <= bound)
            assert s.value("agent_turn_duration_seconds_bucket", tenant=tenant, le=le) == expected
    llm = [e for e in events if e["type"] == "llm_call_completed"]
    inputs = [e["prompt_tokens"] for e in llm if e["prompt_tokens"] is not None]
    assert s.total("gen_ai_client_token_usage_count", gen_ai_token_type="input") == len(inputs)
    assert s.total("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(inputs)
    assert s.total("gen_ai_client_operation_duration_seconds_count") == len(llm)
    failed = [e for e in llm if e["status"] == "error"]
    assert s.total("gen_ai_client_operation_duration_seconds_count", error_type="") == len(llm) - len(failed)


def test_units_buckets_and_label_values_on_crafted_events():
    evs = [
        event("turn_end", 0, duration_ms=160),  # exactly on the 0.16 s bound: le is inclusive
        event("turn_end", 1, duration_ms=3001, incomplete_reason="max_iterations"),
        event("turn_end", 2, duration_ms=45_000),  # above the seed's old 30 s top bound: now in 81.92
        event("tool_complete", 3, tool_name="read_file", status="ok", duration_ms=12),
        event("tool_complete", 4, tool_name="read_file", status="error", duration_ms=40),
        event("tool_complete", 5, tool_name="write_file", status="cancelled", duration_ms=0),
        event("llm_call_completed", 6, model="gpt-4.1", status="ok", duration_ms=1200, prompt_tokens=5000,
              completion_tokens=300, cache_read_tokens=4096, cache_creation_tokens=0, reasoning_tokens=None),
        event("llm_call_completed", 7, model="claude-sonnet-4-5", status="error", duration_ms=900,
              http_status=529, error_class="OverloadedError"),
        event("llm_call_completed", 8, model="qwen3-coder-plus", status="error", duration_ms=30_000,
              error_class="ConnectTimeout"),
        event("llm_retry", 9, http_status=503),
        event("llm_retry", 10, error_class="RemoteProtocolError"),
        event("tool_confirmation", 11, tool_name="write_file"),
        event("confirm_resolved", 12, confirm_outcome="timeout"),
        event("confirm_resolved", 13, confirm_outcome="surprise"),
    ]
    _, s = state_with(batches(evs))
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="0.16") == 1
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="2.56") == 1
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="5.12") == 2
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="40.96") == 2
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="81.92") == 3
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="+Inf") == 3
    assert s.value("agent_turn_duration_seconds_sum", tenant="acme") == pytest.approx(48.161)
    assert s.families["agent_turn_duration_seconds"].type == "histogram"
    assert s.value("agent_max_iterations_hits_total", tenant="acme") == 1
    assert s.value("agent_tool_calls_total", tenant="acme", tool="read_file", status="error") == 1
    assert s.value("agent_tool_failures_total", tenant="acme", tool="read_file") == 1
    assert s.value("agent_tool_failures_total", tenant="acme", tool="write_file") == 0  # exists at 0
    assert s.value("agent_tool_duration_seconds_sum", tenant="acme", tool="read_file") == pytest.approx(0.052)
    assert s.value("agent_llm_tokens_total", tenant="acme", model="gpt-4.1", type="cached") == 4096
    assert not [lab for lab, _ in s.series("agent_llm_tokens_total") if lab["type"] == "reasoning"]  # null: none
    assert s.value("agent_llm_errors_total", tenant="acme", error_type="529") == 1  # the HTTP status wins
    assert s.value("agent_llm_errors_total", tenant="acme", error_type="ConnectTimeout") == 1
    assert s.value("agent_llm_failed_attempts_total", tenant="acme", error_type="503") == 1
    assert s.value("agent_llm_failed_attempts_total", tenant="acme", error_type="RemoteProtocolError") == 1
    assert s.value("agent_llm_attempts_total", tenant="acme") == 5
    assert s.value("agent_llm_calls_without_usage_total", tenant="acme", model="claude-sonnet-4-5") == 1
    assert s.value("agent_confirm_requests_total", tenant="acme", outcome="request") == 1
    assert s.value("agent_confirm_requests_total", tenant="acme", outcome="timeout") == 1
    assert s.value("agent_confirm_requests_total", tenant="acme", outcome="other") == 1
    # OTel GenAI: advised buckets, token types, provider, error_type only when failed
    les = [lab["le"] for lab, _ in s.series("gen_ai_client_token_usage_bucket")
           if lab["gen_ai_token_type"] == "input"]
    assert [float(x) for x in les[:-1]] == list(GENAI_TOKEN_BUCKETS) and les[-1] == "+Inf"
    gen = dict(gen_ai_operation_name="chat", gen_ai_provider_name="openai", gen_ai_request_model="gpt-4.1")
    assert s.value("gen_ai_client_token_usage_sum", **gen, gen_ai_token_type="input") == 5000
    assert s.value("gen_ai_client_token_usage_bucket", **gen, gen_ai_token_type="input", le="4096.0") == 0
    assert s.value("gen_ai_client_token_usage_bucket", **gen, gen_ai_token_type="input", le="16384.0") == 1
    assert s.value("gen_ai_client_token_usage_sum", **gen, gen_ai_token_type="output") == 300
    dur_les = sorted({float(lab["le"]) for lab, _ in s.series("gen_ai_client_operation_duration_seconds_bucket")
                      if lab["le"] != "+Inf"})
    assert dur_les == list(GENAI_DURATION_BUCKETS_S)
    assert s.value("gen_ai_client_operation_duration_seconds_sum", **gen, error_type="") == pytest.approx(1.2)
    assert s.value("gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="chat",
                   gen_ai_provider_name="anthropic", gen_ai_request_model="claude-sonnet-4-5", error_type="529") == 1
    assert s.value("gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="chat",
                   gen_ai_provider_name="_OTHER", gen_ai_request_model="qwen3-coder-plus",
                   error_type="ConnectTimeout") == 1
    # no tokens reported -> no token-usage observation for that call
    assert not [lab for lab, _ in s.series("gen_ai_client_token_usage_count")
                if lab["gen_ai_request_model"] == "claude-sonnet-4-5"]
    # every agent_* series carries the tenant
    for name, series in s.samples.items():
        if name.startswith("agent_"):
            assert all("tenant" in lab for lab, _ in series), name


def test_provider_inference():
    assert provider_of("gpt-4.1-mini") == "openai"
    assert provider_of("o4-mini") == "openai"
    assert provider_of("claude-haiku-4-5") == "anthropic"
    assert provider_of("deepseek-chat") == "deepseek"
    assert provider_of("openai/gpt-4o") == "openai"
    assert provider_of("qwen3-coder-plus") == "_OTHER"
    assert provider_of(None) == "_OTHER"


# -- cardinality guard ---------------------------------------------------------------------------------------------

def test_a_tenant_with_ten_thousand_tool_names_is_folded_into_other_and_counted():
    limits = CardinalityLimits(max_tenants=10, max_values=50)
    hostile = [event("tool_complete", i, tenant="evil", tool_name=f"tool_{i}", status="ok", duration_ms=5)
               for i in range(10_000)]
    normal = [event("tool_complete", i, tenant="acme", tool_name=f"t{i % 3}", status="ok", duration_ms=5)
              for i in range(30)]
    _, s = state_with(batches(hostile + normal, size=500), limits=limits)
    evil = [lab["tool"] for lab, _ in s.series("agent_tool_calls_total") if lab["tenant"] == "evil"]
    assert len(set(evil)) == 51 and "other" in evil
    assert len(evil) == 51 * 3  # each admitted tool's three statuses, created at 0 with its first call
    assert set(evil) - {"other"} == {f"tool_{i}" for i in range(50)}  # first come, first kept
    assert s.value("agent_tool_calls_total", tenant="evil", tool="other", status="ok") == 10_000 - 50
    assert s.total("agent_tool_calls_total", tenant="evil") == 10_000  # folded, never lost
    assert s.value("agentwatch_exporter_label_overflow_total", tenant="evil", label="tool") == 10_000 - 50
    assert {lab["tool"] for lab, _ in s.series("agent_tool_calls_total") if lab["tenant"] == "acme"} == {
        "t0", "t1", "t2"}
    assert len(s.text) < 200_000  # the exposition stays small


def test_tenant_cap_long_values_and_stable_admission():
    guard = CardinalityGuard(CardinalityLimits(max_tenants=2, max_values=2, max_value_length=10))
    assert [guard.tenant(t) for t in ("a", "b", "c", "a", None)] == ["a", "b", "other", "a", "other"]
    assert guard.overflow[("other", "tenant")] == 2
    assert guard.value("a", "tool", "x" * 11) == "other"  # too long: never admitted
    assert [guard.value("a", "tool", v) for v in ("x", "y", "z", "x", "y")] == ["x", "y", "other", "x", "y"]
    assert guard.value("b", "tool", "z") == "z"  # per tenant
    assert guard.overflow[("a", "tool")] == 2


def test_tenant_cap_in_the_exposition():
    evs = [event("turn_end", i, tenant=f"t{i}", duration_ms=10) for i in range(20)]
    _, s = state_with(batches(evs), limits=CardinalityLimits(max_tenants=5))
    tenants = {lab["tenant"] for lab, _ in s.series("agent_turns_total")}
    assert tenants == {"t0", "t1", "t2", "t3", "t4", "other"}
    assert s.value("agent_turns_total", tenant="other") == 15
    assert s.value("agentwatch_exporter_label_overflow_total", tenant="other", label="tenant") == 15
    assert s.value("agentwatch_exporter_tracked_tenants") == 5


# -- records: decode outcomes, dedup, late events, partitions -------------------------------------------------------

def test_undecodable_and_duplicate_records_are_counted_not_folded():
    evs = [event("turn_end", i, duration_ms=10) for i in range(10)]
    one = CODEC.encode_batch("p1", 1, T0, evs)
    records = [(0, one), (0, one), (1, one), (0, b"\x00garbage"), (0, None), (0, CODEC.encode_event(evs[0]))]
    state, s = state_with(records)
    assert s.value("agent_turns_total", tenant="acme") == 10 + 10 + 1  # same batch on another partition counts
    assert s.value("agentwatch_exporter_records_total", outcome="ok") == 3
    assert s.value("agentwatch_exporter_records_total", outcome="duplicate") == 1
    assert s.value("agentwatch_exporter_duplicate_events_total") == 10
    assert s.value("agentwatch_exporter_records_total", outcome="undecodable") == 2
    assert s.total("agentwatch_exporter_undecodable_records_total") == 2
    assert {lab["reason"] for lab, _ in s.series("agentwatch_exporter_undecodable_records_total")} >= {"empty"}
    state.forget([0])  # a new owner of partition 0 has no memory of the batch
    state.process_batch([(0, one)])
    assert Scrape(_registry(state)).value("agent_turns_total", tenant="acme") == 31


def _registry(state: ExporterState) -> CollectorRegistry:
    return state.register(CollectorRegistry())


def test_late_events_are_measured_against_their_partitions_stream_time():
    minute = 60_000_000
    p0 = [event("turn_end", 0, t_us=T0 + 10 * minute), event("turn_end", 1, t_us=T0 + 9 * minute + 30_000_000),
          event("turn_end", 2, t_us=T0 + 8 * minute, tenant="beta")]
    p1 = [event("turn_end", 3, t_us=T0)]  # far behind partition 0, but partition 1 has its own stream time
    state, s = state_with(batches(p0, partition=0) + batches(p1, partition=1, producer="p2"), lateness_s=60)
    assert s.series("agentwatch_exporter_late_events_total") == [({"tenant": "beta"}, 1.0)]
    assert s.value("agentwatch_exporter_stream_time_seconds", topic="events", partition="0") == (
        T0 + 10 * minute) / 1e6
    assert s.value("agent_turns_total", tenant="beta") == 1  # late events still count
    state.set_lag(1, 42)
    s = Scrape(_registry(state))
    assert s.value("agentwatch_exporter_consumer_lag", topic="events", partition="1") == 42
    assert s.value("agentwatch_exporter_assigned_partitions") == 2
    state.forget([1])
    s = Scrape(_registry(state))
    assert not [lab for lab, _ in s.series("agentwatch_exporter_consumer_lag") if lab["partition"] == "1"]


# -- exposition over HTTP, spool observation, the command ------------------------------------------------------------

def test_metrics_endpoint_serves_the_text_format_over_http():
    state = ExporterState("events")
    registry = _registry(state)
    state.process_batch(batches([event("turn_end", 0, duration_ms=1500)]))
    server = MetricsServer(registry, port=0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            ctype = resp.headers["Content-Type"]
            body = resp.read().decode()
    finally:
        server.close()
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert fams["agent_turns"].type == "counter"
    assert [s.value for s in fams["agent_turns"].samples if s.name == "agent_turns_total"] == [1.0]
    assert "# TYPE agent_turn_duration_seconds histogram" in body


def test_spool_dir_collector_reports_segment_files(tmp_path):
    (tmp_path / "seg-00000001.spool").write_bytes(b"x" * 100)
    (tmp_path / "seg-00000002.spool").write_bytes(b"x" * 23)
    (tmp_path / "checkpoint").write_text("{}")
    registry = CollectorRegistry()
    registry.register(SpoolDirCollector(tmp_path))
    s = Scrape(registry)
    assert s.value("agentwatch_producer_spool_observed_bytes", path=str(tmp_path)) == 123
    assert s.value("agentwatch_producer_spool_observed_segments", path=str(tmp_path)) == 2
    missing = CollectorRegistry()
    missing.register(SpoolDirCollector(tmp_path / "nope"))
    assert Scrape(missing).value("agentwatch_producer_spool_observed_bytes", path=str(tmp_path / "nope")) == 0


def test_exporter_command_builds_a_registry_from_flags(tmp_path):
    parser = argparse.ArgumentParser()
    exporter_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["exporter", "--port", "0", "--max-tenants", "3", "--max-tools", "2",
                              "--spool-dir", str(tmp_path)])
    settings = Settings(bootstrap_servers="127.0.0.1:9", home=tmp_path)
    exporter, registry = exporter_cmd.build(args, settings)
    assert exporter.topic == settings.topics.events and exporter.dead_letter_topic == settings.topics.dead_letter
    exporter.state.process_batch(batches(
        [event("tool_complete", i, tenant=f"t{i % 5}", tool_name=f"x{i}", status="ok") for i in range(20)]))
    s = Scrape(registry)
    assert {lab["tenant"] for lab, _ in s.series("agent_tool_calls_total")} == {"t0", "t1", "t2", "other"}
    assert len({lab["tool"] for lab, _ in s.series("agent_tool_calls_total") if lab["tenant"] == "t0"}) == 3  # 2+other
    assert s.series("process_cpu_seconds_total") or s.series("python_info")
    assert s.value("agentwatch_producer_spool_observed_bytes", path=str(tmp_path)) == 0


def test_turn_buckets_are_otels_genai_boundaries_reaching_ten_minutes():
    """Issue 10: real turns took 37-164 s and the old top bucket (30 s) made p95/p99 read exactly 30 s."""
    assert TURN_BUCKETS_S[:len(GENAI_DURATION_BUCKETS_S)] == GENAI_DURATION_BUCKETS_S
    assert TURN_BUCKETS_S[-1] >= 600 and list(TURN_BUCKETS_S) == sorted(set(TURN_BUCKETS_S))
    evs = [event("turn_end", i, duration_ms=ms) for i, ms in enumerate((37_000, 164_000, 590_000))]
    _, s = state_with(batches(evs))
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="40.96") == 1
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="163.84") == 1
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="327.68") == 2
    assert s.value("agent_turn_duration_seconds_bucket", tenant="acme", le="655.36") == 3, "none only in +Inf"


def test_known_series_exist_at_zero_before_their_first_event():
    """rate()/increase() need a sample before the first increment: a series born at 1 shows no increase."""
    _, s = state_with(batches([event("llm_call_completed", 0, model="gpt-4.1", status="ok", prompt_tokens=10,
                                     completion_tokens=2)]))
    assert s.value("agent_turns_total", tenant="acme") == 0
    assert s.value("agent_max_iterations_hits_total", tenant="acme") == 0
    for outcome in ("request", "allow", "reject", "timeout"):
        assert s.value("agent_confirm_requests_total", tenant="acme", outcome=outcome) == 0
    assert s.value("agent_llm_calls_total", tenant="acme", model="gpt-4.1", status="error") == 0
    assert s.value("agent_llm_calls_total", tenant="acme", model="gpt-4.1", status="ok") == 1
    assert not s.series("agent_tool_calls_total")  # no tool seen yet: its name cannot be known
    _, s = state_with(batches([event("tool_complete", 0, tool_name="read_file", status="ok")]))
    assert s.value("agent_tool_calls_total", tenant="acme", tool="read_file", status="error") == 0
    assert s.value("agent_tool_calls_total", tenant="acme", tool="read_file", status="cancelled") == 0
    assert s.value("agent_tool_calls_total", tenant="acme", tool="read_file", status="ok") == 1
    assert not [lab for lab, _ in s.series("agent_llm_tokens_total")], "no token count reported: no token series"


def test_cost_counter_in_usd_unpriced_models_counted_and_overrides_apply():
    from schemas.pricing import PriceTable, default_prices, parse_overrides

    evs = [
        event("llm_call_completed", 0, model="gpt-4.1", status="ok", prompt_tokens=5000, completion_tokens=300,
              cache_read_tokens=4096),
        event("llm_call_completed", 1, model="my-llama", status="ok", prompt_tokens=1_000_000,
              completion_tokens=1_000_000),
        event("llm_call_completed", 2, model="my-llama", status="ok", prompt_tokens=None, completion_tokens=None),
        event("llm_call_completed", 3, model="claude-sonnet-4-5", status="error", http_status=529),
    ]
    gpt = default_prices().cost_nusd("gpt-4.1", T0, 5000, 300, 4096)
    _, s = state_with(batches(evs))
    assert s.value("agent_llm_cost_usd_total", tenant="acme", model="gpt-4.1") == gpt / 1e9
    assert s.value("agent_llm_cost_usd_total", tenant="acme", model="my-llama") == 0
    assert s.value("agent_llm_calls_unpriced_total", tenant="acme", model="my-llama") == 1  # the call with usage
    # a model seen only failing still has its cost series, at 0 (rate() sees its first increment)
    assert s.value("agent_llm_cost_usd_total", tenant="acme", model="claude-sonnet-4-5") == 0
    assert s.value("agent_llm_calls_unpriced_total", tenant="acme", model="claude-sonnet-4-5") == 0
    assert "# TYPE agent_llm_cost_usd_total counter" in s.text
    table = PriceTable(parse_overrides({"models": {"my-llama": {"input_mtok": 0.5, "output_mtok": 1.5}}}))
    _, s = state_with(batches(evs), prices=table)
    assert s.value("agent_llm_cost_usd_total", tenant="acme", model="my-llama") == 2.0
    assert s.total("agent_llm_calls_unpriced_total") == 0
