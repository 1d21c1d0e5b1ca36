"""Agentao -> AgentEvents: the callbacks a host plugs into an Agentao agent, adding what Agentao's events lack.

Agentao's transport events carry no time, session, turn or sequence, and its runtime has no confirmation timeout.
The bridge adds them: every event is stamped (event time, per-session ``seq``, ids) by a
:class:`producers.stamp.Stamper` and handed to ``publisher.publish`` (which never blocks), so a callback costs a
mapping, a stamp and an enqueue on the agent's thread.

What downstream reads, and which event counts what:

* turn ids: minted at ``turn_begin`` (the runtime's own ``agent._current_turn_id`` when an agent is attached, so
  they equal the ``turn_id`` inside host events), kept through ``turn_end``, ``None`` between turns. Tool events
  from Agentao's worker threads take the bridge's current turn: one agent runs one turn at a time.
* ``turn_end.duration_ms`` is measured by the bridge from ``turn_begin`` (monotonic clock).
* confirmations: Agentao's ``tool_confirmation`` is the request; the wrapped ``confirm_tool`` adds one
  ``confirm_resolved`` per request with ``confirm_outcome`` allow|reject|timeout (``None`` if the host's callback
  raised), the decision latency in ``duration_ms`` and the request's ``call_id``.
* a max-iterations hit is **a ``turn_end`` with ``incomplete_reason == "max_iterations"``** (exactly one per
  bailout: the turn ends once). The ``on_max_iterations`` wrapper adds no event of its own; what it saw (cap,
  host action, pending tool names) goes into that turn's ``turn_end`` payload under ``_max_iterations``, also
  when the host chose ``continue`` and the turn later ended normally (a cap reached but no bailout).
* LLM errors: ``llm_retry`` (one per failed attempt that will be retried, ``http_status`` from ``status=<code>``)
  and ``llm_call_completed`` with ``status == "error"`` (the final failure, ``http_status`` parsed from the error).
* sub-agent usage: counted once, by :class:`producers.subagent_usage.SubagentUsageLedger`: the part of a child
  run's ``subagent_lifecycle.usage`` not already forwarded as the child's own ``llm_call_completed`` events follows
  the lifecycle event as one ``llm_call_completed`` tagged with its ``child_task_id``.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import json
import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

from producers.mapping import (
    confirm_fields,
    encode_json,
    event_symbol,
    fields_from_agentao,
    fields_from_host,
    host_event_dump,
    known_types,
    payload_text,
    strip_tool_label,
)
from producers.stamp import NO_FIELDS, Stamper, read_bound_context, read_current_span, read_span_parts
from producers.subagent_usage import SubagentUsageLedger
from schemas.redaction import truncate_head_tail

ConfirmFn = Callable[[str, str, dict], bool]
MaxIterationsFn = Callable[[int, list], dict]

# The Agentao event types on_event does more for than map, stamp and publish (one dict lookup tells the others).
_TURN_BEGIN, _TURN_END, _LLM_STARTED, _LLM_MODEL, _CONFIRMATION = "begin", "end", "started", "model", "confirm"
_SPECIAL = {"turn_begin": _TURN_BEGIN, "turn_end": _TURN_END, "llm_call_started": _LLM_STARTED,
            "llm_call_completed": _LLM_MODEL, "llm_retry": _LLM_MODEL, "tool_confirmation": _CONFIRMATION}


class PublisherLike(Protocol):
    """What the bridge needs of :class:`producers.publisher.EventPublisher`."""

    def publish(self, event: dict[str, Any]) -> bool: ...


class StamperLike(Protocol):
    """What the bridge needs of :class:`producers.stamp.Stamper`."""

    def stamp(self, type: str, fields: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]: ...


class AgentaoBridge:
    """One bridge per agent session. ``on_event`` and ``host_observer`` are thread-safe and never raise."""

    def __init__(self, publisher: PublisherLike, *, tenant: str, session_id: str | None = None,
                 user_id: str | None = None, service: str | None = None, agent_name: str | None = None,
                 confirm_timeout_s: float | None = None, stamper: StamperLike | None = None,
                 defer_payload: bool = True, defer_mapping: bool | None = None) -> None:
        """``defer_payload``: hand scalar-only payloads to the publisher as dicts, serialised on its sender
        thread (EventPublisher accepts a dict or a JSON text); False always passes JSON text.

        ``defer_mapping``: hand the publisher a capture (time, seq, context, a reference to the event's data) and
        map the event on its sender thread; see :class:`_MapLater` for which events. The default (None) defers
        when the publisher says it completes captures (``completes_captures``: :class:`EventPublisher` does), so
        a publisher that expects dicts still gets dicts."""
        if stamper is None:
            stamper = Stamper(tenant=tenant, service=service)
        if confirm_timeout_s is not None and confirm_timeout_s <= 0:
            raise ValueError("confirm_timeout_s must be > 0 or None")
        self._publisher = publisher
        self._stamper = stamper
        self._tenant = tenant
        self._explicit_session = session_id
        self._minted_session = str(uuid.uuid4())
        self._user_id = user_id
        self._service = service
        self._agent_name = agent_name
        self._confirm_timeout_s = confirm_timeout_s
        self._defer = defer_payload
        self._known = known_types()
        self._agent: Any = None
        self._local = threading.local()  # the tool_confirmation awaiting its confirm_tool call, per thread
        self._lock = threading.Lock()
        self._turn_id: str | None = None
        self._turn_t0: int | None = None
        self._last_model: str | None = None
        self._max_iter: list[dict[str, Any]] = []
        self._started = False
        self._closed = False
        self._counts = {"published": 0, "rejected": 0, "errors": 0}  # under _lock; "published" also in _published
        # on_event's hot path counts without the lock: next() on an itertools.count is one C call, atomic under the
        # GIL, so concurrent tool-worker threads lose no increment (``self.n += 1`` could: read, add, write are
        # three steps another thread may run between). stats() reads it by advancing it once more (under _lock).
        self._published = itertools.count()
        self._published_reads = 0
        self._subagents = SubagentUsageLedger()
        if defer_mapping is None:
            defer_mapping = getattr(publisher, "completes_captures", False) is True
        # Deferring needs a stamper that captures (Stamper and its subclasses) and a publisher that completes.
        self._later: _MapLater | None = _MapLater(self) if defer_mapping and hasattr(stamper, "capture") else None
        self._publish = publisher.publish
        # on_event takes the capture inline only for a plain Stamper on its default clock (its seq counters are
        # shared, so inline and Stamper.capture number one session's events from one counter)
        inline_seqs = getattr(stamper, "inline_seqs", None)
        self._seqs: dict[str, Any] | None = inline_seqs() if inline_seqs is not None else None

    # -- identity -----------------------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """Explicit id, else the attached agent's ``_session_id`` (read live, as Agentao's host events do)."""
        if self._explicit_session is not None:
            return self._explicit_session
        sid = getattr(self._agent, "_session_id", None)
        return sid if isinstance(sid, str) and sid else self._minted_session

    @property
    def turn_id(self) -> str | None:
        return self._turn_id

    def stats(self) -> dict[str, int]:
        """published (publisher accepted), rejected (publish returned False), errors (exceptions swallowed)."""
        with self._lock:
            counts = dict(self._counts)
            counts["published"] += next(self._published) - self._published_reads
            self._published_reads += 1
            return counts

    # -- Agentao callbacks ---------------------------------------------------------------------------------

    def on_event(self, ev: Any) -> None:
        """``SdkTransport(on_event=...)``: stamp + publish; called concurrently from tool worker threads.

        The hot path (an event :class:`_MapLater` may map on the sender thread) is written out here on purpose:
        one dict lookup by type, a shallow copy and a scalar test in C, the capture taken inline (the stamper's
        own seq counter, clock and context) and one enqueue, with a lock-free counter. Paced at an agent's
        cadence every call runs on cold caches, so its cost follows the code it touches, not its burst cost.
        """
        try:
            t = ev.type
            name = t if t.__class__ is str else t._value_ if isinstance(t, Enum) else getattr(t, "value", t)
            route = _DEFERRABLE.get(name) if name.__class__ is str and self._later is not None else None
            if route is not None:
                data = ev.data
                if data.__class__ is dict:
                    symbol, model_fallback = route
                    # llm_call_completed / llm_retry carry the model last seen, except a child's own call, which
                    # the sub-agent usage ledger must see in order (mapped inline)
                    if not model_fallback or data.get("child_task_id") is None:
                        data = data.copy()  # first, then checked: what is checked is what the sender maps
                        if not _IMMUTABLE.issuperset(map(type, data.values())):
                            data = _snapshot(data)  # containers: their JSON text now, mapped later
                        if data is not None:
                            # Stamper.capture(symbol, None, session_id=..., turn_id=..., ...), written out
                            sid = self._explicit_session
                            if sid is None:
                                sid = self.session_id
                            counter = self._seqs.get(sid) if self._seqs is not None else None
                            model = (self._last_model,) if model_fallback else ()
                            if counter is not None:  # one tuple: the deferred mapping and the capture, flat
                                deferred = (self._later, name, data, model, self._stamper, symbol, NO_FIELDS,
                                            _time_ns() // 1000, sid, next(counter), read_bound_context(),
                                            _span_context().get(_SPAN_KEY) if _span_context is not None
                                            else read_current_span() if read_current_span is not None else None,
                                            self._turn_id, self._user_id, self._tenant, None, None)
                            else:  # the session's first event, or a stamper of another kind
                                deferred = (self._later, name, data, model) + self._stamper.capture(  # type: ignore
                                    symbol, None, session_id=sid, turn_id=self._turn_id, user_id=self._user_id,
                                    tenant=self._tenant)
                            if self._publish(deferred):
                                next(self._published)
                            else:
                                self._count("rejected")
                            return
            self._on_event_inline(name, ev.data)
        except Exception:
            self._count("errors")

    def _on_event_inline(self, name: Any, data: Any) -> None:
        """What the sender cannot do for the bridge: events whose mapping feeds its state in order, and data the
        deferred path refuses (not a dict, unknown types, a value JSON cannot hold)."""
        special = _SPECIAL.get(name) if isinstance(name, str) else None
        if special is None:  # most events (streamed text, tool output): mapping, stamp, publish
            symbol = name if name.__class__ is str and name in self._known else event_symbol(name)
            if self._later is not None and data.__class__ is dict and self._map_later(symbol, name, data, ()):
                return
            fields = fields_from_agentao(name, data, None, defer=self._defer)
            self._emit(symbol, fields, self._turn_id)
            return
        if special is _LLM_MODEL and self._later is not None and data.__class__ is dict \
                and data.get("child_task_id") is None \
                and self._map_later(event_symbol(name), name, data, (self._last_model,)):
            return  # no sub-agent ledger work: a child's own call (child_task_id) is mapped here, in order
        extra = None
        if special is _TURN_BEGIN:
            self._begin_turn()
        elif special is _TURN_END:
            extra = self._end_turn_extra()
        fields = fields_from_agentao(name, data, extra, defer=self._defer)
        turn_id = self._turn_id
        if special is _TURN_END:
            if fields.get("duration_ms") is None and self._turn_t0 is not None:
                fields["duration_ms"] = (time.monotonic_ns() - self._turn_t0) // 1_000_000
            self._turn_id = self._turn_t0 = None
        elif special is _LLM_STARTED:
            self._last_model = fields.get("model") or self._last_model
        elif special is _LLM_MODEL:
            if fields.get("model") is None:
                fields["model"] = self._last_model
            if fields.get("child_task_id") is not None and name == "llm_call_completed":
                self._subagents.forwarded(fields)  # a child's own call (a future Agentao forwards them)
        elif special is _CONFIRMATION and isinstance(data, dict):
            self._local.pending = (data.get("tool"), data.get("call_id"))
        self._emit(event_symbol(name), fields, turn_id)

    def host_observer(self, ev: Any) -> None:
        """``agent.add_host_event_observer(...)``: tool_lifecycle / permission_decision / subagent_lifecycle."""
        try:
            kind, dumped = host_event_dump(ev)
            fields = fields_from_host(kind, dumped, defer=self._defer)
            rest = None
            if kind == "subagent_lifecycle":  # the child's usage not forwarded yet, as one llm_call_completed
                rest = self._subagents.settle(fields, self._last_model or getattr(getattr(
                    self._agent, "llm", None), "model", None))
            self._emit(event_symbol(kind), fields, self._turn_id)
            if rest is not None:
                self._emit("llm_call_completed", rest, self._turn_id)
        except Exception:
            self._count("errors")

    def confirm_tool(self, host_confirm: ConfirmFn | None = None) -> ConfirmFn:
        """Wrap the host's ``confirm_tool(name, description, args) -> bool`` to record its outcome.

        With ``confirm_timeout_s`` set the host's callback runs in a daemon thread; if it has not answered in
        time the call is refused (``False``, which Agentao records as "not approved") and the outcome is
        ``timeout``. A callback still running then is abandoned, not killed (Python cannot). Without a host
        callback the answer is Agentao's own default (approve, except for an MCP Skills gated confirmation).
        """
        host = host_confirm or _agentao_default_confirm
        timeout = self._confirm_timeout_s

        def confirm(name: str, description: str, args: dict) -> bool:
            pending = getattr(self._local, "pending", None)
            self._local.pending = None
            call_id = None
            if pending and isinstance(pending[0], str) and isinstance(name, str) \
                    and strip_tool_label(pending[0]) == strip_tool_label(name):
                call_id = pending[1]
            t0 = time.monotonic_ns()
            outcome: str | None = None
            error: BaseException | None = None
            try:
                if timeout is None:
                    approved = bool(host(name, description, args))
                else:
                    approved, timed_out = _call_with_timeout(host, (name, description, args), timeout)
                    if timed_out:
                        outcome = "timeout"
                        return False
                outcome = "allow" if approved else "reject"
                return approved
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._record_confirm(name, call_id, outcome, (time.monotonic_ns() - t0) // 1_000_000, error)

        return confirm

    def on_max_iterations(self, host_cb: MaxIterationsFn | None = None) -> MaxIterationsFn:
        """Wrap the host's ``on_max_iterations(count, pending) -> {"action": ...}`` (default: stop).

        Records the cap, the host's action and the pending tool names into the current turn's ``turn_end``
        payload (``_max_iterations``); the bailout itself is counted from ``turn_end.incomplete_reason``.
        """

        def on_max(count: int, pending: list) -> dict:
            result: Any = None
            error: BaseException | None = None
            try:
                result = host_cb(count, pending) if host_cb is not None else {"action": "stop"}
                return result
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._record_max_iterations(count, pending, result, error)

        return on_max

    # -- wiring ---------------------------------------------------------------------------------------------

    def transport(self, *, confirm_tool: ConfirmFn | None = None, ask_user: Callable[..., str] | None = None,
                  on_max_iterations: MaxIterationsFn | None = None) -> Any:
        """An ``agentao.transport.SdkTransport`` wired to this bridge (pass it as ``Agentao(transport=...)``)."""
        from agentao.transport import SdkTransport

        return SdkTransport(on_event=self.on_event, confirm_tool=self.confirm_tool(confirm_tool),
                            ask_user=ask_user, on_max_iterations=self.on_max_iterations(on_max_iterations))

    def attach(self, agent: Any) -> AgentaoBridge:
        """Follow ``agent``: its session id and turn ids, its host events; emits ``session_start``."""
        self._agent = agent
        agent.add_host_event_observer(self.host_observer)
        self.start()
        return self

    def start(self) -> None:
        """Emit ``session_start`` (once); ``attach`` calls it."""
        with self._lock:
            if self._started:
                return
            self._started = True
        try:
            rest: dict[str, Any] = {}
            version = getattr(sys.modules.get("agentao"), "__version__", None)
            if version is not None:
                rest["agentao_version"] = version
            if self._confirm_timeout_s is not None:
                rest["confirm_timeout_s"] = self._confirm_timeout_s
            # Agentao's own session_started row carries the runtime's working directory; so does ours.
            cwd = getattr(self._agent, "working_directory", None) if self._agent is not None else None
            if cwd is not None:
                rest["cwd"] = str(cwd)
            llm = getattr(self._agent, "llm", None)
            model = getattr(llm, "model", None)
            self._emit("session_start", {"model": model if isinstance(model, str) else None,
                                         "payload": payload_text(rest)}, None)
        except Exception:
            self._count("errors")

    def close(self) -> None:
        """Emit ``session_end`` (once) with the bridge's counters. The publisher belongs to the caller."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._emit("session_end", {"payload": payload_text({"_bridge": self.stats()})}, self._turn_id)
            forget = getattr(self._stamper, "forget_session", None)
            if forget is not None:
                forget(self.session_id)  # the session is over: drop its seq counter
        except Exception:
            self._count("errors")

    def __enter__(self) -> AgentaoBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _begin_turn(self) -> None:
        tid = getattr(self._agent, "_current_turn_id", None)
        self._turn_id = tid if isinstance(tid, str) and tid else str(uuid.uuid4())
        self._turn_t0 = time.monotonic_ns()
        with self._lock:
            self._max_iter = []

    def _end_turn_extra(self) -> dict[str, Any] | None:
        with self._lock:
            hits, self._max_iter = self._max_iter, []
        return {"_max_iterations": hits} if hits else None

    def _record_confirm(self, name: Any, call_id: Any, outcome: str | None, duration_ms: int,
                        error: BaseException | None) -> None:
        try:
            self._emit("confirm_resolved", confirm_fields(name, call_id, outcome, duration_ms, error), self._turn_id)
        except Exception:
            self._count("errors")

    def _record_max_iterations(self, count: Any, pending: Any, result: Any, error: BaseException | None) -> None:
        try:
            names = [p.get("name") for p in pending if isinstance(p, dict)] if isinstance(pending, list) else []
            entry: dict[str, Any] = {"cap": count, "pending_tools": names}
            if error is not None:
                entry["error_class"] = type(error).__name__
            else:
                entry["action"] = result.get("action", "stop") if isinstance(result, dict) else repr(result)
            with self._lock:
                self._max_iter.append(entry)
        except Exception:
            self._count("errors")

    def _emit(self, symbol: str, fields: dict[str, Any], turn_id: str | None) -> None:
        child = fields.pop("child_task_id", None)
        agent_name = fields.pop("agent_name", None) or self._agent_name
        if self._service is not None:
            fields["service"] = self._service
        session_id = self._explicit_session
        # Deferring: only the capture here, the publisher's sender thread completes the stamp.
        stamp = self._stamper.capture if self._later is not None else self._stamper.stamp  # type: ignore[attr-defined]
        event = stamp(symbol, fields,
                                    session_id=session_id if session_id is not None else self.session_id,
                                    turn_id=turn_id, user_id=self._user_id, tenant=self._tenant,
                                    agent_name=agent_name, child_task_id=child)
        key = "published" if self._publisher.publish(event) else "rejected"
        with self._lock:
            self._counts[key] += 1

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _map_later(self, symbol: str, name: str, data: dict[str, Any], last_model: tuple) -> bool:
        """Capture the event and hand it over for mapping on the sender thread; False (nothing done) when its data
        holds a container, which the inline mapping serialises now (see :class:`_MapLater`)."""
        data = data.copy()  # first, then checked: what is checked is what the sender maps
        for v in data.values():
            if v.__class__ not in _IMMUTABLE:
                return False
        session_id = self._explicit_session
        captured = self._stamper.capture(  # type: ignore[attr-defined]
            symbol, None, session_id=session_id if session_id is not None else self.session_id,
            turn_id=self._turn_id, user_id=self._user_id, tenant=self._tenant)
        key = "published" if self._publisher.publish((self._later, name, data, last_model) + captured) else "rejected"
        with self._lock:
            self._counts[key] += 1
        return True


