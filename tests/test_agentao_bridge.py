"""producers.agentao_bridge with the real ``agentao`` package against a local fake OpenAI server.

One scripted session covers parallel tool calls, usage with cached tokens, usage not reported at all, a transient
HTTP 500 (retried), a persistent HTTP 500 (the call fails), a rejected and a timed-out confirmation, a tool that
raises, and an endless tool-call loop stopped by ``max_iterations``. The in-process test checks the events the
bridge hands to its publisher; the Kafka test checks the same session after it went through the real
EventPublisher, the broker and the AvroCodec.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agentao import Agentao
from agentao.tools.base import Tool
from fakes.openai_server import FakeOpenAIServer, ToolCall, error_reply, text_reply, tool_reply, usage
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.agentao_bridge import AgentaoBridge
from producers.stamp import Stamper
from schemas.codec import AvroCodec

MODEL = "fake-model"
CONFIRM_TIMEOUT_S = 0.3
LLM_DOWN = "[LLM API error: Error code: 500 - fake upstream failure]"


class ExplodingTool(Tool):
    """A host tool that raises: Agentao reports it as a tool *error* (an "Error: ..." string would be ``ok``)."""

    name = "explode"
    description = "Always raises."
    parameters = {"type": "object", "properties": {"why": {"type": "string"}}, "required": []}

    def execute(self, why: str = "") -> str:
        raise RuntimeError(f"exploded: {why}")


class CollectingPublisher:
    """Stands in for EventPublisher in the in-process tests: keeps what it is given.

    ``completes_captures=True`` acts like EventPublisher's sender: it takes captures (the bridge then defers its
    mapping) and completes them only when ``events`` is read, i.e. after the agent has run on, so a test sees what
    a late sender thread would have mapped."""

    def __init__(self, accept: bool = True, completes_captures: bool = False) -> None:
        self._events: list[Any] = []
        self.accept = accept
        self.completes_captures = completes_captures
        self.captures = 0  # tuples received (stamp captures and deferred mappings)
        self.mapped_later = 0  # deferred mappings: tuples whose first item is no stamper
        self._lock = threading.Lock()

    def publish(self, event: dict[str, Any]) -> bool:
        with self._lock:
            self._events.append(event)
            self.captures += event.__class__ is tuple
            self.mapped_later += event.__class__ is tuple and not hasattr(event[0], "capture")
        return self.accept

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            self._events = [e[0].complete(e) if e.__class__ is tuple else e for e in self._events]
            return self._events


def as_sent(event: dict[str, Any]) -> dict[str, Any]:
    """A deferred (dict) payload serialised the way the publisher's sender thread does."""
    p = event.get("payload")
    return {**event, "payload": json.dumps(p, separators=(",", ":"))} if isinstance(p, dict) else event


def quiet_logger() -> logging.Logger:
    """Given a logger, Agentao writes no ``<wd>/agentao.log`` and does not touch the ``agentao`` logger."""
    log = logging.getLogger(f"agentao-test-{uuid.uuid4().hex}")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


@dataclass
class Conversation:
    session_id: str
    replies: list[str]
    bridge_stats: dict[str, int]
    requests: int
    written: list[str] = field(default_factory=list)


TURNS: list[tuple[str, int]] = [
    ("read notes twice", 100),   # T1 parallel read_file x2, usage with cached tokens
    ("flaky provider", 100),     # T2 one 500 (retried), then an answer without usage
    ("write a copy", 100),       # T3 write_file rejected by the host
    ("write slowly", 100),       # T4 write_file, the host never answers: timeout
    ("explode", 100),            # T5 a tool that raises
    ("provider down", 100),      # T6 five 500s: the call fails, turn ends with llm_error
    ("loop forever", 2),         # T7 endless tool calls, max_iterations=2
]


