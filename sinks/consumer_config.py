"""The Kafka consumer settings every sink shares, in one place (the logs, audit, alert-delivery, traces and replay
archive sinks, and the Prometheus exporter).

Semantics, the same for each sink:

* its own consumer group (``group.id``): a sink reads every record of its topic, independently of the others;
* ``enable.auto.commit`` off: a sink commits an offset only after what the record became is durable (on disk,
  delivered, exported), so a crash re-delivers rather than loses;
* ``auto.offset.reset=earliest``: a group with no committed offset starts at the oldest retained record (a sink
  that should start elsewhere, e.g. alert delivery's "latest", decides per partition on assignment);
* ``isolation.level=read_committed``: records of aborted producer transactions are never read;
* ``eager``: the ``range`` assignor, i.e. eager rebalancing, where a revocation takes every partition and
  consumption resumes from the committed offsets (a sink that drops unwritten in-memory state on revocation needs
  that); ``cooperative``: the ``cooperative-sticky`` assignor, where a rebalance moves only the partitions that
  change owner (the exporter, which keeps counting what it still owns); the default is librdkafka's own;
* ``max_poll_interval_ms``: for a sink whose handling of one batch may block the poll loop for long (retries).

``extra`` (a command's or a test's own client settings) wins over all of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def sink_consumer_config(bootstrap_servers: str, group_id: str, *, eager: bool = False, cooperative: bool = False,
                         max_poll_interval_ms: int | None = None,
                         extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The confluent-kafka ``Consumer`` configuration of a sink in group ``group_id`` (see the module docstring)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }
    if eager and cooperative:
        raise ValueError("a consumer rebalances either eagerly or cooperatively, not both")
    if eager:
        config["partition.assignment.strategy"] = "range"
    if cooperative:
        config["partition.assignment.strategy"] = "cooperative-sticky"
    if max_poll_interval_ms is not None:
        config["max.poll.interval.ms"] = max_poll_interval_ms
    config.update(extra or {})
    return config
