"""All of agentwatch's configuration, in one typed place, read from the environment.

Every setting has an environment variable named like the ones operators already know
(``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``) or prefixed ``AGENTWATCH_``; the CLI's flags override them.
Lower layers (``producers``, ``streams``, ``sinks``) never read the environment themselves: they take these values
as constructor arguments, so they stay testable and embeddable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _default_home() -> Path:
    return Path(_env("AGENTWATCH_HOME", str(Path.home() / ".cache" / "agentwatch")))


@dataclass(frozen=True)
class TopicNames:
    events: str = "agentwatch.events"
    dead_letter: str = "agentwatch.events.dlq"
    metrics: str = "agentwatch.metrics"
    alerts: str = "agentwatch.alerts"
    # The streams worker's internal topic between its two stages; "" means "<events>.partials".
    partials: str = ""

    def __post_init__(self) -> None:
        if not self.partials:
            object.__setattr__(self, "partials", f"{self.events}.partials")

    @classmethod
    def from_env(cls) -> TopicNames:
        prefix = _env("AGENTWATCH_TOPIC_PREFIX", "agentwatch")
        return cls(
            events=_env("AGENTWATCH_EVENTS_TOPIC", f"{prefix}.events"),
            dead_letter=_env("AGENTWATCH_DLQ_TOPIC", f"{prefix}.events.dlq"),
            metrics=_env("AGENTWATCH_METRICS_TOPIC", f"{prefix}.metrics"),
            alerts=_env("AGENTWATCH_ALERTS_TOPIC", f"{prefix}.alerts"),
            partials=_env("AGENTWATCH_PARTIALS_TOPIC", f"{prefix}.events.partials"),
        )


@dataclass(frozen=True)
class Settings:
    """What a deployment configures. ``Settings.from_env()`` is the only place that reads the environment."""

    bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = None
    topics: TopicNames = field(default_factory=TopicNames)
    events_partitions: int = 6
    replication_factor: int = 1
    home: Path = field(default_factory=_default_home)
    spool_dir: Path | None = None
    tenant: str = "default"
    service: str | None = None
    # The streams worker's Faust app id (consumer group, changelog topic prefix); "" derives it from the events
    # topic ("agentwatch.events" -> "agentwatch.streams") so unique test topics get a unique group too.
    app_id: str = ""

    def __post_init__(self) -> None:
        if not self.app_id:
            events = self.topics.events
            base = events[: -len(".events")] if events.endswith(".events") else events
            object.__setattr__(self, "app_id", f"{base}.streams")

    @classmethod
    def from_env(cls) -> Settings:
        home = _default_home()
        return cls(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            schema_registry_url=os.environ.get("SCHEMA_REGISTRY_URL") or None,
            topics=TopicNames.from_env(),
            events_partitions=int(_env("AGENTWATCH_EVENTS_PARTITIONS", "6")),
            replication_factor=int(_env("AGENTWATCH_REPLICATION_FACTOR", "1")),
            home=home,
            spool_dir=Path(_env("AGENTWATCH_SPOOL_DIR", str(home / "spool"))),
            tenant=_env("AGENTWATCH_TENANT", "default"),
            service=os.environ.get("AGENTWATCH_SERVICE") or None,
            app_id=os.environ.get("AGENTWATCH_APP_ID") or "",
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some values replaced (``None`` values are ignored, so CLI flags left unset fall through)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known and v is not None})
