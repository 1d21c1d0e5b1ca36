"""The Kafka shell around the audit log: consume events, keep the must-keep ones, commit only what is on disk.

Its own consumer group on the events topic, in the loop every durable sink runs (:mod:`sinks.durable_loop`). Per
poll batch: decode every record (``schemas.codec``), classify each event
(:class:`~sinks.audit_classify.AuditPolicy`), append the audit events (:class:`~sinks.audit_log.AuditLog`),
``flush`` (fsync, due checkpoints), and only then commit the batch's offsets synchronously. A crash anywhere before
the commit re-delivers the batch, and the log's event-id index turns the re-delivery into no-ops: at-least-once
delivery plus an idempotent append is effectively once, with no gap. Undecodable records are counted by reason and
skipped (the streams worker owns the dead-letter topic).

One tenant never stalls the others: when a tenant's log refuses a record (over its size cap, or refused as corrupt
or unconfirmed), that tenant is *isolated*: this and its later audit events go to the held queue
(:mod:`sinks.audit_held`, in order, fsynced before the commit), counted per tenant in ``stats.held`` and logged
(``audit: tenant ... isolated``, at most once a minute per tenant: alert on it), while every other tenant flows.
:meth:`AuditSink.retry_held` (every ``held_retry_s``, and after a prune) drains them back once the log takes them.
A write error that is not the tenant's own (filesystem full, I/O error) still stops the sink uncommitted: the
events stay in Kafka until the cause is fixed.

Every record is appended with its source offset (topic, partition, offset), and signed heads go to the anchors
publisher (:mod:`sinks.audit_anchor`) at every flush.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from schemas.codec import AvroCodec, DecodeError
from sinks.audit_anchor import AnchorPublisher
from sinks.audit_classify import AuditPolicy, Classification
from sinks.audit_held import Held, HeldQueue
from sinks.audit_log import AuditCorruption, AuditLog, AuditTenantOverCap
from sinks.audit_source import SourceRef
from sinks.consumer_config import sink_consumer_config
from sinks.durable_loop import ConsumeStats, Record, consume_durably

log = logging.getLogger(__name__)


@dataclass
class AuditSinkStats(ConsumeStats):
    """What a run saw: Kafka records, events, and what became of them."""

    appended: int = 0
    duplicates: int = 0
    not_audited: int = 0
    per_class: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)  # per tenant: events put in the held queue this run
    released: Counter[str] = field(default_factory=Counter)  # per tenant: held events the log took back
    held_pending: int = 0  # events in the held queue now (all tenants)

    def line(self) -> str:
        bad = sum(self.undecodable.values())
        held = f", {self.held_pending:,} held for {len(self.held)} isolated tenant(s)" if self.held_pending else ""
        return (f"{self.records:,} records, {self.events:,} events: {self.appended:,} audited, "
                f"{self.duplicates:,} duplicates, {self.not_audited:,} not audit events, {bad:,} undecodable{held}")


class AuditSink:
    """Consumes ``topic`` in group ``group_id`` into ``audit_log``. Single-threaded; call :meth:`run`."""

    def __init__(self, bootstrap_servers: str, topic: str, audit_log: AuditLog, policy: AuditPolicy, *,
                 group_id: str = "agentwatch-audit", codec: AvroCodec | None = None, batch_size: int = 500,
                 poll_timeout_s: float = 0.5, consumer_config: dict[str, Any] | None = None,
                 held: HeldQueue | None = None, anchors: AnchorPublisher | None = None,
                 held_retry_s: float = 60.0, log_interval_s: float = 60.0) -> None:
        self.topic = topic
        self.log = audit_log
        self.held = held or HeldQueue(audit_log.root / ".held", audit_log.cipher)
        self.anchors = anchors
        self.held_retry_s = held_retry_s
        self._log_interval = log_interval_s
        self._last_isolation_log: dict[str, float] = {}
        self._next_retry = 0.0
        self.policy = policy
        self.codec = codec or AvroCodec()
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.stats = AuditSinkStats()
        self._config = sink_consumer_config(bootstrap_servers, group_id, extra=consumer_config)

    # -- without Kafka: record values in, audit records out -------------------------------------------------

    def process(self, values: Iterable[bytes | None], sources: Iterable[SourceRef | None] | None = None) -> None:
        """Decode, classify and append (or hold); the caller makes it durable (:meth:`flush`) before committing.
        ``sources`` gives each value's (topic, partition, offset), stored with its audit records."""
        refs = iter(sources) if sources is not None else None
        for value in values:
            source = next(refs) if refs is not None else None
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
                self._append(event, cls, source)
        self.stats.held_pending = sum(self.held.counts().values())

    def _append(self, event: dict[str, Any], cls: Classification, source: SourceRef | None) -> None:
        tenant = str(event.get("tenant"))
        if self.held.count(tenant):  # isolated: keep its order behind what is already held
            self._hold(event, cls, source, None)
            return
        try:
            result = self.log.append(event, cls, source)
        except (AuditTenantOverCap, AuditCorruption) as exc:
            self._hold(event, cls, source, exc)
            return
        if result.duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.appended += 1
            self.stats.per_class[cls.audit_class] += 1

    def _hold(self, event: dict[str, Any], cls: Classification, source: SourceRef | None,
              why: Exception | None) -> None:
        tenant = str(event.get("tenant"))
        self.held.hold(event, cls, source)
        self.stats.held[tenant] += 1
        now = time.monotonic()
        if why is not None or now - self._last_isolation_log.get(tenant, -1e9) >= self._log_interval:
            self._last_isolation_log[tenant] = now
            reason = f" ({why})" if why is not None else ""
            log.warning("audit: tenant %r isolated%s: %d audit event(s) held in order at %s; the other tenants flow; "
                        "retried every %.0fs", tenant, reason, self.held.count(tenant), self.held.path(tenant),
                        self.held_retry_s)

    def retry_held(self) -> int:
        """Give every isolated tenant's held events back to the log, oldest first, until it refuses again."""
        total = 0
        for tenant in list(self.held.counts()):
            def take(h: Held) -> None:
                result = self.log.append(h.event, h.classification, h.source)
                if not result.duplicate:
                    self.stats.appended += 1
                    self.stats.per_class[h.classification.audit_class] += 1
            n, refused = self.held.drain(tenant, take, self.log.flush, (AuditTenantOverCap, AuditCorruption))
            if refused is not None:
                log.info("audit: tenant %r still isolated (%s)", tenant, refused)
            if n:
                self.stats.released[tenant] += n
                total += n
                left = self.held.count(tenant)
                log.warning("audit: tenant %r: %d held event(s) appended%s", tenant, n,
                            f", {left} still held" if left else "; no longer isolated")
        self.stats.held_pending = sum(self.held.counts().values())
        return total

    def flush(self) -> None:
        """Everything appended or held is on disk (then offsets may be committed); signed heads are published."""
        self.log.flush()
        self.held.flush()
        if self.anchors is not None:
            self.anchors.flush()
        if self.held.counts() and time.monotonic() >= self._next_retry:
            self._next_retry = time.monotonic() + self.held_retry_s
            if self.retry_held():
                self.log.flush()

    # -- the Kafka loop -----------------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, until_end: bool = False,
            idle_timeout_s: float | None = None, on_progress: Callable[[AuditSinkStats], None] | None = None,
            before_commit: Callable[[list[TopicPartition]], None] | None = None) -> AuditSinkStats:
        """Consume until ``stop`` is set, or (``until_end``) the end offsets seen at start are reached, or nothing
        arrives for ``idle_timeout_s``. ``before_commit`` is a test hook called between the fsync and the commit.
        The audit log is flushed but not closed (the caller owns it)."""
        if self.held.counts():  # a restart (perhaps with a higher cap): give the held events back first
            self._next_retry = time.monotonic() + self.held_retry_s
            self.retry_held()
        consume_durably(self._config, self.topic, what="audit sink", write=self._write, flush=self.flush,
                        commit_offsets=self._commit_offsets, counts=self.stats, stop=stop, until_end=until_end,
                        idle_timeout_s=idle_timeout_s,
                        on_progress=None if on_progress is None else lambda: on_progress(self.stats),
                        before_commit=before_commit, batch_size=self.batch_size, poll_timeout_s=self.poll_timeout_s)
        return self.stats

    def _write(self, records: list[Record]) -> None:
        self.process((value for _partition, _offset, value in records),
                     ((self.topic, partition, offset) for partition, offset, _value in records))

    def _commit_offsets(self, nxt: dict[int, int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p, o) for p, o in sorted(nxt.items())]
