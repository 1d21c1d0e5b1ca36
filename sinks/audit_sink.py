"""The Kafka shell around the audit log: consume events, keep the must-keep ones, commit only what is on disk.

Its own consumer group on the events topic. Per poll batch: decode every record (``schemas.codec``), classify each
event (:class:`~sinks.audit_classify.AuditPolicy`), append the audit events (:class:`~sinks.audit_log.AuditLog`),
``flush`` (fsync, due checkpoints), and only then commit the batch's offsets synchronously. A crash anywhere before
the commit re-delivers the batch, and the log's event-id index turns the re-delivery into no-ops: at-least-once
delivery plus an idempotent append is effectively once, with no gap. Undecodable records are counted by reason and
skipped (the streams worker owns the dead-letter topic). An audit write error (disk full, size cap, corruption) stops
the sink without committing the batch: the events stay in Kafka until the cause is fixed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from sinks.audit_classify import AuditPolicy
from sinks.audit_log import AuditLog

log = logging.getLogger(__name__)


@dataclass
class AuditSinkStats:
    """What a run saw: Kafka records, events, and what became of them."""

    records: int = 0
    events: int = 0
    appended: int = 0
    duplicates: int = 0
    not_audited: int = 0
    commits: int = 0
    commit_failures: int = 0
    undecodable: Counter[str] = field(default_factory=Counter)
    per_class: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        bad = sum(self.undecodable.values())
        return (f"{self.records:,} records, {self.events:,} events: {self.appended:,} audited, "
                f"{self.duplicates:,} duplicates, {self.not_audited:,} not audit events, {bad:,} undecodable")


class AuditSink:
    """Consumes ``topic`` in group ``group_id`` into ``audit_log``. Single-threaded; call :meth:`run`."""

    def __init__(self, bootstrap_servers: str, topic: str, audit_log: AuditLog, policy: AuditPolicy, *,
                 group_id: str = "agentwatch-audit", codec: AvroCodec | None = None, batch_size: int = 500,
                 poll_timeout_s: float = 0.5, consumer_config: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.log = audit_log
        self.policy = policy
        self.codec = codec or AvroCodec()
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.stats = AuditSinkStats()
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            **(consumer_config or {}),
        }

    # -- without Kafka: record values in, audit records out -------------------------------------------------

    def process(self, values: Iterable[bytes | None]) -> None:
        """Decode, classify and append; the caller makes it durable (``log.flush()``) before committing."""
        for value in values:
            self.stats.records += 1
            try:
                decoded = self.codec.decode(value)
            except DecodeError as exc:
                self.stats.undecodable[exc.reason] += 1
                continue
            for event in decoded.events:
                self.stats.events += 1
                cls = self.policy.classify(event)
                if cls is None:
                    self.stats.not_audited += 1
                    continue
                result = self.log.append(event, cls)
                if result.duplicate:
                    self.stats.duplicates += 1
                else:
                    self.stats.appended += 1
                    self.stats.per_class[cls.audit_class] += 1

    # -- the Kafka loop -----------------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, until_end: bool = False,
            idle_timeout_s: float | None = None, on_progress: Callable[[AuditSinkStats], None] | None = None,
            before_commit: Callable[[list[TopicPartition]], None] | None = None) -> AuditSinkStats:
        """Consume until ``stop`` is set, or (``until_end``) the end offsets seen at start are reached, or nothing
        arrives for ``idle_timeout_s``. ``before_commit`` is a test hook called between the fsync and the commit.
        The audit log is flushed but not closed (the caller owns it)."""
        stop = stop or threading.Event()
        consumer = Consumer(self._config)
        try:
            consumer.subscribe([self.topic])
            ends = self._end_offsets(consumer) if until_end else None
            positions: dict[int, int] = {}
            last_data = last_progress = time.monotonic()
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, timeout=self.poll_timeout_s)
                values, offsets = [], {}
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("audit sink: consume error %s", err)
                        continue
                    values.append(msg.value())
                    offsets[msg.partition()] = msg.offset() + 1
                if values:
                    last_data = time.monotonic()
                    self.process(values)
                    self.log.flush()
                    commit = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
                    if before_commit is not None:
                        before_commit(commit)
                    self._commit(consumer, commit)
                    positions.update(offsets)
                if on_progress is not None and time.monotonic() - last_progress >= 1.0:
                    last_progress = time.monotonic()
                    on_progress(self.stats)
                if ends is not None and self._reached(consumer, ends, positions):
                    break
                if idle_timeout_s is not None and time.monotonic() - last_data >= idle_timeout_s:
                    break
            self.log.flush()
        finally:
            consumer.close()
        return self.stats

    def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # A rebalance took the partitions away: the new owner re-reads from the last commit, and the
            # idempotent append makes that harmless. Not fatal.
            self.stats.commit_failures += 1
            log.warning("audit sink: offset commit failed (%s); the batch will be re-delivered and deduplicated", exc)

    def _end_offsets(self, consumer: Consumer) -> dict[int, tuple[int, int]]:
        md = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if md is None or md.error is not None:
            raise RuntimeError(f"topic {self.topic!r} is not available: {md.error if md else 'missing'}")
        return {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in md.partitions}

    def _reached(self, consumer: Consumer, ends: dict[int, tuple[int, int]], positions: dict[int, int]) -> bool:
        """True when every partition is read (or was committed by an earlier run) up to its end offset at start."""
        todo = [p for p, (low, high) in ends.items() if high > low and positions.get(p, -1) < high]
        unseen = [p for p in todo if p not in positions]
        if unseen:  # partitions this run has not read from may already be fully committed by an earlier run
            for tp in consumer.committed([TopicPartition(self.topic, p) for p in unseen], timeout=10):
                if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                    positions[tp.partition] = tp.offset
        return all(positions.get(p, -1) >= ends[p][1] for p in todo)
