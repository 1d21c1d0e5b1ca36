"""The dependencies' bugs that ``workarounds/`` works around: each shown on the installed version, and the workaround
shown to work. When an upgrade fixes a bug, its ``..._still_...`` test fails: the workaround can then go."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.merge import _held
from workarounds.orjson_buffers import dumps_held

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)

RECORD = {f"field_{i}": [i, "x" * 10, {"k": i * 1.5}] for i in range(100)}  # ~3.5 KiB, as a window's record


def _traced_per_object(make: Any, n: int = 200) -> float:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(n)]
        return (tracemalloc.get_traced_memory()[0] - base) / len(kept)
    finally:
        tracemalloc.stop()


@given(json_values)
def test_held_json_is_orjsons_bytes(value: Any) -> None:
    assert dumps_held(value) == orjson.dumps(value)
    assert dumps_held(value, orjson.OPT_NON_STR_KEYS) == orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    assert _held(value) == orjson.dumps(value)  # stage 2's state held for late data


def test_held_json_allocates_about_its_length() -> None:
    size = len(orjson.dumps(RECORD))
    assert _traced_per_object(lambda: dumps_held(RECORD)) < size + 100


def test_orjson_dumps_still_keeps_its_whole_buffer() -> None:
    size = len(orjson.dumps(RECORD))
    raw = _traced_per_object(lambda: orjson.dumps(RECORD))
    assert raw > 2 * size, f"orjson.dumps now holds {raw:.0f} B for {size} B: workarounds/orjson_buffers can go"
