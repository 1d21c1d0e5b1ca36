"""Stamping: turn "something happened" into a complete AgentEvent dict, cheaply, on the agent's thread.

Agentao's events carry no id, time, session, turn or sequence (see the reference, §10), so the host adds them at
the moment of the callback. A stamp has two halves: :meth:`Stamper.capture` takes what only the calling thread at
that moment can know (time, the session's next ``seq``, the bound context, the current span) into a tuple, and
:meth:`Stamper.complete` turns it into the event dict. ``stamp()`` does both inline; handing the capture to
:class:`producers.publisher.EventPublisher` instead (or using :class:`DeferredStamper`) leaves the completion to
its sender thread, so the agent's thread pays for the capture only. Both halves are kept to plain building:

* ``event_id`` is a version-4 UUID in hex, drawn from a private ``random.Random`` seeded from ``os.urandom`` and
  re-seeded in every forked child. ``uuid.uuid4()`` costs ~4 µs here (one ``getrandom`` syscall plus a UUID
  object); this costs ~0.7 µs. Ids only need to be unique, not unpredictable, and a private generator is immune
  to a simulator calling ``random.seed(42)``.
* ``seq`` is a per-session ``itertools.count``: ``next()`` on it is a single C call, atomic under the GIL, so
  concurrent tool-worker threads of one session get distinct, gap-free numbers without a lock (the lock is taken
  only to create a session's counter). Free-threaded builds are not targeted.
* Context (tenant, session, user, service, agent name) comes from explicit arguments, then ``fields``, then
  :func:`bind_context`, then the Stamper's defaults.

Context variables and threads: a value bound with :func:`bind_context` is visible in the binding thread and in
asyncio tasks created inside the ``with`` block (tasks copy the context). Plain ``threading.Thread``\\ s and
``ThreadPoolExecutor`` workers start with an *empty* context, so Agentao's parallel tool workers do not see it:
pass ``session_id`` / ``turn_id`` explicitly there (the bridge does), or run the worker's callable under
``contextvars.copy_context().run(...)``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from schemas import contract

# -- context ----------------------------------------------------------------------------------------------------

# (tenant, session_id, user_id, service, agent_name); a tuple so a bind is one allocation and a read one lookup.
_NO_CONTEXT: tuple[str | None, ...] = (None, None, None, None, None)
_bound: ContextVar[tuple[str | None, ...]] = ContextVar("agentwatch_bound_context", default=_NO_CONTEXT)


@contextlib.contextmanager
def bind_context(*, tenant: str | None = None, session_id: str | None = None, user_id: str | None = None,
                 service: str | None = None, agent_name: str | None = None) -> Iterator[None]:
    """Bind context for events stamped inside the ``with`` block; nested binds override only what they name."""
    outer = _bound.get()
    new = tuple(n if n is not None else o
                for n, o in zip((tenant, session_id, user_id, service, agent_name), outer, strict=True))
    token = _bound.set(new)
    try:
        yield
    finally:
        _bound.reset(token)


def bound_context() -> dict[str, str | None]:
    """What :func:`bind_context` currently provides (for diagnostics and tests)."""
    t, s, u, svc, a = _bound.get()
    return {"tenant": t, "session_id": s, "user_id": u, "service": svc, "agent_name": a}


# -- event ids ----------------------------------------------------------------------------------------------------

_rng = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rng.seed)
_getrandbits = _rng.getrandbits
# Clear the version nibble and the two variant bits, then set version 4 and variant RFC 4122 (10xx).
_UUID4_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_BITS = (0x4 << 76) | (0x2 << 62)


def new_event_id() -> str:
    """A random version-4 UUID as 32 lowercase hex digits (same shape as ``uuid.uuid4().hex``)."""
    return "%032x" % (_getrandbits(128) & _UUID4_MASK | _UUID4_BITS)


# -- W3C traceparent ------------------------------------------------------------------------------------------------


def _load_span_getter() -> Callable[[], Any] | None:
    """The cheapest way to read the current OpenTelemetry span, or None when opentelemetry is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    try:  # ~0.15 µs instead of ~0.6 µs for trace.get_current_span(); falls back if the private key moves
        from opentelemetry.context import _RUNTIME_CONTEXT, get_current
        from opentelemetry.trace.propagation import _SPAN_KEY

        # The default runtime context keeps the current Context in a ContextVar (get_current() is two Python
        # calls around its .get()): read it directly when it is that one.
        var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
        if type(_RUNTIME_CONTEXT).__name__ == "ContextVarsRuntimeContext" and isinstance(var, ContextVar):
            get_context = var.get
        else:
            get_context = get_current

        def current_span() -> Any:
            return get_context().get(_SPAN_KEY)

        current_span()
        global _span_parts
        if get_context is not get_current:
            _span_parts = (get_context, _SPAN_KEY)
        return current_span
    except Exception:
        return trace.get_current_span


