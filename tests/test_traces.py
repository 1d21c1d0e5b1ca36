"""sinks.traces: AgentEvents -> GenAI spans, without Kafka or a backend (pure logic, hypothesis where it fits)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trace_session import CHILD, HOST_SPAN_ID, HOST_TRACE_ID, MODEL, crafted_session

from producers.simulator import FleetSimulator
from sinks.traces import (
    STATUS_ERROR,
    STATUS_OK,
    AssemblerConfig,
    Span,
    TraceAssembler,
    build_turn_spans,
    derived_id,
    parse_traceparent,
)


def _turn(events: list[dict[str, Any]], turn_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("turn_id") == turn_id]


def _by_name(spans: list[Span]) -> dict[str, Span]:
    out: dict[str, Span] = {}
    for s in spans:
        out.setdefault(s.name, s)
    return out


def _shape(spans: list[Span]) -> list[tuple[Any, ...]]:
    """Everything an exporter sends, comparable."""
    return sorted((s.name, s.trace_id, s.span_id, s.parent_span_id, s.start_ns, s.end_ns, s.status,
                   sorted(s.attributes.items(), key=repr), [(e.name, e.time_ns, sorted(e.attributes.items()))
                                                            for e in s.events]) for s in spans)


def test_one_turn_is_one_tree_under_the_hosts_span() -> None:
    spans = build_turn_spans(_turn(crafted_session(), "turn-1"))
    by = _by_name(spans)
    assert [s.name for s in spans].count("chat gpt-5-mini") == 2
    root = by["invoke_agent support"]
    assert spans[0] is root
    assert {s.trace_id for s in spans} == {int(HOST_TRACE_ID, 16)}, "the host's request and the turn: one trace"
    assert root.parent_span_id == int(HOST_SPAN_ID, 16) and root.remote_parent
    assert root.attributes["gen_ai.conversation.id"] == "sess-trace-1"
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "support"
    assert root.status == STATUS_OK

    chat = by["chat gpt-5-mini"]
    assert chat.parent_span_id == root.span_id and chat.kind == "client"
    assert chat.attributes["gen_ai.request.model"] == MODEL
    assert chat.attributes["gen_ai.usage.input_tokens"] == 1200
    assert chat.attributes["gen_ai.usage.output_tokens"] == 80
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert chat.attributes["gen_ai.usage.reasoning.output_tokens"] == 16
    assert "gen_ai.usage.cache_creation.input_tokens" not in chat.attributes, "null stays absent, never 0"
    retries = [e for e in chat.events if e.name == "gen_ai.retry"]
    assert [e.attributes["error.type"] for e in retries] == ["503", "503"]
    assert root.attributes["gen_ai.usage.input_tokens"] == 3200  # the turn's own calls

    shell = by["execute_tool run_shell_command"]
    assert shell.parent_span_id == root.span_id
    assert shell.status == STATUS_ERROR and shell.attributes["error.type"] == "CalledProcessError"
    assert shell.status_message == "exit status 2"
    assert shell.attributes["gen_ai.tool.call.id"] == "call-sh"
    assert [e.name for e in shell.events] == ["agentwatch.confirmation.requested", "agentwatch.confirmation.resolved"]
    assert shell.events[1].attributes["agentwatch.confirmation.outcome"] == "allow"
    assert shell.end_ns - shell.start_ns == 2_400_000_000 + 5_000_000  # tool_output then complete 2.4 s later

    delegate = by["execute_tool generalist"]
    sub = by["invoke_agent generalist"]
    assert sub.parent_span_id == delegate.span_id, "a sub-agent is a child of the tool call that delegated"
    assert sub.attributes["gen_ai.agent.id"] == CHILD
    assert sub.attributes["gen_ai.usage.input_tokens"] == 6067
    read = by["execute_tool read_file"]
    assert read.parent_span_id == sub.span_id and read.status == STATUS_OK
    for s in spans[1:]:
        assert root.start_ns <= s.start_ns <= s.end_ns <= root.end_ns


def test_the_bridges_subagent_usage_event_makes_no_chat_span() -> None:
    from producers.subagent_usage import SubagentUsageLedger

    events = _turn(crafted_session(), "turn-1")
    terminal = next(i for i, e in enumerate(events)
                    if e["type"] == "subagent_lifecycle" and e.get("status") == "completed")
    usage = SubagentUsageLedger().settle(events[terminal], MODEL)
    assert usage is not None and usage["prompt_tokens"] == 6067
    synthetic = dict(events[terminal], **usage, type="llm_call_completed", event_id="e-usage",
                     seq=events[terminal]["seq"], duration_ms=None)
    # a parent LLM call still open when the usage event arrives must not be closed by it
    opened = dict(events[terminal], type="llm_call_started", event_id="e-open", child_task_id=None, model=MODEL)
    base = build_turn_spans([*events, opened])
    spans = build_turn_spans([*events, opened, synthetic])
    assert _shape(spans) == _shape(base)
    assert [s.name for s in spans].count("chat gpt-5-mini") == 3
    assert _by_name(spans)["invoke_agent generalist"].attributes["gen_ai.usage.input_tokens"] == 6067


def test_failed_llm_call_and_llm_error_turn_carry_error_type() -> None:
    events = crafted_session()
    turn2 = _turn(events, "turn-2")
    end = dict(turn2[-1], event_id="e-end", seq=turn2[-1]["seq"] + 1, type="turn_end", status="ok",
               incomplete_reason="llm_error", event_time=turn2[-1]["event_time"] + 1000)
    spans = build_turn_spans([*turn2, end])
    chat = _by_name(spans)["chat gpt-5-mini"]
    assert chat.status == STATUS_ERROR and chat.attributes["error.type"] == "InternalServerError"
    assert spans[0].status == STATUS_ERROR and spans[0].attributes["error.type"] == "llm_error"
    assert spans[0].parent_span_id is None and not spans[0].remote_parent


def test_without_traceparent_ids_are_derived_and_stable_across_replays() -> None:
    events = [dict(e, traceparent=None) for e in crafted_session()]
    a = build_turn_spans(_turn(events, "turn-1"))
    b = build_turn_spans(list(reversed(_turn(events, "turn-1"))))
    assert _shape(a) == _shape(b)
    other = build_turn_spans(_turn([dict(e, session_id="another") for e in events], "turn-1"))
    assert {s.trace_id for s in a}.isdisjoint({s.trace_id for s in other})
    assert len({s.span_id for s in a}) == len(a)
    assert a[0].parent_span_id is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(1, 6))
def test_any_arrival_order_and_split_gives_the_same_spans(rnd: random.Random, duplicates: int) -> None:
    """Records arriving out of order, split, or re-delivered (at-least-once) assemble into the same tree."""
    events = crafted_session(open_second_turn=False)
    expected = _shape(build_turn_spans(_turn(events, "turn-1")))
    turn_ids = {e["event_id"] for e in events if e.get("turn_id")}
    shuffled = events + rnd.sample(events, min(duplicates, len(events)))
    rnd.shuffle(shuffled)
    asm = TraceAssembler(AssemblerConfig(turn_timeout_s=1e9, settle_s=1e9))
    out: list[Span] = []
    for ev in shuffled:
        out += asm.add(ev, now=0.0)
    assert asm.open_turns == 0
    assert _shape(out) == expected
    assert asm.stats.closed_by == {"turn_end": 1}
    # every event is accounted for: in the turn, before it (no turn id), or re-delivered after it closed
    closed_at = min(i for i, e in enumerate(shuffled) if e.get("turn_id")
                    and {x["event_id"] for x in shuffled[:i + 1] if x.get("turn_id")} >= turn_ids)
    assert asm.stats.after_close == sum(1 for e in shuffled[closed_at + 1:] if e.get("turn_id"))
    assert asm.stats.no_turn == sum(1 for e in shuffled if not e.get("turn_id"))


def test_a_turn_that_never_ends_is_closed_after_the_timeout_and_marked() -> None:
    asm = TraceAssembler(AssemblerConfig(turn_timeout_s=60, settle_s=5))
    for ev in _turn(crafted_session(), "turn-2"):
        assert asm.add(ev, now=100.0, position=(3, 7)) == []
    assert asm.expire(now=159.0) == []
    assert asm.held_offsets() == {3: 7}
    spans = asm.expire(now=160.0)
    root = spans[0]
    assert root.status == STATUS_ERROR and root.attributes["error.type"] == "turn_timeout"
    assert root.attributes["agentwatch.turn.closed_by"] == "timeout"
    assert root.attributes["agentwatch.turn.unfinished"] is True
    assert asm.held_offsets() == {} and asm.open_turns == 0
    late = dict(_turn(crafted_session(), "turn-2")[0], event_id="late", type="turn_end")
    assert asm.add(late, now=161.0) == [] and asm.stats.after_close == 1


def test_event_time_closes_a_stuck_turn_only_by_its_own_partitions_clock() -> None:
    """A replay of old data closes stuck turns without waiting on the wall clock; a partition read ahead of
    another does not time out the lagging one's turns."""
    asm = TraceAssembler(AssemblerConfig(turn_timeout_s=60))
    stuck = _turn(crafted_session(), "turn-2")
    for ev in stuck:
        asm.add(ev, now=0.0, position=(0, 1))
    t = stuck[-1]["event_time"]
    ahead = dict(stuck[0], event_id="x", session_id="other", turn_id="t-x", event_time=t + 61_000_000)
    asm.add(ahead, now=0.0, position=(1, 1))
    assert asm.expire(now=0.0) == []
    same = dict(ahead, session_id="other-0", turn_id="t-y")
    asm.add(same, now=0.0, position=(0, 2))
    closed = asm.expire(now=0.0)
    assert [s.attributes.get("agentwatch.turn.id") for s in closed if s.parent_span_id is None] == ["turn-2"]


