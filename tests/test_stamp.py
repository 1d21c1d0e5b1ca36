"""Stamping events on the agent's thread: envelope, context precedence, sequence numbers, traceparent, shards."""

from __future__ import annotations

import contextvars
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.sharding import shard_key, shard_of
from producers.stamp import (
    DeferredStamper,
    Stamper,
    bind_context,
    bound_context,
    current_traceparent,
    new_event_id,
)
from schemas import contract
from schemas.codec import AvroCodec

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_envelope_is_complete_and_encodes() -> None:
    clock = iter([1_700_000_000_000_001])
    stamper = Stamper(tenant="acme", service="support-bot", clock_us=lambda: next(clock))
    ev = stamper.stamp("tool_complete", {"tool_name": "read_file", "status": "ok", "duration_ms": 12,
                                         "payload": {"call_id": "c1"}}, session_id="s1", turn_id="t1")
    assert HEX32.fullmatch(ev["event_id"]) and uuid.UUID(hex=ev["event_id"]).version == 4
    assert ev["event_time"] == ev["producer_time"] == 1_700_000_000_000_001
    assert (ev["tenant"], ev["service"], ev["session_id"], ev["turn_id"], ev["seq"]) == (
        "acme", "support-bot", "s1", "t1", 1)
    assert ev["schema_version"] == contract.current().version
    assert ev["tool_name"] == "read_file" and ev["payload"] == {"call_id": "c1"}
    codec = AvroCodec()
    ev["payload"] = '{"call_id":"c1"}'
    assert codec.decode(codec.encode_event(ev)).events[0]["tool_name"] == "read_file"


def test_fields_cannot_override_the_envelope_but_explicit_time_can() -> None:
    stamper = Stamper()
    ev = stamper.stamp("turn_begin", {"event_id": "x", "seq": 99, "type": "error", "event_time": 5},
                       session_id="s", event_time_us=123)
    assert ev["event_id"] != "x" and ev["seq"] == 1 and ev["type"] == "turn_begin"
    assert ev["event_time"] == ev["producer_time"] == 123


def test_precedence_arguments_then_fields_then_bound_context_then_defaults() -> None:
    stamper = Stamper(tenant="default-tenant", service="default-svc")
    ev = stamper.stamp("turn_begin")
    assert (ev["tenant"], ev["service"], ev["session_id"], ev["user_id"]) == (
        "default-tenant", "default-svc", stamper.default_session_id, None)
    with bind_context(tenant="bound-t", session_id="bound-s", user_id="bound-u", service="bound-svc",
                      agent_name="bound-a"):
        ev = stamper.stamp("turn_begin")
        assert (ev["tenant"], ev["session_id"], ev["user_id"], ev["service"], ev["agent_name"]) == (
            "bound-t", "bound-s", "bound-u", "bound-svc", "bound-a")
        ev = stamper.stamp("turn_begin", {"user_id": "field-u", "tenant": "field-t"})
        assert (ev["tenant"], ev["user_id"]) == ("field-t", "field-u")
        ev = stamper.stamp("turn_begin", {"user_id": "field-u"}, user_id="arg-u", tenant="arg-t",
                           session_id="arg-s", agent_name="arg-a")
        assert (ev["tenant"], ev["session_id"], ev["user_id"], ev["agent_name"]) == (
            "arg-t", "arg-s", "arg-u", "arg-a")


def test_nested_binds_override_only_what_they_name_and_restore_on_exit() -> None:
    assert bound_context()["tenant"] is None
    with bind_context(tenant="outer", session_id="s-outer"):
        with bind_context(session_id="s-inner"):
            assert bound_context()["tenant"] == "outer"
            assert bound_context()["session_id"] == "s-inner"
        assert bound_context()["session_id"] == "s-outer"
    assert bound_context() == {"tenant": None, "session_id": None, "user_id": None, "service": None,
                               "agent_name": None}


def test_bound_context_reaches_other_threads_only_when_the_context_is_copied() -> None:
    stamper = Stamper()
    with bind_context(session_id="bound"):
        with ThreadPoolExecutor(1) as pool:
            plain = pool.submit(stamper.stamp, "tool_start").result()
            ctx = contextvars.copy_context()
            copied = pool.submit(ctx.run, stamper.stamp, "tool_start").result()
    assert plain["session_id"] == stamper.default_session_id
    assert copied["session_id"] == "bound"