_span_parts: tuple[Callable[[], Any], Any] | None = None  # (context getter, span key): see read_span_parts
_current_span = _load_span_getter()


def _traceparent_of(span: Any) -> str | None:
    try:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"
    except Exception:  # a foreign span object: tracing must never break event stamping
        return None


def current_traceparent() -> str | None:
    """``00-<trace id>-<span id>-<flags>`` of the current valid OpenTelemetry span, else None."""
    if _current_span is None:
        return None
    span = _current_span()
    return None if span is None else _traceparent_of(span)


# -- the stamper ----------------------------------------------------------------------------------------------------


_NO_FIELDS: dict[str, Any] = {}  # never written: stamp() only reads ``fields``


def _now_us() -> int:
    return time.time_ns() // 1000


#: What :meth:`Stamper.capture` returns: ``(stamper, type, fields, event time, session id, seq, bound context,
#: span, turn id, user id, tenant, agent name, child task id)``; :meth:`Stamper.complete` makes the event of it.
Captured = tuple


class Stamper:
    """Creates complete AgentEvent dicts; thread-safe (see the module docstring for how)."""

    def __init__(self, *, tenant: str = "default", service: str | None = None,
                 clock_us: Callable[[], int] = _now_us) -> None:
        self._tenant = tenant
        self._service = service
        self._clock_us = clock_us
        self._schema_version = contract.current().version
        self._seqs: dict[str, Iterator[int]] = {}
        self._lock = threading.Lock()
        #: Session id used when neither an argument, ``fields`` nor the bound context names one.
        self.default_session_id = new_event_id()

    def stamp(self, type: str, fields: dict[str, Any] | None = None, *, session_id: str | None = None,
              turn_id: str | None = None, user_id: str | None = None, tenant: str | None = None,
              agent_name: str | None = None, child_task_id: str | None = None,
              event_time_us: int | None = None) -> dict[str, Any]:
        """A new event of ``type``: ``fields`` (typed AgentEvent fields, ``payload``) plus the envelope.

        The envelope keys (event_id, schema_version, event_time, producer_time, tenant, session_id, seq, type)
        always come from the stamper; ``fields`` cannot override them. ``payload`` may be a dict (serialised
        later, on the publisher's sender thread: do not mutate it after the call) or a JSON object text.
        Same as ``complete(capture(...))``: one code path, so a deferred event equals an immediate one.
        """
        return self.complete(self.capture(type, fields, session_id=session_id, turn_id=turn_id, user_id=user_id,
                                          tenant=tenant, agent_name=agent_name, child_task_id=child_task_id,
                                          event_time_us=event_time_us))

    def capture(self, type: str, fields: dict[str, Any] | None = None, *, session_id: str | None = None,
                turn_id: str | None = None, user_id: str | None = None, tenant: str | None = None,
                agent_name: str | None = None, child_task_id: str | None = None,
                event_time_us: int | None = None) -> Captured:
        """What must be taken on the caller's thread, at the moment of the event, and nothing else.

        That is the time, the session's next ``seq`` (its order), the bound context and the current span (both
        context-local: another thread sees other values). The rest of the stamp (the event id, the dict, the
        ``traceparent`` text, the defaults) is :meth:`complete`'s, which :class:`producers.publisher.EventPublisher`
        runs on its sender thread when handed a capture. A capture is a plain tuple whose first item is this
        stamper (a tuple is the cheapest object to build: ~0.3 µs against ~1.8 µs for the whole stamp, and far
        less code on a cold cache, which is what an agent emitting every few hundred µs has). ``fields`` is held
        by reference: do not mutate it after the call.
        """
        f = fields if fields is not None else _NO_FIELDS
        bound = _bound.get()
        if session_id is None:
            session_id = f.get("session_id") or bound[1] or self.default_session_id
        counter = self._seqs.get(session_id)
        if counter is None:
            with self._lock:
                counter = self._seqs.setdefault(session_id, itertools.count(1))
        if event_time_us is not None:
            now = event_time_us
        elif self._clock_us is _now_us:  # the default clock, inline
            now = time.time_ns() // 1000
        else:
            now = self._clock_us()
        span = _current_span() if _current_span is not None and f.get("traceparent") is None else None
        return (self, type, f, now, session_id, next(counter), bound, span, turn_id, user_id, tenant, agent_name,
                child_task_id)

    def complete(self, captured: Captured) -> dict[str, Any]:
        """The event dict of a :meth:`capture` (any thread; ``captured[0]`` is the stamper that took it)."""
        (_, type, f, now, session_id, seq, bound, span, turn_id, user_id, tenant, agent_name,
         child_task_id) = captured
        b_tenant, _, b_user, b_service, b_agent = bound
        if tenant is None:
            tenant = f.get("tenant") or b_tenant or self._tenant
        if user_id is None:
            user_id = f.get("user_id", b_user)
        if agent_name is None:
            agent_name = f.get("agent_name", b_agent)
        service = f.get("service") or b_service or self._service
        traceparent = f.get("traceparent")
        if traceparent is None and span is not None:
            traceparent = _traceparent_of(span)
        # What ``{**f, "event_id": ..., ...}`` gives (same keys, same order: f's, then the envelope's), at half
        # the cost: that form builds the envelope as a second dict and merges it.
        event = f.copy() if f.__class__ is dict else dict(f)
        event["event_id"] = "%032x" % (_getrandbits(128) & _UUID4_MASK | _UUID4_BITS)  # new_event_id(), inline
        event["schema_version"] = self._schema_version
        event["event_time"] = now
        event["producer_time"] = now
        event["tenant"] = tenant
        event["session_id"] = session_id
        event["seq"] = seq
        event["type"] = type
        event["user_id"] = user_id
        event["service"] = service
        event["agent_name"] = agent_name
        event["turn_id"] = turn_id if turn_id is not None else f.get("turn_id")
        event["child_task_id"] = child_task_id if child_task_id is not None else f.get("child_task_id")
        event["traceparent"] = traceparent
        return event

    def inline_seqs(self) -> dict[str, Iterator[int]] | None:
        """The per-session seq counters, for a caller that writes :meth:`capture` out inline (the Agentao bridge's
        hot path: a Python call less on a cold cache), or None when that would not be the same capture (a
        subclass that overrides ``capture``, a clock other than the default). The inline form, for a session
        whose counter exists (else call :meth:`capture`, which creates it under the lock)::

            (stamper, type, NO_FIELDS, time.time_ns() // 1000, session_id, next(counter), read_bound_context(),
             read_current_span() if read_current_span is not None else None, turn_id, user_id, tenant, None, None)
        """
        if type(self).capture is not Stamper.capture or self._clock_us is not _now_us:
            return None
        return self._seqs

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's counter (call at session end; otherwise counters live as long as the stamper).

        A session stamped again after this restarts at seq 1, so call it only when the session is over.
        """
        with self._lock:
            self._seqs.pop(session_id, None)

    @property
    def session_count(self) -> int:
        return len(self._seqs)


#: What the inline form of :meth:`Stamper.capture` (see :meth:`Stamper.inline_seqs`) reads: the empty fields, the
#: bound context (a tuple) and the current OpenTelemetry span (None when opentelemetry is not installed).
NO_FIELDS = _NO_FIELDS
read_bound_context = _bound.get
read_current_span = _current_span
#: ``(get, key)`` such that ``get().get(key)`` is ``read_current_span()`` without its Python call (OpenTelemetry's
#: default runtime context keeps the current Context, a dict, in a ContextVar), or None: call read_current_span.
read_span_parts = _span_parts


class DeferredStamper(Stamper):
    """A Stamper whose :meth:`stamp` returns a :meth:`~Stamper.capture`, for callers that hand every event straight
    to :meth:`producers.publisher.EventPublisher.publish` (the Agentao bridge: ``AgentaoBridge(...,
    stamper=DeferredStamper(...))``): the publisher completes it on its sender thread, so the agent's thread pays
    for the capture only. Not for a caller that reads the event it stamped (it gets a tuple, not a dict)."""

    def stamp(self, type: str, fields: dict[str, Any] | None = None, *, session_id: str | None = None,  # type: ignore[override]
              turn_id: str | None = None, user_id: str | None = None, tenant: str | None = None,
              agent_name: str | None = None, child_task_id: str | None = None,
              event_time_us: int | None = None) -> Captured:
        return self.capture(type, fields, session_id=session_id, turn_id=turn_id, user_id=user_id, tenant=tenant,
                            agent_name=agent_name, child_task_id=child_task_id, event_time_us=event_time_us)
