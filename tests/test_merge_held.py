"""What stage 2 holds for late data: JSON bytes of their own length, the same bytes as ``orjson.dumps``."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.merge import _held

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@given(json_values)
def test_held_bytes_are_orjsons_bytes(value: Any) -> None:
    assert _held(value) == orjson.dumps(value)


def _traced_per_object(make: Any, n: int = 200) -> float:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(n)]
        return (tracemalloc.get_traced_memory()[0] - base) / len(kept)
    finally:
        tracemalloc.stop()


def test_held_bytes_allocate_about_their_length_where_orjson_keeps_its_buffer() -> None:
    record = {f"field_{i}": [i, "x" * 10, {"k": i * 1.5}] for i in range(100)}  # ~3.5 KiB, as a window's record
    size = len(orjson.dumps(record))
    held = _traced_per_object(lambda: _held(record))
    assert held < size + 100
    # the reason for the copy (if a later orjson returns right-sized bytes, the copy is merely redundant)
    raw = _traced_per_object(lambda: orjson.dumps(record))
    print(f"{size} bytes of JSON: orjson.dumps holds {raw:.0f} B, _held {held:.0f} B")
