"""Sub-agent usage counted once (issue 10 item 3): the ledger's rule, and a real Agentao agent with a delegated turn.

The acceptance test runs Agentao 0.5.17 against the fake OpenAI server: the parent delegates to ``agent_generalist``,
whose child makes two LLM calls Agentao does not forward. Tokens per tenant, folded by the worker's aggregate, the
ground truth and the exporter from the bridge's events (through the Avro codec), must equal Agentao's own
``usage_snapshot()``; cost must equal genai-prices' price of the calls the fake server answered. Then the same run
with the child's calls forwarded (what a future Agentao may do, simulated by widening Agentao's forwarder): the
same totals, nothing counted twice.
"""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ground_truth import truth_from_events
from producers.mapping import TOKEN_FIELDS
from producers.subagent_usage import SubagentUsageLedger
from schemas.codec import AvroCodec
from sinks.prometheus import ExporterState
from streams.aggregate import TenantWindowAggregate

MODEL = "gpt-4o-mini"  # priced by genai-prices: $0.15 / $0.60 per MTok, cached input $0.075


# -- the rule, on the ledger alone ---------------------------------------------------------------------------


def call(child: str | None, p: int, c: int, cr: int = 0, rs: int = 0, model: str = MODEL) -> dict[str, Any]:
    return {"child_task_id": child, "model": model, "status": "ok", "prompt_tokens": p, "completion_tokens": c,
            "cache_read_tokens": cr, "cache_creation_tokens": 0, "reasoning_tokens": rs, "payload": None}


def lifecycle(child: str, usage: list[int] | None, phase: str = "completed") -> dict[str, Any]:
    out: dict[str, Any] = {"child_task_id": child, "status": phase}
    out.update(dict(zip(TOKEN_FIELDS, usage or [None] * 5, strict=True)))
    return out


def counted(events: list[dict[str, Any]]) -> list[int]:
    """What every sink counts: the token fields of llm_call_completed events."""
    return [sum(e.get(f) or 0 for e in events) for f in TOKEN_FIELDS]


def test_nothing_forwarded_gives_the_whole_run_as_one_tagged_call() -> None:
    ledger = SubagentUsageLedger()
    rest = ledger.settle(lifecycle("c1", [900, 40, 300, 0, 5]), "parent-model")
    assert rest is not None and rest["child_task_id"] == "c1" and rest["model"] == "parent-model"
    assert [rest[f] for f in TOKEN_FIELDS] == [900, 40, 300, 0, 5] and rest["status"] == "ok"
    assert json.loads(rest["payload"])["_subagent_usage"]["forwarded_calls"] == 0
    assert ledger.settle(lifecycle("c1", [900, 40, 300, 0, 5]), None) is None  # a repeated terminal event


def test_everything_forwarded_emits_nothing_and_a_late_forwarded_call_is_not_counted_again() -> None:
    ledger = SubagentUsageLedger()
    a, b = call("c1", 500, 20, 100), call("c1", 400, 20, 200, 5, model="gpt-4o")
    ledger.forwarded(a)
    ledger.forwarded(b)
    assert ledger.settle(lifecycle("c1", [900, 40, 300, 0, 5]), "x") is None
    late = call("c1", 50, 5)
    ledger.forwarded(late)  # after the terminal event: already inside the run's total
    assert late["prompt_tokens"] is None and json.loads(late["payload"])["_usage_counted_in_subagent_total"][
        "prompt_tokens"] == 50
    partial = SubagentUsageLedger()
    partial.forwarded(call("c2", 500, 20, model="gpt-4o"))
    rest = partial.settle(lifecycle("c2", [900, 40, 300, 0, 5], "failed"), "x")
    assert rest is not None and [rest[f] for f in TOKEN_FIELDS] == [400, 20, 300, 0, 5] and rest["model"] == "gpt-4o"


def test_unknown_usage_adds_nothing_and_odd_events_are_ignored() -> None:
    ledger = SubagentUsageLedger()
    assert ledger.settle(lifecycle("c1", None), "m") is None
    assert ledger.settle(lifecycle("c1", [1, 1, 0, 0, 0], "spawned"), "m") is None
    assert ledger.settle({"status": "completed", "prompt_tokens": 5}, "m") is None
    ledger.forwarded({"child_task_id": 7})  # not a string id: ignored, no exception
    bounded = SubagentUsageLedger(max_runs=3)
    for i in range(10):
        bounded.forwarded(call(f"c{i}", 1, 1))
        bounded.settle(lifecycle(f"s{i}", [1, 1, 0, 0, 0]), "m")
    assert len(bounded._open) <= 3 and len(bounded._settled) <= 3


