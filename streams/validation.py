"""The valid range of every number and time in an AgentEvent, checked before an event is folded into a window.

Avro says ``duration_ms`` is a long; it does not say that a duration of 2^62 ms is nonsense. One such schema-valid
event used to overflow a window's running sum, crash the worker and crash it again at every restart. So each event
is checked here, in one pass over a decoded record, and an event outside its range is *rejected*: it goes to the
dead-letter topic as a single-event record with the reason, and the rest of its record is folded as usual.

What is valid (``None`` is always valid for an optional field: "not reported"):

======================================================= =========================== ==========================
field                                                   valid                       reason when not
======================================================= =========================== ==========================
``event_time``                                          >= 2000-01-01T00:00:00Z,    ``too_old``
                                                        and, when ``max_age_s`` is
                                                        set, >= now - max_age
``event_time``                                          <= now + ``max_future_s``   ``future_time``
``prompt_tokens``, ``completion_tokens``,               0 .. 10^9 per event         ``out_of_range:<field>``
``cache_read_tokens``, ``cache_creation_tokens``,
``reasoning_tokens``
``duration_ms``                                         0 .. 7 days                 ``out_of_range:duration_ms``
``http_status``                                         100 .. 599                  ``out_of_range:http_status``
``seq``                                                 >= 0                        ``out_of_range:seq``
``tenant``                                              1..256 characters, no       ``invalid:tenant``
                                                        control characters
======================================================= =========================== ==========================

Nothing is clamped: a count that is negative or absurd is not a measurement, and folding a clamped value would
report a number nobody observed. ``now`` is the worker's wall clock; without it (unit tests, replays that pass
none) only the fixed bounds apply.

Why the sums cannot overflow: every summed field is at most 10^9 per event, so a window's sum exceeds the Avro
long range (2^63 - 1, about 9.2 * 10^18) only after more than 9.2 * 10^9 events of one tenant in one window: at
the worker's rate that is days of input for a single window, and the events topic keeps 7 days. Durations go into
a sketch whose sum is a float. The table state and the ``WindowedMetrics`` record therefore always hold the sums.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

US_PER_S = 1_000_000
MIN_EVENT_TIME_US = 946_684_800 * US_PER_S  # 2000-01-01T00:00:00Z: nothing agentwatch observes is older
MAX_TOKENS = 10**9  # per event (a 1M-token context window is the largest in use; 1000x that is not a measurement)
MAX_DURATION_MS = 7 * 24 * 3600 * 1000
MAX_TENANT_CHARS = 256
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens",
                "reasoning_tokens")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one event of a record is not folded: ``reason`` is machine-readable, ``detail`` says the value."""

    index: int  # position of the event in its record
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class EventBounds:
    """The configurable part of the ranges above (see the module docstring)."""

    max_future_s: float | None = 300.0  # None: no bound on future times
    max_age_s: float | None = None  # None: only the fixed floor (2000-01-01)

    def __post_init__(self) -> None:
        if self.max_future_s is not None and self.max_future_s < 0:
            raise ValueError("max_future_s must be >= 0")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError("max_age_s must be > 0")


_VALID_TENANTS_KEPT = 100_000  # tenant names already checked (a set lookup instead of a regex per event)


CHECKED_FIELDS = ("event_time", *TOKEN_FIELDS, "duration_ms", "http_status", "seq", "tenant")


def check_events(events: Sequence[Mapping[str, Any]], bounds: EventBounds, now_us: int | None = None,
                 ) -> list[Rejection]:
    """Every event of ``events`` (dicts) outside its valid range, in order (usually an empty list).

    The dead-letter path and tests check whole events; the worker's hot path uses :func:`check_rows` on the tuples its
    decoder builds. One implementation: each event becomes the tuple of :data:`CHECKED_FIELDS` (a missing optional
    field reads as null)."""
    return check_rows([tuple(ev.get(f) for f in CHECKED_FIELDS) for ev in events], CHECKED_FIELDS, bounds, now_us)


def check_rows(rows: Sequence[Sequence[Any]], fields: Sequence[str], bounds: EventBounds, now_us: int | None = None,
               ) -> list[Rejection]:
    """Every event of ``rows`` (tuples of ``fields``, which must name every field of :data:`CHECKED_FIELDS`) outside
    its valid range, in order (usually an empty list).

    One loop over tuples, a handful of comparisons per event: this runs for every event the worker folds, so the
    common case (every optional number null or small, a tenant seen before) takes no function call.
    """
    lo = MIN_EVENT_TIME_US
    hi = _NO_LIMIT
    if now_us is not None:
        if bounds.max_age_s is not None:
            lo = max(lo, now_us - int(bounds.max_age_s * US_PER_S))
        if bounds.max_future_s is not None:
            hi = now_us + int(bounds.max_future_s * US_PER_S)
    index = fields.index
    it, i_d, ih, iseq, iten = (index(f) for f in ("event_time", "duration_ms", "http_status", "seq", "tenant"))
    tokens_of = itemgetter(*(index(f) for f in TOKEN_FIELDS))
    out: list[Rejection] = []
    valid_tenants = _valid_tenants
    for i, row in enumerate(rows):
        t = row[it]
        if t < lo:
            out.append(Rejection(i, "too_old", f"event_time {t} us is before {lo} us"))
            continue
        if t > hi:
            out.append(Rejection(i, "future_time", f"event_time {t} us is more than {bounds.max_future_s:g} s "
                                 f"ahead of the worker's clock ({now_us} us)"))
            continue
        for v in tokens_of(row):
            if v is not None and (v < 0 or v > MAX_TOKENS):
                break
        else:
            d, h = row[i_d], row[ih]
            if ((d is None or 0 <= d <= MAX_DURATION_MS) and (h is None or 100 <= h <= 599) and row[iseq] >= 0
                    and row[iten] in valid_tenants):
                continue
        problem = _field_problem(dict(zip(fields, row, strict=True)))
        if problem is not None:
            out.append(Rejection(i, *problem))
    return out


_NO_LIMIT = 1 << 64  # above every Avro long
_valid_tenants: set[str] = set()


def _field_problem(ev: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first problem of one event (``None``: valid; its tenant is then remembered as valid)."""
    get = ev.get
    for name in TOKEN_FIELDS:
        v = get(name)
        if v is not None and not 0 <= v <= MAX_TOKENS:
            return f"out_of_range:{name}", f"{name}={v} (valid: 0..{MAX_TOKENS})"
    v = get("duration_ms")
    if v is not None and not 0 <= v <= MAX_DURATION_MS:
        return "out_of_range:duration_ms", f"duration_ms={v} (valid: 0..{MAX_DURATION_MS})"
    v = get("http_status")
    if v is not None and not 100 <= v <= 599:
        return "out_of_range:http_status", f"http_status={v} (valid: 100..599)"
    v = get("seq")
    if v is not None and v < 0:
        return "out_of_range:seq", f"seq={v} (valid: >= 0)"
    tenant = ev["tenant"]
    if not tenant or len(tenant) > MAX_TENANT_CHARS or _CONTROL.search(tenant):
        return "invalid:tenant", f"tenant {tenant[:80]!r} (valid: 1..{MAX_TENANT_CHARS} characters, no control " \
            "characters)"
    if len(_valid_tenants) >= _VALID_TENANTS_KEPT:
        _valid_tenants.clear()
    _valid_tenants.add(tenant)
    return None
