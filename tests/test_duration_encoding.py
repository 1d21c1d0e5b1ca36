"""The pre-encoded ``Duration`` records of stage 2 (streams.metrics_codec.duration_datum) give fastavro's bytes.

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
from streams.metrics_codec import DURATION_RECORD, MetricsCodec, duration_datum
from streams.sketch import DurationSketch

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


def test_values_the_sketch_never_makes_are_left_to_the_generated_encoder() -> None:
    d = DurationSketch().to_dict((0.5, 0.95, 0.99))
    for key, value in [("count", True), ("sum", "1"), ("bucket_keys", (1,)), ("bucket_counts", [1 << 64]),
                       ("min", "x"), ("sum", 10**400)]:
        odd = {**d, key: value}
        assert duration_datum(odd) is odd
    big = {**d, "count": 2, "sum": 10**300, "bucket_keys": [1], "bucket_counts": [2]}
    assert isinstance(duration_datum(big), dict)


def test_a_changed_record_type_never_uses_another_records_bytes() -> None:
    """A PreEncoded dict named for another record is encoded from its contents, not from its bytes."""
    d = DurationSketch()
    d.add(5)
    plain = d.to_dict((0.5, 0.95, 0.99))
    wrong = PreEncoded(plain, b"\xff\xff", "io.agentwatch.Other")
    agg = TenantWindowAggregate("t1", 0, 60_000_000)
    record = agg.to_record()
    record["turn_duration"] = wrong
    assert ENCODE(record) == CODEC.encode(_plain(record))