@settings(max_examples=200, deadline=None)
@given(calls=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 500), st.integers(0, 100),
                                st.integers(0, 50), st.sampled_from(["before", "never", "after"])), max_size=8),
       parent=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 500)), max_size=3))
def test_any_mix_of_forwarded_and_unforwarded_child_calls_counts_the_snapshot_once(calls, parent) -> None:
    """usage_snapshot = parent's calls + the child's total; what the sinks count equals it, however the child's
    calls were (or were not) forwarded, before or after the terminal event."""
    ledger = SubagentUsageLedger()
    sent: list[dict[str, Any]] = [call(None, p, c) for p, c in parent]
    child_total = [0] * 5
    for p, c, cr, rs, _when in calls:
        for i, v in enumerate((p + cr, c + rs, cr, 0, rs)):
            child_total[i] += v
    for p, c, cr, rs, when in calls:
        if when == "before":
            ev = call("k", p + cr, c + rs, cr, rs)
            ledger.forwarded(ev)
            sent.append(ev)
    sent.append(lifecycle("k", child_total))  # not counted itself: not an llm_call_completed
    rest = ledger.settle(sent[-1], MODEL)
    if rest is not None:
        sent.append(rest)
    for p, c, cr, rs, when in calls:
        if when == "after":
            ev = call("k", p + cr, c + rs, cr, rs)
            ledger.forwarded(ev)
            sent.append(ev)
    snapshot = [sum(x) for x in zip([sum(p for p, _ in parent), sum(c for _, c in parent), 0, 0, 0], child_total,
                                    strict=True)]
    assert counted([e for e in sent if "model" in e]) == snapshot


# -- a real Agentao agent with a delegated turn -------------------------------------------------------------


agentao = pytest.importorskip("agentao")


class CollectingPublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def publish(self, event: dict[str, Any]) -> bool:
        with self._lock:
            self.events.append(event)
        return True


def _forward_child_llm_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a future Agentao might do: the foreground child's forwarder also passes its llm_call_completed."""
    from agentao.agents.tools._wrapper import AgentToolWrapper
    from agentao.transport.events import AgentEvent, EventType

    original = AgentToolWrapper._make_forwarder

    def make_forwarder(self: Any, max_turns: int, *, child_task_id: str | None = None) -> Any:
        forward = original(self, max_turns, child_task_id=child_task_id)
        sink = self._event_sink

        def widened(event: Any) -> None:
            forward(event)
            if event.type == EventType.LLM_CALL_COMPLETED and sink is not None:
                sink(AgentEvent(EventType.LLM_CALL_COMPLETED, {**event.data, "child_task_id": child_task_id}))

        return widened

    monkeypatch.setattr(AgentToolWrapper, "_make_forwarder", make_forwarder)


def _delegated_session(tmp_path: Path, tenant: str) -> tuple[list[dict[str, Any]], dict[str, int], list[dict]]:
    """One delegated turn plus one plain turn; returns (bridge events, usage_snapshot(), usages served)."""
    import logging

    from agentao import Agentao
    from fakes.openai_server import FakeOpenAIServer, ToolCall, text_reply, tool_reply, usage

    from producers.agentao_bridge import AgentaoBridge

    wd = tmp_path / f"wd-{tenant}"
    wd.mkdir()
    (wd / "notes.txt").write_text("alpha\nbeta\n")
    served = [usage(1000, 20, cached=512),                # parent: delegate
              usage(800, 10, cached=256),                 # child: read_file
              usage(900, 15, cached=768, reasoning=3),    # child: its answer
              usage(1100, 8, cached=1024),                # parent: answer
              usage(1200, 30, reasoning=7)]               # parent: second turn
    log = logging.getLogger(f"agentao-test-{uuid.uuid4().hex}")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    publisher = CollectingPublisher()
    with FakeOpenAIServer(model=MODEL) as srv:
        srv.enqueue(
            tool_reply(ToolCall("agent_generalist", {"task": "read notes.txt and report"}), usage=served[0]),
            tool_reply(ToolCall("read_file", {"file_path": "notes.txt"}), usage=served[1]),
            text_reply("alpha, beta", usage=served[2]),
            text_reply("The notes say alpha and beta.", usage=served[3]),
            text_reply("Nothing else.", usage=served[4]),
        )
        bridge = AgentaoBridge(publisher, tenant=tenant, user_id="u-1", agent_name="main")
        agent = Agentao(api_key="sk-fake", base_url=srv.base_url, model=MODEL, working_directory=wd,
                        transport=bridge.transport(), logger=log, enable_builtin_agents=True)
        try:
            bridge.attach(agent)
            agent.chat("delegate the reading", max_iterations=10)
            agent.chat("anything else?", max_iterations=10)
            snapshot = agent.llm.usage_snapshot()
        finally:
            agent.close()
            bridge.close()
        assert len(srv.served) == len(served), "the child did not run as scripted"
    return publisher.events, snapshot, served