# The value classes a shallow copy fully protects (nothing inside them can change).
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_time_ns = time.time_ns
_span_context, _SPAN_KEY = read_span_parts if read_span_parts is not None else (None, None)
_STR_KEYS = frozenset({str})

# Agentao event type -> (contract symbol, carries the model fallback) for the types on_event may hand over unmapped:
# every contract type but those whose mapping feeds the bridge's state in order (_SPECIAL), plus llm_call_completed
# and llm_retry (unless a child's own call: checked in on_event).
_DEFERRABLE: dict[str, tuple[str, bool]] = {
    **{name: (name, False) for name in known_types() if name not in _SPECIAL},
    "llm_call_completed": ("llm_call_completed", True), "llm_retry": ("llm_retry", True)}


def _snapshot(data: dict[str, Any]) -> str | None:
    """``data`` (holding containers) as its JSON text, taken now: the runtime may change a container (tool
    ``args``, message lists) after the callback returns. :meth:`_MapLater.complete` parses it back and maps the
    result, which gives exactly the inline mapping (the payload's JSON text is the same: ``payload_text`` uses
    this encoder; typed fields are lifted from top-level scalars, which JSON keeps). None (map it inline) when
    that would not hold: a key that is not a str (JSON turns ``1`` into ``"1"``), a value JSON cannot hold
    (NaN, a cycle), a top-level value of another class (a str Enum: JSON keeps only its text, the inline lift
    sees the class). One difference remains, not worth a walk over every container: a nested dict whose keys
    collide once made text (``{1: "a", "1": "b"}``) keeps its last value only."""
    if not _STR_KEYS.issuperset(map(type, data)):
        return None
    for v in data.values():
        if v.__class__ not in _SNAPSHOT_TOP:
            return None
    try:
        return encode_json(data)
    except Exception:
        return None


_SNAPSHOT_TOP = frozenset({str, int, float, bool, type(None), dict, list})


class _MapLater:
    """Maps a deferred Agentao event on the publisher's sender thread (``EventPublisher`` completes any tuple whose
    first item has ``complete``), so the agent's thread pays for a capture, a shallow copy and an enqueue.

    Which events: those whose ``data`` is a dict (of immutable scalars, or snapshot), except the ones whose mapping
    feeds the bridge's state in order (turn_begin/turn_end, llm_call_started's model, tool_confirmation's pending
    call, and a sub-agent's own ``llm_call_completed`` that the usage ledger must see in order): those stay inline.
    Why the copy and the scalar rule: Agentao 0.5.17 builds a fresh ``data`` dict for every ``emit`` and does not
    touch it afterwards, but ``SdkTransport.emit`` hands the same event object to its broadcast subscribers after
    ``on_event`` returns, and any of them may rebind a key; a shallow copy protects against that. Containers (tool
    ``args``, message lists) are shared with the runtime and may change later: such data is serialised to its JSON
    text on the agent's thread (:func:`_snapshot`: what the inline mapping serialises anyway, without the lifting
    and stamping) and parsed back here; data it cannot snapshot faithfully is mapped inline.
    The tuple is flat, ``(self, name, data, (model,) or (), *capture)``: one allocation on the agent's thread.
    ``llm_call_completed`` / ``llm_retry`` carry the model the bridge last saw, for the same fallback as inline.
    """

    __slots__ = ("_bridge",)

    def __init__(self, bridge: AgentaoBridge) -> None:
        self._bridge = bridge

    def complete(self, deferred: tuple) -> dict[str, Any]:
        """The event dict, exactly what the inline path stamps (same fields, same payload, same envelope)."""
        name, data, last_model = deferred[1:4]
        captured = deferred[4:]  # the capture, flat in the same tuple (see on_event)
        if data.__class__ is str:  # a snapshot (see _snapshot)
            data = json.loads(data)
        b = self._bridge
        fields = fields_from_agentao(name, data, None, defer=b._defer)
        if last_model and fields.get("model") is None:  # (model,) for llm_call_completed / llm_retry
            fields["model"] = last_model[0]
        child = fields.pop("child_task_id", None)
        agent_name = fields.pop("agent_name", None) or b._agent_name
        if b._service is not None:
            fields["service"] = b._service
        # capture = (stamper, type, fields, time, session, seq, bound, span, turn, user, tenant, agent, child)
        return captured[0].complete(captured[:2] + (fields,) + captured[3:11] + (agent_name, child))