def run_conversation(publisher: Any, stamper: Any, tmp_path: Path) -> Conversation:
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "notes.txt").write_text("alpha\nbeta\n")
    never = threading.Event()

    def host_confirm(name: str, description: str, args: dict) -> bool:
        if args.get("file_path") == "slow.txt":
            never.wait(30)  # a user who walked away; released at the end
            return True
        return False

    with FakeOpenAIServer(model=MODEL) as srv:
        srv.enqueue(
            tool_reply(ToolCall("read_file", {"file_path": "notes.txt"}),
                       ToolCall("read_file", {"file_path": "notes.txt", "offset": 2}),
                       usage=usage(1200, 40, cached=1024)),
            text_reply("Both read.", usage=usage(1300, 12, cached=1200, reasoning=5)),
            error_reply(500), text_reply("Recovered."),
            tool_reply(ToolCall("write_file", {"file_path": "copy.txt", "content": "x"}), usage=usage(200, 8)),
            text_reply("Not written.", usage=usage(220, 6, cached=0)),
            tool_reply(ToolCall("write_file", {"file_path": "slow.txt", "content": "y"}), usage=usage(230, 8)),
            text_reply("Timed out.", usage=usage(240, 6)),
            tool_reply(ToolCall("explode", {"why": "test"}), usage=usage(250, 7)),
            text_reply("It failed.", usage=usage(260, 5)),
            *[error_reply(500)] * 5,
        )
        bridge = AgentaoBridge(publisher, tenant="acme", user_id="u-1", service="svc", agent_name="main",
                               confirm_timeout_s=CONFIRM_TIMEOUT_S, stamper=stamper)
        agent = Agentao(api_key="sk-fake", base_url=srv.base_url, model=MODEL, working_directory=wd,
                        transport=bridge.transport(confirm_tool=host_confirm), logger=quiet_logger(),
                        extra_tools=[ExplodingTool()])
        replies = []
        try:
            bridge.attach(agent)
            for message, max_iterations in TURNS:
                if message == "loop forever":
                    srv.fallback = lambda n: tool_reply(
                        ToolCall("read_file", {"file_path": "notes.txt", "offset": n}), usage=usage(50, 5))
                replies.append(agent.chat(message, max_iterations=max_iterations))
        finally:
            never.set()
            agent.close()
            bridge.close()
        return Conversation(agent._session_id, replies, bridge.stats(), len(srv.served),
                            sorted(p.name for p in wd.iterdir() if not p.name.startswith(".")))


# -- the expected session ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interleave:
    """Per-call sequences from Agentao's tool worker threads: any interleaving is right, each keeps its order."""

    parts: tuple[tuple[tuple[str, str | None], ...], ...]


def llm(texts: int = 0, retries: int = 0) -> list:
    return [("turn_start", None), ("llm_call_started", None), ("llm_call_delta", None),
            *[("llm_retry", None)] * retries, *[("llm_text", None)] * texts, ("llm_call_completed", None)]


def tool_run(cid: str) -> list:
    """tool_start, host lifecycle "started", tool_complete, host lifecycle "completed" (or "failed")."""
    return [("tool_start", cid), ("tool_lifecycle", cid), ("tool_complete", cid), ("tool_lifecycle", cid)]


def allowed_tool(cid: str) -> list:
    return [("permission_decision", cid), *tool_run(cid), ("tool_result", cid)]


def declined_tool(cid: str) -> list:
    return [("permission_decision", cid), ("tool_confirmation", cid), ("confirm_resolved", cid),
            ("turn_start", None), ("tool_start", cid), ("tool_complete", cid), ("tool_lifecycle", cid),
            ("tool_result", cid)]


def turn(*body: Any) -> list:
    return [("turn_begin", None), *[x for part in body for x in part], ("turn_end", None)]


EXPECTED: list = [
    ("session_start", None),
    *turn(llm(), [("permission_decision", "call_1"), ("permission_decision", "call_2"),
                  Interleave((tuple(tool_run("call_1")), tuple(tool_run("call_2")))),
                  ("tool_result", "call_1"), ("tool_result", "call_2")], llm(texts=2)),
    *turn(llm(texts=2, retries=1)),
    *turn(llm(), declined_tool("call_3"), llm(texts=2)),
    *turn(llm(), declined_tool("call_4"), llm(texts=2)),
    *turn(llm(), allowed_tool("call_5"), llm(texts=2)),
    *turn(llm(retries=4)),
    *turn(llm(), allowed_tool("call_6"), llm(), allowed_tool("call_7")),
    ("session_end", None),
]


def linearize(actual: list[tuple[str, str | None]], expected: list) -> list[tuple[str, str | None]]:
    """``expected`` with each Interleave resolved to the actual order when that order is a valid interleaving."""
    out: list[tuple[str, str | None]] = []
    for item in expected:
        if not isinstance(item, Interleave):
            out.append(item)
            continue
        n = sum(len(p) for p in item.parts)
        window = actual[len(out):len(out) + n]
        valid = sorted(window) == sorted(x for p in item.parts for x in p) and all(
            [x for x in window if x[1] == p[0][1]] == list(p) for p in item.parts)
        out.extend(window if valid else [x for p in item.parts for x in p])
    return out


