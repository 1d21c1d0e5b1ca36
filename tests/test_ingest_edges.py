"""Stage 1 at the edges: hostile but schema-valid values, re-sent single events, late data, unexpected errors.

The worker used to crash-loop on one event with ``duration_ms`` near 2^62 (a valid Avro long): its window's sum no
longer fit the table's JSON. Here every such event is rejected with a precise reason, the rest of its record is
folded, the window state stays encodable, and no input makes :meth:`Ingest.handle` raise.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ingest import T0, US, ev

from schemas.codec import AvroCodec
from streams.app import encode_state
from streams.ingest import Ingest
from streams.validation import (
    MAX_DURATION_MS,
    MAX_TOKENS,
    MIN_EVENT_TIME_US,
    TOKEN_FIELDS,
    EventBounds,
    check_events,
)

LONG_MAX = (1 << 63) - 1
NOW = T0 + 3600 * US  # the worker's clock in these tests


def stage(lateness_s: float = 600, **kw: Any) -> Ingest:
    return Ingest(AvroCodec(), window_s=60, grace_s=10, max_future_s=300, allowed_lateness_s=lateness_s, **kw)


def test_each_out_of_range_field_is_rejected_with_its_reason() -> None:
    cases = {
        "out_of_range:duration_ms": ev(1, type_="tool_complete", duration_ms=1 << 62),
        "out_of_range:prompt_tokens": ev(1, type_="llm_call_completed", prompt_tokens=-5),
        "out_of_range:completion_tokens": ev(1, type_="llm_call_completed", completion_tokens=MAX_TOKENS + 1),
        "out_of_range:reasoning_tokens": ev(1, type_="llm_call_completed", reasoning_tokens=LONG_MAX),
        "out_of_range:http_status": ev(1, type_="llm_retry", http_status=-1),
        "out_of_range:seq": ev(1, seq=-3),
        "invalid:tenant": ev(1, tenant="bad\nline"),
        "future_time": ev(0, event_time=NOW + 301 * US),
        "too_old": ev(0, event_time=0),
    }
    for reason, event in cases.items():
        (r,) = check_events([event], EventBounds(max_future_s=300), NOW)
        assert r.reason == reason, (reason, r)
    assert check_events([ev(1, type_="tool_complete", duration_ms=MAX_DURATION_MS)], EventBounds(), NOW) == []
    assert check_events([ev(1, tenant="x" * 257)], EventBounds(), NOW)[0].reason == "invalid:tenant"
    # an age bound, when configured
    assert check_events([ev(0)], EventBounds(max_age_s=60), NOW)[0].reason == "too_old"


def test_every_range_holds_its_bounds_exactly() -> None:
    """Each bound is inclusive: the last valid value passes, one step past it is refused with its field's reason
    (check_events is a thin wrapper over the worker's check_rows, so this pins the tuple path's bounds too)."""
    edges = [(name, 0, MAX_TOKENS) for name in TOKEN_FIELDS]
    edges += [("duration_ms", 0, MAX_DURATION_MS), ("http_status", 100, 599)]
    for name, lo, hi in edges:
        for ok in (lo, hi):  # a known tenant takes the fast pre-check, a new one the full check of every field
            for tenant in ("acme", uuid.uuid4().hex):
                assert check_events([ev(1, tenant=tenant, **{name: ok})], EventBounds(), NOW) == [], (name, ok)
        for bad in (lo - 1, hi + 1):
            (r,) = check_events([ev(1, **{name: bad})], EventBounds(), NOW)
            assert r.reason == f"out_of_range:{name}", (name, bad, r)
    assert check_events([ev(1, seq=0)], EventBounds(), NOW) == []
    assert check_events([ev(1, seq=-1)], EventBounds(), NOW)[0].reason == "out_of_range:seq"
    assert check_events([ev(0, event_time=MIN_EVENT_TIME_US)], EventBounds(), NOW) == []
    assert check_events([ev(0, event_time=MIN_EVENT_TIME_US - 1)], EventBounds(), NOW)[0].reason == "too_old"
    assert check_events([ev(0, event_time=NOW + 300 * US)], EventBounds(max_future_s=300), NOW) == []
    assert check_events([ev(0, event_time=NOW + 300 * US + 1)], EventBounds(max_future_s=300), NOW)[0].reason == \
        "future_time"
    assert check_events([ev(1, tenant="x" * 256)], EventBounds(), NOW) == []


def test_a_hostile_event_is_rejected_and_the_rest_of_its_record_is_folded() -> None:
    codec, s = AvroCodec(), stage()
    hostile = ev(2, type_="tool_complete", tool_name="t", duration_ms=(1 << 62) + 17)
    batch = codec.encode_batch("p1", 1, T0, [ev(1), hostile, ev(3)])
    out = s.handle(0, 5, batch, NOW)
    assert out.dead_letter is None and out.folded == 2
    assert [(e["event_id"], r.reason, r.index) for e, r in out.rejected] == [
        (hostile["event_id"], "out_of_range:duration_ms", 1)]
    for _key, value in s.state_changes(0):
        encode_state(value)  # the table state stays encodable


def test_a_single_event_sent_twice_as_two_records_counts_once() -> None:
    codec, s = AvroCodec(), stage()
    one = codec.encode_event(ev(1))
    assert s.handle(0, 1, one, NOW).folded == 1
    again = s.handle(0, 7, one, NOW)  # another offset: a retrying proxy, another publisher
    assert again.folded == 0 and again.duplicate
    out = s.handle(0, 8, codec.encode_event(ev(200)), NOW)  # closes the first window
    assert [p.record["events"] for p in out.partials] == [1]


def test_late_data_within_the_lateness_is_a_delta_and_beyond_it_is_handed_back() -> None:
    codec, s = AvroCodec(), stage(lateness_s=120)
    s.handle(0, 1, codec.encode_batch("p", 1, T0, [ev(1), ev(100)]), NOW)  # closes [0, 60)
    out = s.handle(0, 2, codec.encode_batch("p", 2, T0, [ev(5)]), NOW)  # 95 s late: within grace + lateness
    assert out.revised == 1 and out.late == 0
    assert [(p.window_start_us, p.record["events"], p.delta) for p in out.partials] == [(T0, 1, 2)]  # a delta
    s.handle(0, 3, codec.encode_batch("p", 3, T0, [ev(300)]), NOW)  # stream time 300: [0, 60) expired at 190
    out = s.handle(0, 4, codec.encode_batch("p", 4, T0, [ev(6), ev(299)]), NOW)
    assert out.late == 1 and [e["event_time"] for e in out.too_late] == [T0 + 6 * US] and out.folded == 1


def test_an_unexpected_error_makes_a_processing_error_dead_letter_and_the_stage_goes_on() -> None:
    codec, s = AvroCodec(), stage()

    def boom(*_args: Any, **_kw: Any) -> int:
        raise RuntimeError("a bug")

    real = s.engine.process
    s.engine.process = boom  # type: ignore[method-assign]
    out = s.handle(0, 1, codec.encode_event(ev(1, tenant="acme")), NOW)
    assert out.dead_letter is not None and out.dead_letter.reason == "processing_error"
    assert "RuntimeError: a bug" in out.dead_letter.detail and out.tenant == "acme"
    s.engine.process = real  # type: ignore[method-assign]
    assert s.handle(0, 2, codec.encode_event(ev(2)), NOW).folded == 1


# -- property: schema-valid hostile records never stop stage 1, and the good tenant stays exact -------------------

_long = st.one_of(st.none(), st.integers(-(1 << 63), LONG_MAX),
                  st.sampled_from([0, -1, 1 << 62, LONG_MAX, -(1 << 63), MAX_TOKENS, MAX_DURATION_MS]))
_int = st.one_of(st.none(), st.integers(-(1 << 31), (1 << 31) - 1))
_text = st.text(max_size=40)


@st.composite
def hostile_event(draw: Any) -> dict[str, Any]:
    # far past, far future, or inside the good tenant's window (a valid time later than that would legitimately
    # move stream time on and make the good events late)
    t = draw(st.one_of(st.integers(-(1 << 62), MIN_EVENT_TIME_US - 1), st.integers(NOW + 301 * US, 1 << 62),
                       st.integers(T0, T0 + 59 * US)))
    return {"event_id": uuid.uuid4().hex, "event_time": t, "producer_time": t,
            "tenant": draw(st.one_of(_text, st.just("evil|tenant|1|2"), st.just(""))),
            "session_id": draw(_text), "seq": draw(_long.filter(lambda v: v is not None)),
            "type": draw(st.sampled_from(["turn_end", "tool_complete", "llm_call_completed", "llm_retry",
                                          "confirm_resolved", "session_end"])),
            "duration_ms": draw(_long), "prompt_tokens": draw(_long), "completion_tokens": draw(_long),
            "cache_read_tokens": draw(_long), "cache_creation_tokens": draw(_long),
            "reasoning_tokens": draw(_long), "http_status": draw(_int), "tool_name": draw(st.none() | _text),
            "model": draw(st.none() | _text), "status": draw(st.sampled_from([None, "ok", "error", "cancelled"])),
            "payload": draw(st.none() | st.just('{"skill": "x"}') | _text)}


@settings(max_examples=80, deadline=None)
@given(st.lists(hostile_event(), max_size=12), st.integers(0, 12))
def test_hostile_records_never_stop_stage_one_and_the_good_tenant_stays_exact(
        hostile: list[dict[str, Any]], cut: int) -> None:
    codec, s = AvroCodec(), stage()
    good = [ev(1 + i, tenant="good", type_="llm_call_completed", model="m", prompt_tokens=10, completion_tokens=2)
            for i in range(5)]
    records = [codec.encode_batch("p", 1, T0, hostile[:cut] + good[:2]),
               codec.encode_batch("p", 2, T0, good[2:] + hostile[cut:])]
    records += [codec.encode_event(h) for h in hostile]
    partials = []
    for offset, value in enumerate(records):
        out = s.handle(0, offset, value, NOW)
        assert out.dead_letter is None or out.dead_letter.reason != "processing_error", out.dead_letter
        partials += out.partials
        for _key, state in s.state_changes(0):
            orjson.loads(encode_state(state))
    partials += s.handle(0, 99, codec.encode_event(ev(400, tenant="end")), NOW).partials
    (rec,) = [p.record for p in partials if p.tenant == "good" and p.window_start_us == T0]
    assert rec["events"] == 5 and rec["prompt_tokens"] == 50 and rec["completion_tokens"] == 10
    for p in partials:
        assert all(-1 < v <= LONG_MAX for k, v in p.record.items() if isinstance(v, int) and not isinstance(v, bool))
