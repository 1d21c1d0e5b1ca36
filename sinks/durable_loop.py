"""The at-least-once loop of a durable sink: consume a batch, write it, make it durable, and only then commit.

The audit log, the per-tenant logs and the replay archive run the same loop around different stores
(:func:`consume_durably`: consumer included; :func:`run_durably`: on a consumer the caller made). A crash anywhere
before the commit re-delivers the batch and the store recognises what it already holds (an event-id index,
content-addressed rows, line positions), so delivery is effectively once, with no gap. A failed commit (a
rebalance took the partitions away) is counted, not fatal, for the same reason: the new owner re-reads from the
last commit. Kafka errors other than end-of-partition are logged and skipped; undecodable records are the store's
business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sinks.topic_end import CommittedOffsets, CommittedReader, OffsetsUnavailable, end_offsets, reached_ends

log = logging.getLogger(__name__)

Record = tuple[int, int, bytes | None]  # (partition, offset, value)


class CommitCounts(Protocol):
    """The two counters the loop keeps on the sink's stats."""

    commits: int
    commit_failures: int


@dataclass
class ConsumeStats:
    """What a durable sink's run read: Kafka records, the events in them, undecodable records by reason, and the
    loop's commits. Each sink's stats extend it with what became of the events."""

    records: int = 0
    events: int = 0
    commits: int = 0
    commit_failures: int = 0
    undecodable: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


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
                poll_timeout_s: float = 0.5, committed: CommittedReader | None = None,
                settle_timeout_s: float = 180.0) -> None:
    """Loop on the already subscribed ``consumer`` until ``stop`` is set, or (``until_end``) the end offsets seen at
    start are reached, or nothing arrives for ``idle_timeout_s``.

    Per batch: ``write(records)``, ``flush()`` (durable), ``commit_offsets(next offsets)`` says what may be
    committed, ``before_commit`` (a test hook) sees it, then the synchronous commit. ``on_progress`` is called about
    once a second. The store is flushed once more at the end, not closed (the caller owns it).

    ``committed`` reads the group's committed offsets for ``until_end`` (see :mod:`sinks.topic_end`); while they
    cannot be read the loop goes on, saying every 10 s what it waits for, and gives up with a RuntimeError after
    ``settle_timeout_s`` of failures in a row (a group normally settles within the session timeout).
    """
    ends = end_offsets(consumer, topic) if until_end else None
    positions: dict[int, int] = {}
    last_data = last_progress = time.monotonic()
    unavailable_since: float | None = None
    said = 0.0
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
        if ends is not None:
            try:
                if reached_ends(consumer, topic, ends, positions, committed=committed):
                    break
                unavailable_since = None
                now = time.monotonic()
                if not records and now - last_data >= 5.0 and now - said >= 10.0 and not consumer.assignment():
                    said = now
                    log.warning("%s: waiting for the consumer group to assign partitions (after a crash it waits "
                                "for the dead member's session to time out, session.timeout.ms)", what)
            except OffsetsUnavailable as exc:
                now = time.monotonic()
                unavailable_since = unavailable_since or now
                if now - unavailable_since > settle_timeout_s:
                    raise RuntimeError(f"{what}: the consumer group's committed offsets stayed unavailable for "
                                       f"{settle_timeout_s:.0f} s ({exc}); is the group coordinator up?") from exc
                if now - said >= 10.0:
                    said = now
                    log.warning("%s: waiting for the consumer group's committed offsets (%s); after a crash the "
                                "group settles once the dead member's session times out", what, exc)
        if idle_timeout_s is not None and time.monotonic() - last_data >= idle_timeout_s:
            break
    flush()


def consume_durably(config: Mapping[str, Any], topic: str, *, what: str, write: Callable[[list[Record]], object],
                    flush: Callable[[], None], commit_offsets: Callable[[dict[int, int]], list[TopicPartition]],
                    counts: CommitCounts, stop: threading.Event | None = None, until_end: bool = False,
                    idle_timeout_s: float | None = None, on_progress: Callable[[], None] | None = None,
                    before_commit: Callable[[list[TopicPartition]], None] | None = None, batch_size: int = 500,
                    poll_timeout_s: float = 0.5,
                    on_revoke: Callable[[Consumer, list[TopicPartition]], None] | None = None) -> None:
    """A consumer of ``config`` (:func:`sinks.consumer_config.sink_consumer_config`) subscribed to ``topic``, run
    through :func:`run_durably` (same arguments), closed at the end whatever happens. ``on_revoke`` is called when a
    rebalance takes partitions away (inside ``consume()``, between two batches): a store that holds unwritten
    state drops it there.

    With ``until_end`` the group's committed offsets are read by a second consumer of the group that never joins it
    (:class:`sinks.topic_end.CommittedOffsets`), so they stay readable while the group rebalances.
    """
    consumer = Consumer(dict(config))
    committed = CommittedOffsets(config) if until_end else None
    try:
        if on_revoke is None:
            consumer.subscribe([topic])
        else:
            consumer.subscribe([topic], on_revoke=on_revoke)
        run_durably(consumer, topic, what=what, write=write, flush=flush, commit_offsets=commit_offsets,
                    counts=counts, stop=stop or threading.Event(), until_end=until_end,
                    idle_timeout_s=idle_timeout_s, on_progress=on_progress, before_commit=before_commit,
                    batch_size=batch_size, poll_timeout_s=poll_timeout_s, committed=committed)
    finally:
        consumer.close()
        if committed is not None:
            committed.close()