def by_key(events: list[dict[str, Any]], type_: str, call_id: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_ and (call_id is None or e.get("call_id") == call_id)]


def payload(e: dict[str, Any]) -> dict[str, Any]:
    p = e.get("payload")
    return p if isinstance(p, dict) else json.loads(p) if p else {}


def check_session(events: list[dict[str, Any]], conv: Conversation) -> None:
    """The exact events of the scripted session, in ``seq`` order, and the fields downstream reads."""
    assert conv.replies == ["Both read.", "Recovered.", "Not written.", "Timed out.", "It failed.", LLM_DOWN,
                            "Maximum tool call iterations reached."]
    assert conv.bridge_stats == {"published": len(events), "rejected": 0, "errors": 0}
    assert conv.written == ["notes.txt"]  # neither declined write happened, no agentao.log (a logger was given)
    assert conv.requests == 2 + 2 + 2 + 2 + 2 + 5 + 2  # T6: the first attempt and Agentao's 4 retries
    events = sorted(events, key=lambda e: e["seq"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["event_id"] for e in events}) == len(events)
    assert {(e["session_id"], e["tenant"], e["user_id"], e["service"]) for e in events} == \
        {(conv.session_id, "acme", "u-1", "svc")}

    projected = [(e["type"], e["call_id"]) for e in events]
    assert projected == linearize(projected, EXPECTED)

    # Turn ids: one per turn, on every event from turn_begin to turn_end, equal to the runtime's own turn id
    # that host events carry; none outside turns.
    turns: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] | None = None
    for e in events:
        if e["type"] == "turn_begin":
            assert current is None
            current = []
            turns.append(current)
        if current is not None:
            current.append(e)
            if e["type"] == "turn_end":
                current = None
        else:
            assert e["type"] in ("session_start", "session_end"), e["type"]
    assert len(turns) == len(TURNS)
    for t in turns:
        ids = {e["turn_id"] for e in t}
        assert len(ids) == 1 and None not in ids
        for e in t:
            if e["type"] in ("tool_lifecycle", "permission_decision"):
                assert payload(e)["turn_id"] == e["turn_id"]
        end = t[-1]
        assert end["duration_ms"] is not None and end["duration_ms"] >= 0
    assert len({t[0]["turn_id"] for t in turns}) == len(TURNS)
    assert events[0]["turn_id"] is None and events[-1]["turn_id"] is None
    assert by_key(events, "session_start")[0]["model"] == MODEL
    assert payload(events[-1])["_bridge"]["errors"] == 0

    t1, t2, t3, t4, t5, t6, t7 = turns
    # T1: tokens incl. cache reads (no completion_tokens_details sent: Agentao reports reasoning 0, not null).
    c1, c2 = by_key(t1, "llm_call_completed")
    assert (c1["prompt_tokens"], c1["completion_tokens"], c1["cache_read_tokens"], c1["cache_creation_tokens"],
            c1["reasoning_tokens"], c1["finish_reason"], c1["status"], c1["model"]) == \
        (1200, 40, 1024, 0, 0, "tool_calls", "ok", MODEL)
    assert (c2["prompt_tokens"], c2["cache_read_tokens"], c2["reasoning_tokens"], c2["finish_reason"]) == \
        (1300, 1200, 5, "stop")
    for cid in ("call_1", "call_2"):
        (complete,) = by_key(t1, "tool_complete", cid)
        (result,) = by_key(t1, "tool_result", cid)
        assert (complete["tool_name"], complete["status"], result["status"]) == ("read_file", "ok", "ok")
        assert complete["duration_ms"] is not None
        started, completed = by_key(t1, "tool_lifecycle", cid)
        assert payload(started)["phase"] == "started" and completed["status"] == "ok"
    assert by_key(t1, "turn_end")[0]["status"] == "ok" and by_key(t1, "turn_end")[0]["incomplete_reason"] is None

    # T2: a retried 500, then a reply without usage: "not reported" stays null, never 0.
    (retry,) = by_key(t2, "llm_retry")
    assert (retry["http_status"], retry["model"]) == (500, MODEL)
    (c,) = by_key(t2, "llm_call_completed")
    assert c["status"] == "ok" and c["http_status"] is None
    assert [c[k] for k in ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens",
                           "reasoning_tokens")] == [None] * 5

    # T3 / T4: the rejected and the timed-out confirmation.
    for t, cid, outcome in ((t3, "call_3", "reject"), (t4, "call_4", "timeout")):
        (decision,) = by_key(t, "permission_decision", cid)
        assert (decision["permission_decision"], decision["tool_name"]) == ("prompt", "write_file")
        (request,) = by_key(t, "tool_confirmation", cid)
        (resolved,) = by_key(t, "confirm_resolved", cid)
        assert (request["tool_name"], resolved["tool_name"], resolved["confirm_outcome"]) == \
            ("write_file", "write_file", outcome)
        (complete,) = by_key(t, "tool_complete", cid)
        assert (complete["status"], complete["error_message"]) == ("cancelled", "not approved")
        (lifecycle,) = by_key(t, "tool_lifecycle", cid)
        assert (lifecycle["status"], payload(lifecycle)["phase"]) == ("cancelled", "failed")
    (slow,) = by_key(t4, "confirm_resolved")
    assert slow["duration_ms"] >= CONFIRM_TIMEOUT_S * 1000 * 0.9

    # T5: a raising tool.
    (complete,) = by_key(t5, "tool_complete", "call_5")
    assert (complete["tool_name"], complete["status"], complete["error_message"]) == \
        ("explode", "error", "exploded: test")
    failed = by_key(t5, "tool_lifecycle", "call_5")[-1]
    assert (failed["status"], failed["error_class"]) == ("error", "RuntimeError")

    # T6: the provider stays down: four retries then a failed call with its HTTP status.
    assert [r["http_status"] for r in by_key(t6, "llm_retry")] == [500] * 4
    (c,) = by_key(t6, "llm_call_completed")
    assert (c["status"], c["error_class"], c["http_status"], c["model"]) == \
        ("error", "InternalServerError", 500, MODEL)
    assert c["error_message"].startswith("Error code: 500")
    (end,) = by_key(t6, "turn_end")
    assert (end["status"], end["incomplete_reason"]) == ("ok", "llm_error")

    # T7: the bailout is exactly one turn_end with incomplete_reason=max_iterations, detail in its payload.
    (end,) = by_key(t7, "turn_end")
    assert end["incomplete_reason"] == "max_iterations"
    assert payload(end)["_max_iterations"] == [{"cap": 2, "pending_tools": ["read_file"], "action": "stop"}]
    assert [e["seq"] for e in events if e["incomplete_reason"] == "max_iterations"] == [end["seq"]]


