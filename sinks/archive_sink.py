"""The Kafka shell around the replay archive: consume events, write rows, commit only what is on disk.

Live (:meth:`ArchiveSink.run`): its own consumer group on the events topic, in the loop every durable sink runs
(:mod:`sinks.durable_loop`). Per poll batch: decode every record (``schemas.codec``), hand each event with its
(partition, offset) to the :class:`~sinks.archive_store.ArchiveWriter`, ``flush`` (write, fsync), then commit
synchronously, per partition, the batch's end *or* the record of the oldest ``thinking`` piece the writer still
holds (:meth:`ArchiveWriter.safe_offsets`), whichever is lower. A crash anywhere before the commit re-delivers the
records, and the writer recognises rows already on disk: at-least-once delivery plus content-addressed rows is
exactly-once in the files, with no gap. Undecodable records are counted by reason and skipped (the streams worker
owns the dead-letter topic). An archive error (full, cap, corruption) stops the sink without committing.

Rebuild (:func:`rebuild_archive`, :meth:`ArchiveSink.rebuild`): a fresh archive from the topic: unique group ids,
partitions assigned at the earliest offsets or at ``offsets_for_times``, read up to the end offsets seen at start,
nothing committed and nothing produced (no alerts). Partitions can be shared out to several worker processes:
a session's events are in one partition, so workers write disjoint files. The same writer code, so the result is
byte-identical to the live archive for the same records.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from sinks.archive_store import ArchiveError, ArchiveFull, ArchiveWriter
from sinks.consumer_config import sink_consumer_config
from sinks.durable_loop import ConsumeStats, consume_durably
from sinks.topic_end import end_offsets

log = logging.getLogger(__name__)


@dataclass
class ArchiveSinkStats(ConsumeStats):
    """What a run read: Kafka records and events (what became of the events: ``writer.stats``)."""

    def line(self) -> str:
        rate = self.events / self.elapsed if self.elapsed > 0 else 0.0
        return (f"{self.records:,} records, {self.events:,} events ({rate:,.0f}/s), "
                f"{sum(self.undecodable.values()):,} undecodable")


@dataclass(frozen=True)
class Progress:
    """Rebuild progress: records read of ``total`` (the end offsets seen at start minus the start offsets)."""

    records: int
    total: int
    events: int
    elapsed: float

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.records / self.total)

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0


class ArchiveSink:
    """Consumes ``topic`` into ``writer``. Single-threaded; call :meth:`run` or :meth:`rebuild` once."""

    def __init__(self, bootstrap_servers: str, topic: str, writer: ArchiveWriter, *,
                 group_id: str = "agentwatch-replay", codec: AvroCodec | None = None, batch_size: int = 500,
                 poll_timeout_s: float = 0.5, consumer_config: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.writer = writer
        self.codec = codec or AvroCodec()
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.stats = ArchiveSinkStats()
        # Eager rebalancing: a revocation takes every partition and consumption resumes from the committed offsets,
        # which is what lets the writer drop unwritten thinking on a revocation (see run()).
        self._config = sink_consumer_config(bootstrap_servers, group_id, eager=True, extra=consumer_config)

    # -- without Kafka ------------------------------------------------------------------------------------------

    def process(self, records: Iterable[tuple[int, int, bytes | None]]) -> dict[int, int]:
        """Decode ``(partition, offset, value)`` records into the writer (not flushed); the next offset per
        partition."""
        writer, decode, stats = self.writer, self.codec.decode, self.stats
        add = writer.add
        nxt: dict[int, int] = {}
        for partition, offset, value in records:
            stats.records += 1
            nxt[partition] = offset + 1
            writer.advance(partition, offset)
            try:
                events = decode(value).events
            except DecodeError as exc:
                stats.undecodable[exc.reason] += 1
                continue
            position = (partition, offset)
            for event in events:
                add(event, position)
            stats.events += len(events)
        return nxt

    def commit_offsets(self, nxt: dict[int, int]) -> list[TopicPartition]:
        """What may be committed after a flush: the batch's end, held back by unwritten thinking."""
        safe = self.writer.safe_offsets()
        return [TopicPartition(self.topic, p, min(o, safe.get(p, o))) for p, o in sorted(nxt.items())]

    # -- live ----------------------------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, until_end: bool = False,
            idle_timeout_s: float | None = None, on_progress: Callable[[ArchiveSinkStats], None] | None = None,
            before_commit: Callable[[list[TopicPartition]], None] | None = None) -> ArchiveSinkStats:
        """Consume until ``stop`` is set, or (``until_end``) the end offsets seen at start are reached, or nothing
        arrives for ``idle_timeout_s``. ``before_commit`` is a test hook called between the flush and the commit.
        The writer is flushed, not closed (the caller owns it)."""
        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            # Another member takes these partitions: leave nothing half-held.
            self.writer.reset_sessions()

        consume_durably(self._config, self.topic, what="replay archive", write=self.process, flush=self.writer.flush,
                        commit_offsets=self.commit_offsets, counts=self.stats, stop=stop, until_end=until_end,
                        idle_timeout_s=idle_timeout_s,
                        on_progress=None if on_progress is None else lambda: on_progress(self.stats),
                        before_commit=before_commit, batch_size=self.batch_size, poll_timeout_s=self.poll_timeout_s,
                        on_revoke=on_revoke)
        return self.stats

    # -- rebuild -------------------------------------------------------------------------------------------------

    def plan(self, start_ms: int | None = None) -> dict[int, tuple[int, int]]:
        """``{partition: (first offset, end offset)}`` to re-read: from the beginning (``start_ms=None``) or from
        the first record at or after ``start_ms`` (epoch milliseconds), up to the end offsets seen now."""
        consumer = Consumer({**self._config, "group.id": f"agentwatch-replay-plan-{uuid.uuid4().hex[:12]}"})
        try:
            ends = end_offsets(consumer, self.topic)
            if start_ms is None:
                starts = {p: low for p, (low, _high) in ends.items()}
            else:
                found = consumer.offsets_for_times([TopicPartition(self.topic, p, start_ms) for p in ends],
                                                   timeout=10)
                starts = {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition][1]) for tp in found}
        finally:
            consumer.close()
        return {p: (starts[p], high) for p, (_low, high) in sorted(ends.items()) if high > starts[p]}

    def rebuild(self, *, start_ms: int | None = None, partitions: dict[int, tuple[int, int]] | None = None,
                flush_every: int = 2_000, on_progress: Callable[[Progress], None] | None = None,
                progress_interval_s: float = 0.5) -> ArchiveSinkStats:
        """Re-read ``partitions`` (default: :meth:`plan` of ``start_ms``) into the writer. Commits nothing."""
        if partitions is None:
            partitions = self.plan(start_ms)
        todo = {p: end for p, (_first, end) in partitions.items()}
        total = sum(end - first for first, end in partitions.values())
        if not todo:
            return self.stats
        config = {**self._config, "group.id": f"agentwatch-replay-rebuild-{uuid.uuid4().hex[:12]}",
                  "enable.partition.eof": False}
        consumer = Consumer(config)
        try:
            consumer.assign([TopicPartition(self.topic, p, first) for p, (first, _end) in sorted(partitions.items())])
            t0 = last_progress = time.monotonic()
            done = 0
            since_flush = 0
            while todo:
                msgs = consumer.consume(self.batch_size, timeout=self.poll_timeout_s)
                records = []
                for msg in msgs:
                    if msg.error() is not None:
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("replay rebuild: consume error %s", msg.error())
                        continue
                    p, off = msg.partition(), msg.offset()
                    end = todo.get(p)
                    if end is None or off >= end:
                        continue  # arrived after the start of the rebuild
                    records.append((p, off, msg.value()))
                    if off + 1 >= end:
                        del todo[p]
                if not msgs:  # idle: offsets up to the end may hold no data record (transaction markers, gaps)
                    for tp in consumer.position([TopicPartition(self.topic, p) for p in todo]):
                        if tp.offset >= 0 and tp.offset >= todo[tp.partition]:
                            del todo[tp.partition]
                if records:
                    self.process(records)
                    done += len(records)
                    since_flush += len(records)
                    if since_flush >= flush_every:
                        self.writer.flush()
                        since_flush = 0
                now = time.monotonic()
                if on_progress is not None and (now - last_progress >= progress_interval_s or not todo):
                    last_progress = now
                    on_progress(Progress(done, total, self.stats.events, now - t0))
            self.writer.flush()
        finally:
            consumer.close()
        return self.stats


# -- parallel rebuild -----------------------------------------------------------------------------------------------


@dataclass
class RebuildResult:
    """What a (possibly parallel) rebuild did, summed over its workers."""

    records: int = 0
    events: int = 0
    rows: int = 0
    bytes: int = 0
    instances: int = 0
    present: int = 0
    duplicates: int = 0
    after_close: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    undecodable: Counter[str] = field(default_factory=Counter)
    pruned: list[str] = field(default_factory=list)
    workers: int = 1
    elapsed: float = 0.0


def split_partitions(plan: dict[int, tuple[int, int]], workers: int) -> list[dict[int, tuple[int, int]]]:
    """Partitions dealt to ``workers`` groups, largest first to the least loaded (a session lives in one
    partition, so groups write disjoint files)."""
    groups: list[dict[int, tuple[int, int]]] = [{} for _ in range(max(1, workers))]
    loads = [0] * len(groups)
    for p, (first, end) in sorted(plan.items(), key=lambda kv: (kv[1][0] - kv[1][1], kv[0])):
        i = loads.index(min(loads))
        groups[i][p] = (first, end)
        loads[i] += end - first
    return [g for g in groups if g]


def _rebuild_worker(bootstrap: str, topic: str, root: str, partitions: dict[int, tuple[int, int]],
                    writer_options: dict[str, Any], consumer_config: dict[str, Any] | None, slot: int,
                    counters: Any, results: Any) -> None:
    """One process of a parallel rebuild: its partitions into its own directory; stats or the error to the
    parent."""
    try:
        writer = ArchiveWriter(root, **writer_options)
        sink = ArchiveSink(bootstrap, topic, writer, consumer_config=consumer_config)

        def progress(p: Progress) -> None:
            counters[2 * slot] = p.records
            counters[2 * slot + 1] = p.events

        try:
            st = sink.rebuild(partitions=partitions, on_progress=progress, progress_interval_s=0.2)
        except BaseException:
            writer.close(flush=False)
            raise
        writer.close()
        ws = writer.stats
        results.put((slot, None, {
            "records": st.records, "events": st.events, "rows": ws.rows, "bytes": ws.bytes,
            "instances": ws.instances, "present": ws.present, "duplicates": ws.duplicates,
            "after_close": ws.after_close, "skipped": dict(ws.skipped), "undecodable": dict(st.undecodable)}))
    except BaseException as exc:  # reported to the parent, which fails the rebuild
        results.put((slot, f"{type(exc).__name__}: {exc}", None))