def test_a_turn_with_a_gap_waits_then_is_marked() -> None:
    turn = _turn(crafted_session(), "turn-1")
    lost = [e for e in turn if e["type"] != "tool_output"]
    asm = TraceAssembler(AssemblerConfig(settle_s=10))
    out: list[Span] = []
    for ev in lost:
        out += asm.add(ev, now=5.0)
    assert out == [] and asm.open_turns == 1, "turn_end came but one seq is missing: wait for it"
    spans = asm.expire(now=15.0)
    assert spans[0].attributes["agentwatch.turn.missing_events"] == 1
    assert spans[0].attributes["agentwatch.turn.closed_by"] == "turn_end"


def test_state_is_bounded_and_overflow_is_counted() -> None:
    asm = TraceAssembler(AssemblerConfig(max_open_turns=3, max_events_per_turn=4))
    out: list[Span] = []
    for i in range(5):
        for ev in _turn(crafted_session(f"s{i}"), "turn-2"):
            out += asm.add(ev, now=float(i))
    assert asm.open_turns == 3
    assert asm.stats.closed_by["evicted"] == 2
    assert {s.attributes["agentwatch.turn.closed_by"] for s in out if s.parent_span_id is None} == {"evicted"}
    asm2 = TraceAssembler(AssemblerConfig(max_events_per_turn=4))
    for ev in _turn(crafted_session(), "turn-1"):
        asm2.add(ev, now=0.0)
    spans = asm2.expire(now=1e9)
    assert asm2.stats.dropped_overflow == len(_turn(crafted_session(), "turn-1")) - 5  # turn_end kept past the cap
    assert spans[0].attributes["agentwatch.turn.dropped_events"] == asm2.stats.dropped_overflow