# -- in-process tests (no Kafka) -----------------------------------------------------------------------------


@pytest.mark.parametrize("deferred", [False, True], ids=["mapped-inline", "mapped-on-sender"])
def test_scripted_session_events(tmp_path: Path, deferred: bool) -> None:
    publisher = CollectingPublisher(completes_captures=deferred)
    conv = run_conversation(publisher, Stamper(tenant="acme", service="svc"), tmp_path)
    assert (publisher.captures > 0) is deferred
    codec = AvroCodec()  # every event must fit the contract; decoding also fills the schema defaults
    check_session([codec.decode(codec.encode_event(as_sent(e))).events[0] for e in publisher.events], conv)


def test_on_event_never_raises_and_counts() -> None:
    class Boom:
        def publish(self, event: dict[str, Any]) -> bool:
            raise RuntimeError("publisher broke")

    @dataclass
    class Ev:
        type: Any
        data: Any

    bridge = AgentaoBridge(Boom(), tenant="t", session_id="s", stamper=Stamper(tenant="t"))
    bridge.on_event(Ev("tool_start", {"tool": "x"}))
    bridge.on_event(object())  # no type / data at all
    bridge.host_observer(object())
    assert bridge.stats() == {"published": 0, "rejected": 0, "errors": 3}

    rejecting = CollectingPublisher(accept=False)
    bridge = AgentaoBridge(rejecting, tenant="t", session_id="s", stamper=Stamper(tenant="t"))
    bridge.on_event(Ev("not_a_known_type", {"k": {1, 2}}))
    assert bridge.stats() == {"published": 0, "rejected": 1, "errors": 0}
    (e,) = rejecting.events
    assert e["type"] == "unknown" and payload(e) == {"k": "{1, 2}", "_agentao_type": "not_a_known_type"}


