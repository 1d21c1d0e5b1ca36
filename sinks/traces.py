"""AgentEvents -> OpenTelemetry spans (GenAI semantic conventions): pure, no Kafka, no network.

Why: the seed's fourth axis, distributed tracing. A user's request crosses browser -> API -> agent -> LLM -> tool;
the agent part of that trace is rebuilt here from the events topic, so any OTLP backend shows it.

Span tree of one turn (names and attributes follow the GenAI conventions, status ``Development``)::

    invoke_agent {agent}                  gen_ai.operation.name=invoke_agent, gen_ai.conversation.id=<session>
    ├── chat {model}                      gen_ai.request.model, gen_ai.usage.input_tokens/output_tokens (+cache,
    │                                     reasoning), gen_ai.response.finish_reasons; events: gen_ai.retry;
    │                                     ERROR + error.type on a failed call
    ├── execute_tool {tool}               gen_ai.tool.name, gen_ai.tool.call.id; events: confirmation requested /
    │   │                                 resolved, permission decision; ERROR + error.type when not ok
    │   └── invoke_agent {sub-agent}      a sub-agent (child_task_id) under the tool call that delegated to it
    │       └── execute_tool {tool}       the sub-agent's forwarded tool calls
    └── ...

Semantics:

* A turn is the events of one ``(tenant, session_id, turn_id)``; events without a turn id make no span.
* Ids: when an event of the turn carries a W3C ``traceparent`` (the host's span), the turn span is its child and
  shares its trace id, so the host's request and the agent's work are one trace. Otherwise the trace id is derived
  from the turn's key and every span id from the id of the event that opened it, so a replay of the same events
  exports the same spans (backends that key spans by id see a re-export as the same span).
* Order: a turn's events are sorted by the session's ``seq`` before spans are built, so records arriving out of
  order or split over several records make the same tree. A turn is complete when ``turn_begin`` .. ``turn_end``
  have arrived with no ``seq`` missing between them; a turn with ``turn_end`` but a gap waits ``settle_s``, then is
  built with what arrived and marked ``agentwatch.turn.missing_events``.
* Time-outs: a turn that never ends is closed ``turn_timeout_s`` after its last event (by the wall clock the caller
  passes, or by the event time of its partition, whichever comes first, so a fast replay of old data closes it too)
  and marked: ``agentwatch.turn.closed_by="timeout"`` and ERROR status. Open turns are bounded (``max_open_turns``:
  the stalest is closed as ``evicted``) and so are events per turn (``max_events_per_turn``: the rest, except
  ``turn_begin``/``turn_end``, are dropped and counted in ``agentwatch.turn.dropped_events``; such a turn closes
  ``settle_s`` after its turn_end). Events for a turn already closed are counted
  (``after_close``) and dropped: its span is out.
* Nothing here raises on odd input: a missing or mistyped field leaves an attribute out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SPAN_KIND_INTERNAL, SPAN_KIND_CLIENT = "internal", "client"
STATUS_UNSET, STATUS_OK, STATUS_ERROR = "unset", "ok", "error"
ERROR_TYPE_OTHER = "_OTHER"  # the conventions' fallback value of error.type

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# Events that add nothing to the tree (content, streaming, iterations): no span event for them.
_QUIET = frozenset({"turn_begin", "turn_end", "turn_start", "llm_call_started", "llm_call_completed", "llm_retry",
                    "llm_call_delta", "llm_call_io", "llm_text", "thinking", "tool_start", "tool_output",
                    "tool_complete", "tool_result", "tool_confirmation", "confirm_resolved", "permission_decision",
                    "tool_lifecycle", "agent_start", "agent_end", "subagent_lifecycle"})
_ENDS = frozenset({"turn_begin", "turn_end"})  # kept even past max_events_per_turn: they bound the turn span
MAX_SPAN_EVENTS = 128  # the SDK's default limit per span


@dataclass
class SpanEvent:
    """A timestamped annotation on a span (OTel span event)."""

    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Span:
    """One finished span, backend-neutral: ids as ints, times in ns since the epoch."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int
    kind: str = SPAN_KIND_INTERNAL
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    status: str = STATUS_UNSET
    status_message: str | None = None
    service: str | None = None
    remote_parent: bool = False  # the parent is the host's span (from traceparent), not one of ours