def _through_the_codec(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Encode as the publisher does (payload dicts as JSON text) and decode as every consumer does."""
    codec = AvroCodec()
    sent = [{**e, "payload": json.dumps(e["payload"]) if isinstance(e.get("payload"), dict) else e.get("payload")}
            for e in events]
    return codec.decode(codec.encode_batch("test", 1, sent[0]["producer_time"], sent)).events


def _genai_prices_nusd(usages: list[dict[str, Any]]) -> int:
    from genai_prices import Usage, calc_price

    total = Decimal(0)
    for u in usages:
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        total += calc_price(Usage(input_tokens=u["prompt_tokens"], cache_read_tokens=cached,
                                  output_tokens=u["completion_tokens"], output_reasoning_tokens=reasoning),
                            MODEL).total_price
    return int(total * 10**9)  # gpt-4o-mini's prices are whole nano-USD per token: exact


@pytest.mark.parametrize("forwarded", [False, True], ids=["agentao-0.5.17", "child-calls-forwarded"])
def test_delegated_turn_tokens_and_cost_equal_usage_snapshot_and_genai_prices(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forwarded: bool) -> None:
    if forwarded:
        _forward_child_llm_calls(monkeypatch)
    tenant = f"acme-{forwarded}"
    events, snapshot, served = _delegated_session(tmp_path, tenant)
    decoded = _through_the_codec(events)
    calls = [e for e in decoded if e["type"] == "llm_call_completed"]
    children = [e for e in calls if e["child_task_id"] is not None]
    lifecycle_events = [e for e in decoded if e["type"] == "subagent_lifecycle" and e["status"] == "completed"]
    assert len(lifecycle_events) == 1 and lifecycle_events[0]["prompt_tokens"] == 1700  # the child's usage
    if forwarded:  # the child's two calls as they were, no remainder
        assert len(children) == 2 and all(e["prompt_tokens"] for e in children)
    else:  # one remainder call carrying the child's whole usage
        assert len(children) == 1 and '"_subagent_usage"' in children[0]["payload"]
    assert snapshot["prompt_tokens"] == sum(u["prompt_tokens"] for u in served)  # Agentao rolled the child up

    want_cost = _genai_prices_nusd(served)
    # the worker's fold
    t0 = min(e["event_time"] for e in decoded)
    agg = TenantWindowAggregate(tenant, t0 - t0 % 3_600_000_000, t0 - t0 % 3_600_000_000 + 7_200_000_000)
    for e in decoded:
        agg.add_event(e)
    rec = agg.to_record()
    got = [rec[f] for f in TOKEN_FIELDS]
    assert got == [snapshot[f] for f in TOKEN_FIELDS]
    assert rec["cost_nusd"] == want_cost and rec["llm_calls_unpriced"] == 0
    # the ground truth
    totals = truth_from_events(decoded, window_s=3600)["tenants"][tenant]
    assert [totals["tokens"][k] for k in ("prompt", "completion", "cache_read", "cache_creation", "reasoning")] == got
    assert totals["cost_nusd"] == want_cost
    # the exporter
    codec = AvroCodec()
    state = ExporterState("events")
    state.process_batch([(0, codec.encode_batch("p", 1, t0, decoded))])
    counters = state.events.counters
    assert counters["agent_llm_cost_usd"][(tenant, MODEL)] == want_cost
    assert counters["agent_llm_tokens"][(tenant, MODEL, "prompt")] == snapshot["prompt_tokens"]