@pytest.mark.parametrize("deferred", [False, True], ids=["mapped-inline", "mapped-on-sender"])
def test_concurrent_tool_threads_share_the_turn_and_seq_stays_gap_free(deferred: bool) -> None:
    @dataclass
    class Ev:
        type: str
        data: dict

    publisher = CollectingPublisher(completes_captures=deferred)
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s-conc", stamper=Stamper(tenant="t"))
    bridge.on_event(Ev("turn_begin", {"user_message": "go"}))
    turn_id = bridge.turn_id
    n_threads, per_thread = 8, 250
    barrier = threading.Barrier(n_threads)

    def work(i: int) -> None:
        barrier.wait()
        for j in range(per_thread):
            bridge.on_event(Ev("tool_output", {"tool": "run_shell_command", "chunk": f"{i}:{j}",
                                               "call_id": f"c{i}"}))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bridge.on_event(Ev("turn_end", {"status": "ok"}))
    events = publisher.events
    assert len(events) == n_threads * per_thread + 2
    assert sorted(e["seq"] for e in events) == list(range(1, len(events) + 1))
    assert {e["turn_id"] for e in events} == {turn_id}
    assert bridge.turn_id is None and bridge.stats()["errors"] == 0
    for i in range(n_threads):  # one thread's events keep their order in seq
        mine = sorted((e for e in events if e.get("call_id") == f"c{i}"), key=lambda e: e["seq"])
        assert [payload(e)["chunk"] for e in mine] == [f"{i}:{j}" for j in range(per_thread)]


def test_confirm_wrapper_outcomes_and_host_errors() -> None:
    @dataclass
    class Ev:
        type: str
        data: dict

    publisher = CollectingPublisher()
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", confirm_timeout_s=0.05,
                           stamper=Stamper(tenant="t"))
    release = threading.Event()
    confirm = bridge.confirm_tool(lambda name, desc, args: release.wait(5) or True)
    bridge.on_event(Ev("tool_confirmation", {"tool": "[generalist 1/100] write_file", "args": {}, "call_id": "c9"}))
    t0 = time.monotonic()
    assert confirm("[generalist] write_file", "d", {}) is False
    assert time.monotonic() - t0 < 2
    release.set()

    def broken(name: str, desc: str, args: dict) -> bool:
        raise KeyError("ui gone")

    with pytest.raises(KeyError):
        bridge.confirm_tool(broken)("shell", "d", {})
    assert bridge.confirm_tool(lambda *a: 1)("shell", "d", {}) is True
    timeout_ev, error_ev, allow_ev = by_key(publisher.events, "confirm_resolved")
    assert (timeout_ev["confirm_outcome"], timeout_ev["call_id"], timeout_ev["tool_name"]) == \
        ("timeout", "c9", "write_file")
    assert (error_ev["confirm_outcome"], error_ev["error_class"], error_ev["call_id"]) == (None, "KeyError", None)
    assert allow_ev["confirm_outcome"] == "allow"
    with pytest.raises(ValueError):
        AgentaoBridge(publisher, tenant="t", confirm_timeout_s=0, stamper=Stamper(tenant="t"))


def test_max_iterations_continue_then_stop_is_one_bailout() -> None:
    @dataclass
    class Ev:
        type: str
        data: dict

    publisher = CollectingPublisher()
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"))
    actions = iter([{"action": "continue"}, {}])
    on_max = bridge.on_max_iterations(lambda count, pending: next(actions))
    bridge.on_event(Ev("turn_begin", {"user_message": "x"}))
    assert on_max(5, [{"name": "read_file", "args": "{}"}]) == {"action": "continue"}
    assert on_max(5, []) == {}
    bridge.on_event(Ev("turn_end", {"status": "ok", "incomplete_reason": "max_iterations"}))
    bridge.on_event(Ev("turn_begin", {"user_message": "y"}))
    bridge.on_event(Ev("turn_end", {"status": "ok", "incomplete_reason": None}))
    first, second = by_key(publisher.events, "turn_end")
    assert payload(first)["_max_iterations"] == [
        {"cap": 5, "pending_tools": ["read_file"], "action": "continue"},
        {"cap": 5, "pending_tools": [], "action": "stop"}]
    assert "_max_iterations" not in payload(second)
    assert bridge.on_max_iterations()(3, []) == {"action": "stop"}


