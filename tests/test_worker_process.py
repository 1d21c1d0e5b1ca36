"""The worker process around the Faust app: bounded graceful stop, GC tuning (no Kafka needed)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def test_a_graceful_stop_that_hangs_ends_after_the_deadline() -> None:
    # A Faust worker whose stop never completes (its loop never runs the stop task): the watchdog armed by the
    # signal exits the process after --stop-timeout, with a message saying why nothing is lost.
    script = textwrap.dedent("""
        import signal, time
        import faust
        from agentwatch.commands.worker import _bounded_stop_worker_class
        app = faust.App("stop-test", broker="kafka://127.0.0.1:1", autodiscover=False)
        worker = _bounded_stop_worker_class()(app, quiet=True, redirect_stdouts=False)
        worker.stop_timeout_s = 0.5
        worker._schedule_shutdown(signal.SIGTERM)
        time.sleep(30)
        raise SystemExit(3)
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 25
    assert "graceful stop did not finish within 0.5s" in done.stderr


def test_gc_tuning_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    from agentwatch.commands.worker import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(50_000)
        assert gc.get_threshold()[0] == 50_000 and gc.get_freeze_count() > 0
        tune_gc(0)  # 0 leaves the settings alone
        assert gc.get_threshold()[0] == 50_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _shell(tmp_path: Path):  # type: ignore[no-untyped-def]
    from streams.app import create_app
    from streams.options import WorkerOptions

    options = WorkerOptions(app_id="gap-test", bootstrap_servers="127.0.0.1:1", events_topic="ev",
                            dead_letter_topic="dlq", partials_topic="pa", metrics_topic="me", alerts_topic="al",
                            events_partitions=2, partials_partitions=2, datadir=tmp_path)
    _app, shell = create_app(options)
    return shell


class _Seeks:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []

    async def seek(self, tp: Any, offset: int) -> None:
        self.calls.append((tp, offset))


def _event(partition: int, offset: int) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(message=SimpleNamespace(topic="ev", partition=partition, offset=offset,
                                                   tp=("ev", partition)))


def test_a_hole_in_an_events_partition_is_sought_back_and_a_permanent_one_accepted(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from streams.app import MAX_SEEK_RESTARTS

    shell = _shell(tmp_path)
    seeks = _Seeks()
    shell.app = SimpleNamespace(consumer=seeks)

    def in_order(offset: int, partition: int = 0) -> bool:
        return asyncio.run(shell._in_order(_event(partition, offset)))

    # the first record of an assignment, with no committed offset known, is never a hole
    assert in_order(500)
    shell._last_offset[("ev", 0)] = 440
    assert in_order(441) and in_order(9, partition=1) and in_order(300)  # next, another partition, a redelivery
    # a hole: 442 is skipped and the consumer sought back to 441; records fetched before the seek are skipped too
    assert not in_order(442)
    assert seeks.calls == [(("ev", 0), 441)]
    assert not in_order(443) and not in_order(444)
    assert in_order(441)  # the refetch: the hole is filled
    assert ("ev", 0) not in shell._seeking and shell.telemetry.skipped_offsets._value.get() == 0
    # Faust dropped the refetch too (stale records moved its read offset to 445): seek again, then filled
    shell._last_offset[("ev", 0)] = 440
    assert not in_order(443) and not in_order(444) and not in_order(445)
    assert not in_order(445)  # the sequence starts again past the target
    assert seeks.calls[-1] == (("ev", 0), 441) and len(seeks.calls) == 3
    assert in_order(441)
    assert shell.telemetry.skipped_offsets._value.get() == 0
    # a permanent hole (no records at 445..446): every refetch starts at 447; taken after MAX_SEEK_RESTARTS
    shell._last_offset[("ev", 0)] = 444
    assert not in_order(447) and not in_order(448)
    for _ in range(MAX_SEEK_RESTARTS):
        assert not in_order(447) and not in_order(448)
    assert in_order(447)
    assert shell.telemetry.skipped_offsets._value.get() == 2
    assert shell.telemetry.gap_recoveries._value.get() == 3
    # the first record of an assignment past the committed offset: Faust dropped what lay between (seen in the
    # kill loop); sought back to the committed offset
    seeks._committed_offset = {("ev", 2): 100}
    assert not in_order(105, partition=2)
    assert seeks.calls[-1] == (("ev", 2), 100)
    assert in_order(100, partition=2)


def test_the_seek_runs_on_the_consumer_thread_and_resets_fausts_read_offset(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    calls: list[tuple[str, Any]] = []

    class Thread:
        def seek(self, tp: Any, offset: int) -> None:
            calls.append(("seek", (tp, offset)))

        async def call_thread(self, method: Any, *args: Any) -> Any:
            calls.append(("call_thread", method.__name__))
            return method(*args)

    consumer = SimpleNamespace(_thread=Thread(), _read_offset={("ev", 0): 500})
    shell = _shell(tmp_path)
    shell.app = SimpleNamespace(consumer=consumer)
    asyncio.run(shell._seek(("ev", 0), 441))
    assert calls == [("call_thread", "seek"), ("seek", (("ev", 0), 441))]
    assert consumer._read_offset[("ev", 0)] == 441
