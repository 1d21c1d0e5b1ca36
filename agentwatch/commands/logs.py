"""``agentwatch logs run``: the events topic as per-tenant JSON-lines logs (the seed's axis 1, issue 10).

Configuration (read by :class:`agentwatch.config.LogsSettings`; flags override): ``AGENTWATCH_LOGS_DIR``,
``AGENTWATCH_LOGS_RETENTION_DAYS``, ``AGENTWATCH_LOGS_GROUP``, ``AGENTWATCH_LOGS_GRACE_S``,
``AGENTWATCH_LOGS_METRICS_PORT``; the scrubbing policy is the producer's (``AGENTWATCH_CAPTURE_FLAGS``,
``AGENTWATCH_PII_CLASSES``). What a line holds and how files rotate: :mod:`sinks.logs`; durability:
:mod:`sinks.logs_store`; delivery: :mod:`sinks.logs_sink`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentwatch.cli_flags import add_bootstrap_servers, add_run_bounds, add_topic, whole_number
from agentwatch.config import Settings


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def _metrics_port(args: argparse.Namespace, settings: Settings) -> int | None:
    """``--metrics-port``, else ``$AGENTWATCH_LOGS_METRICS_PORT``, else ``$AGENTWATCH_METRICS_PORT``, else none."""
    for port in (args.metrics_port, settings.logs.metrics_port, settings.metrics_port):
        if port is not None:
            return port
    return None


def _precheck(args: argparse.Namespace, settings: Settings) -> None:
    """Before waiting for Kafka: the metrics port (see :func:`agentwatch.cli.main`)."""
    from agentwatch.startup import require_free_port

    require_free_port(settings.listen_addr, _metrics_port(args, settings), "--metrics-port")


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry

    from agentwatch.foreground import StatusLine, stop_on_signals
    from agentwatch.kafka_log import with_logger
    from agentwatch.selfmon import start_selfmon
    from producers.scrub import Scrubber
    from sinks.logs_sink import LogsCollector, LogsSink
    from sinks.logs_store import LogsError, LogWriter

    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = settings.logs
    root = Path(args.dir or conf.dir or settings.home / "logs")
    topic = args.topic or settings.topics.events
    group = args.group or conf.group
    retention = args.retention_days or conf.retention_days
    grace = conf.grace_s if args.grace is None else args.grace
    scrubber = Scrubber(settings.producer.capture_flags, pii_classes=settings.producer.pii_classes)
    try:
        writer = LogWriter(root, scrubber=scrubber, retention_days=retention, grace_s=grace)
    except (LogsError, OSError) as exc:
        print(f"logs: {exc}", file=sys.stderr)
        return 2
    sink = LogsSink(settings.bootstrap_servers, topic, writer, group_id=group, consumer_config=with_logger())
    registry = CollectorRegistry()
    registry.register(LogsCollector(sink))
    try:  # the self-monitoring metrics (agentwatch.selfmon) and the sink's own counters on one /metrics
        server = start_selfmon("logs", group, [topic], _metrics_port(args, settings),
                               bootstrap_servers=settings.bootstrap_servers, listen_addr=settings.listen_addr,
                               registry=registry)
    except BaseException:
        writer.close()
        raise
    if server.port is not None:
        print(f"serving http://{settings.listen_addr}:{server.port}/metrics", file=sys.stderr)
    print(f"logging {topic} at {settings.bootstrap_servers} (group {group}) into {root}, {retention} days kept",
          file=sys.stderr)
    status = StatusLine()
    failed = False
    with stop_on_signals() as stop:  # Ctrl-C / SIGTERM: finish the batch, flush, commit, then exit
        try:
            sink.run(stop=stop, until_end=args.until_end, idle_timeout_s=args.idle_timeout,
                     on_progress=lambda s: status.show(f"{s.line()}; {writer.stats.lines:,} lines"))
        except LogsError as exc:
            failed = True
            print(f"\nlogs: {exc}; stopped without committing: the events are re-read after a restart",
                  file=sys.stderr)
        finally:
            try:
                writer.close()
            except LogsError:
                failed = True
            server.close()
    print(f"\r  {sink.stats.line()}\n  {writer.stats.line()}", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "logs", help="per-tenant structured logs (JSON lines, daily files, gzip, retention) from the events topic",
        description="Write every event as one JSON line (ts, level, event_type, tenant_id, session_id, user_id, the "
        "event's data) into <dir>/t-<tenant>/<YYYY-MM-DD>.jsonl, scrubbed of secrets with the producer's scrubber. "
        "Records of Agentao's own logger (AgentaoLogBridge in producers.agentao_bridge) land there too.",
    )
    lsub = p.add_subparsers(dest="logs_command", metavar="ACTION", required=True)
    r = lsub.add_parser(
        "run", help="consume the events topic into the per-tenant log files",
        description="Consume the events topic in its own consumer group; write, fsync, then commit (a crash loses "
        "nothing committed and writes no line twice: each line carries its Kafka position). Files rotate by the "
        "events' own time (UTC day); a day's file is gzipped once the day is over plus --grace and the file has "
        "been idle as long, and days older "
        "than --retention-days are deleted. Run one instance per directory. Stops on Ctrl-C / SIGTERM, or with "
        "--until-end / --idle-timeout.")
    add_bootstrap_servers(r, needs_kafka=True)
    add_topic(r, "events")
    r.add_argument("--dir", metavar="PATH", help="log directory (default: $AGENTWATCH_LOGS_DIR, else "
                   "$AGENTWATCH_HOME/logs)")
    r.add_argument("--retention-days", type=whole_number(1), default=None, metavar="DAYS",
                   help="days kept, today included (default: $AGENTWATCH_LOGS_RETENTION_DAYS or 14)")
    r.add_argument("--group", default=None, help="consumer group (default: $AGENTWATCH_LOGS_GROUP or "
                   "agentwatch-logs)")
    r.add_argument("--grace", type=_seconds, default=None, metavar="SECONDS",
                   help="how long after a day's end its file waits for late events before it is gzipped "
                   "(default: $AGENTWATCH_LOGS_GRACE_S or 900); later events start a new file for that day")
    r.add_argument("--metrics-port", type=whole_number(0), default=None, metavar="PORT",
                   help="serve Prometheus /metrics (lines written, lines dropped, ..., and the self-monitoring "
                   "metrics with component=\"logs\": liveness, Kafka connectivity, consumer lag) on this port, at "
                   "$AGENTWATCH_LISTEN_ADDR (default: $AGENTWATCH_LOGS_METRICS_PORT, else $AGENTWATCH_METRICS_PORT; "
                   "unset: no endpoint; 0: any free port)")
    add_run_bounds(r)
    r.set_defaults(func=cmd_run, precheck=_precheck)
