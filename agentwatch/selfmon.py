"""Self-monitoring of a long-running component: liveness, Kafka connectivity and its consumer group's progress, as
the Prometheus metrics of /work/helpers/selfmon-contract.md (``docs/self-monitoring.md``).

One probe thread per process polls, every ``interval_s`` (default 5 s), from outside the consume loop, so the same
code serves every component, the Faust worker included:

* connectivity: a metadata request (``list_topics``) answered within the interval means connected;
  ``agentwatch_kafka_connected`` is 1 or 0, and each connected -> disconnected transition counts in
  ``agentwatch_kafka_disconnects_total`` and is said once on the log (and once more when Kafka is back), however
  long the outage: the consume loops keep retrying on their own, librdkafka's reconnect chatter is throttled by
  :mod:`agentwatch.kafka_log`.
* progress: the group's committed offsets (read by a consumer of the group that never subscribes, so it never
  joins the group) and the high watermarks of its topics give ``agentwatch_consumer_committed_offset`` and
  ``agentwatch_consumer_lag_records`` (high watermark - committed; a partition the group never committed counts
  from its low watermark, i.e. everything retained is unread). ``agentwatch_last_progress_timestamp_seconds`` is
  the time a committed offset was last seen to advance (or :meth:`SelfMonitor.note_progress` was called); it starts
  at the process start, so "no progress for N minutes" means the same thing for a fresh and an old process.

While disconnected, the lag and offset series keep their last values (Prometheus sees them unchanged, the progress
timestamp stops): the alert rules combine them with ``agentwatch_kafka_connected``.

:func:`start_selfmon` is the one call a command makes: component name, group id, topics, port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentwatch.startup import port_in_use

log = logging.getLogger(__name__)

COMPONENTS = ("worker", "exporter", "alert_delivery", "replay", "audit", "traces", "logs")


def package_version() -> str:
    try:
        return version("agentwatch")
    except PackageNotFoundError:
        return "unknown"


class SelfMetrics:
    """The contract's metrics for one component, in ``registry``; the probe (or a test) sets them."""

    def __init__(self, component: str, registry: CollectorRegistry) -> None:
        self.component = component
        self.registry = registry
        self.info = Gauge("agentwatch_component_info", "Liveness and identity of an agentwatch component (always 1)",
                          ["component", "version"], registry=registry)
        self.info.labels(component, package_version()).set(1)
        self.connected = Gauge("agentwatch_kafka_connected",
                               "1 while a broker of the Kafka cluster answers, 0 while none does",
                               ["component"], registry=registry).labels(component)
        self.disconnects = Counter("agentwatch_kafka_disconnects",
                                   "Transitions from connected to disconnected (Kafka lost)",
                                   ["component"], registry=registry).labels(component)
        self.lag = Gauge("agentwatch_consumer_lag_records",
                         "High watermark minus the committed offset of the component's consumer group",
                         ["component", "topic", "partition"], registry=registry)
        self.committed = Gauge("agentwatch_consumer_committed_offset",
                               "Committed offset of the component's consumer group (progress)",
                               ["component", "topic", "partition"], registry=registry)
        self.last_progress = Gauge("agentwatch_last_progress_timestamp_seconds",
                                   "Unix time the committed offsets last advanced (or the component handled a "
                                   "record); the process start until then", ["component"],
                                   registry=registry).labels(component)
        self.last_progress.set(time.time())
        self.connected.set(0)
        self._is_connected: bool | None = None
        self._committed: dict[tuple[str, str, str], int] = {}

    def set_connected(self, ok: bool, detail: str = "") -> None:
        """Record one connectivity observation; a transition is logged once (the first observation only if bad)."""
        before, self._is_connected = self._is_connected, ok
        self.connected.set(1 if ok else 0)
        if before is not False and not ok:
            if before is True:
                self.disconnects.inc()
            log.warning("%s: Kafka unreachable (%s); retrying, agentwatch_kafka_connected is 0 until it is back",
                        self.component, detail or "no broker answered")
        elif before is False and ok:
            log.warning("%s: Kafka reachable again", self.component)

    def set_offsets(self, offsets: dict[tuple[str, int], tuple[int | None, int, int]]) -> bool:
        """``{(topic, partition): (committed or None, low, high)}``; True when a committed offset advanced since the
        previous observation (the first observation of a partition is where it stands, not progress)."""
        advanced = False
        for (topic, partition), (committed, low, high) in offsets.items():
            labels = (self.component, topic, str(partition))
            if committed is not None:
                previous = self._committed.get(labels)
                advanced = advanced or (previous is not None and committed > previous)
                self._committed[labels] = committed
                self.committed.labels(*labels).set(committed)
            base = committed if committed is not None else low
            self.lag.labels(*labels).set(max(high - base, 0))
        if advanced:
            self.note_progress()
        return advanced

    def note_progress(self, when: float | None = None) -> None:
        self.last_progress.set(time.time() if when is None else when)


