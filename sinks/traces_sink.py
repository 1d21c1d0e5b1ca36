"""The Kafka shell around :mod:`sinks.traces`: consume events, export finished turns over OTLP, then commit.

At-least-once: per poll batch the records are decoded and fed to the :class:`~sinks.traces.TraceAssembler`; the
spans of every turn that finished (or timed out) are exported, and only then are offsets committed, per partition
never past the oldest record of a turn still open (``held_offsets``). A crash anywhere re-delivers those records;
the rebuilt spans carry the same ids (derived from the events, or the host's ``traceparent``), so a re-export is the
same spans again, not new ones. A record can hold the tail of a turn already exported next to the start of one
still open; the commit's metadata names such turns (``traces1:<tag>,...``), and a run that starts from that commit
skips them rather than export their tail as a partial copy.

A failed export is retried with back-off for ``export_retry_s``; after that the sink stops without committing
(exit 1): nothing is dropped, a restart re-reads. When partitions are revoked, their open turns are forgotten
unexported: the new owner re-reads them from the held-back commit. Undecodable records are counted by reason and
skipped (the streams worker owns the dead-letter topic).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from sinks.consumer_config import sink_consumer_config
from sinks.durable_loop import ConsumeStats, commit_sync
from sinks.topic_end import end_offsets, reached_ends
from sinks.traces import AssemblerConfig, Span, TraceAssembler
from sinks.traces_export import ExportFailed

log = logging.getLogger(__name__)

METADATA_PREFIX = "traces1:"
MAX_METADATA = 4000  # Kafka's offset.metadata.max.bytes defaults to 4096


class SpanSender(Protocol):
    """What the sink needs of :class:`sinks.traces_export.OtlpSpanSender`."""

    def send(self, spans: list[Span]) -> None: ...


@dataclass
class TracesSinkStats(ConsumeStats):
    """What a run read, and what became of it: spans exported, export failures, turns forgotten unfinished."""

    spans_exported: int = 0
    export_failures: int = 0
    forgotten_turns: int = 0
    metadata_overflow: int = 0

    def line(self) -> str:
        return (f"{self.records:,} records, {self.events:,} events, {self.spans_exported:,} spans exported, "
                f"{sum(self.undecodable.values()):,} undecodable, {self.export_failures:,} failed exports")


class TracesSink:
    """Consumes ``topic`` into spans sent by ``sender``. Single-threaded; call :meth:`run` once."""

    def __init__(self, bootstrap_servers: str, topic: str, sender: SpanSender, *,
                 group_id: str = "agentwatch-traces", config: AssemblerConfig | None = None,
                 codec: AvroCodec | None = None, batch_size: int = 500, poll_timeout_s: float = 0.5,
                 export_retry_s: float = 300.0, consumer_config: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.sender = sender
        self.assembler = TraceAssembler(config)
        self.codec = codec or AvroCodec()
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.export_retry_s = export_retry_s
        self.clock = clock
        self.stats = TracesSinkStats()
        self._config = sink_consumer_config(bootstrap_servers, group_id, eager=True, extra=consumer_config)
        self._committed: dict[int, tuple[int, str]] = {}

    # -- without Kafka ------------------------------------------------------------------------------------------

    def process(self, records: Iterable[tuple[int, int, bytes | None]]) -> list[Span]:
        """Decode ``(partition, offset, value)`` records into the assembler; the spans of the turns they ended."""
        spans: list[Span] = []
        now = self.clock()
        for partition, offset, value in records:
            self.stats.records += 1
            try:
                decoded = self.codec.decode(value)
            except DecodeError as exc:
                self.stats.undecodable[exc.reason] += 1
                continue
            for event in decoded.events:
                spans += self.assembler.add(event, now, (partition, offset))
            self.stats.events += len(decoded.events)
        return spans

    def export(self, spans: list[Span], stop: threading.Event) -> None:
        """Send ``spans``, retrying with back-off up to ``export_retry_s``; ExportFailed after that (or on stop)."""
        if not spans:
            return
        deadline, delay = self.clock() + self.export_retry_s, 1.0
        while True:
            try:
                self.sender.send(spans)
                self.stats.spans_exported += len(spans)
                return
            except ExportFailed as exc:
                self.stats.export_failures += 1
                if self.clock() + delay > deadline or stop.is_set():
                    raise
                log.warning("traces: %s; retrying in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def commit_offsets(self, positions: dict[int, int]) -> list[TopicPartition]:
        """Per partition read, the next offset to read, held back to the oldest record of a turn still open; the
        metadata names the turns already exported that also have events in that record (a rerun skips them).
        Only what changed since the last commit."""
        held = self.assembler.held_offsets()
        out = []
        for p, nxt in sorted(positions.items()):
            offset = min(nxt, held.get(p, nxt))
            tags = self.assembler.closed_in_record(p, offset) if offset < nxt else []
            meta = METADATA_PREFIX + ",".join(tags)
            if len(meta) > MAX_METADATA:
                self.stats.metadata_overflow += 1
                log.warning("traces: too many finished turns share record %d:%d to name them all in the commit; "
                            "a rerun from it may export a partial copy of some", p, offset)
                meta = meta[: meta.rfind(",", 0, MAX_METADATA)]
            last = self._committed.get(p)
            if last is None or offset > last[0] or (offset == last[0] and meta != last[1]):
                out.append(TopicPartition(self.topic, p, offset, metadata=meta))
        return out

    def skip_from_commits(self, committed: list[TopicPartition]) -> None:
        """On assignment: the turns the last commit of each partition says were exported (see commit_offsets)."""
        for tp in committed:
            meta = tp.metadata or ""
            if meta.startswith(METADATA_PREFIX):
                tags = [t for t in meta[len(METADATA_PREFIX):].split(",") if t]
                self.assembler.skip_turns(tp.partition, tags)
                self._committed[tp.partition] = (tp.offset, meta)

    # -- live ----------------------------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, until_end: bool = False,
            idle_timeout_s: float | None = None, on_progress: Callable[[TracesSinkStats], None] | None = None,
            before_commit: Callable[[list[TopicPartition]], None] | None = None) -> TracesSinkStats:
        """Consume until ``stop`` is set, or (``until_end``) the end offsets seen at start are reached, or nothing
        arrives for ``idle_timeout_s``. Raises ExportFailed (nothing of the failed batch committed)."""
        stop = stop or threading.Event()
        consumer = Consumer(self._config)
        positions: dict[int, int] = {}
        closing = False

        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            if closing:  # leaving: what is still open stays visible to the caller (and uncommitted)
                return
            gone = {tp.partition for tp in parts}
            self.stats.forgotten_turns += self.assembler.forget(gone)
            for p in gone:
                positions.pop(p, None)
                self._committed.pop(p, None)

        pending: list[TopicPartition] = []
        assigned = False

        def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
            nonlocal assigned
            assigned = True
            pending.extend(parts)  # their commits' metadata is read after consume() returns, not in the callback

        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            ends = end_offsets(consumer, self.topic) if until_end else None
            last_data = last_tick = self.clock()
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, timeout=self.poll_timeout_s)
                records = []
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("traces: consume error %s", err)
                        continue
                    records.append((msg.partition(), msg.offset(), msg.value()))
                if pending:
                    self.skip_from_commits(consumer.committed(list(pending), timeout=30))
                    pending.clear()
                spans = self.process(records)
                now = self.clock()
                if records:
                    last_data = now
                    for p, o, _ in records:
                        positions[p] = o + 1
                if now - last_tick >= 1.0 or records:
                    spans += self.assembler.expire(now)
                self.export(spans, stop)
                commit = self.commit_offsets(positions)
                if commit:
                    if before_commit is not None:
                        before_commit(commit)
                    failures = self.stats.commit_failures
                    commit_sync(consumer, commit, self.stats, "traces")
                    if self.stats.commit_failures == failures:
                        for tp in commit:
                            self._committed[tp.partition] = (tp.offset, tp.metadata)
                            self.assembler.release_below(tp.partition, tp.offset)
                if on_progress is not None and now - last_tick >= 1.0:
                    on_progress(self.stats)
                if now - last_tick >= 1.0:
                    last_tick = now
                # Not before the group is joined: a join after a crash waits out the dead member's session, and
                # the coordinator answers nothing else meanwhile.
                if ends is not None and assigned and reached_ends(consumer, self.topic, ends, positions):
                    break
                if idle_timeout_s is not None and now - last_data >= idle_timeout_s:
                    break
        finally:
            closing = True
            consumer.close()
        return self.stats