def test_seq_is_per_session_one_based_and_gap_free_under_concurrency() -> None:
    stamper = Stamper()
    per_thread = 2_000
    results: list[list[dict]] = [[] for _ in range(8)]

    def work(i: int) -> None:
        for j in range(per_thread):
            results[i].append(stamper.stamp("tool_output", session_id="shared" if j % 2 else f"own-{i}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = [e for r in results for e in r]
    shared = sorted(e["seq"] for e in events if e["session_id"] == "shared")
    assert shared == list(range(1, 8 * per_thread // 2 + 1))
    for i in range(8):
        own = [e["seq"] for e in results[i] if e["session_id"] == f"own-{i}"]
        assert own == list(range(1, per_thread // 2 + 1))
    assert len({e["event_id"] for e in events}) == len(events)


def test_forget_session_restarts_its_sequence() -> None:
    stamper = Stamper()
    assert [stamper.stamp("turn_begin", session_id="s")["seq"] for _ in range(3)] == [1, 2, 3]
    assert stamper.session_count == 1
    stamper.forget_session("s")
    assert stamper.session_count == 0
    assert stamper.stamp("turn_begin", session_id="s")["seq"] == 1


def test_event_ids_are_uuid4_and_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for i in ids[:200]:
        u = uuid.UUID(hex=i)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == i


def test_traceparent_from_the_current_span() -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace

    provider = sdk_trace.TracerProvider()
    tracer = provider.get_tracer("test")
    stamper = Stamper()
    assert current_traceparent() is None
    assert stamper.stamp("turn_begin")["traceparent"] is None
    with tracer.start_as_current_span("turn") as span:
        ctx = span.get_span_context()
        expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", expected)
        assert stamper.stamp("turn_begin")["traceparent"] == expected
        assert stamper.stamp("turn_begin", {"traceparent": "given"})["traceparent"] == "given"
    with trace.use_span(trace.INVALID_SPAN):
        assert current_traceparent() is None


def test_shard_keys_are_stable_crc32_not_python_hash() -> None:
    # zlib.crc32(b"session-1") == 0x23c0be2e; a value computed once, so a change of function is caught
    assert shard_of("session-1", 64) == 0x23C0BE2E % 64
    assert shard_key("session-1", 64) == b"%03d" % (0x23C0BE2E % 64)
    assert {shard_key(f"s{i}", 8) for i in range(1000)} == {b"%03d" % i for i in range(8)}
    assert shard_key("ünïcode-🙂", 64) == shard_key("ünïcode-🙂", 64)


# -- capture on the agent's thread, complete on the sender's ---------------------------------------------------------

_name = st.none() | st.text(min_size=1, max_size=6)
_FIELD_KEYS = ("tenant", "session_id", "user_id", "agent_name", "service", "turn_id", "child_task_id",
               "traceparent", "tool_name", "event_id", "seq")


def _without_id(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if k != "event_id"}


@settings(max_examples=200, deadline=None)
@given(fields=st.none() | st.dictionaries(st.sampled_from(_FIELD_KEYS), _name),
       args=st.fixed_dictionaries({}, optional={k: _name for k in ("session_id", "turn_id", "user_id", "tenant",
                                                                    "agent_name", "child_task_id")}),
       bound=st.fixed_dictionaries({}, optional={k: _name for k in ("tenant", "session_id", "user_id", "service",
                                                                     "agent_name")}),
       time_us=st.none() | st.integers(min_value=0, max_value=2**62))
def test_a_completed_capture_is_the_stamp(fields: dict | None, args: dict, bound: dict, time_us: int | None) -> None:
    """Property: ``complete(capture(x))`` on another thread, after the bound context is gone, equals ``stamp(x)``
    (but for the random event id): everything context-dependent was taken at capture time."""
    now = iter(range(10, 100))
    a = Stamper(tenant="t0", service="svc0", clock_us=lambda: next(now))
    b = Stamper(tenant="t0", service="svc0", clock_us=lambda: 10)
    b.default_session_id = a.default_session_id
    with bind_context(**bound):
        want = a.stamp("tool_complete", fields, event_time_us=time_us, **args)
        captured = b.capture("tool_complete", fields, event_time_us=time_us, **args)
    with ThreadPoolExecutor(1) as pool:  # a plain thread: it sees no bound context at all
        got = pool.submit(b.complete, captured).result()
    assert _without_id(got) == _without_id(want)
    assert list(got) == list(want)  # same key order, so the same dict for everything downstream
    assert HEX32.fullmatch(got["event_id"])


def test_a_capture_keeps_the_span_current_when_it_was_taken() -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk_trace.TracerProvider().get_tracer("test")
    stamper = Stamper()
    with tracer.start_as_current_span("turn") as span:
        ctx = span.get_span_context()
        captured = stamper.capture("turn_begin")
    assert current_traceparent() is None
    flags = int(ctx.trace_flags) & 0xFF
    assert stamper.complete(captured)["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}"


def test_deferred_stamper_hands_out_captures_in_sequence() -> None:
    stamper = DeferredStamper(tenant="acme")
    captures = [stamper.stamp("tool_output", {"payload": {"i": i}}, session_id="s") for i in range(3)]
    assert all(c.__class__ is tuple and c[0] is stamper for c in captures)
    events = [stamper.complete(c) for c in reversed(captures)]  # completion order does not matter
    assert [e["seq"] for e in events] == [3, 2, 1] and {e["tenant"] for e in events} == {"acme"}
