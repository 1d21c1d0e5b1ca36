"""The worker's own metrics (prometheus_client), on a registry of its own so several workers can share a process.

Counters are per process; scrape each worker and ``sum without(instance)`` for the fleet.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class WorkerTelemetry:
    """Every figure the worker exposes; attribute names say what they count."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter("agentwatch_worker_records", "Events-topic records read (stage 1).", registry=r)
        self.events = Counter("agentwatch_worker_events", "AgentEvents decoded from those records.", registry=r)
        self.events_folded = Counter("agentwatch_worker_events_folded",
                                     "Events folded into a window (not late, not redelivered).", registry=r)
        self.duplicate_records = Counter("agentwatch_worker_duplicate_records",
                                         "Records skipped as redeliveries (producer id + batch sequence).",
                                         registry=r)
        self.dead_letters = Counter("agentwatch_worker_dead_letters",
                                    "Records (or single events of a record, for range checks) sent to the "
                                    "dead-letter topic, by reason.", ["reason"], registry=r)
        self.late_events = Counter("agentwatch_worker_late_events",
                                   "(event, window) pairs that arrived after the allowed lateness of their window "
                                   "(not folded; the events go to the late side topic).", registry=r)
        self.late_side_records = Counter("agentwatch_worker_late_side_records",
                                         "Records sent to the late side topic, by kind (event, partial).", ["kind"],
                                         registry=r)
        self.revised_events = Counter("agentwatch_worker_revised_events",
                                      "(event, window) pairs folded into a closed window within the allowed "
                                      "lateness (the window is emitted again as a revision).", registry=r)
        self.revisions = Counter("agentwatch_worker_revisions_emitted",
                                 "WindowedMetrics revisions sent because late data changed a final window.",
                                 registry=r)
        self.seals = Counter("agentwatch_worker_windows_sealed",
                             "WindowedMetrics records re-sent with sealed=true: nothing can change those windows "
                             "any more.", registry=r)
        self.processing_errors = Counter("agentwatch_worker_processing_errors",
                                         "Records or partials that raised while being handled, by stage (sent "
                                         "aside, the worker went on).", ["stage"], registry=r)
        self.gap_recoveries = Counter("agentwatch_worker_gap_recoveries",
                                      "Times an events partition skipped offsets and the worker sought back to them.",
                                      registry=r)
        self.skipped_offsets = Counter("agentwatch_worker_skipped_offsets",
                                       "Events-topic offsets that never arrived even after seeking back (taken as "
                                       "holding no record).", registry=r)
        self.partials = Counter("agentwatch_worker_partials", "Partial window aggregates sent by stage 1.",
                                registry=r)
        self.late_partials = Counter("agentwatch_worker_late_partials",
                                     "Partials that reached stage 2 after their window was sealed (sent to the "
                                     "late side topic).", registry=r)
        self.windows = Counter("agentwatch_worker_windows_emitted",
                               "Windows emitted for the first time (revision 0) to the metrics topic, by kind.",
                               ["kind"], registry=r)
        self.alerts = Counter("agentwatch_worker_alerts_emitted", "Alert transitions sent, by status.",
                              ["status"], registry=r)
        self.state_writes = Counter("agentwatch_worker_state_writes", "Table (changelog) writes, by table.",
                                    ["table"], registry=r)
        self.flushes = Counter("agentwatch_worker_flushes", "State flushes (changelog writes + acks).", registry=r)
        self.stream_time = Gauge("agentwatch_worker_stream_time_seconds",
                                 "Stream time (highest event time) per owned events partition.", ["partition"],
                                 registry=r)
        self.partitions = Gauge("agentwatch_worker_partitions", "Partitions owned, by topic role.", ["role"],
                                registry=r)
