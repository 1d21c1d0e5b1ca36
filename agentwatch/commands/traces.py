"""``agentwatch traces run``: the events topic as OpenTelemetry traces (GenAI conventions), sent over OTLP/HTTP.

Configuration (read by :class:`agentwatch.config.TracesSettings`; flags override): the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_HEADERS`` (and
the SDK's other ``OTEL_EXPORTER_OTLP_*``), ``OTEL_RESOURCE_ATTRIBUTES``, ``AGENTWATCH_TRACES_TURN_TIMEOUT_S``,
``AGENTWATCH_TRACES_SETTLE_S``, ``AGENTWATCH_TRACES_MAX_OPEN_TURNS``. What the spans are: :mod:`sinks.traces`;
delivery: :mod:`sinks.traces_sink`.
"""

from __future__ import annotations

import argparse
import sys

from agentwatch.cli_flags import (
    add_bootstrap_servers,
    add_metrics_port,
    add_run_bounds,
    add_topic,
    positive_seconds,
    whole_number,
)
from agentwatch.config import Settings
from agentwatch.foreground import StatusLine, stop_on_signals


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    try:  # the OpenTelemetry SDK and exporter are the `traces` extra
        from sinks.traces_export import ExportFailed, OtlpSpanSender
    except ImportError as exc:
        print(f"traces: the OpenTelemetry exporter is not installed ({exc.name}); "
              "pip install 'agentwatch[traces]'", file=sys.stderr)
        return 2
    from sinks.traces import AssemblerConfig
    from sinks.traces_sink import TracesSink

    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = settings.traces
    endpoint = args.endpoint or conf.endpoint
    topic = args.topic or settings.topics.events
    assembler = AssemblerConfig(turn_timeout_s=args.turn_timeout or conf.turn_timeout_s,
                                settle_s=args.settle or conf.settle_s,
                                max_open_turns=args.max_open_turns or conf.max_open_turns)
    from agentwatch.kafka_log import with_logger
    from agentwatch.selfmon import start_selfmon

    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    mon = start_selfmon("traces", args.group, [topic], port, bootstrap_servers=settings.bootstrap_servers,
                        listen_addr=settings.listen_addr)
    sender = OtlpSpanSender(endpoint, conf.headers)
    sink = TracesSink(settings.bootstrap_servers, topic, sender, group_id=args.group, config=assembler,
                      export_retry_s=args.export_retry, consumer_config=with_logger())
    print(f"tracing {topic} at {settings.bootstrap_servers} (group {args.group}) to {endpoint}"
          + (f"; metrics on http://{settings.listen_addr}:{mon.port}/metrics" if mon.port is not None else ""),
          file=sys.stderr)
    status = StatusLine()
    failed = False
    with stop_on_signals() as stop:  # Ctrl-C / SIGTERM: finish the batch, export, commit, then exit
        try:
            sink.run(stop=stop, until_end=args.until_end, idle_timeout_s=args.idle_timeout,
                     on_progress=lambda s: status.show(f"{s.line()}; {sink.assembler.open_turns:,} turns open"))
        except ExportFailed as exc:
            failed = True
            print(f"\ntraces: {exc} for {args.export_retry:g} s; stopped without committing: the events are "
                  "re-read after a restart", file=sys.stderr)
        finally:
            sender.close()
            mon.close()
    print(f"\r  {sink.stats.line()}\n  {sink.assembler.stats.line()}", file=sys.stderr)
    if sink.assembler.open_turns:
        print(f"  {sink.assembler.open_turns:,} turn(s) still open: not exported, not committed (the next run "
              "re-reads them)", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "traces",
        help="the events as OpenTelemetry traces (GenAI conventions) over OTLP/HTTP: Phoenix, Jaeger, Tempo, ...",
        description="Rebuild each agent turn as a span tree (invoke_agent > chat {model} / execute_tool {tool} > "
        "sub-agent invoke_agent) and send it to any OTLP/HTTP backend. A turn whose events carry the host's W3C "
        "traceparent joins the host's trace.",
    )
    tsub = p.add_subparsers(dest="traces_command", metavar="ACTION", required=True)
    r = tsub.add_parser(
        "run", help="consume the events topic and export the finished turns",
        description="Consume the events topic in its own consumer group; export each turn's spans once the turn "
        "ends (or times out, marked), then commit offsets, never past a turn still open (at-least-once; span ids "
        "are derived from the events, so a re-export repeats the same spans). Endpoint: --endpoint, else "
        "$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else $OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces, else "
        "http://localhost:4318/v1/traces; headers (API keys): $OTEL_EXPORTER_OTLP_TRACES_HEADERS or "
        "$OTEL_EXPORTER_OTLP_HEADERS as key=value,key2=value2; resource attributes: $OTEL_RESOURCE_ATTRIBUTES "
        "(e.g. openinference.project.name=agents for Phoenix). Stops on Ctrl-C / SIGTERM, or with --until-end / "
        "--idle-timeout.")
    add_bootstrap_servers(r, needs_kafka=True)
    add_topic(r, "events")
    r.add_argument("--group", default="agentwatch-traces", help="consumer group (default: agentwatch-traces)")
    add_metrics_port(r, "traces")
    r.add_argument("--endpoint", metavar="URL", help="OTLP/HTTP traces URL, used as is (default: from the "
                   "OTEL_EXPORTER_OTLP_* variables)")
    add_run_bounds(r)
    r.add_argument("--turn-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                   help="close a turn without turn_end this long after its last event, marked timed out "
                   "(default: $AGENTWATCH_TRACES_TURN_TIMEOUT_S or 600)")
    r.add_argument("--settle", type=positive_seconds, default=None, metavar="SECONDS",
                   help="how long an ended turn with missing events waits for them (default: "
                   "$AGENTWATCH_TRACES_SETTLE_S or 10)")
    r.add_argument("--max-open-turns", type=whole_number(1), default=None, metavar="N",
                   help="turns assembled at once; over it the stalest is closed, marked evicted (default: "
                   "$AGENTWATCH_TRACES_MAX_OPEN_TURNS or 10000)")
    r.add_argument("--export-retry", type=positive_seconds, default=300.0, metavar="SECONDS",
                   help="how long a refused export is retried before the sink stops uncommitted (default 300)")
    r.set_defaults(func=cmd_run)
