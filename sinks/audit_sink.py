"""The Kafka shell around the audit log: consume events, keep the must-keep ones, commit only what is on disk.

Its own consumer group on the events topic, in the loop every durable sink runs (:mod:`sinks.durable_loop`). Per
poll batch: decode every record (``schemas.codec``), classify each event
(:class:`~sinks.audit_classify.AuditPolicy`), append the audit events (:class:`~sinks.audit_log.AuditLog`),
``flush`` (fsync, due checkpoints), and only then commit the batch's offsets synchronously. A crash anywhere before
the commit re-delivers the batch, and the log's event-id index turns the re-delivery into no-ops: at-least-once
delivery plus an idempotent append is effectively once, with no gap. Undecodable records are counted by reason and
skipped (the streams worker owns the dead-letter topic). An audit write error (disk full, size cap, corruption)
stops the sink without committing the batch: the events stay in Kafka until the cause is fixed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from sinks.audit_classify import AuditPolicy
from sinks.audit_log import AuditLog
from sinks.durable_loop import Record, run_durably
from sinks.topic_end import CommittedOffsets

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
        consumer = Consumer(self._config)
        committed = CommittedOffsets(self._config) if until_end else None  # readable while the group rebalances
        try:
            consumer.subscribe([self.topic])
            run_durably(consumer, self.topic, what="audit sink", write=self._write, flush=self.log.flush,
                        commit_offsets=self._commit_offsets, counts=self.stats, stop=stop or threading.Event(),
                        until_end=until_end, idle_timeout_s=idle_timeout_s,
                        on_progress=None if on_progress is None else lambda: on_progress(self.stats),
                        before_commit=before_commit, batch_size=self.batch_size, poll_timeout_s=self.poll_timeout_s,
                        committed=committed)
        finally:
            consumer.close()
            if committed is not None:
                committed.close()
        return self.stats

    def _write(self, records: list[Record]) -> None:
        self.process(value for _partition, _offset, value in records)

    def _commit_offsets(self, nxt: dict[int, int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p, o) for p, o in sorted(nxt.items())]