def test_held_offsets_are_the_oldest_record_of_an_open_turn() -> None:
    asm = TraceAssembler()
    turn1 = _turn(crafted_session(), "turn-1")
    for i, ev in enumerate(turn1[:-1]):
        asm.add(ev, now=0.0, position=(0, 10 + i))
    other = _turn(crafted_session("s2"), "turn-2")
    asm.add(other[0], now=0.0, position=(0, 5))
    asm.add(other[1], now=0.0, position=(2, 50))
    assert asm.held_offsets() == {0: 5, 2: 50}
    assert asm.add(turn1[-1], now=0.0, position=(0, 99))
    assert asm.held_offsets() == {0: 5, 2: 50}


def test_traceparent_parsing() -> None:
    assert parse_traceparent(f"00-{HOST_TRACE_ID}-{HOST_SPAN_ID}-01") == (int(HOST_TRACE_ID, 16),
                                                                          int(HOST_SPAN_ID, 16))
    for bad in (None, "", "00-" + "0" * 32 + f"-{HOST_SPAN_ID}-01", f"ff-{HOST_TRACE_ID}-{HOST_SPAN_ID}-01",
                f"00-{HOST_TRACE_ID}-{HOST_SPAN_ID}", 42, f"00-{HOST_TRACE_ID[:-1]}-{HOST_SPAN_ID}-01"):
        assert parse_traceparent(bad) is None
    assert derived_id(64, "a") != derived_id(64, "b") and 0 < derived_id(64, "a") < 2**64


