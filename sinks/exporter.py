"""The Kafka and HTTP shell around :class:`~sinks.prometheus.ExporterState`: consume events, serve ``/metrics``.

Several instances in one consumer group share the events topic's partitions; each counts the partitions it owns
and exposes its own counters, so ``sum without(instance)`` over the scraped instances is the fleet's figure.

No double counting on rebalance: the loop is single-threaded and every record ``consume()`` returned is counted
before the next ``consume()``, which is the only place rebalance callbacks run. ``on_revoke`` therefore commits,
synchronously, exactly the offsets counted so far for the partitions leaving; the next owner starts right after
them. Offsets are also committed asynchronously every ``commit_interval_s`` and synchronously at close. What is
left is the usual at-least-once caveat of a *crash* (or a partition *lost* after a session timeout, where a commit
is no longer allowed): the records between the last commit and the crash are counted again by the next owner. It
is bounded by ``commit_interval_s`` of traffic and counted in ``agentwatch_exporter_rebalances_total{kind="lost"}``;
a crashed instance's counts that no scrape saw are gone with its process, like any Prometheus counter's. Within
an instance, batch records re-sent by a producer's spool are dropped by ``(producer_id, batch_seq)``.

Lag: every ``health_interval_s`` the loop asks the broker (``AdminClient.list_offsets``, collected when answered,
never blocking the loop) for the high watermark of each partition it owns and exposes ``high - committed``
(``high - low`` before the group's first commit, where ``auto.offset.reset=earliest`` starts). It also reads the
dead-letter topic's offsets (the streams worker writes it; the exporter only watches).

Producer spool: a producer's own metrics (``agentwatch_producer_*``, including ``spool_bytes``) live on the
registry of its host process (see :mod:`producers.metrics`: ``start_http_server(port, registry=publisher.registry)``
in the host, scraped as its own target). When the exporter runs on the same host as a spool directory,
:class:`SpoolDirCollector` exposes what the disk shows: the bytes and count of its segment files (an upper bound of
the unacknowledged bytes, since a fully acknowledged segment is deleted only when the writer rolls past it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sinks.consumer_config import sink_consumer_config
from sinks.prometheus import ExporterState

log = logging.getLogger(__name__)

# Consumer settings an AdminClient of the same cluster needs too (connection and security).
_SHARED_CLIENT_KEYS = frozenset({
    "bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
    "ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password", "client.id"})


class _OffsetsQuery:
    """Latest and earliest offsets of some partitions, asked for with ``AdminClient.list_offsets`` (futures)."""

    def __init__(self, admin: AdminClient, latest: list[TopicPartition], earliest: list[TopicPartition]) -> None:
        level = IsolationLevel.READ_COMMITTED  # what a read_committed consumer can reach (the LSO)
        self._latest: dict[TopicPartition, Future[Any]] = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in latest}, isolation_level=level, request_timeout=10) if latest else {}
        self._earliest: dict[TopicPartition, Future[Any]] = admin.list_offsets(
            {tp: OffsetSpec.earliest() for tp in earliest}, isolation_level=level,
            request_timeout=10) if earliest else {}

    def done(self) -> bool:
        return all(f.done() for f in (*self._latest.values(), *self._earliest.values()))

    def results(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        """``(latest, earliest)`` by (topic, partition); partitions whose request failed are left out."""
        return self._collect(self._latest), self._collect(self._earliest)

    @staticmethod
    def _collect(futures: dict[TopicPartition, Future[Any]]) -> dict[tuple[str, int], int]:
        out = {}
        for tp, fut in futures.items():
            try:
                out[(tp.topic, tp.partition)] = int(fut.result(0).offset)
            except Exception as exc:  # KafkaException (not leader, timeout): skip this round
                log.debug("exporter: list_offsets %s[%d] failed: %s", tp.topic, tp.partition, exc)
        return out


class SpoolDirCollector(Collector):
    """Bytes and number of a producer spool's segment files (``seg-*.spool``), read at scrape time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        size = segments = 0
        try:
            for seg in self.path.glob("seg-*.spool"):
                try:
                    size += seg.stat().st_size
                    segments += 1
                except FileNotFoundError:  # acknowledged and deleted while we looked
                    continue
        except OSError as exc:
            log.debug("spool dir %s: %s", self.path, exc)
        label = [str(self.path)]
        b = GaugeMetricFamily("agentwatch_producer_spool_observed_bytes", "Bytes of the producer spool's segment "
                              "files seen on this host's disk.", labels=["path"])
        b.add_metric(label, size)
        yield b
        s = GaugeMetricFamily("agentwatch_producer_spool_observed_segments", "Segment files in the producer "
                              "spool directory.", labels=["path"])
        s.add_metric(label, segments)
        yield s