def _agentao_default_confirm(name: str, description: str, args: dict) -> bool:
    """What ``SdkTransport`` answers without a callback: approve unless the MCP Skills gate asks a person."""
    try:
        from agentao.transport import confirmation
    except ImportError:
        return True
    return confirmation.gate_note() is None


def _call_with_timeout(fn: ConfirmFn, args: tuple, timeout: float) -> tuple[bool, bool]:
    """``(answer, timed_out)``; re-raises what ``fn`` raised. The thread is a daemon so exit never waits on it."""
    box: dict[str, Any] = {}
    done = threading.Event()
    ctx = contextvars.copy_context()

    def run() -> None:
        try:
            box["value"] = ctx.run(fn, *args)
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="agentwatch-confirm", daemon=True).start()
    if not done.wait(timeout):
        return False, True
    if "error" in box:
        raise box["error"]
    return bool(box["value"]), False


# -- Agentao's logger, taken over (issue 10, the seed's "take over Agentao's logger") ------------------------------


class AgentaoLogBridge(logging.Handler):
    """Agentao's log records as ``log`` AgentEvents of a bridge's session, so ``agentao.log`` is not written.

    Pass :attr:`logger` as ``Agentao(logger=...)``: Agentao then skips its own set-up (no ``<wd>/agentao.log``, no
    change to the ``agentao`` package logger) and writes its LLM requests and responses to it. The records of
    Agentao's modules (MCP start/stop, plugin hooks, compaction) go to the ``agentao.*`` module loggers instead;
    :meth:`capture_package` adds this handler there too (process-wide: with several agents in one process, every
    such record goes to the session that captured it; :meth:`close` removes it).

    Each record becomes one event: ``type="log"``, payload ``logger``, ``level``, ``message`` (capped at
    ``max_message_chars``, head and tail kept), ``source``, ``thread``, ``exc`` (a traceback, capped), and
    ``suppressed`` (records the rate limit dropped since the previous event). The publisher scrubs the payload
    with the producer's scrubber on its sender thread, like every event. On the agent's thread a record costs
    a format, a token-bucket check and an enqueue: it never blocks and never raises (failures are counted).

    Rate limit: a token bucket, ``rate`` records per second with bursts of ``burst``; a record that finds the
    bucket empty is suppressed and counted (``stats()["suppressed"]``), and the count travels on the next event
    and in a summary event at :meth:`close`. Records before the bridge's ``session_start`` (Agentao logging while
    it is constructed) wait in a bounded queue (``max_early``) so the session's first event stays its start.
    """

    def __init__(self, bridge: AgentaoBridge, *, level: int = logging.DEBUG, rate: float = 50.0,
                 burst: int = 200, max_message_chars: int = 8_000, max_early: int = 100,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level)
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._bridge = bridge
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self._max_chars = max_message_chars
        self._early: collections.deque[dict[str, Any]] = collections.deque()
        self._max_early = max_early
        self._suppressed_pending = 0
        self._state = threading.Lock()
        self._local = threading.local()
        self._captured: list[tuple[logging.Logger, int]] = []
        self._counts = {"records": 0, "emitted": 0, "suppressed": 0, "errors": 0}
        # Not registered with logging's manager: one per session, nothing left behind when it is dropped.
        self.logger = logging.Logger(f"agentwatch.agentao.{bridge.session_id}", level)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def stats(self) -> dict[str, int]:
        """records (seen), emitted (handed to the bridge), suppressed (rate limit, early-queue overflow), errors."""
        with self._state:
            return dict(self._counts)

    def capture_package(self, name: str = "agentao", level: int = logging.INFO) -> AgentaoLogBridge:
        """Also take the records of Agentao's module loggers (``name`` and below), at ``level`` and above."""
        pkg = logging.getLogger(name)
        self._captured.append((pkg, pkg.level))
        if pkg.level == logging.NOTSET or pkg.level > level:
            pkg.setLevel(level)
        pkg.addHandler(self)
        return self

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: emit is thread-safe on its own
        if getattr(self._local, "busy", False):
            return False  # a record logged while publishing one (the publisher's own logging): not looped back
        if not self.filter(record):
            return False
        self._local.busy = True
        try:
            self.emit(record)
        finally:
            self._local.busy = False
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self._state:
                self._counts["records"] += 1
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens < 1.0:
                    self._counts["suppressed"] += 1
                    self._suppressed_pending += 1
                    return
                self._tokens -= 1.0
                suppressed, self._suppressed_pending = self._suppressed_pending, 0
            self._publish(self._payload(record, suppressed))
        except Exception:
            with self._state:
                self._counts["errors"] += 1

    def close(self) -> None:
        """Publish what waits (early records, the suppressed count) and detach from the captured loggers."""
        try:
            for pkg, old_level in self._captured:
                pkg.removeHandler(self)
                pkg.setLevel(old_level)
            self._captured.clear()
            with self._state:
                suppressed, self._suppressed_pending = self._suppressed_pending, 0
            if suppressed:
                self._publish({"logger": self.logger.name, "level": "WARNING", "suppressed": suppressed,
                               "message": f"{suppressed} Agentao log record(s) suppressed by the rate limit"},
                              force=True)
            self._flush_early(force=True)
        except Exception:
            with self._state:
                self._counts["errors"] += 1
        super().close()

    # -- internals ------------------------------------------------------------------------------------------

    def _payload(self, record: logging.LogRecord, suppressed: int) -> dict[str, Any]:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad %-format in the caller: keep what there is
            message = f"{record.msg!r} % {record.args!r} ({type(exc).__name__})"
        out: dict[str, Any] = {"logger": record.name, "level": record.levelname,
                               "message": _cap(message, self._max_chars),
                               "source": f"{record.module}:{record.lineno}", "thread": record.threadName}
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = _cap("".join(traceback.format_exception(*record.exc_info)), self._max_chars)
        if suppressed:
            out["suppressed"] = suppressed
        return out

    def _publish(self, payload: dict[str, Any], force: bool = False) -> None:
        bridge = self._bridge
        if not bridge._started and not force:
            with self._state:
                if len(self._early) >= self._max_early:
                    self._counts["suppressed"] += 1
                    return
                self._early.append(payload)
            return
        self._flush_early()
        bridge._emit("log", {"payload": payload_text(payload)}, bridge.turn_id)
        with self._state:
            self._counts["emitted"] += 1

    def _flush_early(self, force: bool = False) -> None:
        if not self._early or not (self._bridge._started or force):
            return
        while True:
            with self._state:
                if not self._early:
                    return
                payload = self._early.popleft()
            self._bridge._emit("log", {"payload": payload_text(payload)}, self._bridge.turn_id)
            with self._state:
                self._counts["emitted"] += 1


def _cap(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else truncate_head_tail(text, max_chars, 0.5)[0]