_TYPES = ["turn_begin", "turn_end", "turn_start", "llm_call_started", "llm_call_completed", "llm_retry", "tool_start",
          "tool_complete", "tool_confirmation", "confirm_resolved", "agent_start", "agent_end", "subagent_lifecycle",
          "tool_lifecycle", "permission_decision", "context_compressed", "unknown"]
_ANY = st.one_of(st.none(), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.floats(allow_nan=True),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_EVENT = st.fixed_dictionaries({
    "type": st.sampled_from(_TYPES), "tenant": st.sampled_from(["a", "b"]), "session_id": st.sampled_from(["s", "t"]),
    "turn_id": st.one_of(st.none(), st.sampled_from(["1", "2"])), "seq": st.one_of(st.integers(-2, 40), _ANY),
    "event_id": st.one_of(st.text(max_size=4), st.none()), "event_time": st.one_of(st.integers(0, 10**7), _ANY),
    "call_id": st.one_of(st.sampled_from(["c1", "c2"]), _ANY), "child_task_id": st.one_of(st.sampled_from(["k"]), _ANY),
    "status": st.one_of(st.sampled_from(["ok", "error", "cancelled", "completed", "failed"]), _ANY),
    "traceparent": st.one_of(st.none(), st.just(f"00-{HOST_TRACE_ID}-{HOST_SPAN_ID}-01"), st.text(max_size=60)),
    "model": _ANY, "tool_name": _ANY, "agent_name": _ANY, "prompt_tokens": _ANY, "error_class": _ANY,
    "payload": st.one_of(st.none(), st.text(max_size=30), st.just('{"parent_tool_call_id":"c1"}'), st.just("[1]")),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=40), st.integers(1, 4))
def test_hostile_events_never_raise_and_every_span_hangs_on_the_tree(events: list[dict[str, Any]],
                                                                     max_open: int) -> None:
    asm = TraceAssembler(AssemblerConfig(max_open_turns=max_open, max_events_per_turn=20))
    spans: list[Span] = []
    for i, ev in enumerate(events):
        spans += asm.add(ev, now=float(i), position=(0, i))
    spans += asm.expire(now=1e12)
    assert asm.open_turns == 0
    assert asm.stats.turns == sum(1 for s in spans if s.parent_span_id is None or s.remote_parent)
    by_trace: dict[int, set[int]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, set()).add(s.span_id)
    for s in spans:
        assert s.start_ns <= s.end_ns
        assert 0 < s.span_id < 2**64 and 0 < s.trace_id < 2**128
        if not s.remote_parent and s.parent_span_id is not None:
            assert s.parent_span_id in by_trace[s.trace_id], f"orphan {s.name}"


def test_a_simulated_fleet_makes_complete_trees_and_accounts_for_every_event() -> None:
    sim = FleetSimulator(seed=3, tenants=2, duration_s=300)
    asm = TraceAssembler()
    spans: list[Span] = []
    events = list(sim.events())
    for i, ev in enumerate(events):
        spans += asm.add(ev, now=0.0, position=(0, i))
    in_open = sum(len(t.events) for t in asm._open.values())
    in_turns = sum(1 for e in events if e.get("turn_id"))
    assert asm.stats.no_turn == len(events) - in_turns
    assert asm.stats.after_close == asm.stats.dropped_overflow == 0
    assert asm.stats.closed_by.keys() == {"turn_end"}, "every closed turn was complete"
    ids = {s.span_id for s in spans}
    assert all(s.parent_span_id in ids for s in spans if s.parent_span_id is not None and not s.remote_parent)
    roots = [s for s in spans if s.parent_span_id is None]
    assert len(roots) == asm.stats.turns > 100
    ends = sum(1 for e in events if e["type"] == "turn_end")
    assert asm.stats.turns == ends and in_open == in_turns - sum(
        1 for e in events if e.get("turn_id") and (e["tenant"], e["session_id"], e["turn_id"]) not in asm._open)
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == sum(1 for e in events if e["type"] == "llm_call_completed"
                             and (e["tenant"], e["session_id"], e["turn_id"]) not in asm._open)
    tokens = sum(s.attributes.get("gen_ai.usage.input_tokens", 0) for s in chats)
    assert tokens == sum(e["prompt_tokens"] or 0 for e in events if e["type"] == "llm_call_completed"
                         and (e["tenant"], e["session_id"], e["turn_id"]) not in asm._open)
    subs = [s for s in spans if s.name.startswith("invoke_agent ") and s.parent_span_id is not None]
    assert subs and all(s.parent_span_id in {c.span_id for c in spans if c.name.startswith("execute_tool")}
                        for s in subs)


def test_otlp_settings_follow_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentwatch.config import DEFAULT_OTLP_TRACES_ENDPOINT, ConfigError, TracesSettings

    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "AGENTWATCH_TRACES_TURN_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    assert TracesSettings.from_env().endpoint == DEFAULT_OTLP_TRACES_ENDPOINT
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert TracesSettings.from_env().endpoint == "http://collector:4318/v1/traces"  # the signal path is appended
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://x.example/custom")
    assert TracesSettings.from_env().endpoint == "https://x.example/custom"  # the per-signal one is used as is
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20abc, x-project = p1")
    conf = TracesSettings.from_env()
    assert conf.headers == {"authorization": "Bearer abc", "x-project": "p1"}
    assert "abc" not in repr(conf), "headers carry API keys: never in a repr"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api_key=k")
    assert TracesSettings.from_env().headers == {"api_key": "k"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "no-equals-sign")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        TracesSettings.from_env()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    monkeypatch.setenv("AGENTWATCH_TRACES_TURN_TIMEOUT_S", "-5")
    with pytest.raises(ConfigError, match="AGENTWATCH_TRACES_TURN_TIMEOUT_S"):
        TracesSettings.from_env()
    monkeypatch.setenv("AGENTWATCH_TRACES_TURN_TIMEOUT_S", "90")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318")
    with pytest.raises(ConfigError, match="http"):
        TracesSettings.from_env()


class _Collect:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def send(self, spans: list[Span]) -> None:
        self.spans += spans


def test_sink_counts_hostile_records_and_commits_with_the_exported_turns_named() -> None:
    """No Kafka: the sink's per-batch logic. Garbage records are counted by reason and lose nothing else; the
    commit stops at the open turn's record and names the finished turn that shares it."""
    from schemas.codec import AvroCodec
    from sinks.traces import turn_tag
    from sinks.traces_sink import METADATA_PREFIX, TracesSink

    codec = AvroCodec()
    events = crafted_session()
    split = next(i for i, e in enumerate(events) if e["type"] == "turn_end")
    # one record holds turn-1's end and turn-2's start, as a batching publisher makes it
    recs = [(0, 0, codec.encode_batch("p", 0, 0, events[:split])), (0, 1, b"\x00garbage"), (0, 2, None),
            (0, 3, codec.encode_batch("p", 1, 0, events[split:]))]
    sender = _Collect()
    sink = TracesSink("unused:9092", "events", sender, codec=codec)
    spans = sink.process(recs)
    sink.export(spans, __import__("threading").Event())
    assert sum(sink.stats.undecodable.values()) == 2 and sink.stats.events == len(events)
    assert len(sender.spans) == 7 and sink.assembler.open_turns == 1
    (tp,) = sink.commit_offsets({0: 4})
    assert tp.offset == 3, "held at the record where the open turn starts"
    assert tp.metadata == METADATA_PREFIX + turn_tag(("acme", "sess-trace-1", "turn-1"))

    # a rerun from that commit skips turn-1's tail instead of exporting a partial copy of it
    again = TracesSink("unused:9092", "events", _Collect(), codec=codec)
    again.skip_from_commits([tp])
    assert again.process([recs[3]]) == []
    tail = [e for e in events[split:] if e.get("turn_id") == "turn-1"]
    assert again.assembler.open_turns == 1 and again.assembler.stats.after_close == len(tail) == 1
    assert again.assembler.stats.events == len(events) - split