@dataclass(frozen=True)
class AssemblerConfig:
    """Bounds and time-outs of :class:`TraceAssembler` (seconds)."""

    turn_timeout_s: float = 600.0
    settle_s: float = 10.0
    max_open_turns: int = 10_000
    max_events_per_turn: int = 10_000
    max_closed_remembered: int = 100_000


@dataclass
class AssemblerStats:
    """What became of the events: each is in exactly one of spans' turns, ``no_turn``, ``after_close``,
    ``dropped_overflow`` (over ``max_events_per_turn``)."""

    events: int = 0
    no_turn: int = 0
    after_close: int = 0
    dropped_overflow: int = 0
    turns: int = 0
    spans: int = 0
    closed_by: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        how = ", ".join(f"{k} {v:,}" for k, v in sorted(self.closed_by.items())) or "none"
        return (f"{self.events:,} events -> {self.turns:,} turns ({how}), {self.spans:,} spans; "
                f"{self.no_turn:,} without a turn, {self.after_close:,} after close, "
                f"{self.dropped_overflow:,} dropped (turn too long)")


TurnKey = tuple[str, str, str]  # (tenant, session_id, turn_id)


@dataclass
class _OpenTurn:
    key: TurnKey
    partition: int | None
    events: list[dict[str, Any]] = field(default_factory=list)
    low: dict[int, int] = field(default_factory=dict)  # per partition, the lowest offset of its records
    dropped: int = 0
    last_seen: float = 0.0  # caller's clock
    last_event_us: int = 0
    end_seen_at: float | None = None  # caller's clock when turn_end arrived
    end_event_us: int | None = None


