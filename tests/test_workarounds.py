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


def test_fausts_spinner_still_sets_the_root_logger_to_debug() -> None:
    import logging

    import faust

    from workarounds.faust_spinner import without_spinner

    def root_level_after_setup(worker: faust.Worker) -> int:
        logger = logging.Logger("root-under-test", logging.WARNING)
        logger.addHandler(logging.NullHandler())
        worker.on_setup_root_logger(logger, logging.WARNING)
        return logger.level

    app = faust.App("workarounds-test", broker="kafka://127.0.0.1:1")
    worker = faust.Worker(app, loglevel="warning")
    assert worker.spinner is not None
    assert root_level_after_setup(worker) == logging.DEBUG, "Faust no longer lowers the level: faust_spinner can go"
    assert root_level_after_setup(without_spinner(faust.Worker(app, loglevel="warning"))) == logging.WARNING


def test_faust_still_seeks_on_the_callers_thread() -> None:
    import asyncio
    import threading

    from faust.transport.consumer import ThreadDelegateConsumer

    from workarounds.faust_seek import seek_on_consumer_thread

    calls: list[tuple[str, int]] = []

    class ConsumerThread:
        def seek(self, tp: Any, offset: int) -> None:
            calls.append(("seek", threading.get_ident()))

        async def call_thread(self, fn: Any, *args: Any) -> Any:
            calls.append(("queued", threading.get_ident()))
            worker = threading.Thread(target=fn, args=args)
            worker.start()
            worker.join()
            return None

    class Consumer:
        _thread = ConsumerThread()
        _read_offset: dict[Any, Any] = {}

    me = threading.get_ident()
    asyncio.run(ThreadDelegateConsumer._seek(Consumer(), "tp", 5))  # type: ignore[arg-type]
    assert calls == [("seek", me)], "Faust now seeks through its thread's queue: faust_seek can go"
    calls.clear()
    consumer = Consumer()
    asyncio.run(seek_on_consumer_thread(consumer, "tp", 7))
    assert calls[0] == ("queued", me) and calls[1][0] == "seek" and calls[1][1] != me
    assert consumer._read_offset["tp"] == 7
