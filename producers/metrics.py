"""Prometheus self-metrics of an EventPublisher, read from its counters at scrape time.

A custom collector rather than ``Counter.inc()`` calls: ``publish()`` runs on the agent's thread and must stay at a
few microseconds, and a prometheus_client Counter takes a lock per increment. The publisher keeps plain integers
(each written by one thread) and this collector turns a snapshot of them into metric families when scraped, so
the hot path pays nothing and the figures are exact.

Registration: on the registry passed to the publisher, else on a private ``CollectorRegistry`` per publisher, so
that several publishers in one process never collide on metric names (the default global registry would reject
the second one). Each sample carries a ``producer_id`` label. To expose them::

    from prometheus_client import start_http_server
    start_http_server(9464, registry=publisher.registry)            # a /metrics endpoint
    # or: prometheus_client.generate_latest(publisher.registry)      # the text format, e.g. in your own handler

Sharing one registry between several publishers is not supported (duplicate metric names); give each its own
and serve them from one handler by concatenating ``generate_latest`` of each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "agentwatch_producer_"

#: stats key -> (metric name without ``_total``, help)
COUNTERS: dict[str, tuple[str, str]] = {
    "enqueued": ("events_enqueued", "Events accepted by publish() (in memory or written to the spool)."),
    "delivered": ("events_delivered", "Events acknowledged by Kafka (directly or re-sent from the spool)."),
    "failed": ("events_failed", "Events in records whose delivery Kafka reported as failed (then spooled or dropped)."),
    "spooled": ("events_spooled", "Events written to the disk spool."),
    "resent": ("events_resent", "Events re-sent from the disk spool and acknowledged."),
    "coerced": ("events_coerced", "Events accepted after coercing a field of the wrong type or an unknown key."),
    "redactions": ("redactions", "Secrets replaced by [REDACTED:<kind>] by the scrubber."),
    "batches": ("batches_produced", "Kafka records (AgentEventBatch values) handed to the Kafka client."),
    "spool_corrupt_regions": ("spool_corrupt_regions", "Damaged spool byte ranges found at start-up (quarantined)."),
    "spool_torn_tails": ("spool_torn_tails", "Torn spool tails found at start-up (quarantined)."),
    "spool_write_errors": ("spool_write_errors", "Spool writes the file system refused (disk full, I/O error)."),
}
GAUGES: dict[str, tuple[str, str]] = {
    "buffer_depth": ("buffer_depth", "Events waiting in the in-memory buffer."),
    "spool_bytes": ("spool_bytes", "Bytes in the disk spool not yet acknowledged by Kafka."),
    "inflight_batches": ("inflight_batches", "Records handed to the Kafka client and not yet acknowledged."),
    "spool_events": ("spool_events", "Events in the disk spool not yet acknowledged by Kafka."),
    "undelivered": ("events_undelivered", "Events accepted and neither acknowledged by Kafka nor dropped."),
    "spool_degraded": ("spool_degraded", "1 when the configured spool could not be opened (no disk buffer)."),
}
DROPPED = ("events_dropped", "Events dropped, by reason (buffer_full, spool_full, spool_error, invalid, too_large, "
                             "rejected, delivery_failed, closed, internal).")


class PublisherCollector(Collector):
    """Yields the publisher's metrics from ``stats()`` and ``dropped()`` snapshots."""

    def __init__(self, producer_id: str, stats: Callable[[], Mapping[str, int]],
                 dropped: Callable[[], Mapping[str, int]]) -> None:
        self._producer_id = producer_id
        self._stats = stats
        self._dropped = dropped

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        labels = ["producer_id"]
        for key, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            family.add_metric([self._producer_id], stats.get(key, 0))
            yield family
        for key, (name, doc) in GAUGES.items():
            gauge = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            gauge.add_metric([self._producer_id], stats.get(key, 0))
            yield gauge
        dropped = CounterMetricFamily(PREFIX + DROPPED[0], DROPPED[1], labels=["producer_id", "reason"])
        for reason, n in sorted(self._dropped().items()):
            dropped.add_metric([self._producer_id, reason], n)
        yield dropped


def register(registry: CollectorRegistry | None, collector: PublisherCollector) -> CollectorRegistry:
    """Register ``collector`` on ``registry`` (a new private one when None) and return the registry."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry
