"""``agentwatch worker``: run one streams worker (Faust) computing windowed metrics and alerts.

Several workers started with the same configuration form one consumer group and share the partitions. The worker
never creates topics on its own: ``agentwatch topics create`` (or ``--create-topics`` here) is the admin step.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from confluent_kafka.admin import AdminClient

from agentwatch.cli_flags import add_bootstrap_servers, add_metrics_port, check_metrics_port
from agentwatch.commands.topics import sized_topics
from agentwatch.config import Settings
from agentwatch.kafka_log import ThrottleFilter, quiet_admin
from agentwatch.startup import StartupError, require_free_port
from agentwatch.topics import ensure_topics
from streams.options import TENANT_TABLE, WINDOW_TABLE, WorkerOptions, changelog_topic
from workarounds.faust_spinner import without_spinner


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "worker", help="run a streams worker: windowed metrics, threshold and token-spike alerts",
        description="Consume the events topic and compute per-tenant event-time windows (stage 1, per partition), "
        "merge them per tenant (stage 2) into the metrics topic, and evaluate the alert rules and the token-spike "
        "detector into the alerts topic. Bad records go to the dead-letter topic. State lives in changelog-backed "
        "tables, so a restarted or rebalanced worker resumes. Start several with the same settings to share the "
        "partitions. Broker and topic names come from the environment (KAFKA_BOOTSTRAP_SERVERS, "
        "AGENTWATCH_TOPIC_PREFIX, AGENTWATCH_APP_ID, ...).")
    add_bootstrap_servers(parser, needs_kafka=True)
    parser.add_argument("--workdir", type=Path,
                        help="directory for Faust's data (RocksDB files when --store rocksdb://) "
                        "(default: $AGENTWATCH_HOME/worker/<app id>)")
    parser.add_argument("--web-port", type=int, help="serve Faust's web views on this port (default: off)")
    parser.add_argument("--listen-addr", default=None,
                        help="address the metrics and web ports listen on; they have no authentication, so the "
                        "default is loopback (default: $AGENTWATCH_LISTEN_ADDR, else 127.0.0.1)")
    add_metrics_port(parser, "worker")
    parser.add_argument("--backfill", action="store_true",
                        help="reading history: compute everything, but mark alerts backfill=true (never paged)")
    parser.add_argument("--rules", type=Path, help="YAML rules file overriding the packaged defaults")
    parser.add_argument("--generator-url", type=_generator_url,
                        help="the alerts' generatorURL (the link in a page): a template over {tenant}, {alertname} "
                        "and {tool}, or none (default: $AGENTWATCH_GENERATOR_URL, else the tenant's view of the "
                        "shipped Grafana dashboard on localhost:3000)")
    parser.add_argument("--prices", type=Path, default=None,
                        help="YAML file of negotiated or self-hosted LLM prices (USD per million tokens per model "
                        "name) that win over genai-prices' bundled prices; see schemas/pricing.py "
                        "(default: $AGENTWATCH_PRICES_FILE, else genai-prices only)")
    parser.add_argument("--window", type=int, default=60, help="tumbling window size in seconds (default 60)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds a window waits for out-of-order events after its end (default 10)")
    parser.add_argument("--allowed-lateness", type=float, default=WorkerOptions.allowed_lateness_s,
                        help="seconds after the grace during which late events still update their window: the "
                        "window is emitted again as the next revision on the same metrics key; later events go to "
                        "the late side topic (AGENTWATCH_LATE_TOPIC), counted, never silently dropped; stage 2 keeps "
                        f"final windows this long (default {WorkerOptions.allowed_lateness_s:g}; 0: Kafka Streams' "
                        "behaviour, no revisions)")
    parser.add_argument("--max-future", type=float, default=WorkerOptions.max_future_s,
                        help="events stamped more than this many seconds ahead of the worker's clock go to the "
                        f"dead-letter topic as future_time (default {WorkerOptions.max_future_s:g})")
    parser.add_argument("--max-event-age", type=float, default=None,
                        help="events stamped more than this many seconds before the worker's clock go to the "
                        "dead-letter topic as too_old (default: only events before 2000-01-01)")
    parser.add_argument("--hop", type=int, default=300,
                        help="hopping window size in seconds, advancing by --window; 0 turns it off (default 300)")
    parser.add_argument("--store", default="memory://",
                        help="Faust table store: memory:// (default; rebuilt from the changelog at start) or "
                        "rocksdb:// (needs the faust-streaming-rocksdb or rocksdict package)")
    parser.add_argument("--max-record-bytes", type=int,
                        help="records larger than this go to the dead-letter topic as oversize (default 8 MiB)")
    parser.add_argument("--flush-interval", type=float, default=1.0,
                        help="seconds between state flushes (changelog writes + offset acks) (default 1)")
    parser.add_argument("--gc-threshold", type=int, default=WorkerOptions.gc_threshold,
                        help="allocations between young garbage collections; the worker holds many long-lived "
                        "window objects that each full collection walks, so a high threshold after freezing the "
                        "start-up heap gives ~25 %% more events/s (and ~30 %% more memory with large window "
                        f"state); 0 keeps Python's defaults "
                        f"(default {WorkerOptions.gc_threshold})")
    parser.add_argument("--stop-timeout", type=float, default=20.0,
                        help="seconds a graceful stop (SIGTERM/SIGINT) may take before the worker exits anyway; "
                        "Faust's shutdown can hang (e.g. a signal during a rebalance), and exiting is safe: "
                        "offsets are committed only after the state they cover (default 20; 0: wait forever)")
    parser.add_argument("--create-topics", action="store_true",
                        help="create missing topics first (as `agentwatch topics create`), the worker's internal "
                        "topics (partials, table changelogs) with as many partitions as the events topic has")
    parser.set_defaults(func=run, precheck=precheck)


def precheck(args: argparse.Namespace, settings: Settings) -> None:
    """Before waiting for Kafka: the ports (Faust binds its web port late, and a taken one ends in a traceback)."""
    check_metrics_port(args, settings)
    require_free_port(args.listen_addr or settings.listen_addr, args.web_port, "--web-port")


def _generator_url(text: str) -> str:
    """``--generator-url``: checked like the environment variable; ``""`` stands for none."""
    from agentwatch.config import ConfigError, parse_generator_url

    try:
        return parse_generator_url(text, what="--generator-url") or ""
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _partition_counts(bootstrap: str, names: list[str], timeout: float = 15.0) -> dict[str, int | None]:
    admin = AdminClient(quiet_admin({"bootstrap.servers": bootstrap}))
    md = admin.list_topics(timeout=timeout).topics
    return {n: (len(md[n].partitions) if n in md and md[n].error is None else None) for n in names}


def partition_mismatches(settings: Settings, counts: dict[str, int | None]) -> list[str]:
    """What disagrees among existing topics, each as "<topic> has N partitions, needs M (why)"; pure."""
    t = settings.topics
    events, partials = counts.get(t.events), counts.get(t.partials)
    wanted: list[tuple[str, int | None, str]] = [
        (t.partials, events, f"as many as {t.events}"),
        (changelog_topic(settings.app_id, WINDOW_TABLE), events, f"as many as {t.events}"),
        (changelog_topic(settings.app_id, TENANT_TABLE), partials, f"as many as {t.partials}"),
    ]
    out = []
    for name, need, why in wanted:
        have = counts.get(name)
        if have is not None and need is not None and have != need:
            out.append(f"{name} has {have} partitions, needs {need} ({why})")
    return out


def build_options(args: argparse.Namespace, settings: Settings, events_partitions: int,
                  partials_partitions: int) -> WorkerOptions:
    """The worker's options from the settings and the flags (``topics`` holds the broker's partition counts)."""
    t = settings.topics
    workdir = args.workdir or settings.home / "worker" / settings.app_id
    return WorkerOptions(
        app_id=settings.app_id, bootstrap_servers=settings.bootstrap_servers, events_topic=t.events,
        dead_letter_topic=t.dead_letter, partials_topic=t.partials, metrics_topic=t.metrics, alerts_topic=t.alerts,
        late_topic=t.late, events_partitions=events_partitions, partials_partitions=partials_partitions,
        window_s=args.window, grace_s=args.grace, hop_size_s=args.hop or None, backfill=args.backfill,
        allowed_lateness_s=args.allowed_lateness, max_future_s=args.max_future, max_event_age_s=args.max_event_age,
        rules_file=args.rules, store=args.store,
        generator_url=settings.generator_url if args.generator_url is None else args.generator_url or None,
        datadir=workdir, web_port=args.web_port,
        metrics_port=args.metrics_port if args.metrics_port is not None else settings.metrics_port,
        listen_addr=args.listen_addr or settings.listen_addr,
        max_record_bytes=args.max_record_bytes, prices_file=getattr(args, "prices", None) or settings.prices_file,
        flush_interval_s=args.flush_interval, gc_threshold=args.gc_threshold,
        loglevel="info" if logging.getLogger().isEnabledFor(logging.DEBUG) else "warning",
    )


def _bounded_stop_worker_class() -> type:
    """faust.Worker with a deadline on the graceful stop (built late: Faust pulls in a lot, and
    `agentwatch --help` should stay fast)."""
    import faust

    class BoundedStopWorker(faust.Worker):  # type: ignore[misc]
        stop_timeout_s: float = 20.0

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # Faust replaces the CLI's log handlers: throttle its ones too, so a worker cut off from Kafka logs
            # aiokafka's reconnect errors a few times a minute, each saying how many it stands for
            super().on_setup_root_logger(logger, level)
            flt = ThrottleFilter()
            for handler in logger.handlers:
                if not any(isinstance(f, ThrottleFilter) for f in handler.filters):
                    handler.addFilter(flt)

        def _schedule_shutdown(self, signum: signal.Signals) -> None:
            if self.stop_timeout_s > 0 and not self._signal_stop_time:
                timer = threading.Timer(self.stop_timeout_s, _exit_after_deadline, (self.stop_timeout_s,))
                timer.daemon = True
                timer.start()
            super()._schedule_shutdown(signum)

    return BoundedStopWorker


def _exit_after_deadline(seconds: float) -> None:
    print(f"agentwatch worker: graceful stop did not finish within {seconds:g}s; exiting now. Nothing is lost: "
          "offsets are committed only after the state and outputs they cover, so the partitions' next owner "
          "resumes from there.", file=sys.stderr, flush=True)
    os._exit(0)


def tune_gc(threshold: int) -> None:
    """Move the start-up heap out of the collector's way and collect the young generation less often.

    The worker keeps its windows, sketches and detector state as many small, long-lived containers, and
    allocates a few objects per event; with the default threshold (700) the collector runs every few events
    and its older generations walk all that state again and again. Frozen imports plus a threshold of tens of
    thousands gave the worker ~25 % more events/s (``bench/bench_worker.py --worker-args '--gc-threshold 0'``
    against the default: 17.2k vs 21.4k) and cost ~30 % more memory with 10,000 tenants of open windows
    (``bench/bench_worker_memory.py``); garbage cycles are still collected, later.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, max(middle, 20), max(old, 100))


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    t = settings.topics
    specs = sized_topics(settings, _partition_counts(settings.bootstrap_servers, [t.events])[t.events])
    if args.create_topics:
        ensure_topics(settings.bootstrap_servers, specs, settings.replication_factor)
    mine = {t.events, t.dead_letter, t.metrics, t.alerts, t.partials, t.late}  # and the tables' changelogs
    counts = _partition_counts(settings.bootstrap_servers,
                               [s.name for s in specs if s.name in mine or s.name.startswith(settings.app_id)])
    missing = [name for name, n in counts.items() if n is None]
    if missing:
        raise StartupError(f"missing topics {missing} on {settings.bootstrap_servers}; create them with "
                           "`agentwatch topics create` (or pass --create-topics)")
    wrong = partition_mismatches(settings, counts)
    if wrong:
        raise StartupError("the worker's internal topics do not fit: " + "; ".join(wrong) + ". Delete them "
                           "(their state is rebuilt from the events topic's retention) or recreate them with those "
                           "counts; a worker started anyway dies with Faust's PartitionsMismatch")
    try:
        options = build_options(args, settings, int(counts[t.events] or 0), int(counts[t.partials] or 0))
    except ValueError as exc:
        print(f"agentwatch worker: {exc}", file=sys.stderr)
        return 2
    if options.store.startswith(("rocksdb://", "rocksdict://")) and not (
            importlib.util.find_spec("rocksdict") or importlib.util.find_spec("rocksdb")):
        print("agentwatch worker: --store rocksdb:// needs the faust-streaming-rocksdb (or rocksdict) package; "
              "install it or use memory://", file=sys.stderr)
        return 2
    loop_kind = "asyncio"
    if importlib.util.find_spec("uvloop"):
        import uvloop

        uvloop.install()
        loop_kind = "uvloop"

    from agentwatch.selfmon import start_selfmon
    from streams.app import create_app
    from streams.telemetry import WorkerTelemetry

    telemetry = WorkerTelemetry()
    app, _shell = create_app(options, telemetry)
    # the worker's own agentwatch_worker_* and the self-monitoring metrics (group = the Faust app id) on one port
    mon = start_selfmon("worker", options.app_id, [t.events, t.partials], options.metrics_port,
                        bootstrap_servers=options.bootstrap_servers, listen_addr=options.listen_addr,
                        registry=telemetry.registry)
    if mon.port is not None:
        options = dataclasses.replace(options, metrics_port=mon.port)
    print(f"agentwatch worker {options.app_id}: broker {options.bootstrap_servers}, store {options.store}, "
          f"{loop_kind} loop", flush=True)
    print(f"  events     {t.events} ({options.events_partitions} partitions) -> dead letters {t.dead_letter}",
          flush=True)
    print(f"  windows    tumbling {options.window_s}s, grace {options.grace_s:g}s, allowed lateness "
          f"{options.allowed_lateness_s:g}s (later events -> {options.late_topic})"
          + (f", hopping {options.hop_size_s}s every {options.window_s}s" if options.hop_size_s else "")
          + (" [BACKFILL: alerts marked backfill]" if options.backfill else ""), flush=True)
    print(f"  partials   {t.partials} ({options.partials_partitions} partitions); state in "
          f"{options.window_table_changelog}, {options.tenant_table_changelog}", flush=True)
    print(f"  outputs    metrics {t.metrics}, alerts {t.alerts}; rules "
          f"{options.rules_file or 'packaged defaults'}", flush=True)
    if options.metrics_port is not None:
        print(f"  metrics    http://{options.listen_addr}:{options.metrics_port}/metrics", flush=True)
    if options.web_port is not None:
        print(f"  web        http://{options.listen_addr}:{options.web_port}/", flush=True)
    worker = _bounded_stop_worker_class()(app, loglevel=options.loglevel, quiet=True, redirect_stdouts=False)
    worker.stop_timeout_s = args.stop_timeout
    without_spinner(worker)  # the spinner costs 5-8 % of the worker's CPU in log records (workarounds.faust_spinner)
    tune_gc(options.gc_threshold)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        mon.close()
    return 0