def test_session_id_explicit_or_from_agent(tmp_path: Path) -> None:
    publisher = CollectingPublisher()
    explicit = AgentaoBridge(publisher, tenant="t", session_id="mine", stamper=Stamper(tenant="t"))
    floating = AgentaoBridge(publisher, tenant="t")  # its own Stamper
    agent = Agentao(api_key="sk-fake", base_url="http://127.0.0.1:9/v1", model=MODEL, working_directory=tmp_path,
                    transport=floating.transport(), logger=quiet_logger())
    try:
        before = floating.session_id
        floating.attach(agent)
        explicit.attach(agent)
        assert floating.session_id == agent._session_id != before
        assert explicit.session_id == "mine"
        floating.close()
        floating.close()
    finally:
        agent.close()
    assert [e["type"] for e in publisher.events] == ["session_start", "session_start", "session_end"]
    assert [e["session_id"] for e in publisher.events] == [agent._session_id, "mine", agent._session_id]


def test_fake_server_speaks_openai_with_and_without_streaming() -> None:
    """The fake is checked against the real ``openai`` client, so a script failure is not the fake's."""
    import openai

    with FakeOpenAIServer() as srv:
        client = openai.OpenAI(api_key="sk-fake", base_url=srv.base_url, max_retries=0)
        srv.enqueue(tool_reply(ToolCall("read_file", {"file_path": "a"}), usage=usage(10, 2, cached=4)),
                    text_reply("hello world", usage=usage(3, 2)))
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        (call,) = r.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments), r.choices[0].finish_reason) == \
            ("read_file", {"file_path": "a"}, "tool_calls")
        assert (r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens) == (10, 4)
        chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello world"
        assert chunks[-1].usage.completion_tokens == 2
        with pytest.raises(openai.BadRequestError, match="script exhausted"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        srv.enqueue(error_reply(503))
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert err.value.response.headers["retry-after"] == "0"
        assert [s.body["stream"] if "stream" in s.body else False for s in srv.served] == [False, True, False, False]


# -- through Kafka --------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_scripted_session_through_kafka(kafka_bootstrap: str, make_topic: Any, tmp_path: Path) -> None:
    from confluent_kafka import Consumer

    from producers.publisher import EventPublisher

    topic = make_topic(3)
    with EventPublisher(kafka_bootstrap, topic, spool_dir=tmp_path / "spool") as publisher:
        conv = run_conversation(publisher, Stamper(tenant="acme", service="svc"), tmp_path)
        assert publisher.flush(30)
        stats = publisher.stats  # every event went out as given: none dropped, none needed coercion
        assert (stats["delivered"], stats["dropped"], stats["coerced"]) == (conv.bridge_stats["published"], 0, 0)

    codec = AvroCodec()
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not any(e["type"] == "session_end" for e in events):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            events.extend(e for e in codec.decode(msg.value()).events if e["session_id"] == conv.session_id)
    finally:
        consumer.close()
    check_session(events, conv)


def test_session_start_carries_the_agents_working_directory_into_the_archive(tmp_path: Path) -> None:
    """Issue 10: session_started.cwd arrived null in the replay archive while Agentao's own file has the path."""
    from sinks.archive_store import ArchiveWriter, read_rows

    publisher = CollectingPublisher()
    bridge = AgentaoBridge(publisher, tenant="t", stamper=Stamper(tenant="t"), defer_payload=False)
    wd = tmp_path / "project"
    wd.mkdir()
    agent = Agentao(api_key="sk-fake", base_url="http://127.0.0.1:9/v1", model=MODEL, working_directory=wd,
                    transport=bridge.transport(), logger=quiet_logger())
    try:
        bridge.attach(agent)
        bridge.close()
    finally:
        agent.close()
    start = by_key(publisher.events, "session_start")[0]
    assert payload(start)["cwd"] == str(agent.working_directory)
    with ArchiveWriter(tmp_path / "archive") as w:
        for i, e in enumerate(publisher.events):
            w.add(e, (0, i))
    (path,) = sorted((tmp_path / "archive").rglob("*.jsonl"))
    rows, _bad = read_rows(path)
    started = next(r for r in rows if r["kind"] == "session_started")
    assert started["payload"]["cwd"] == str(agent.working_directory)
    assert started["payload"]["model"] == MODEL


def _same_event(e: dict[str, Any]) -> dict[str, Any]:
    """An event without what differs between two stampings of the same thing (id, time)."""
    return {k: v for k, v in as_sent(e).items() if k not in ("event_id", "event_time", "producer_time")}


BENCH_MIX: list[tuple[str, dict[str, Any]]] = [
    ("turn_begin", {"user_message": "go"}),
    ("llm_call_started", {"model": "m-1", "attempt": 1}),
    ("tool_start", {"tool": "read_file", "call_id": "c1", "args": {"path": "/a"}}),
    ("tool_output", {"tool": "run_shell_command", "call_id": "c2", "chunk": "collected 12 items\n"}),
    ("tool_complete", {"tool": "read_file", "call_id": "c1", "status": "ok", "duration_ms": 12, "error": None}),
    ("llm_text", {"chunk": "Here is the summary."}),
    ("llm_call_completed", {"attempt": 1, "status": "ok", "duration_ms": 840, "prompt_tokens": 2818,
                            "completion_tokens": 48, "error_class": None, "error_message": None}),
    ("llm_retry", {"reason": "status=503", "attempt": 2}),
    ("llm_call_completed", {"status": "error", "error_class": "RateLimitError", "error_message": "slow down"}),
    ("agent_start", {"agent": "generalist", "child_task_id": "t-9"}),
    ("llm_call_completed", {"child_task_id": "t-9", "prompt_tokens": 5, "completion_tokens": 1}),
    ("some_future_type", {"x": 1.5, "flag": True}),
    ("turn_end", {"status": "ok"}),
]


def test_deferred_mapping_stamps_exactly_what_the_inline_path_stamps() -> None:
    @dataclass
    class Ev:
        type: str
        data: dict

    out = []
    for deferred in (False, True):
        publisher = CollectingPublisher(completes_captures=deferred)
        bridge = AgentaoBridge(publisher, tenant="t", session_id="s", service="svc", agent_name="main",
                               stamper=Stamper(tenant="t"))
        for name, data in BENCH_MIX:
            bridge.on_event(Ev(name, dict(data)))
        # which events left the agent's thread unmapped: those that feed no bridge state (not: turn begin and end,
        # llm_call_started, the child's own llm_call_completed); tool_start's args dict travels as its JSON text
        assert publisher.captures == (len(BENCH_MIX) if deferred else 0)
        assert publisher.mapped_later == (len(BENCH_MIX) - 4 if deferred else 0)
        out.append([_same_event(e) for e in publisher.events])
        assert bridge.stats() == {"published": len(BENCH_MIX), "rejected": 0, "errors": 0}
    inline, deferred_events = out
    assert [e.pop("turn_id") is not None for e in inline] == [e.pop("turn_id") is not None for e in deferred_events]
    assert inline == deferred_events
    completed = [e for e in deferred_events if e["type"] == "llm_call_completed"]
    assert [e["model"] for e in completed] == ["m-1", "m-1", "m-1"]  # the model fallback survives deferral


def test_data_changed_after_the_callback_does_not_change_the_deferred_event() -> None:
    """SdkTransport hands the same event to its subscribers after on_event returns; one may rebind a key."""
    @dataclass
    class Ev:
        type: str
        data: dict

    publisher = CollectingPublisher(completes_captures=True)
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"))
    ev = Ev("tool_output", {"tool": "run_shell_command", "call_id": "c1", "chunk": "secret-free text"})
    args = {"path": "/a"}
    start = Ev("tool_start", {"tool": "read_file", "call_id": "c2", "args": args})
    bridge.on_event(ev)
    bridge.on_event(start)
    ev.data["chunk"] = "changed"
    ev.data["tool"] = "other"
    args["path"] = "/changed"  # a container: serialised on the agent's thread, so the change is not seen either
    assert publisher.mapped_later == 2
    out, started = publisher.events
    assert (out["tool_name"], payload(out)["chunk"]) == ("run_shell_command", "secret-free text")
    assert payload(started)["args"] == {"path": "/a"}


def test_a_publisher_that_does_not_complete_captures_gets_dicts() -> None:
    @dataclass
    class Ev:
        type: str
        data: dict

    publisher = CollectingPublisher()  # no completes_captures
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s")
    bridge.on_event(Ev("llm_text", {"chunk": "hi"}))
    assert publisher.captures == 0 and publisher.events[0]["type"] == "llm_text"
    forced = CollectingPublisher()
    bridge = AgentaoBridge(forced, tenant="t", session_id="s", defer_mapping=True)
    bridge.on_event(Ev("llm_text", {"chunk": "hi"}))
    assert forced.mapped_later == 1 and forced.events[0]["type"] == "llm_text"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                     st.sampled_from([float("nan"), float("inf"), 1e300]),
                     st.sampled_from(["status=503", "ok", "error", "[generalist 1/3] read_file", "RateLimitError"]))
