"""The at-least-once loop of a durable sink: consume a batch, write it, make it durable, and only then commit.

The audit log and the replay archive run the same loop around different stores. A crash anywhere before the
commit re-delivers the batch and the store recognises what it already holds (an event-id index, content-addressed
rows), so delivery is effectively once, with no gap. A failed commit (a rebalance took the partitions away) is
counted, not fatal, for the same reason: the new owner re-reads from the last commit. Kafka errors other than
end-of-partition are logged and skipped; undecodable records are the store's business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sinks.topic_end import end_offsets, reached_ends

log = logging.getLogger(__name__)

Record = tuple[int, int, bytes | None]  # (partition, offset, value)


class CommitCounts(Protocol):
    """The two counters the loop keeps on the sink's stats."""

    commits: int
    commit_failures: int


def next_offsets(records: list[Record]) -> dict[int, int]:
    """Per partition, the offset after the last of ``records`` (in consumed order): what a commit stores."""
    return {partition: offset + 1 for partition, offset, _value in records}


def commit_sync(consumer: Consumer, offsets: list[TopicPartition], counts: CommitCounts, what: str) -> None:
    """Commit ``offsets`` synchronously; a failure is counted and logged, never raised (see the module docstring)."""
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
        counts.commits += 1
    except KafkaException as exc:
        counts.commit_failures += 1
        log.warning("%s: offset commit failed (%s); the batch comes back to whoever owns its partitions and is "
                    "deduplicated", what, exc)


def run_durably(consumer: Consumer, topic: str, *, what: str, write: Callable[[list[Record]], object],
                flush: Callable[[], None], commit_offsets: Callable[[dict[int, int]], list[TopicPartition]],
                counts: CommitCounts, stop: threading.Event, until_end: bool = False,
                idle_timeout_s: float | None = None, on_progress: Callable[[], None] | None = None,
                before_commit: Callable[[list[TopicPartition]], None] | None = None, batch_size: int = 500,
                poll_timeout_s: float = 0.5) -> None:
    """Loop on the already subscribed ``consumer`` until ``stop`` is set, or (``until_end``) the end offsets seen at
    start are reached, or nothing arrives for ``idle_timeout_s``.

    Per batch: ``write(records)``, ``flush()`` (durable), ``commit_offsets(next offsets)`` says what may be
    committed, ``before_commit`` (a test hook) sees it, then the synchronous commit. ``on_progress`` is called about
    once a second. The store is flushed once more at the end, not closed (the caller owns it).
    """
    ends = end_offsets(consumer, topic) if until_end else None
    positions: dict[int, int] = {}
    last_data = last_progress = time.monotonic()
    while not stop.is_set():
        msgs = consumer.consume(batch_size, timeout=poll_timeout_s)
        records: list[Record] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consume error %s", what, err)
                continue
            records.append((msg.partition(), msg.offset(), msg.value()))
        if records:
            last_data = time.monotonic()
            write(records)
            flush()
            nxt = next_offsets(records)
            commit = commit_offsets(nxt)
            if before_commit is not None:
                before_commit(commit)
            commit_sync(consumer, commit, counts, what)
            positions.update(nxt)
        if on_progress is not None and time.monotonic() - last_progress >= 1.0:
            last_progress = time.monotonic()
            on_progress()
        if ends is not None and reached_ends(consumer, topic, ends, positions):
            break
        if idle_timeout_s is not None and time.monotonic() - last_data >= idle_timeout_s:
            break
    flush()
