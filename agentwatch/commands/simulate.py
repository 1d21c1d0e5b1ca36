"""``agentwatch simulate``: publish a deterministic simulated fleet to the events topic and write its ground truth.

The events come from :class:`producers.simulator.FleetSimulator` (same seed, same events, same truth bytes); the
truth is counted from exactly the events handed to the publisher, so a pipeline fed by this run can be checked
against it. Pacing: as fast as possible (default), ``--rate N`` events/s on the wall clock (token bucket; unless
``--fleet-rate`` says otherwise the simulated fleet is sized to N events per simulated second, so event time
advances about as fast as the wall clock), or ``--realtime`` (each event is sent when the wall clock reaches its
event time; start = now).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agentwatch.cli_flags import add_bootstrap_servers, add_topic
from agentwatch.config import Settings
from agentwatch.isotime import parse_utc, utc_iso
from agentwatch.topics import default_topics, ensure_topics
from producers.ground_truth import US, TruthCounter, write_json
from producers.incidents import Incident, default_incidents, load_incidents, parse_duration
from producers.simulator import DEFAULT_START_US, FleetSimulator

BACKPRESSURE_DEPTH = 50_000  # publisher buffer depth above which the simulator waits for the sender


class TokenBucket:
    """Wall-clock pacing at ``rate`` events/s with bursts of at most ``burst`` (clock and sleep injectable)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()

    def take(self, n: float = 1.0) -> None:
        """Block until ``n`` tokens are available, then spend them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


@dataclass
class Progress:
    """Counts and the periodic stderr line (events sent, rate, ETA by event-time progress).

    On a terminal (``overwrite``) one line redrawn in place every second; otherwise (a log file, a pipe) a plain
    line every ``every_s`` seconds, so a log never fills with carriage returns.
    """

    start_us: int
    end_us: int
    enabled: bool = True
    overwrite: bool = field(default_factory=lambda: sys.stderr.isatty())
    every_s: float = 10.0
    sent: int = 0
    dropped: int = 0
    per_tenant: Counter[str] = field(default_factory=Counter)
    per_type: Counter[str] = field(default_factory=Counter)
    began: float = field(default_factory=time.monotonic)
    _last_print: float = field(default_factory=time.monotonic)

    def add(self, ev: dict[str, Any]) -> None:
        self.sent += 1
        self.per_tenant[ev["tenant"]] += 1
        self.per_type[ev["type"]] += 1

    def line(self, event_time_us: int, now: float) -> str:
        elapsed = max(1e-9, now - self.began)
        frac = min(1.0, max(0.0, (event_time_us - self.start_us) / max(1, self.end_us - self.start_us)))
        eta = f"{elapsed * (1 - frac) / frac:,.0f}s" if frac > 0 else "?"
        return f"{self.sent:,} events ({frac:.0%} of event time), {self.sent / elapsed:,.0f} ev/s, ETA {eta}"

    def tick(self, event_time_us: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_print < (1.0 if self.overwrite else self.every_s)):
            return
        self._last_print = now
        if self.overwrite:
            print(f"\r  {self.line(event_time_us, now)}   ", end="", file=sys.stderr, flush=True)
        else:
            print(f"  {self.line(event_time_us, now)}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.overwrite:
            self.tick(self.end_us, force=True)
            print(file=sys.stderr)


def parse_start(value: str | None, realtime: bool) -> int:
    """``now``, an ISO 8601 time (naive = UTC), or the fixed default (``now`` in real-time mode)."""
    if value is None:
        return int(time.time() * US) if realtime else DEFAULT_START_US
    if value == "now":
        return int(time.time() * US)
    return int(parse_utc(value).timestamp() * US)


def parse_tenants(value: str) -> int | list[str]:
    """``6`` or ``acme,globex,initech`` (largest first)."""
    return int(value) if value.strip().isdigit() else [t.strip() for t in value.split(",") if t.strip()]


def build_simulator(args: argparse.Namespace) -> FleetSimulator:
    start_us = parse_start(args.start, args.realtime)
    duration_s = parse_duration(args.duration)
    tenants = parse_tenants(args.tenants)
    fleet_rate = args.fleet_rate if args.fleet_rate is not None else args.rate
    common: dict[str, Any] = {"seed": args.seed, "tenants": tenants, "services": args.services,
                              "start_us": start_us, "duration_s": duration_s, "rate": fleet_rate}
    incidents: list[Incident]
    if args.incidents == "none":
        incidents = []
    elif args.incidents == "default":
        names = FleetSimulator(**common).tenant_names
        try:
            incidents = default_incidents(names, start_us, duration_s, args.window)
        except ValueError as exc:  # a short demo run: traffic without incidents rather than no run
            print(f"simulate: no incidents: {exc}", file=sys.stderr)
            incidents = []
    else:
        incidents = load_incidents(args.incidents)
    return FleetSimulator(**common, incidents=incidents)


def precheck(args: argparse.Namespace, settings: Settings) -> None:
    """Unless ``--dry-run``, a broker must answer before anything is generated: the same one-line exit 2 as the
    long-running parts, instead of librdkafka's retry lines and a metadata error 30 s later."""
    if not args.dry_run:
        from agentwatch.startup import wait_for_kafka

        wait_for_kafka(args.bootstrap_servers or settings.bootstrap_servers,
                       args.kafka_timeout or settings.kafka_startup_timeout_s)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        sim = build_simulator(args)
    except (ValueError, OSError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    topic = args.topic or settings.topics.events
    truth_path = Path(args.truth) if args.truth else settings.home / "simulate" / "truth.json"
    mode = "real time" if args.realtime else (f"{args.rate:g} events/s" if args.rate else "as fast as possible")
    print(f"simulating {len(sim.tenants)} tenants, {sim.duration_s:g}s of event time from "
          f"{utc_iso(sim.start_us)} (~{sim.expected_rate:,.0f} events per simulated second), seed {sim.seed}, "
          f"{mode}; {'dry run, no Kafka' if args.dry_run else f'topic {topic} at {settings.bootstrap_servers}'}",
          file=sys.stderr)
    for inc in sim.incidents:
        print(f"  incident {inc.kind} on {inc.tenant} at +{inc.start_s:g}s..+{inc.end_s:g}s -> {inc.rule}",
              file=sys.stderr)

    publisher = None
    if not args.dry_run:
        from producers.publisher import EventPublisher

        if not args.no_create_topic:
            spec = replace(next(s for s in default_topics(settings) if s.name == settings.topics.events), name=topic)
            ensure_topics(settings.bootstrap_servers, [spec], settings.replication_factor)
        publisher = EventPublisher(settings.bootstrap_servers, topic,
                                   spool_dir=Path(args.spool_dir) if args.spool_dir else None,
                                   **settings.producer.publisher_options())  # type: ignore[arg-type]

    counted = TruthCounter(args.window)
    progress = Progress(sim.start_us, sim.end_us, enabled=not args.quiet)
    bucket = TokenBucket(args.rate) if args.rate and not args.realtime else None
    wall0 = time.time()
    interrupted = False
    try:
        for ev in sim.events():
            if bucket is not None:
                bucket.take()
            elif args.realtime:
                due = wall0 + (ev["event_time"] - sim.start_us) / US
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
            counted.add(ev)  # before publish: from then on the publisher owns the dict
            progress.add(ev)
            if publisher is not None:
                if not publisher.publish(ev):
                    progress.dropped += 1
                if progress.sent % 2000 == 0:
                    while publisher.stats["buffer_depth"] > BACKPRESSURE_DEPTH:
                        time.sleep(0.005)
            if progress.sent % 500 == 0:
                progress.tick(ev["event_time"])
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: flushing what was sent and writing its truth", file=sys.stderr)
    progress.done()

    stats: dict[str, int] = {}
    dropped_by: dict[str, int] = {}
    flushed = True
    if publisher is not None:
        flushed = publisher.flush(args.flush_timeout)
        flushed = publisher.close() and flushed
        stats, dropped_by = publisher.stats, publisher.dropped_by_reason()
    truth = sim.ground_truth(args.window, counted=counted)
    truth["params"]["complete"] = not interrupted
    write_json(truth_path, truth)
    print(render_summary(progress, truth, stats, truth_path, time.monotonic() - progress.began))
    if publisher is not None and (progress.dropped or stats.get("dropped") or not flushed):
        print(undelivered_line(progress.sent, stats, dropped_by, args.spool_dir), file=sys.stderr)
        return 1
    return 130 if interrupted else 0


def undelivered_line(sent: int, stats: dict[str, int], dropped_by: dict[str, int], spool_dir: str | None) -> str:
    """The one line that says a run did not deliver everything: how much, where it is, why."""
    undelivered = stats.get("undelivered", 0)
    parts = [f"{stats.get('delivered', 0):,} of {sent:,} events delivered"]
    if undelivered:
        parts.append(f"{undelivered:,} not delivered" + (f", kept in the spool {spool_dir} (the next publisher on it "
                                                        "sends them)" if spool_dir else ""))
    if dropped_by:
        parts.append("dropped " + ", ".join(f"{n:,} {reason}" for reason, n in sorted(dropped_by.items())))
    return "simulate: NOT everything reached Kafka: " + "; ".join(parts) + " (the truth counts what was generated)"


def render_summary(progress: Progress, truth: dict[str, Any], stats: dict[str, int], truth_path: Path,
                   elapsed_s: float) -> str:
    """Events per tenant and type, publisher stats, expected alerts and where the truth is."""
    lines = [f"{progress.sent:,} events in {elapsed_s:,.1f}s ({progress.sent / max(elapsed_s, 1e-9):,.0f} ev/s)", "",
             f"{'tenant':<16} {'events':>9} {'turns':>7} {'tool calls':>10} {'llm calls':>9} {'tokens':>13}"]
    for tenant, rec in truth["tenants"].items():
        lines.append(f"{tenant:<16} {rec['events']:>9,} {rec['turns']:>7,} {rec['tool_calls']:>10,} "
                     f"{rec['llm_calls']:>9,} {rec['tokens']['total']:>13,}")
    lines.append("")
    lines.append("events per type: " + ", ".join(f"{t}={n:,}" for t, n in progress.per_type.most_common()))
    if stats:
        keys = ("enqueued", "delivered", "dropped", "spooled", "failed", "batches")
        lines.append("publisher: " + ", ".join(f"{k}={stats.get(k, 0):,}" for k in keys))
    alerts = truth["alerts"]
    if alerts["expected"]:
        lines.append("")
        lines.append("expected alerts (windows whose counts cross the rule):")
        for a in alerts["expected"]:
            labels = ",".join(f"{k}={v}" for k, v in a["labels"].items())
            lines.append(f"  {a['alertname']}{{{labels}}} {a['start']} .. {a['end']}: "
                         f"{len(a['crossing_windows_us'])} crossing window(s)")
    if alerts["unexpected_crossings"]:
        lines.append(f"  {len(alerts['unexpected_crossings'])} crossing(s) no incident explains")
    lines.append("")
    lines.append(f"ground truth: {truth_path}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate",
        help="publish a deterministic simulated agent fleet (with incidents) and write its ground truth",
        description="Generate multi-tenant Agentao traffic (sessions, turns, LLM calls with tokens and cache hits, "
        "tools with latencies and failures, confirmations, sub-agents) deterministically from a seed, with "
        "scripted incidents, publish it to the events topic, and write the ground truth (counts per tenant and "
        "event-time window, incident times, expected alerts) as JSON.",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same events and truth")
    p.add_argument("--tenants", default="6", help="number of tenants, or comma-separated names, largest first "
                   "(default 6)")
    p.add_argument("--services", type=int, default=2, help="services per tenant (default 2)")
    p.add_argument("--duration", default="10m", help="simulated event time, e.g. 90s, 10m, 1h (default 10m)")
    p.add_argument("--rate", type=float, default=None,
                   help="pace sending at this many events/s on the wall clock (token bucket), and size the fleet to "
                   "as many events per simulated second unless --fleet-rate is given; default: as fast as possible")
    p.add_argument("--fleet-rate", type=float, default=None,
                   help="size of the simulated fleet in events per simulated second (default: --rate, else 50 per "
                   "tenant)")
    p.add_argument("--realtime", action="store_true",
                   help="send each event when the wall clock reaches its event time (start defaults to now)")
    p.add_argument("--start", default=None,
                   help="event time of the start: ISO 8601 or 'now' (default 2026-01-01T00:00:00Z; now with "
                   "--realtime)")
    p.add_argument("--incidents", default="default",
                   help="'default' (one of each kind), 'none', or a JSON/YAML incident file")
    p.add_argument("--window", type=int, default=60, help="tumbling window of the truth, seconds (default 60)")
    p.add_argument("--truth", default=None,
                   help="where to write the ground truth JSON (default $AGENTWATCH_HOME/simulate/truth.json)")
    p.add_argument("--dry-run", action="store_true", help="generate and write the truth without Kafka")
    add_bootstrap_servers(p)
    add_topic(p, "events", verb="publish to")
    p.add_argument("--no-create-topic", action="store_true", help="do not create the topic when it is missing")
    p.add_argument("--spool-dir", default=None, help="publisher disk buffer: every record is on disk until Kafka "
                   "acknowledges it, so an outage or a crash loses nothing; what is left is sent by the next run "
                   "(default: none, memory only)")
    p.add_argument("--flush-timeout", type=float, default=60.0,
                   help="seconds to wait for delivery at the end (default 60)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run, precheck=precheck)