class OffsetsProbe:
    """Reads connectivity and a group's offsets through a consumer of that group that never subscribes, so it never
    joins the group (as :class:`sinks.topic_end.CommittedOffsets`). Not an AdminClient: with
    ``list_offsets``/``list_consumer_group_offsets`` polled every few seconds, processes crashed in librdkafka's
    main thread (SIGSEGV, about one start in three of tests/test_kafka_outage.py, confluent-kafka 2.16)."""

    def __init__(self, bootstrap_servers: str, group_id: str | None, topics: Sequence[str],
                 client_config: dict[str, Any] | None = None) -> None:
        self.group_id = group_id
        self.topics = list(topics)
        # log_level 0: the probe reports what goes wrong itself (agentwatch_kafka_connected, one log line)
        self.consumer = Consumer({"bootstrap.servers": bootstrap_servers, "enable.auto.commit": False,
                                  "group.id": group_id or "agentwatch-selfmon-probe", "log_level": 0,
                                  **(client_config or {})})

    def partitions(self, timeout: float) -> list[TopicPartition]:
        """The topics' partitions; raises KafkaException when no broker answers within ``timeout``."""
        md = self.consumer.list_topics(timeout=timeout)
        return [TopicPartition(t, p) for t in self.topics if t in md.topics and md.topics[t].error is None
                for p in sorted(md.topics[t].partitions)]

    def offsets(self, tps: list[TopicPartition], timeout: float) -> dict[tuple[str, int], tuple[int | None, int, int]]:
        if not tps:
            return {}
        committed: dict[tuple[str, int], int] = {}
        if self.group_id:
            for tp in self.consumer.committed(tps, timeout=timeout):
                if tp.error is None and tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = tp.offset
        out = {}
        for tp in tps:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            out[(tp.topic, tp.partition)] = (committed.get((tp.topic, tp.partition)), low, high)
        return out

    def close(self) -> None:
        self.consumer.close()


class SelfMonitor:
    """The metrics plus the probe thread (:meth:`start`) plus, optionally, the HTTP endpoint (:meth:`serve`)."""

    def __init__(self, component: str, bootstrap_servers: str, *, group_id: str | None = None,
                 topics: Sequence[str] = (), registry: CollectorRegistry | None = None, interval_s: float = 5.0,
                 client_config: dict[str, Any] | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = SelfMetrics(component, self.registry)
        self.probe = OffsetsProbe(bootstrap_servers, group_id, topics, client_config)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self.port: int | None = None

    def probe_once(self) -> None:
        timeout = max(self.interval_s, 1.0)
        try:
            tps = self.probe.partitions(timeout)
        except KafkaException as exc:
            self.metrics.set_connected(False, _kafka_text(exc))
            return
        self.metrics.set_connected(True)
        try:
            self.metrics.set_offsets(self.probe.offsets(tps, timeout))
        except Exception as exc:  # noqa: BLE001 (a failed probe is never fatal: the next round tries again)
            log.debug("%s: offsets probe failed: %s", self.metrics.component, exc)

    def start(self) -> SelfMonitor:
        """Start the probe thread (a daemon: it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._loop, name=f"selfmon-{self.metrics.component}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.probe_once()
            self._stop.wait(max(self.interval_s - (time.monotonic() - started), 0.1))

    def serve(self, port: int, addr: str = "127.0.0.1", flag: str = "--metrics-port") -> SelfMonitor:
        """Serve /metrics of the registry on ``addr:port`` (0: any free port, then in ``self.port``); a taken port
        is a :class:`~agentwatch.startup.StartupError` saying so."""
        from prometheus_client import start_http_server

        try:
            self._server, self._server_thread = start_http_server(port, addr, self.registry)
        except OSError as exc:
            raise port_in_use(exc, addr, port, flag) from None
        self.port = self._server.server_port
        return self

    def note_progress(self) -> None:
        self.metrics.note_progress()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s * 3 + 5)
        if self._thread is None or not self._thread.is_alive():
            self.probe.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _kafka_text(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else exc
    return err.str() if hasattr(err, "str") else str(err)


def start_selfmon(component: str, group_id: str | None, topics: Sequence[str], port: int | None, *,
                  bootstrap_servers: str, listen_addr: str = "127.0.0.1",
                  registry: CollectorRegistry | None = None, flag: str = "--metrics-port",
                  interval_s: float = 5.0) -> SelfMonitor:
    """Everything a long-running command needs: the metrics (in ``registry``, or a new one), the probe thread, and
    /metrics on ``listen_addr:port`` unless ``port`` is None (a taken port raises StartupError before the probe
    starts). Call ``close()`` at the end."""
    mon = SelfMonitor(component, bootstrap_servers, group_id=group_id, topics=topics, registry=registry,
                      interval_s=interval_s)
    if port is not None:
        mon.serve(port, listen_addr, flag)
    return mon.start()