class TraceAssembler:
    """Collects events per turn and turns each finished turn into spans. Not thread-safe."""

    def __init__(self, config: AssemblerConfig | None = None) -> None:
        self.config = config or AssemblerConfig()
        self.stats = AssemblerStats()
        self._open: OrderedDict[TurnKey, _OpenTurn] = OrderedDict()  # least recently touched first
        self._closed: OrderedDict[TurnKey, None] = OrderedDict()
        self._watermark_us: dict[int | None, int] = {}  # per partition, the highest event time seen
        # per partition, offset -> the turns with events in that record, for records not yet committed past
        self._record_turns: dict[int, dict[int, set[TurnKey]]] = {}
        self._skip: dict[int, set[str]] = {}  # per partition, tags of turns an earlier run exported already

    @property
    def open_turns(self) -> int:
        return len(self._open)

    def add(self, event: Mapping[str, Any], now: float, position: tuple[int, int] | None = None) -> list[Span]:
        """Take one event (``position`` = its record's (partition, offset)); the spans of the turn it completed."""
        self.stats.events += 1
        key = turn_key(event)
        if key is None:
            self.stats.no_turn += 1
            return []
        partition = position[0] if position is not None else None
        if partition is not None and key not in self._open and turn_tag(key) in self._skip.get(partition, ()):
            self._remember_closed(key)  # exported by the run that committed this record's offset
        if key in self._closed:
            self.stats.after_close += 1
            return []
        if position is not None:
            self._record_turns.setdefault(position[0], {}).setdefault(position[1], set()).add(key)
        t_us = _int(event.get("event_time")) or 0
        if t_us > self._watermark_us.get(partition, 0):
            self._watermark_us[partition] = t_us
        turn = self._open.get(key)
        out: list[Span] = []
        if turn is None:
            if len(self._open) >= self.config.max_open_turns:
                _, stalest = self._open.popitem(last=False)
                out += self._close(stalest, "evicted")
            turn = self._open[key] = _OpenTurn(key, partition)
        else:
            self._open.move_to_end(key)
        if len(turn.events) >= self.config.max_events_per_turn and event.get("type") not in _ENDS:
            turn.dropped += 1
            self.stats.dropped_overflow += 1
        else:
            turn.events.append(dict(event))
            if position is not None and position[1] < turn.low.get(position[0], position[1] + 1):
                turn.low[position[0]] = position[1]
        turn.last_seen = now
        turn.last_event_us = max(turn.last_event_us, t_us)
        if event.get("type") == "turn_end" and turn.end_seen_at is None:
            turn.end_seen_at, turn.end_event_us = now, t_us
        if turn.end_seen_at is not None and not turn.dropped and _complete(turn.events):
            del self._open[key]
            out += self._close(turn, "turn_end")
        return out

    def expire(self, now: float) -> list[Span]:
        """Close the turns whose time is up (see the module docstring); their spans."""
        cfg, out = self.config, []
        for key, turn in list(self._open.items()):
            mark = self._watermark_us.get(turn.partition, 0)
            if turn.end_seen_at is not None:
                due = now - turn.end_seen_at >= cfg.settle_s or \
                    mark - (turn.end_event_us or 0) >= cfg.settle_s * 1e6
                how = "turn_end"
            else:
                due = now - turn.last_seen >= cfg.turn_timeout_s or \
                    mark - turn.last_event_us >= cfg.turn_timeout_s * 1e6
                how = "timeout"
            if due:
                del self._open[key]
                out += self._close(turn, how)
        return out

    def closed_in_record(self, partition: int, offset: int) -> list[str]:
        """Tags of the turns closed (exported) that have events in record (partition, offset): what a commit at
        that offset must carry, so a rerun from it skips them instead of exporting their tail as a new turn."""
        keys = self._record_turns.get(partition, {}).get(offset, ())
        return sorted(turn_tag(k) for k in keys if k in self._closed)

    def release_below(self, partition: int, offset: int) -> None:
        """Forget which turns the records before ``offset`` held: committed past."""
        records = self._record_turns.get(partition)
        if records:
            for o in [o for o in records if o < offset]:
                del records[o]

    def skip_turns(self, partition: int, tags: Iterable[str]) -> None:
        """Turns (by :func:`turn_tag`) an earlier run exported whose events the re-read records still hold."""
        self._skip[partition] = set(tags)

    def forget(self, partitions: set[int]) -> int:
        """Drop, unexported, the open turns read from ``partitions`` (revoked: their new owner re-reads them from
        the held-back commit); how many."""
        gone = [k for k, t in self._open.items() if t.partition in partitions or partitions & t.low.keys()]
        for k in gone:
            del self._open[k]
        for p in partitions:
            self._watermark_us.pop(p, None)
            self._record_turns.pop(p, None)
            self._skip.pop(p, None)
        return len(gone)

    def held_offsets(self) -> dict[int, int]:
        """Per partition, the lowest offset of an event of a turn still open: a commit must not pass it, or a
        crash would lose that turn."""
        held: dict[int, int] = {}
        for turn in self._open.values():
            for partition, low in turn.low.items():
                if low < held.get(partition, low + 1):
                    held[partition] = low
        return held

    def _remember_closed(self, key: TurnKey) -> None:
        self._closed[key] = None
        if len(self._closed) > self.config.max_closed_remembered:
            self._closed.popitem(last=False)

    def _close(self, turn: _OpenTurn, how: str) -> list[Span]:
        self._remember_closed(turn.key)
        spans = build_turn_spans(turn.events, closed_by=how, dropped=turn.dropped,
                                 timeout_s=self.config.turn_timeout_s)
        self.stats.turns += 1
        self.stats.spans += len(spans)
        self.stats.closed_by[how] += 1
        return spans


# -- ids ----------------------------------------------------------------------------------------------------------


def turn_key(event: Mapping[str, Any]) -> TurnKey | None:
    """``(tenant, session_id, turn_id)`` of an event in a turn, else None."""
    turn, session, tenant = event.get("turn_id"), event.get("session_id"), event.get("tenant")
    if not (isinstance(turn, str) and turn and isinstance(session, str) and isinstance(tenant, str)):
        return None
    return tenant, session, turn


def turn_tag(key: TurnKey) -> str:
    """A short stable tag of a turn (12 hex), small enough to list a record's turns in a commit's metadata."""
    return f"{derived_id(48, 'turn', *key):012x}"


