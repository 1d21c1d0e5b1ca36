"""The pre-encoded ``Duration`` records of stage 2 (``DurationSketch.duration_record``) give fastavro's bytes.

Property-based: random sketches (empty, zero-only, integer and float durations, counts beyond the varint tables),
alone and inside whole ``WindowedMetrics`` records encoded by the worker's encoder, against fastavro encoding
the same record as a plain dict.
"""

from __future__ import annotations

import io

import fastavro
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codegen import PreEncoded
from streams.aggregate import TenantWindowAggregate, _duration_record
from streams.app import metrics_encoder
from streams.metrics_codec import MetricsCodec
from streams.sketch import DURATION_RECORD, DurationSketch

CODEC = MetricsCodec()
ENCODE = metrics_encoder(CODEC)
DURATION_SCHEMA = next(t for t in CODEC.parsed["fields"] if t["name"] == "turn_duration")["type"]

durations = st.lists(
    st.one_of(st.integers(-5, 10**9), st.floats(-1.0, 1e12, allow_nan=False, allow_infinity=False)),
    max_size=60,
)


def _sketch(values: list[float], repeat: int) -> DurationSketch:
    sketch = DurationSketch()
    for v in values:
        for _ in range(repeat):
            sketch.add(v)
    return sketch


def _plain(value):  # noqa: ANN001, ANN202
    """The same datum with every PreEncoded turned back into a plain dict (what fastavro is given)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _fastavro(schema, datum) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, datum)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(durations, st.sampled_from([1, 3, 9000]))
def test_a_duration_carries_exactly_the_bytes_fastavro_writes(values: list[float], repeat: int) -> None:
    d = _duration_record(_sketch(values, repeat))
    assert isinstance(d, PreEncoded) and d.record == DURATION_RECORD
    assert d.avro == _fastavro(DURATION_SCHEMA, dict(d))
    assert dict(d) == _plain(d) and orjson.loads(orjson.dumps(d)) == dict(d)  # JSON and comparisons see the dict


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["read", "shell", "web"]), durations), max_size=4), st.booleans())
def test_a_whole_metrics_record_encodes_as_fastavro_does(tools: list[tuple[str, list[float]]], final: bool) -> None:
    agg = TenantWindowAggregate("t1", 0, 60_000_000)
    for name, values in tools:
        for v in values:
            agg.add_event({"type": "tool_complete", "tool_name": name, "status": "ok", "duration_ms": v,
                           "event_time": 1, "tenant": "t1"})
    record = agg.to_record(final=final)
    assert ENCODE(record) == CODEC.encode(_plain(record))
    assert CODEC.decode(ENCODE(record)) == CODEC.decode(CODEC.encode(_plain(record)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=5), st.integers(-(1 << 40), 1 << 40),
       st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False), st.booleans()))
def test_a_hostile_sketch_encodes_as_fastavro_does_or_is_left_to_the_generated_encoder(
        counts: list[int], zero: int, total: float) -> None:
    """Counts no real sketch holds (negative, beyond the varint tables, a bool sum, a sum no double holds), as a
    sketch read from a forged record could: the bytes are still fastavro's, or the dict is a plain one."""
    sketch = DurationSketch()
    sketch.bins = {k: c for k, c in zip(range(-2, len(counts) * 5000, 5000), counts, strict=False)}
    sketch.zero_count, sketch.count, sketch.sum = zero, zero + sum(sketch.bins.values()), total
    sketch._lo, sketch._hi = 0, 10
    d = sketch.duration_record()
    try:
        expected = _fastavro(DURATION_SCHEMA, dict(d))
    except Exception:  # noqa: BLE001 - fastavro refuses it: then the generated encoder must see the plain dict
        assert not isinstance(d, PreEncoded)
        return
    if isinstance(d, PreEncoded):
        assert d.avro == expected


def test_a_changed_record_type_never_uses_another_records_bytes() -> None:
    """A PreEncoded dict named for another record is encoded from its contents, not from its bytes."""
    d = DurationSketch()
    d.add(5)
    wrong = PreEncoded(d.to_dict((0.5, 0.95, 0.99)))
    wrong.avro, wrong.record = b"\xff\xff", "io.agentwatch.Other"
    agg = TenantWindowAggregate("t1", 0, 60_000_000)
    record = agg.to_record()
    record["turn_duration"] = wrong
    assert ENCODE(record) == CODEC.encode(_plain(record))


def test_the_finals_a_tenant_keeps_hold_no_avro_bodies() -> None:
    """``MergeStage`` keeps a hop of finals per tenant: the kept copy equals the record, without the bodies."""
    from streams.merge import _kept

    agg = TenantWindowAggregate("t1", 0, 60_000_000)
    for name, v in [("read", 5), ("read", 7), ("shell", 900)]:
        agg.add_event({"type": "tool_complete", "tool_name": name, "status": "ok", "duration_ms": v,
                       "event_time": 1, "tenant": "t1"})
    record = agg.to_record()
    assert isinstance(record["tools"][0]["duration"], PreEncoded)
    kept = _kept(record)
    assert kept == record

    def walk(value):  # noqa: ANN001, ANN202
        assert not isinstance(value, PreEncoded)
        for v in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            walk(v)

    walk(kept)
