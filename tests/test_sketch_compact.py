"""The compact sketch (no bucket dict while at most one positive value is held) against a reference model.

The reference is the sketch's definition, computed from the values alone: bucket ``ceil(log(v) / log(gamma))`` for
each positive value, a zero bucket, count, sum, min and max. Whatever mix of adds, merges (in any order and nesting)
and ``from_dict`` round trips built a sketch, in whichever form it ended, its dict, its ``Duration`` record (with
the Avro body) and its quantiles must equal the reference's.
"""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.sketch import DURATION_QUANTILES, DurationSketch, _constants

ALPHA = 0.01

values_st = st.one_of(
    st.integers(min_value=-5, max_value=70_000),  # zeros and negatives, the key table and beyond it
    st.integers(min_value=1, max_value=10**10),
    # floats with 6 fraction bits: their sums are exact in any order, so the merge order cannot change ``sum``
    st.integers(min_value=-64, max_value=2**36).map(lambda i: i / 64),
)


def reference(values: list[float]) -> DurationSketch:
    """A sketch in the dict form built from the definition (no add, no merge)."""
    _alpha, _gamma, mult, _table = _constants(ALPHA)
    pos = [v for v in values if v > 0]
    ref = DurationSketch(ALPHA)
    ref.bins = dict(Counter(math.ceil(math.log(v) * mult) for v in pos))
    ref.count = len(values)
    ref.zero_count = len(values) - len(pos)
    clipped = [v if v > 0 else 0 for v in values]
    ref.sum = sum(clipped)
    if values:
        ref._lo, ref._hi = min(clipped), max(clipped)
    return ref


def build(parts: list[list[float]], order: list[int], round_trip: bool) -> DurationSketch:
    """Each part added value by value, optionally through to_dict/from_dict, merged in ``order``."""
    sketches = []
    for part in parts:
        s = DurationSketch(ALPHA)
        for v in part:
            s.add(v)
        if round_trip:
            s = DurationSketch.from_dict(s.to_dict())
        sketches.append(s)
    into = DurationSketch(ALPHA)
    for i in order:
        into.merge(sketches[i % len(sketches)] if sketches else DurationSketch(ALPHA))
    return into


def same(a: DurationSketch, b: DurationSketch) -> None:
    da, db = a.to_dict(DURATION_QUANTILES), b.to_dict(DURATION_QUANTILES)
    assert da == db
    ra, rb = a.duration_record(), b.duration_record()
    assert dict(ra) == dict(rb)
    assert getattr(ra, "avro", None) == getattr(rb, "avro", None)
    assert a.quantiles((0.0, 0.3, 0.5, 1.0)) == b.quantiles((0.0, 0.3, 0.5, 1.0))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(values_st, max_size=4), min_size=1, max_size=5), st.booleans(), st.randoms())
def test_any_build_equals_the_reference(parts: list[list[float]], round_trip: bool, rnd) -> None:
    order = list(range(len(parts)))
    rnd.shuffle(order)
    built = build(parts, order, round_trip)
    everything = [v for part in parts for v in part]
    same(built, reference(everything))
    # adding into a merged sketch and copying keep it equal too
    extra = rnd.choice([0, 1, 7, 70_000, 2.5])
    built.add(extra)
    same(built.copy(), reference([*everything, extra]))


@given(st.lists(values_st, max_size=3))
def test_the_compact_form_holds_no_dict_for_one_positive_value(values: list[float]) -> None:
    s = DurationSketch(ALPHA)
    for v in values:
        s.add(v)
    positives = sum(1 for v in values if v > 0)
    assert (s.bins is None) == (positives <= 1)
    back = DurationSketch.from_dict(s.to_dict())
    assert (back.bins is None or not back.bins) == (positives <= 1)
    same(back, s)


def test_merging_two_single_values_makes_the_dict() -> None:
    a, b = DurationSketch(ALPHA), DurationSketch(ALPHA)
    a.add(10)
    b.add(20_000)
    a.merge(b)
    assert a.bins is not None and sum(a.bins.values()) == 2
    same(a, reference([10, 20_000]))


@settings(max_examples=300, deadline=None)
@given(st.lists(values_st, max_size=6))
def test_state_round_trips_through_json_in_both_forms(values: list[float]) -> None:
    import orjson

    s = DurationSketch(ALPHA)
    for v in values:
        s.add(v)
    state = orjson.loads(orjson.dumps(s.to_state()))
    if len(values) == 1 and values[0] > 0:
        assert not isinstance(state, (list, dict))  # the value alone
    same(DurationSketch.from_state(ALPHA, state), DurationSketch.from_dict(orjson.loads(orjson.dumps(s.to_dict()))))
    same(DurationSketch.from_state(ALPHA, orjson.loads(orjson.dumps(s.to_dict()))), s)  # the older form still read


def test_from_state_rejects_what_is_not_a_sketch() -> None:
    import pytest

    for bad in (None, True, 0, -3, "12", [1, 0, 5], [2, 0, 5, 5, 5, [1], [1]]):
        with pytest.raises(ValueError):
            DurationSketch.from_state(ALPHA, bad)


def test_aggregate_state_reads_the_older_tool_sketch_form() -> None:
    from streams.aggregate import TenantWindowAggregate

    agg = TenantWindowAggregate("t", 0, 60_000_000)
    for d in (120, 120, 4_000, 0):
        agg.add_event({"type": "tool_complete", "tool_name": "shell", "status": "ok", "duration_ms": d})
    agg.add_event({"type": "tool_complete", "tool_name": "grep", "status": "error", "duration_ms": 9})
    state = agg.to_state()
    older = {**state, "tools": {n: [*v[:3], agg.tools[n].duration.to_dict()] for n, v in state["tools"].items()}}
    assert state["tools"]["grep"][3] == 9
    for st_ in (state, older):
        back = TenantWindowAggregate.from_state(st_)
        assert back.to_record() == agg.to_record()
