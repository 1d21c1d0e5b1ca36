"""Stage 1's fused path (events decoded as tuples of the fold's fields, checked and folded without a dict) against
decode-then-fold (whole dicts, ``check_events``, the engine's mapping path): the same bytes accepted and refused,
the same aggregates, rejections, dead letters, late events and state, for arbitrary valid records and hostile but
schema-valid values (extreme longs, odd strings, far-past and far-future times), plus corrupted record values."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import AvroCodec, DecodeError
from streams.aggregate import (
    _COUNTED_TYPES,
    FOLD_FIELDS,
    UNKNOWN,
    TenantWindowAggregate,
    TenantWindowOps,
    ToolStats,
    UsageStats,
    skill_of,
)
from streams.ingest import OFFSET_PRODUCER, DeadLetter, Ingest, Outcome
from streams.validation import check_events

US = 1_000_000
T0 = 1_767_225_600 * US  # a window boundary
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
TYPES = ["turn_end", "tool_complete", "llm_call_completed", "llm_retry", "tool_confirmation", "confirm_resolved",
         "turn_start", "log"]


class LegacyAggregate(TenantWindowAggregate):
    """The per-event fold as it was before rows (commit c9720be, verbatim): dict lookups per field."""

    __slots__ = ()

    def add_event(self, ev: Mapping[str, Any]) -> None:
        """Fold one decoded AgentEvent (a dict with the contract's fields; absent optional fields read as null)."""
        t = ev["type"]
        self.events += 1
        by_type = self.by_type
        by_type[t] = by_type.get(t, 0) + 1
        if t not in _COUNTED_TYPES:
            return
        if t == "tool_complete":
            name = ev.get("tool_name") or UNKNOWN
            stats = self.tools.get(name)
            if stats is None:
                stats = self._label(self.tools, "tool", name, ToolStats)
            stats.calls += 1
            status = ev.get("status")
            if status == "error":
                stats.failures += 1
            elif status == "cancelled":
                stats.cancelled += 1
            d = ev.get("duration_ms")
            if d is not None:
                stats.duration.add(d)
        elif t == "llm_call_completed":
            model = ev.get("model")
            name = model or UNKNOWN
            stats = self.models.get(name)
            if stats is None:
                stats = self._label(self.models, "model", name, UsageStats)
            stats.llm_calls += 1
            failed = ev.get("status") == "error"
            is_5xx = False
            if failed:
                code = ev.get("http_status")
                is_5xx = code is not None and 500 <= code <= 599
                stats.llm_errors += 1
                stats.llm_errors_5xx += is_5xx
                self._count_error(ev.get("error_class"))
                self._count_failed_attempt(code, ev.get("error_class"))
            p = ev.get("prompt_tokens")
            c = ev.get("completion_tokens")
            if p is None and c is None:
                stats.llm_calls_without_usage += 1
                cr = cc = rs = None
                cost: int | None = 0
            else:
                cr = ev.get("cache_read_tokens")
                cc = ev.get("cache_creation_tokens")
                rs = ev.get("reasoning_tokens")
                if p:
                    stats.prompt_tokens += p
                if c:
                    stats.completion_tokens += c
                if cr:
                    stats.cache_read_tokens += cr
                if cc:
                    stats.cache_creation_tokens += cc
                if rs:
                    stats.reasoning_tokens += rs
                cost = self.prices.cost_nusd(model, ev.get("event_time") or self.window_start, p, c, cr, cc, rs)
                if cost is None:
                    stats.llm_calls_unpriced += 1
                else:
                    stats.cost_nusd += cost
                    user = ev.get("user_id")
                    if user:
                        self.spenders.add(user, cost)
            payload = ev.get("payload")
            if payload and '"skill"' in payload:
                skill = skill_of(payload)
                if skill is not None:
                    self._fold_skill(skill, failed, is_5xx, p, c, cr, cc, rs, cost)
            d = ev.get("duration_ms")
            if d is not None:
                self.llm_duration.add(d)
        elif t == "turn_end":
            self.turns += 1
            status = ev.get("status") or UNKNOWN
            self.turns_by_status[status] = self.turns_by_status.get(status, 0) + 1
            reason = ev.get("incomplete_reason")
            if reason is not None:
                self.incomplete_reasons[reason] = self.incomplete_reasons.get(reason, 0) + 1
                if reason == "max_iterations":
                    self.max_iterations_hits += 1
            d = ev.get("duration_ms")
            if d is not None:
                self.turn_duration.add(d)
        elif t == "tool_confirmation":
            self.confirm_requests += 1
        elif t == "llm_retry":
            self.llm_retries += 1
            code = ev.get("http_status")
            if code is not None and 500 <= code <= 599:
                self.llm_retries_5xx += 1
            self._count_failed_attempt(code, ev.get("error_class"))
        else:  # confirm_resolved
            outcome = ev.get("confirm_outcome")
            if outcome == "allow":
                self.confirm_allows += 1
            elif outcome == "reject":
                self.confirm_rejects += 1
            elif outcome == "timeout":
                self.confirm_timeouts += 1


class LegacyOps(TenantWindowOps):
    def new(self, key: str, start_us: int, end_us: int) -> TenantWindowAggregate:
        return LegacyAggregate(key, start_us, end_us, label_limit=self.label_limit,
                               relative_accuracy=self.relative_accuracy, guards=self.guards_for(key),
                               prices=self.prices)


class DecodeThenFold(Ingest):
    """The reference: stage 1 as it was before the fused path (whole dicts all the way, the old fold)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ops.__class__ = LegacyOps  # the engine holds this object: its new windows are LegacyAggregates

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


def mostly(usual: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` nine times in ten: with a hostile value in every field most events would be rejected, and the
    fold would see too few of them."""
    return st.integers(0, 9).flatmap(lambda k: hostile if k == 0 else usual)


odd_text = st.text(max_size=10)  # any code point but surrogates: controls, NUL, astral, combining marks
longs = st.integers(LONG_MIN, LONG_MAX)
tokens = opt(mostly(st.integers(0, 5000), st.sampled_from([-1, 10**9, 10**9 + 1]) | longs))
times = mostly(st.integers(-900, 7200).map(lambda s: T0 + s * US) | st.integers(-900 * US, 7200 * US).map(
    lambda d: T0 + d), st.sampled_from([LONG_MIN, LONG_MAX, 0, 946_684_800 * US - 1, 946_684_800 * US,
                                        (1 << 62) + 1, T0 + 10**12]) | longs)
names = st.sampled_from(["read", "write", "bash", "grep", "edit", "ls"])
events = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["e1", "e2", "e3"]) | st.uuids().map(lambda u: u.hex),
        "event_time": times,
        "producer_time": longs,
        "tenant": mostly(st.sampled_from(["acme", "beta", "gamma"]),
                         odd_text | st.sampled_from(["", "t" * 256, "t" * 257, "a\x00b", "caf\u00e9\U0001f600"])),
        "session_id": odd_text,
        "seq": mostly(st.integers(0, 50), st.sampled_from([-1, LONG_MIN, LONG_MAX])),
        "type": st.sampled_from(TYPES),
    },
    optional={
        "schema_version": st.integers(INT_MIN, INT_MAX),
        "user_id": opt(mostly(st.sampled_from(["u1", "u2"]), odd_text)),
        "service": opt(odd_text),
        "turn_id": opt(odd_text),
        "tool_name": opt(mostly(names, odd_text)),
        "status": opt(mostly(st.sampled_from(["ok", "error", "cancelled"]), odd_text)),
        "duration_ms": opt(mostly(st.integers(0, 10**6), st.sampled_from([-1, 7 * 24 * 3600 * 1000,
                                                                           7 * 24 * 3600 * 1000 + 1]) | longs)),
        "prompt_tokens": tokens,
        "completion_tokens": tokens,
        "cache_read_tokens": tokens,
        "cache_creation_tokens": tokens,
        "reasoning_tokens": tokens,
        "model": opt(mostly(st.sampled_from(["gpt-4o", "claude-3-5-sonnet-20241022", "no-such-model"]), odd_text)),
        "error_class": opt(mostly(st.sampled_from(["RateLimitError", "Timeout"]), odd_text)),
        "error_message": opt(odd_text),
        "http_status": opt(mostly(st.sampled_from([99, 100, 429, 500, 503, 599, 600]),
                                  st.integers(INT_MIN, INT_MAX))),
        "finish_reason": opt(odd_text),
        "incomplete_reason": opt(mostly(st.sampled_from(["max_iterations", "cancelled"]), odd_text)),
        "confirm_outcome": opt(mostly(st.sampled_from(["allow", "reject", "timeout"]), odd_text)),
        "payload": opt(mostly(st.sampled_from(['{"skill": "pdf"}', '{"skill": "r\\u00e9sum\\u00e9", "x": 1}',
                                               '{"skill": 3}', '{"skill"', "{}", ""]), odd_text)),
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