_json_like = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 9)), inner, max_size=4)), max_leaves=12)
_lift_keys = st.sampled_from(["tool", "call_id", "status", "duration_ms", "prompt_tokens", "model", "error",
                              "error_message", "error_class", "finish_reason", "reason", "args", "chunk", "x"])


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["tool_start", "tool_result", "llm_call_completed", "llm_retry", "tool_output",
                             "some_future_type"]),
       data=st.dictionaries(st.one_of(_lift_keys, _lift_keys, _lift_keys, st.integers(0, 3)), _json_like,
                            max_size=6))
def test_deferred_events_equal_the_inline_ones_whatever_the_data(name: str, data: dict[str, Any]) -> None:
    """Property: whatever the data (containers, str Enums aside: odd keys, NaN, big ints, tuples, lift keys holding
    containers), on_event's deferred path (a shallow copy, or the JSON snapshot of data holding containers) stamps
    the event the inline mapping stamps; data it cannot snapshot faithfully is mapped inline."""
    @dataclass
    class Ev:
        type: str
        data: dict

    out = []
    for deferred in (False, True):
        publisher = CollectingPublisher(completes_captures=deferred)
        bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"))
        bridge.on_event(Ev("llm_call_started", {"model": "m-1"}))
        bridge.on_event(Ev(name, dict(data)))
        bridge.on_event(Ev(name, dict(data)))  # the session's counter exists now: the inline capture
        out.append([_same_event(e) for e in publisher.events])
        assert bridge.stats() == {"published": 3, "rejected": 0, "errors": 0}
    assert out[0] == out[1]


