"""Stage 1's fused path (events decoded as tuples of the fold's fields, checked and folded without a dict) against
decode-then-fold (whole dicts, ``check_events``, the engine's mapping path): the same bytes accepted and refused,
the same aggregates, rejections, dead letters, late events and state, for arbitrary valid records and hostile but
schema-valid values (extreme longs, odd strings, far-past and far-future times), plus corrupted record values."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import AvroCodec, DecodeError
from streams.aggregate import FOLD_FIELDS
from streams.ingest import OFFSET_PRODUCER, DeadLetter, Ingest, Outcome
from streams.validation import check_events

US = 1_000_000
T0 = 1_767_225_600 * US  # a window boundary
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
TYPES = ["turn_end", "tool_complete", "llm_call_completed", "llm_retry", "tool_confirmation", "confirm_resolved",
         "turn_start", "log"]


class DecodeThenFold(Ingest):
    """The reference: stage 1 as it was before the fused path (whole dicts all the way)."""

    def handle(self, partition: int, offset: int, value: bytes | None, now_us: int | None = None) -> Outcome:
        try:
            decoded = self.codec.decode(value)
        except DecodeError as exc:
            return Outcome(dead_letter=DeadLetter(exc.reason, exc.detail))
        events = decoded.events
        out = Outcome(events=len(events), tenant=events[0].get("tenant") if events else None)
        try:
            rejections = check_events(events, self.bounds, now_us)
            if rejections:
                rejected = {r.index for r in rejections}
                out.rejected = [(events[r.index], r) for r in rejections]
                events = [ev for i, ev in enumerate(events) if i not in rejected]
            producer_id, seq = decoded.producer_id, decoded.batch_seq
            if not decoded.is_batch:
                producer_id, seq = OFFSET_PRODUCER, offset
            before = self.engine.counters(partition)
            out.folded = self.engine.process(partition, events, producer_id, seq, now_us,
                                             event_ids=not decoded.is_batch, too_late=out.too_late)
            after = self.engine.counters(partition)
            out.late = after["late"] - before["late"]
            out.revised = after["revised"] - before["revised"]
            out.duplicate = out.folded == 0 and out.late == 0 and len(events) > 0
            self._close(partition, out, offset)
        except Exception as exc:
            return Outcome(dead_letter=DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"),
                           events=len(decoded.events), tenant=out.tenant)
        return out


def opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


odd_text = st.text(max_size=10)  # any code point but surrogates: controls, NUL, astral, combining marks
longs = st.integers(LONG_MIN, LONG_MAX)
tokens = opt(st.integers(0, 5000) | st.integers(-3, 3) | st.sampled_from([10**9, 10**9 + 1]) | longs)
times = (st.integers(-900, 7200).map(lambda s: T0 + s * US)
         | st.integers(-3600 * US, 3 * 3600 * US).map(lambda d: T0 + d)
         | st.sampled_from([LONG_MIN, LONG_MAX, 0, 946_684_800 * US - 1, 946_684_800 * US, (1 << 62) + 1])
         | longs)
events = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["e1", "e2", "e3"]) | st.uuids().map(lambda u: u.hex),
        "event_time": times,
        "producer_time": longs,
        "tenant": st.sampled_from(["acme", "beta", "gamma"]) | odd_text | st.just("t" * 257),
        "session_id": odd_text,
        "seq": st.integers(-2, 50) | longs,
        "type": st.sampled_from(TYPES),
    },
    optional={
        "schema_version": st.integers(INT_MIN, INT_MAX),
        "user_id": opt(st.sampled_from(["u1", "u2", ""]) | odd_text),
        "service": opt(odd_text),
        "turn_id": opt(odd_text),
        "tool_name": opt(st.sampled_from(["read", "write", "bash", "grep", ""]) | odd_text),
        "status": opt(st.sampled_from(["ok", "error", "cancelled", "complete"]) | odd_text),
        "duration_ms": opt(st.integers(-2, 10**6) | st.sampled_from([7 * 24 * 3600 * 1000, 7 * 24 * 3600 * 1000 + 1])
                           | longs),
        "prompt_tokens": tokens,
        "completion_tokens": tokens,
        "cache_read_tokens": tokens,
        "cache_creation_tokens": tokens,
        "reasoning_tokens": tokens,
        "model": opt(st.sampled_from(["gpt-4o", "claude-3-5-sonnet-20241022", "no-such-model"]) | odd_text),
        "error_class": opt(st.sampled_from(["RateLimitError", "Timeout"]) | odd_text),
        "error_message": opt(odd_text),
        "http_status": opt(st.integers(98, 601) | st.integers(INT_MIN, INT_MAX)),
        "finish_reason": opt(odd_text),
        "incomplete_reason": opt(st.sampled_from(["max_iterations", "cancelled"]) | odd_text),
        "confirm_outcome": opt(st.sampled_from(["allow", "reject", "timeout"]) | odd_text),
        "payload": opt(st.sampled_from(['{"skill": "pdf"}', '{"skill": "r\\u00e9sum\\u00e9", "x": 1}',
                                        '{"skill": 3}', '{"skill"', "{}", ""]) | odd_text),
        "evidence": opt(odd_text),
    },
)
# one record: a batch (producer, seq: small ranges so redeliveries and stale batches happen), a single event, or
# a batch with its value cut short or one byte changed (mostly invalid Avro, sometimes still decodable)
records = st.one_of(
    st.tuples(st.just("batch"), st.sampled_from(["p1", "p2"]), st.integers(1, 6), st.lists(events, max_size=12)),
    st.tuples(st.just("single"), st.none(), st.none(), st.lists(events, min_size=1, max_size=1)),
    st.tuples(st.just("cut"), st.integers(0, 400), st.integers(0, 255), st.lists(events, min_size=1, max_size=3)),
)
nows = opt(st.integers(-600, 7200).map(lambda s: T0 + s * US))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(records, st.integers(0, 1), nows), max_size=12),
       st.sampled_from([None, 300.0]), st.sampled_from([None, 7 * 24 * 3600.0]), st.sampled_from([0.0, 120.0]))
def test_fused_stage_one_equals_decode_then_fold(script: list[Any], max_future_s: float | None,
                                                 max_age_s: float | None, lateness_s: float) -> None:
    codec = AvroCodec()
    fused = Ingest(codec, 60, 10.0, max_future_s, 3, allowed_lateness_s=lateness_s, max_age_s=max_age_s)
    reference = DecodeThenFold(codec, 60, 10.0, max_future_s, 3, allowed_lateness_s=lateness_s,
                               max_age_s=max_age_s)
    offsets = [0, 0]
    for (kind, a, b, evs), partition, now_us in script:
        if kind == "single":
            value = codec.encode_event(evs[0])
        else:
            producer, seq = (a, b) if kind == "batch" else ("p3", 1)
            value = codec.encode_batch(producer, seq, T0, evs)
            if kind == "cut":
                cut = a % len(value)
                value = value[:cut] if a % 2 else value[:cut] + bytes([b]) + value[cut + 1:]
        offset = offsets[partition]
        offsets[partition] += 1
        got = fused.handle(partition, offset, value, now_us)
        want = reference.handle(partition, offset, value, now_us)
        assert got == want
    for partition in (0, 1):
        assert fused.state_changes(partition) == reference.state_changes(partition)
        assert fused.counters(partition) == reference.counters(partition)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=8), st.integers(0, 10_000), st.integers(0, 255), st.booleans())
def test_projected_reader_accepts_and_refuses_what_the_full_decoder_does(evs: list[dict[str, Any]], at: int,
                                                                         byte: int, cut: bool) -> None:
    """Same tuples as the full decode projected, the same DecodeError (reason and detail) for damaged bytes,
    from the generated reader and from the fastavro fallback."""
    codec = AvroCodec()
    value = codec.encode_batch("p", 1, T0, evs)
    at %= len(value)
    damaged = value[:at] if cut else value[:at] + bytes([byte]) + value[at + 1:]
    for data in (value, damaged, codec.encode_event(evs[0]) if evs else value):
        for projector in (codec.projector(FOLD_FIELDS), AvroCodec(compiled=False).projector(FOLD_FIELDS)):
            try:  # the reference: the same codec's full decoder (generated, or fastavro, which checks less)
                full = projector.codec.decode(data)
            except DecodeError as exc:
                full_error: tuple[str, str] | None = (exc.reason, exc.detail)
            else:
                full_error = None
            try:
                rows = projector.decode(data)
            except DecodeError as exc:
                assert (exc.reason, exc.detail) == full_error
                continue
            assert full_error is None
            assert rows.events == [tuple(ev.get(f) for f in FOLD_FIELDS) for ev in full.events]
            assert (rows.is_batch, rows.producer_id, rows.batch_seq) == (full.is_batch, full.producer_id,
                                                                       full.batch_seq)


def test_a_rejected_or_too_late_event_leaves_whole() -> None:
    """The rare paths take the event from a full decode: every field reaches the dead-letter and late topics."""
    codec = AvroCodec()
    stage = Ingest(codec, 60, 10.0, None, 50, allowed_lateness_s=0.0)
    full = {"event_id": uuid.uuid4().hex, "event_time": T0 + 3600 * US, "producer_time": T0, "tenant": "acme",
            "session_id": "s", "seq": 1, "type": "tool_complete", "service": "svc", "evidence": "ev",
            "error_message": "boom", "tool_name": "read"}
    bad = dict(full, event_id=uuid.uuid4().hex, duration_ms=-1)
    late = dict(full, event_id=uuid.uuid4().hex, event_time=T0)
    out = stage.handle(0, 0, codec.encode_batch("p", 1, T0, [full, bad, late]))
    assert [(ev, r.index, r.reason) for ev, r in out.rejected] == [(codec.decode(codec.encode_event(bad)).events[0],
                                                                    1, "out_of_range:duration_ms")]
    assert out.too_late == [codec.decode(codec.encode_event(late)).events[0]]
    assert out.too_late[0]["evidence"] == "ev" and out.too_late[0]["service"] == "svc"
    assert out.folded == 1 and out.late == 1
