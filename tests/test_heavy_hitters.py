"""streams/heavy_hitters.py: the Space-Saving bounds hold for one stream and for any merge tree of its parts."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.heavy_hitters import SpaceSaving

items = st.lists(st.tuples(st.sampled_from([f"u{i}" for i in range(30)]), st.integers(0, 1000)), max_size=300)


def check(sketch: SpaceSaving, stream: list[tuple[str, int]]) -> None:
    true = Counter()
    for k, w in stream:
        true[k] += w
    n, k = sum(true.values()), sketch.capacity
    assert sketch.total == n and len(sketch.counts) <= k
    for key, count in sketch.counts.items():
        err = sketch.errors[key]
        assert count - err <= true[key] <= count, key  # a kept count brackets the truth
        assert err * k <= n  # error <= N / k
    for key, w in true.items():
        if w * k > n:
            assert key in sketch.counts, (key, w, n, k)  # heavy hitters are never missed
    if len(true) <= k and all(e == 0 for e in sketch.errors.values()):
        assert {kk: c for kk, c in sketch.counts.items() if c} == {kk: w for kk, w in true.items() if w}


@settings(max_examples=300, deadline=None)
@given(stream=items, k=st.integers(1, 8))
def test_one_stream_keeps_the_bounds(stream, k) -> None:
    sketch = SpaceSaving(k)
    for key, w in stream:
        sketch.add(key, w)
    check(sketch, stream)


@settings(max_examples=300, deadline=None)
@given(stream=items, k=st.integers(1, 8), data=st.data())
def test_any_merge_tree_keeps_the_bounds(stream, k, data) -> None:
    parts_n = data.draw(st.integers(1, 6))
    assignment = data.draw(st.lists(st.integers(0, parts_n - 1), min_size=len(stream), max_size=len(stream)))
    parts = [SpaceSaving(k) for _ in range(parts_n)]
    for (key, w), p in zip(stream, assignment, strict=True):
        parts[p].add(key, w)
    # merge in a random tree: repeatedly merge two random sketches
    while len(parts) > 1:
        i = data.draw(st.integers(0, len(parts) - 1))
        a = parts.pop(i)
        j = data.draw(st.integers(0, len(parts) - 1))
        b = parts[j]
        merged = b.copy()
        merged.merge(a)
        parts[j] = merged
    check(parts[0], stream)


def test_exact_when_few_keys_and_independent_of_merge_order() -> None:
    a, b, c = SpaceSaving(5), SpaceSaving(5), SpaceSaving(5)
    a.add("x", 10)
    b.add("y", 7)
    b.add("x", 1)
    c.add("z", 3)
    ab_c = a.copy()
    ab_c.merge(b)
    ab_c.merge(c)
    c_ba = c.copy()
    c_ba.merge(b)
    c_ba.merge(a)
    assert ab_c.top() == c_ba.top() == [("x", 11, 0), ("y", 7, 0), ("z", 3, 0)]
    before = a.top()
    merged = a.copy()
    merged.merge(b)
    assert a.top() == before  # merge leaves its argument and the original alone


def test_round_trips_and_rejects_no_capacity() -> None:
    s = SpaceSaving(2)
    for key, w in (("a", 5), ("b", 3), ("c", 4)):
        s.add(key, w)
    assert s.top() == [("c", 7, 3), ("a", 5, 0)]
    assert SpaceSaving.from_record(s.to_record()).top() == s.top()
    assert SpaceSaving.from_state(s.to_state()).to_record() == s.to_record()
    assert SpaceSaving.from_record(None).top() == [] and SpaceSaving.from_state(None).total == 0
    with pytest.raises(ValueError):
        SpaceSaving(0)
