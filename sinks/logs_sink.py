"""The Kafka shell around the per-tenant logs: consume events, write lines, commit only what is on disk.

Its own consumer group on the events topic, in the loop every durable sink runs (:mod:`sinks.durable_loop`): per
poll batch, decode every record (``schemas.codec``), hand each event with its (partition, offset, index) to the
:class:`~sinks.logs_store.LogWriter`, ``flush`` (write, fsync), then commit the batch's end synchronously. A crash
anywhere before the commit re-delivers the records and the writer skips the lines already on disk (their
positions are stored with them): exactly once in the files, no gap. Undecodable records are counted by reason
and skipped (the streams worker owns the dead-letter topic); a store error (full disk) stops the sink without
committing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from schemas.codec import AvroCodec, DecodeError
from sinks.consumer_config import sink_consumer_config
from sinks.durable_loop import ConsumeStats, consume_durably
from sinks.logs_store import LogWriter


@dataclass
class LogsSinkStats(ConsumeStats):
    """What a run read (what became of the events: ``writer.stats``)."""

    def line(self) -> str:
        elapsed = self.elapsed
        rate = self.events / elapsed if elapsed > 0 else 0.0
        return (f"{self.records:,} records, {self.events:,} events ({rate:,.0f}/s), "
                f"{sum(self.undecodable.values()):,} undecodable")


class LogsSink:
    """Consumes ``topic`` into ``writer``. Single-threaded; call :meth:`run` once."""

    def __init__(self, bootstrap_servers: str, topic: str, writer: LogWriter, *, group_id: str = "agentwatch-logs",
                 codec: AvroCodec | None = None, batch_size: int = 500, poll_timeout_s: float = 0.5,
                 consumer_config: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.writer = writer
        self.codec = codec or AvroCodec()
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.stats = LogsSinkStats()
        self._config = sink_consumer_config(bootstrap_servers, group_id, extra=consumer_config)

    def process(self, records: Iterable[tuple[int, int, bytes | None]]) -> dict[int, int]:
        """Decode ``(partition, offset, value)`` records into the writer (not flushed); the next offset per
        partition."""
        nxt: dict[int, int] = {}
        for partition, offset, value in records:
            self.stats.records += 1
            nxt[partition] = offset + 1
            try:
                decoded = self.codec.decode(value)
            except DecodeError as exc:
                self.stats.undecodable[exc.reason] += 1
                continue
            for index, event in enumerate(decoded.events):
                self.writer.add(event, (partition, offset, index))
            self.stats.events += len(decoded.events)
        return nxt

    def commit_offsets(self, nxt: dict[int, int]) -> list[TopicPartition]:
        """Everything flushed may be committed: the batch's end."""
        return [TopicPartition(self.topic, p, o) for p, o in sorted(nxt.items())]

    def run(self, *, stop: threading.Event | None = None, until_end: bool = False,
            idle_timeout_s: float | None = None, on_progress: Callable[[LogsSinkStats], None] | None = None,
            before_commit: Callable[[list[TopicPartition]], None] | None = None) -> LogsSinkStats:
        """Consume until ``stop`` is set, or (``until_end``) the end offsets seen at start are reached, or nothing
        arrives for ``idle_timeout_s``. ``before_commit`` is a test hook between the flush and the commit. The
        writer is flushed, not closed (the caller owns it)."""
        consume_durably(self._config, self.topic, what="logs", write=self.process, flush=self.writer.flush,
                        commit_offsets=self.commit_offsets, counts=self.stats, stop=stop, until_end=until_end,
                        idle_timeout_s=idle_timeout_s,
                        on_progress=None if on_progress is None else lambda: on_progress(self.stats),
                        before_commit=before_commit, batch_size=self.batch_size, poll_timeout_s=self.poll_timeout_s)
        return self.stats


class LogsCollector(Collector):
    """``/metrics`` of a logs sink, read from its counters at scrape time (Prometheus names, base units).

    ``agentwatch_logs_lines_written_total{event_type}``, ``agentwatch_logs_bytes_written_total``,
    ``agentwatch_logs_lines_dropped_total{reason}`` (``undecodable`` records, ``expired``: for a day retention
    already deleted), ``agentwatch_logs_duplicates_skipped_total`` (re-delivered, already on disk),
    ``agentwatch_logs_redactions_total``, ``agentwatch_logs_files_compressed_total``,
    ``agentwatch_logs_files_pruned_total``, ``agentwatch_logs_commit_failures_total``.
    """

    def __init__(self, sink: LogsSink) -> None:
        self.sink = sink

    def collect(self) -> Iterable[CounterMetricFamily]:
        ws, ss = self.sink.writer.stats, self.sink.stats
        lines = CounterMetricFamily("agentwatch_logs_lines_written", "Log lines written and fsynced, by event type.",
                                    labels=["event_type"])
        for etype, n in sorted(ws.by_type.items()):
            lines.add_metric([etype], n)
        yield lines
        yield CounterMetricFamily("agentwatch_logs_bytes_written", "Bytes of log lines written.", value=ws.bytes)
        dropped = CounterMetricFamily("agentwatch_logs_lines_dropped", "Events not written, by reason: undecodable "
                                      "records, or events for a day past retention.", labels=["reason"])
        dropped.add_metric(["undecodable"], sum(ss.undecodable.values()))
        dropped.add_metric(["expired"], ws.expired)
        yield dropped
        yield CounterMetricFamily("agentwatch_logs_duplicates_skipped", "Re-delivered events already on disk, "
                                  "not written again.", value=ws.present)
        yield CounterMetricFamily("agentwatch_logs_redactions", "Secrets replaced by the scrubber.",
                                  value=ws.redactions)
        yield CounterMetricFamily("agentwatch_logs_files_compressed", "Day files gzipped.", value=ws.compressed)
        yield CounterMetricFamily("agentwatch_logs_files_pruned", "Files deleted by retention.", value=ws.pruned)
        yield CounterMetricFamily("agentwatch_logs_commit_failures", "Offset commits that failed (the batch is "
                                  "re-read and deduplicated).", value=ss.commit_failures)
