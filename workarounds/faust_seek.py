"""Seeking Faust's events consumer on the thread that runs aiokafka.

faust-streaming 0.15.3: ``ThreadDelegateConsumer._seek`` calls ``AIOKafkaConsumerThread.seek`` directly, i.e.
aiokafka's ``seek`` runs on the worker's event loop while the consumer thread's fetcher is running. The race was
seen in CI as a ``KeyError`` in aiokafka's ``fetched_records`` that crashed the worker. Here the seek goes through
the consumer thread's call queue instead, and Faust's read offset is reset as its own ``Consumer.seek`` does, so
the records fetched again are not dropped as already read. ``tests/test_workarounds.py`` shows that Faust still
seeks on the caller's thread.
"""

from __future__ import annotations

from typing import Any


async def seek_on_consumer_thread(consumer: Any, tp: Any, offset: int) -> None:
    """Seek ``consumer`` (a Faust app's consumer) on ``tp`` to ``offset``, on its aiokafka thread if it has one."""
    thread = getattr(consumer, "_thread", None)
    if thread is None or not hasattr(thread, "call_thread"):
        await consumer.seek(tp, offset)
        return
    await thread.call_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None