def test_on_event_counts_concurrent_threads_without_losing_any() -> None:
    """The lock-free published counter (itertools.count): 8 threads x 2,000 events, every one counted."""
    @dataclass
    class Ev:
        type: str
        data: dict

    publisher = CollectingPublisher(completes_captures=True)
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"))

    def run() -> None:
        for i in range(2_000):
            bridge.on_event(Ev("tool_output", {"tool": "x", "call_id": "c", "chunk": str(i)}))
            if i % 500 == 0:
                bridge.stats()  # reading advances the counter once: must not show up in the count

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bridge.stats() == {"published": 16_000, "rejected": 0, "errors": 0}
    events = publisher.events
    assert sorted(e["seq"] for e in events) == list(range(1, 16_001))  # the inline capture's seq: gap-free


_json_native = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["tool_start", "tool_result", "llm_call_completed", "some_future_type"]),
       data=st.dictionaries(_lift_keys, _json_native, max_size=6).map(lambda d: {**d, "args": {"a": [1, d]}}))
def test_data_holding_containers_is_snapshot_and_maps_to_the_inline_event(name: str, data: dict[str, Any]) -> None:
    """Property: what Agentao emits (JSON-native data, str keys) with a container in it leaves the agent's thread
    as its JSON text (mapped later) and becomes exactly the event the inline mapping makes."""
    @dataclass
    class Ev:
        type: str
        data: dict

    out = []
    for deferred in (False, True):
        publisher = CollectingPublisher(completes_captures=deferred)
        bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"))
        bridge.on_event(Ev(name, dict(data)))
        bridge.on_event(Ev(name, dict(data)))
        assert publisher.mapped_later == (2 if deferred and name != "some_future_type" else 0)
        out.append([_same_event(e) for e in publisher.events])
    assert out[0] == out[1]


def test_the_inline_capture_carries_the_current_span_like_stamper_capture() -> None:
    """on_event writes Stamper.capture out inline (the span read from OpenTelemetry's context directly): the
    deferred event's traceparent is the span current on the agent's thread at the call, none outside a span."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")

    @dataclass
    class Ev:
        type: str
        data: dict

    tracer = sdk_trace.TracerProvider().get_tracer("test")
    publisher = CollectingPublisher(completes_captures=True)
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"))
    bridge.on_event(Ev("llm_text", {"chunk": "first: the session's counter is made by Stamper.capture"}))
    with tracer.start_as_current_span("turn") as span:
        ctx = span.get_span_context()
        bridge.on_event(Ev("llm_text", {"chunk": "inside"}))
    bridge.on_event(Ev("llm_text", {"chunk": "after"}))
    first, inside, after = publisher.events
    assert publisher.mapped_later == 3
    assert inside["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert first["traceparent"] is None and after["traceparent"] is None
    assert [e["seq"] for e in (first, inside, after)] == [1, 2, 3]
