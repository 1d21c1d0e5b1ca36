"""What the streams worker is configured with: one typed, validated dataclass, built by the application layer.

``streams/`` never reads the environment; ``agentwatch worker`` builds :class:`WorkerOptions` from
:class:`agentwatch.config.Settings` and its flags. The table names live here because the admin step
(:mod:`agentwatch.topics`) must create their changelog topics: the worker never declares topics itself
(Faust's ``topic_allow_declare`` is off, and the broker's auto-creation is off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Faust tables (their changelog topics are "<app id>-<table>-changelog", created by the admin step).
WINDOW_TABLE = "window-state"  # stage 1: the window engine's slots and meta, co-partitioned with the events topic
TENANT_TABLE = "tenant-state"  # stage 2: pending partials, watermarks, detector states, co-partitioned with partials


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class WorkerOptions:
    """Everything one worker process needs; see ``agentwatch worker --help`` for the meaning of each knob."""

    app_id: str
    bootstrap_servers: str
    events_topic: str
    dead_letter_topic: str
    partials_topic: str
    metrics_topic: str
    alerts_topic: str
    events_partitions: int  # source partitions: stage 2 waits for a watermark from each
    partials_partitions: int
    late_topic: str = ""  # "" means "<events_topic>.late"
    window_s: int = 60
    grace_s: float = 10.0
    allowed_lateness_s: float = 3600.0  # late events within this (after the grace) revise their window
    max_event_age_s: float | None = None  # events older than this (wall clock) are rejected as too_old
    hop_size_s: int | None = 300  # hopping windows built from tumbling finals (None: off); advance = window_s
    max_future_s: float | None = 300.0  # events stamped further ahead of the wall clock are rejected (future_time)
    label_limit: int = 50
    flush_interval_s: float = 1.0  # state written to the changelog (and records acked) at least this often ...
    flush_records: int = 2000  # ... or after this many records
    heartbeat_s: float = 1.0  # idle-partition heartbeat and flush timer
    idle_partition_s: float = 5.0  # an empty, caught-up source partition is declared idle after this long
    commit_interval_s: float = 1.0
    session_timeout_s: float = 10.0  # a crashed worker's partitions move after this long (Faust's default is 60 s)
    backfill: bool = False
    rules_file: Path | None = None
    generator_url: str | None = None  # the alerts' generatorURL template ({tenant}, {alertname}, {tool})
    prices_file: Path | None = None  # LLM price overrides (schemas/pricing.py); None: genai-prices only
    store: str = "memory://"
    datadir: Path = Path("agentwatch-worker")
    web_port: int | None = None
    metrics_port: int | None = None
    listen_addr: str = "127.0.0.1"  # the metrics and web ports: unauthenticated, so loopback unless configured
    max_record_bytes: int | None = None  # None: the codec's default limit
    loglevel: str = "info"
    gc_threshold: int = 50_000  # allocations between young GC collections (0: Python's default of 700)

    def __post_init__(self) -> None:
        if not self.late_topic:
            object.__setattr__(self, "late_topic", f"{self.events_topic}.late")
        if self.allowed_lateness_s < 0:
            raise ValueError("allowed lateness must be >= 0 seconds")
        if self.max_event_age_s is not None and self.max_event_age_s <= 0:
            raise ValueError("max event age must be > 0 seconds")
        if self.window_s <= 0:
            raise ValueError("window must be > 0 seconds")
        if self.grace_s < 0:
            raise ValueError("grace must be >= 0 seconds")
        if self.hop_size_s is not None and (self.hop_size_s <= self.window_s or self.hop_size_s % self.window_s):
            raise ValueError("hopping size must be a multiple of the window (and larger than it)")
        if self.events_partitions < 1 or self.partials_partitions < 1:
            raise ValueError("topics need at least one partition")
        if self.flush_interval_s <= 0 or self.heartbeat_s <= 0 or self.flush_records < 1:
            raise ValueError("flush interval, heartbeat and flush records must be positive")
        if self.gc_threshold < 0:
            raise ValueError("gc threshold must be >= 0")
        if self.prices_file is not None:
            from schemas.pricing import load_overrides

            load_overrides(self.prices_file)  # a bad file stops the start with its one-line PricesFileError
        if not self.store.startswith(("memory://", "rocksdb://", "rocksdict://")):
            raise ValueError(f"store must be memory://, rocksdb:// or rocksdict://, got {self.store!r}")

    @property
    def window_table_changelog(self) -> str:
        return changelog_topic(self.app_id, WINDOW_TABLE)

    @property
    def tenant_table_changelog(self) -> str:
        return changelog_topic(self.app_id, TENANT_TABLE)