def parse_traceparent(text: Any) -> tuple[int, int] | None:
    """``(trace id, parent span id)`` of a valid W3C traceparent (version 00..fe, ids not all zero), else None."""
    if not isinstance(text, str):
        return None
    m = _TRACEPARENT_RE.match(text.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    return (trace_id, span_id) if trace_id and span_id else None


def derived_id(bits: int, *parts: Any) -> int:
    """A non-zero id of ``bits`` bits hashed from ``parts``: the same events give the same ids on every replay."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "replace")).digest()
    value = int.from_bytes(digest[: bits // 8], "big")
    return value or 1


# -- spans of one turn --------------------------------------------------------------------------------------------


def build_turn_spans(events: Iterable[Mapping[str, Any]], *, closed_by: str = "turn_end", dropped: int = 0,
                     timeout_s: float | None = None) -> list[Span]:
    """The spans of one turn's events (any order; duplicates by ``event_id`` count once). Turn span first."""
    evs = _dedup_sorted(events)
    if not evs:
        return []
    first = evs[0]
    tenant, session, turn_id = (first.get("tenant"), first.get("session_id"), first.get("turn_id"))
    begin = next((e for e in evs if e.get("type") == "turn_begin"), None)
    end = next((e for e in evs if e.get("type") == "turn_end"), None)
    host = next((p for p in (parse_traceparent(e.get("traceparent")) for e in ([begin] if begin else []) + evs)
                 if p is not None), None)
    trace_id = host[0] if host else derived_id(128, "trace", tenant, session, turn_id)
    service = next((e["service"] for e in evs if isinstance(e.get("service"), str)), None)
    agent = next((e["agent_name"] for e in evs if isinstance(e.get("agent_name"), str)
                  and not e.get("child_task_id")), None)

    def sid(*parts: Any) -> int:
        return derived_id(64, "span", trace_id, *parts)

    t0 = _ns(begin or first)
    t_last = max(_ns(e) for e in evs)
    root = Span(name=f"invoke_agent {agent}" if agent else "invoke_agent", trace_id=trace_id,
                span_id=sid("turn", tenant, session, turn_id), parent_span_id=host[1] if host else None,
                start_ns=t0, end_ns=_ns(end) if end else t_last, service=service, remote_parent=host is not None)
    root.attributes.update(_drop_none({
        "gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": session, "gen_ai.agent.name": agent,
        "agentwatch.tenant": tenant, "agentwatch.turn.id": turn_id, "user.id": first.get("user_id"),
    }))
    b = _Builder(root, sid)
    for ev in evs:
        b.take(ev)
    b.finish(end, t_last)
    _mark_closure(root, evs, end, closed_by, dropped, timeout_s)
    return [root, *b.children]


class _Builder:
    """Walks a turn's events in ``seq`` order and grows its span tree."""

    def __init__(self, root: Span, sid: Any) -> None:
        self.root, self.sid = root, sid
        self.children: list[Span] = []
        self.llm_open: list[Span] = []  # chat spans started, not completed (oldest first)
        self.tools: dict[tuple[str | None, str], Span] = {}  # (child_task_id, call_id) -> execute_tool span
        self.tools_open: list[Span] = []
        self.agents: dict[str, Span] = {}  # child_task_id -> sub-agent span
        self.agent_open: set[str] = set()
        self.pending_events: dict[str, list[SpanEvent]] = {}  # call_id -> confirmations before the tool started
        self.parent_call: dict[str, str] = {}  # child_task_id -> the delegating tool call id (host event)
        self.usage = {"gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0}
        self.usage_seen = False

    def _new(self, name: str, opener: Mapping[str, Any], parent: Span, kind: str = SPAN_KIND_INTERNAL) -> Span:
        span = Span(name=name, trace_id=self.root.trace_id, span_id=self.sid("event", opener.get("event_id")),
                    parent_span_id=parent.span_id, start_ns=_ns(opener), end_ns=_ns(opener), kind=kind,
                    service=self.root.service)
        self.children.append(span)
        return span

    def _scope(self, ev: Mapping[str, Any]) -> Span:
        """The span an event of the main agent or of a sub-agent (``child_task_id``) belongs under."""
        child = ev.get("child_task_id")
        if isinstance(child, str) and child in self.agents:
            return self.agents[child]
        return self.root

    def take(self, ev: Mapping[str, Any]) -> None:
        t = ev.get("type")
        handler = getattr(self, f"_on_{t}", None) if isinstance(t, str) else None
        if handler is not None:
            handler(ev)
        elif t not in _QUIET:
            _add_event(self._scope(ev), SpanEvent(f"agentwatch.{t}", _ns(ev), _drop_none({
                "agentwatch.event.type": t, "gen_ai.request.model": ev.get("model"),
                "agentwatch.status": ev.get("status")})))

    # LLM calls: sequential within an agent; a completion closes the oldest open call.
    def _on_llm_call_started(self, ev: Mapping[str, Any]) -> None:
        model = ev.get("model")
        span = self._new(f"chat {model}" if isinstance(model, str) and model else "chat", ev, self._scope(ev),
                         SPAN_KIND_CLIENT)
        span.attributes.update(_drop_none({"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                                           "gen_ai.conversation.id": ev.get("session_id")}))
        self.llm_open.append(span)

    def _on_llm_retry(self, ev: Mapping[str, Any]) -> None:
        span = self.llm_open[-1] if self.llm_open else self.root
        payload = _payload(ev)
        _add_event(span, SpanEvent("gen_ai.retry", _ns(ev), _drop_none({
            "error.type": _error_type(ev), "http.response.status_code": ev.get("http_status"),
            "agentwatch.retry": _int(payload.get("retry")), "agentwatch.retry.delay_s": _num(payload.get("delay_s")),
            "agentwatch.retry.reason": payload.get("reason") if isinstance(payload.get("reason"), str) else None})))

    def _on_llm_call_completed(self, ev: Mapping[str, Any]) -> None:
        if ev.get("child_task_id") and "_subagent_usage" in _payload(ev):
            # The bridge's count of a sub-agent's not-forwarded usage (producers/subagent_usage.py): no LLM call
            # happened at that moment, and the run's usage is already on its invoke_agent span (from the terminal
            # subagent_lifecycle). A chat span here would invent a call and could close a real call's span.
            return
        if self.llm_open:
            span = self.llm_open.pop(0)
        else:  # its start never arrived: rebuild the span from the completion alone
            model = ev.get("model")
            span = self._new(f"chat {model}" if isinstance(model, str) and model else "chat", ev, self._scope(ev),
                             SPAN_KIND_CLIENT)
            span.attributes.update(_drop_none({"gen_ai.operation.name": "chat", "gen_ai.request.model": model}))
            dur = _int(ev.get("duration_ms"))
            if dur is not None and dur >= 0:
                span.start_ns = _ns(ev) - dur * 1_000_000
        span.end_ns = max(span.start_ns, _ns(ev))
        if isinstance(ev.get("model"), str) and "gen_ai.request.model" not in span.attributes:
            span.attributes["gen_ai.request.model"] = ev["model"]
        tokens = _drop_none({
            "gen_ai.usage.input_tokens": _int(ev.get("prompt_tokens")),
            "gen_ai.usage.output_tokens": _int(ev.get("completion_tokens")),
            "gen_ai.usage.cache_read.input_tokens": _int(ev.get("cache_read_tokens")),
            "gen_ai.usage.cache_creation.input_tokens": _int(ev.get("cache_creation_tokens")),
            "gen_ai.usage.reasoning.output_tokens": _int(ev.get("reasoning_tokens")),
        })
        span.attributes.update(tokens)
        if span.parent_span_id == self.root.span_id:
            for k in self.usage:
                if k in tokens:
                    self.usage[k] += tokens[k]
                    self.usage_seen = True
        if isinstance(ev.get("finish_reason"), str):
            span.attributes["gen_ai.response.finish_reasons"] = [ev["finish_reason"]]
        if ev.get("status") == "error" or ev.get("error_class"):
            _fail(span, _error_type(ev), ev.get("error_message"))
        elif ev.get("status") == "ok":
            span.status = STATUS_OK

    # Tools, keyed by (sub-agent, call id).
    def _on_tool_start(self, ev: Mapping[str, Any]) -> None:
        call_id, tool = ev.get("call_id"), ev.get("tool_name")
        span = self._new(f"execute_tool {tool}" if isinstance(tool, str) and tool else "execute_tool", ev,
                         self._scope(ev))
        span.attributes.update(_drop_none({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                                           "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function"}))
        if isinstance(call_id, str):
            self.tools[(_child(ev), call_id)] = span
            for pending in self.pending_events.pop(call_id, []):
                _add_event(span, pending)
        self.tools_open.append(span)

    def _on_tool_complete(self, ev: Mapping[str, Any]) -> None:
        call_id = ev.get("call_id")
        span = self.tools.get((_child(ev), call_id)) if isinstance(call_id, str) else None
        if span is None:
            tool = ev.get("tool_name")
            span = self._new(f"execute_tool {tool}" if isinstance(tool, str) and tool else "execute_tool", ev,
                             self._scope(ev))
            span.attributes.update(_drop_none({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                                               "gen_ai.tool.call.id": call_id}))
            dur = _int(ev.get("duration_ms"))
            if dur is not None and dur >= 0:
                span.start_ns = _ns(ev) - dur * 1_000_000
            if isinstance(call_id, str):
                self.tools[(_child(ev), call_id)] = span
        if span in self.tools_open:
            self.tools_open.remove(span)
        span.end_ns = max(span.start_ns, _ns(ev))
        status = ev.get("status")
        if isinstance(status, str):
            span.attributes["agentwatch.tool.status"] = status
        if status == "ok":
            span.status = STATUS_OK
        elif status in ("error", "cancelled"):
            _fail(span, ev.get("error_class") if isinstance(ev.get("error_class"), str)
                  else ("cancelled" if status == "cancelled" else ERROR_TYPE_OTHER), ev.get("error_message"))

    def _on_tool_lifecycle(self, ev: Mapping[str, Any]) -> None:
        # The host event names the exception class a failed tool raised; transport events carry only a message.
        call_id, err = ev.get("call_id"), ev.get("error_class")
        span = self._find_tool(call_id)
        if span is not None and isinstance(err, str) and err and span.status != STATUS_OK:
            span.attributes["error.type"] = err

    def _find_tool(self, call_id: Any) -> Span | None:
        if not isinstance(call_id, str):
            return None
        return next((s for (_c, cid), s in self.tools.items() if cid == call_id), None)

    def _confirm_event(self, ev: Mapping[str, Any], name: str, attrs: dict[str, Any]) -> None:
        event = SpanEvent(name, _ns(ev), _drop_none(attrs))
        call_id = ev.get("call_id")
        span = self._find_tool(call_id)
        if span is not None:
            _add_event(span, event)
        elif isinstance(call_id, str):  # asked before the tool starts (the usual order): attach when it does
            self.pending_events.setdefault(call_id, []).append(event)
        else:
            _add_event(self._scope(ev), event)

    def _on_tool_confirmation(self, ev: Mapping[str, Any]) -> None:
        self._confirm_event(ev, "agentwatch.confirmation.requested", {
            "gen_ai.tool.name": ev.get("tool_name"), "gen_ai.tool.call.id": ev.get("call_id")})

    def _on_confirm_resolved(self, ev: Mapping[str, Any]) -> None:
        self._confirm_event(ev, "agentwatch.confirmation.resolved", {
            "gen_ai.tool.name": ev.get("tool_name"), "gen_ai.tool.call.id": ev.get("call_id"),
            "agentwatch.confirmation.outcome": ev.get("confirm_outcome") or "host_error",
            "agentwatch.confirmation.duration_ms": _int(ev.get("duration_ms"))})

    def _on_permission_decision(self, ev: Mapping[str, Any]) -> None:
        self._confirm_event(ev, "agentwatch.permission.decision", {
            "gen_ai.tool.name": ev.get("tool_name"), "gen_ai.tool.call.id": ev.get("call_id"),
            "agentwatch.permission.decision": ev.get("permission_decision")})

    # Sub-agents: a child invoke_agent span under the tool call that delegated (the host event names it; else the
    # parent's most recent open tool call), or under the turn.
    def _on_subagent_lifecycle(self, ev: Mapping[str, Any]) -> None:
        child, payload = ev.get("child_task_id"), _payload(ev)
        if not isinstance(child, str):
            return
        call = payload.get("parent_tool_call_id")
        if isinstance(call, str):
            self.parent_call.setdefault(child, call)
        span = self.agents.get(child)
        if span is not None and ev.get("status") in ("completed", "failed", "cancelled"):
            span.attributes.update(_drop_none({
                "gen_ai.usage.input_tokens": _int(ev.get("prompt_tokens")),
                "gen_ai.usage.output_tokens": _int(ev.get("completion_tokens")),
                "gen_ai.usage.cache_read.input_tokens": _int(ev.get("cache_read_tokens")),
                "gen_ai.usage.cache_creation.input_tokens": _int(ev.get("cache_creation_tokens")),
                "gen_ai.usage.reasoning.output_tokens": _int(ev.get("reasoning_tokens"))}))
            if isinstance(ev.get("error_class"), str) and span.status != STATUS_ERROR:
                _fail(span, ev["error_class"], None)

    def _on_agent_start(self, ev: Mapping[str, Any]) -> None:
        child, name = ev.get("child_task_id"), ev.get("agent_name")
        if not isinstance(child, str) or child in self.agents:
            return
        call = self.parent_call.get(child)
        parent = self._find_tool(call) if call else None
        if parent is None:
            parent = next((s for s in reversed(self.tools_open) if s.parent_span_id == self.root.span_id), self.root)
        span = self._new(f"invoke_agent {name}" if isinstance(name, str) and name else "invoke_agent", ev, parent)
        span.attributes.update(_drop_none({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name,
                                           "gen_ai.agent.id": child,
                                           "gen_ai.conversation.id": ev.get("session_id")}))
        self.agents[child] = span
        self.agent_open.add(child)

    def _on_agent_end(self, ev: Mapping[str, Any]) -> None:
        child = ev.get("child_task_id")
        span = self.agents.get(child) if isinstance(child, str) else None
        if span is None:
            return
        self.agent_open.discard(child)  # type: ignore[arg-type]
        span.end_ns = max(span.start_ns, _ns(ev))
        state = ev.get("status")
        if isinstance(state, str):
            span.attributes["agentwatch.agent.state"] = state
        if state == "completed":
            span.status = STATUS_OK
        elif state in ("failed", "cancelled"):
            _fail(span, ev.get("error_class") if isinstance(ev.get("error_class"), str) else state,
                  ev.get("error_message"))

    def finish(self, end: Mapping[str, Any] | None, t_last: int) -> None:
        """Close what the turn left open at its end (marked), and put the turn's usage and outcome on the root."""
        t_end = self.root.end_ns
        for span in [*self.llm_open, *self.tools_open] + [self.agents[c] for c in self.agent_open]:
            span.end_ns = max(span.start_ns, t_end)
            span.attributes["agentwatch.span.unfinished"] = True
            if span.status != STATUS_ERROR:
                _fail(span, "unfinished", "no completion event before the turn closed")
        for pending in self.pending_events.values():  # confirmed but never started (rejected)
            for event in pending:
                _add_event(self.root, event)
        if self.usage_seen:
            self.root.attributes.update(self.usage)
        if end is not None:
            status, reason = end.get("status"), end.get("incomplete_reason")
            self.root.attributes.update(_drop_none({"agentwatch.turn.status": status,
                                                    "agentwatch.turn.incomplete_reason": reason}))
            if status == "error":
                _fail(self.root, end.get("error_class") if isinstance(end.get("error_class"), str)
                      else (reason if isinstance(reason, str) else ERROR_TYPE_OTHER), end.get("error_message"))
            elif reason == "llm_error":  # Agentao ends such a turn with status ok: the answer is an error text
                _fail(self.root, "llm_error", end.get("error_message"))
            elif status == "ok":
                self.root.status = STATUS_OK
        # A child never ends after or starts before its turn in the picture a backend draws.
        self.root.end_ns = max(self.root.end_ns, *(s.end_ns for s in self.children), t_last) \
            if self.children else max(self.root.end_ns, t_last)
        self.root.start_ns = min(self.root.start_ns, *(s.start_ns for s in self.children)) \
            if self.children else self.root.start_ns


def _mark_closure(root: Span, evs: list[dict[str, Any]], end: Mapping[str, Any] | None, closed_by: str,
                  dropped: int, timeout_s: float | None) -> None:
    root.attributes["agentwatch.turn.closed_by"] = closed_by if end is not None or closed_by != "turn_end" \
        else "incomplete"
    if end is None:
        root.attributes["agentwatch.turn.unfinished"] = True
        what = f"no turn_end within {timeout_s:g} s" if closed_by == "timeout" and timeout_s is not None \
            else f"closed ({closed_by}) before its turn_end arrived"
        _fail(root, "turn_timeout" if closed_by == "timeout" else f"turn_{closed_by}", what)
    missing = _missing(evs)
    if missing:
        root.attributes["agentwatch.turn.missing_events"] = missing
    if dropped:
        root.attributes["agentwatch.turn.dropped_events"] = dropped


# -- helpers ------------------------------------------------------------------------------------------------------


def _complete(events: list[dict[str, Any]]) -> bool:
    types = {e.get("type") for e in events}
    return "turn_begin" in types and "turn_end" in types and _missing(events) == 0


def _missing(events: list[dict[str, Any]]) -> int:
    """How many ``seq`` numbers are absent between the turn's first event (or turn_begin) and its turn_end."""
    seqs = {s for s in (_int(e.get("seq")) for e in events) if s is not None}
    begin = [_int(e.get("seq")) for e in events if e.get("type") == "turn_begin"]
    end = [_int(e.get("seq")) for e in events if e.get("type") == "turn_end"]
    if not seqs:
        return 0
    lo = min(s for s in begin if s is not None) if any(s is not None for s in begin) else min(seqs)
    hi = max(s for s in end if s is not None) if any(s is not None for s in end) else max(seqs)
    if hi < lo or hi - lo > 10_000_000:
        return 0
    return sum(1 for s in range(lo, hi + 1) if s not in seqs)


def _dedup_sorted(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    out = []
    for e in events:
        eid = e.get("event_id")
        if eid is not None:
            if eid in seen:
                continue
            seen.add(eid)
        out.append(dict(e))
    out.sort(key=lambda e: (_int(e.get("seq")) or 0, _int(e.get("event_time")) or 0))
    return out


def _child(ev: Mapping[str, Any]) -> str | None:
    c = ev.get("child_task_id")
    return c if isinstance(c, str) else None


def _ns(ev: Mapping[str, Any]) -> int:
    us = _int(ev.get("event_time"))
    return max(0, us or 0) * 1000


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _payload(ev: Mapping[str, Any]) -> dict[str, Any]:
    p = ev.get("payload")
    if isinstance(p, Mapping):
        return dict(p)
    if isinstance(p, str):
        try:
            value = json.loads(p)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def _error_type(ev: Mapping[str, Any]) -> str:
    """error.type as the conventions ask: the exception class, else the HTTP status code, else ``_OTHER``."""
    err, status = ev.get("error_class"), _int(ev.get("http_status"))
    if isinstance(err, str) and err:
        return err
    return str(status) if status is not None else ERROR_TYPE_OTHER


def _fail(span: Span, error_type: Any, message: Any) -> None:
    span.status = STATUS_ERROR
    span.attributes.setdefault("error.type", error_type if isinstance(error_type, str) and error_type
                               else ERROR_TYPE_OTHER)
    if isinstance(message, str) and message:
        span.status_message = message[:500]


def _add_event(span: Span, event: SpanEvent) -> None:
    if len(span.events) < MAX_SPAN_EVENTS:
        span.events.append(event)
    else:
        span.attributes["agentwatch.span.dropped_events"] = span.attributes.get("agentwatch.span.dropped_events",
                                                                                0) + 1
