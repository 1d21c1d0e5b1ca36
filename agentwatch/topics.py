"""The topics agentwatch uses, with partitions, retention and cleanup policy stated here, not left to broker defaults.

Retention follows the three classes of the design: raw events are short-lived (days: the archive and the metrics
are what people keep), the dead-letter topic keeps bad records long enough to be looked at and replayed after a fix,
metrics and alerts are small and kept longer. Auto-creation is off on the local broker, so a topic missing from
this list fails loudly instead of appearing with defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic

from agentwatch.config import Settings
from streams.options import TENANT_TABLE, WINDOW_TABLE, changelog_topic

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms), **self.extra}


def default_topics(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    p = settings.events_partitions
    return [
        # Keyed by session shard: one session's events stay in order in one partition.
        TopicSpec(t.events, p, 7 * DAY_MS, extra={"max.message.bytes": str(8 * 1024 * 1024)}),
        TopicSpec(t.dead_letter, 1, 14 * DAY_MS, extra={"max.message.bytes": str(8 * 1024 * 1024)}),
        # Events later than the worker's allowed lateness, kept (never silently dropped) for a backfill run.
        TopicSpec(t.late, 1, 14 * DAY_MS, extra={"max.message.bytes": str(8 * 1024 * 1024)}),
        TopicSpec(t.metrics, p, 30 * DAY_MS),
        TopicSpec(t.alerts, 1, 90 * DAY_MS),
        # The audit log's external witness: the newest signed checkpoint per (tenant, stream), kept for ever.
        TopicSpec(t.audit_anchors, 1, -1, "compact"),
        # The streams worker's internals: partial window aggregates + watermark markers between its two stages,
        # and the changelogs of its two tables (compacted; Faust never declares topics here).
        TopicSpec(t.partials, p, 7 * DAY_MS, extra={"max.message.bytes": str(8 * 1024 * 1024)}),
        TopicSpec(changelog_topic(settings.app_id, WINDOW_TABLE), p, -1, "compact",
                  {"max.message.bytes": str(8 * 1024 * 1024)}),
        TopicSpec(changelog_topic(settings.app_id, TENANT_TABLE), p, -1, "compact",
                  {"max.message.bytes": str(8 * 1024 * 1024)}),
    ]


def ensure_topics(bootstrap_servers: str, specs: list[TopicSpec], replication_factor: int = 1,
                  timeout: float = 30.0) -> dict[str, str]:
    """Create the topics that do not exist yet; returns ``{name: "created" | "exists"}``.

    Existing topics are left alone (partition counts are never changed behind an operator's back).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    result: dict[str, str] = {s.name: "exists" for s in specs if s.name in existing}
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor, config=s.config())
           for s in specs if s.name not in existing]
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
                result[name] = "created"
            except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                result[name] = "exists"
        _wait_for_leaders(admin, [t.topic for t in new], timeout)
    return result


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(n in md and md[n].partitions and all(p.leader >= 0 for p in md[n].partitions.values())
               for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} have no leaders after {timeout}s")