def rebuild_archive(bootstrap: str, topic: str, out: Path, *, start_ms: int | None = None, workers: int = 1,
                    flags: dict[str, bool] | None = None, max_instances: int | None = None,
                    max_tenant_bytes: int | None = None, consumer_config: dict[str, Any] | None = None,
                    on_progress: Callable[[Progress], None] | None = None) -> RebuildResult:
    """Rebuild a fresh archive in ``out`` from the topic, with up to ``workers`` processes.

    One worker: in this process. Several: each reads a share of the partitions into its own directory under
    ``out`` (no fsync), then the files are moved into place (a session's events share a partition, so no two
    workers write one file; if two did, the topic breaks that rule and the rebuild fails rather than mix them).
    Retention is applied once over the whole archive at the end, then everything is synced. The files are the
    ones a single process, or the live sink, writes.
    """
    t0 = time.monotonic()
    out = Path(out)
    result = RebuildResult()
    final = ArchiveWriter(out, flags=flags, max_instances=max_instances, max_tenant_bytes=max_tenant_bytes,
                          fsync=False)  # also holds the root's lock for the whole rebuild
    try:
        sink = ArchiveSink(bootstrap, topic, final, consumer_config=consumer_config)
        plan = sink.plan(start_ms)
        groups = split_partitions(plan, workers)
        result.workers = max(1, len(groups))
        if len(groups) <= 1:
            st = sink.rebuild(partitions=plan, on_progress=on_progress)
            final.flush()
            ws = final.stats
            _add(result, {"records": st.records, "events": st.events, "rows": ws.rows, "bytes": ws.bytes,
                          "instances": ws.instances, "present": ws.present, "duplicates": ws.duplicates,
                          "after_close": ws.after_close, "skipped": dict(ws.skipped),
                          "undecodable": dict(st.undecodable)})
        else:
            for stats in _run_workers(bootstrap, topic, out, plan, groups, flags, max_tenant_bytes,
                                      consumer_config, on_progress, t0):
                _add(result, stats)
            _check_caps(out, max_tenant_bytes)
        result.pruned = [str(p) for p in final.prune()]
    finally:
        final.close(flush=False)
    os.sync()
    result.elapsed = time.monotonic() - t0
    return result


def _add(result: RebuildResult, stats: dict[str, Any]) -> None:
    for key in ("records", "events", "rows", "bytes", "instances", "present", "duplicates", "after_close"):
        setattr(result, key, getattr(result, key) + stats[key])
    result.skipped.update(stats["skipped"])
    result.undecodable.update(stats["undecodable"])


def _run_workers(bootstrap: str, topic: str, out: Path, plan: dict[int, tuple[int, int]],
                 groups: list[dict[int, tuple[int, int]]], flags: dict[str, bool] | None,
                 max_tenant_bytes: int | None, consumer_config: dict[str, Any] | None,
                 on_progress: Callable[[Progress], None] | None, t0: float) -> list[dict[str, Any]]:
    total = sum(end - first for first, end in plan.values())
    options = {"flags": flags, "max_instances": None, "max_tenant_bytes": max_tenant_bytes, "fsync": False}
    ctx = multiprocessing.get_context("spawn")  # librdkafka's threads do not survive a fork
    counters = ctx.Array("q", 2 * len(groups), lock=False)
    results = ctx.Queue()
    roots = [out / f".rebuild-{i}" for i in range(len(groups))]
    procs = [ctx.Process(target=_rebuild_worker, name=f"replay-rebuild-{i}", daemon=True,
                         args=(bootstrap, topic, str(roots[i]), group, options, consumer_config, i, counters,
                               results)) for i, group in enumerate(groups)]
    for proc in procs:
        proc.start()
    reports: dict[int, tuple[str | None, dict[str, Any] | None]] = {}
    try:
        while len(reports) < len(procs):
            try:
                slot, error, stats = results.get(timeout=0.3)
                reports[slot] = (error, stats)
            except queue.Empty:
                for i, proc in enumerate(procs):
                    if i not in reports and not proc.is_alive() and proc.exitcode not in (None, 0):
                        reports[i] = (f"exited with code {proc.exitcode}", None)
            if on_progress is not None:
                on_progress(Progress(sum(counters[0::2]), total, sum(counters[1::2]), time.monotonic() - t0))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [f"worker {i}: {err}" for i, (err, _st) in sorted(reports.items()) if err]
    if errors:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        raise ArchiveError("rebuild failed: " + "; ".join(errors))
    _merge(roots, out)
    return [st for _i, (_err, st) in sorted(reports.items()) if st is not None]


def _check_caps(out: Path, max_tenant_bytes: int | None) -> None:
    """Workers each see their share of a tenant: the cap is checked on the merged archive."""
    if max_tenant_bytes is None:
        return
    for tdir in out.iterdir():
        if tdir.is_dir() and tdir.name.startswith("t-"):
            used = sum(p.stat().st_size for p in tdir.glob("*.jsonl"))
            if used > max_tenant_bytes:
                raise ArchiveFull(f"tenant directory {tdir.name!r} holds {used:,} bytes, over its archive cap of "
                                  f"{max_tenant_bytes:,}")


def _merge(roots: list[Path], out: Path) -> None:
    """Move every worker's files into ``out`` (same filesystem: renames); a file two workers wrote is an error."""
    for root in roots:
        if not root.is_dir():
            continue
        for tdir in sorted(root.iterdir()):
            if not tdir.is_dir() or not tdir.name.startswith("t-"):
                continue
            dest = out / tdir.name
            if not dest.exists():
                os.mkdir(dest, 0o700)
            for path in sorted(tdir.glob("*.jsonl")):
                target = dest / path.name
                if target.exists():
                    raise ArchiveError(f"{tdir.name}/{path.name} was written by two workers: a session's events "
                                       "are in several partitions; rebuild with one worker")
                os.rename(path, target)
        shutil.rmtree(root)