class MetricsServer:
    """``/metrics`` of a registry over HTTP (prometheus_client's threaded server); ``port=0`` picks a free port."""

    def __init__(self, registry: CollectorRegistry, port: int = 9464, addr: str = "127.0.0.1") -> None:
        self._server, self._thread = start_http_server(port, addr, registry)
        self.port: int = self._server.server_port
        self.addr = addr

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class Exporter:
    """Consumes ``topic`` in group ``group_id`` into ``state`` (a fresh :class:`ExporterState` by default)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, state: ExporterState | None = None,
                 group_id: str = "agentwatch-exporter", dead_letter_topic: str | None = None,
                 batch_size: int = 500, poll_timeout_s: float = 0.5, commit_interval_s: float = 1.0,
                 health_interval_s: float = 5.0, consumer_config: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.state = state or ExporterState(topic)
        self.dead_letter_topic = dead_letter_topic
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.commit_interval_s = commit_interval_s
        self.health_interval_s = health_interval_s
        extra = {"on_commit": self._on_commit, **(consumer_config or {})}
        self._config: dict[str, Any] = sink_consumer_config(bootstrap_servers, group_id, cooperative=True, extra=extra)
        self._consumer: Consumer | None = None
        self._counted: dict[int, int] = {}  # partition -> next offset after what was counted
        self._committed: dict[int, int] = {}  # partition -> last committed offset (this instance's view)
        self._owned: set[int] = set()
        self._dlq_partitions: list[int] | None = None

    def register(self, registry: CollectorRegistry) -> CollectorRegistry:
        return self.state.register(registry)

    # -- rebalance callbacks (run inside consume(), between two counted batches) ------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.state.count_rebalance("assign", len(partitions))
        self._owned.update(tp.partition for tp in partitions)
        self.state.own(tp.partition for tp in partitions)
        log.info("exporter: assigned %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.state.count_rebalance("revoke", len(partitions))
        self._commit(consumer, [tp.partition for tp in partitions], asynchronous=False)
        self._drop([tp.partition for tp in partitions])
        log.info("exporter: revoked %s", sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A commit is refused now; the next owner re-reads from the last commit (at-least-once, see module doc).
        self.state.count_rebalance("lost", len(partitions))
        self._drop([tp.partition for tp in partitions])
        log.warning("exporter: lost %s", sorted(tp.partition for tp in partitions))

    def _drop(self, partitions: list[int]) -> None:
        for p in partitions:
            self._owned.discard(p)
            self._counted.pop(p, None)
            self._committed.pop(p, None)
        self.state.forget(partitions)

    # -- commits -------------------------------------------------------------------------------------------------

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Only asynchronous commits come here (librdkafka does not call it for synchronous ones).
        if err is not None:
            self.state.count_commit(False)
            log.warning("exporter: async commit failed: %s", err)
            return
        self.state.count_commit(True)
        for tp in partitions:
            if tp.topic == self.topic and tp.error is None and tp.offset >= 0 and tp.partition in self._counted:
                self._committed[tp.partition] = max(self._committed.get(tp.partition, 0), tp.offset)

    def _commit(self, consumer: Consumer, partitions: list[int] | None = None, *, asynchronous: bool) -> None:
        todo = [TopicPartition(self.topic, p, o) for p, o in sorted(self._counted.items())
                if (partitions is None or p in partitions) and o > self._committed.get(p, -1)]
        if not todo:
            return
        if asynchronous:
            consumer.commit(offsets=todo, asynchronous=True)  # counted in _on_commit
            return
        try:
            consumer.commit(offsets=todo, asynchronous=False)
        except KafkaException as exc:
            self.state.count_commit(False)
            log.warning("exporter: commit of %s failed (%s): the next owner may count them again", todo, exc)
            return
        self.state.count_commit(True)
        for tp in todo:
            self._committed[tp.partition] = tp.offset

    # -- health --------------------------------------------------------------------------------------------------

    def _start_health_query(self, consumer: Consumer, admin: AdminClient) -> _OffsetsQuery | None:
        """Ask for the high watermarks of the owned partitions (and the dead-letter topic's offsets) without
        waiting: ``Consumer.get_watermark_offsets`` blocks ~0.5 s per partition, ``list_offsets`` answers in ~1 ms
        and returns futures the loop collects when they are done."""
        owned = sorted(self._owned)
        unknown = [p for p in owned if p not in self._committed]
        if unknown:  # the previous owner's commit (one quick coordinator request, once per new partition)
            try:
                for tp in consumer.committed([TopicPartition(self.topic, p) for p in unknown], timeout=5):
                    if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                        self._committed.setdefault(tp.partition, tp.offset)
            except KafkaException as exc:
                log.debug("exporter: committed() failed: %s", exc)
        latest = [TopicPartition(self.topic, p) for p in owned]
        earliest = [TopicPartition(self.topic, p) for p in owned if p not in self._committed]
        dlq = self._dead_letter_partitions(admin)
        latest += dlq
        earliest += dlq
        if not latest:
            return None
        return _OffsetsQuery(admin, latest, earliest)

    def _dead_letter_partitions(self, admin: AdminClient) -> list[TopicPartition]:
        topic = self.dead_letter_topic
        if not topic:
            return []
        if self._dlq_partitions is None:
            try:
                md = admin.list_topics(topic, timeout=5).topics.get(topic)
            except KafkaException as exc:
                log.debug("exporter: metadata of %s failed: %s", topic, exc)
                return []
            if md is None or md.error is not None:
                log.warning("exporter: dead-letter topic %r unavailable: %s", topic, md.error if md else "missing")
                self._dlq_partitions = []
            else:
                self._dlq_partitions = sorted(md.partitions)
        return [TopicPartition(topic, p) for p in self._dlq_partitions]

    def _apply_health(self, query: _OffsetsQuery) -> None:
        high, low = query.results()
        for (topic, p), h in high.items():
            if topic != self.topic or p not in self._owned:
                continue  # revoked meanwhile
            base = self._committed.get(p, low.get((topic, p)))
            if base is not None:
                self.state.set_lag(p, h - base)
        if self.dead_letter_topic and self._dlq_partitions:
            keys = [(self.dead_letter_topic, p) for p in self._dlq_partitions]
            if all(k in high and k in low for k in keys):
                self.state.set_dead_letter(self.dead_letter_topic, sum(high[k] - low[k] for k in keys),
                                           sum(high[k] for k in keys))

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, idle_timeout_s: float | None = None,
            on_batch: Callable[[int], None] | None = None) -> None:
        """Consume until ``stop`` is set (or nothing arrived for ``idle_timeout_s``); commits and closes at the end.

        ``on_batch(events_counted)`` is called after each non-empty batch (tests and progress output)."""
        stop = stop or threading.Event()
        consumer = self._consumer = Consumer(self._config)
        # log_level 0: its failures show in the health metrics; an AdminClient's log lines would otherwise go raw to
        # stderr (they are delivered to a Python logger only on poll(), which nothing calls)
        admin = AdminClient({**{k: v for k, v in self._config.items() if k in _SHARED_CLIENT_KEYS}, "log_level": 0})
        query: _OffsetsQuery | None = None
        try:
            consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            last_data = last_commit = time.monotonic()
            last_health = 0.0
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, timeout=self.poll_timeout_s)
                records: list[tuple[int, bytes | None]] = []
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("exporter: consume error %s", err)
                        continue
                    records.append((msg.partition(), msg.value()))
                    self._counted[msg.partition()] = msg.offset() + 1
                now = time.monotonic()
                if records:
                    last_data = now
                    n = self.state.process_batch(records)
                    if on_batch is not None:
                        on_batch(n)
                if now - last_commit >= self.commit_interval_s:
                    last_commit = now
                    self._commit(consumer, asynchronous=True)
                if query is not None and query.done():
                    self._apply_health(query)
                    query = None
                if query is None and now - last_health >= self.health_interval_s:
                    last_health = now
                    query = self._start_health_query(consumer, admin)
                if idle_timeout_s is not None and now - last_data >= idle_timeout_s:
                    break
            self._commit(consumer, asynchronous=False)
        finally:
            consumer.close()  # leaves the group: on_revoke runs for what is still owned
            self._consumer = None
