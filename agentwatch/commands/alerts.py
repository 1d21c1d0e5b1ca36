"""``agentwatch alerts deliver|tail``: send the alerts topic to Alertmanager-style receivers, or look at it.

``deliver`` runs :class:`sinks.alert_sink.AlertSink` (its own consumer group) with the receivers given as flags:
webhooks (Alertmanager webhook payload, version 4), Alertmanagers (``POST /api/v2/alerts``), a JSONL file, the
console. On start it re-reads the alerts topic from the beginning to rebuild the set of open alerts (the topic is
small: one record per transition, 90-day retention), re-sends that set, then delivers what arrived since its
last commit and re-sends open alerts every ``--resend-interval`` seconds. A new group pages nothing from history
(``--from earliest`` delivers it all). ``tail`` prints transitions, or the open set with ``--active``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import deque
from typing import Any

from agentwatch.cli_flags import add_bootstrap_servers, add_metrics_port, add_run_bounds, add_topic
from agentwatch.config import Settings
from agentwatch.foreground import StatusLine, stop_on_signals
from agentwatch.kafka_log import with_logger
from agentwatch.topic_reading import WholeTopic
from streams.alerts import FIRING, Alert

DEFAULT_GROUP = "agentwatch-alert-delivery"

#: outcome label of agentwatch_alert_deliveries_total -> the ReceiverStats fields it sums (in notifications)
DELIVERY_OUTCOMES = {"delivered": ("delivered",), "retried": ("retries",), "given_up": ("gave_up", "skipped")}


class DeliveryCollector:
    """``agentwatch_alert_deliveries_total{receiver,outcome}`` read from the dispatcher's counters at scrape time
    (they only grow, so they are counters; ``rejected`` (a 4xx, never retried) is counted as given up too: the
    notification did not reach the receiver)."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("agentwatch_alert_deliveries", "Alert notifications per receiver and outcome "
                                     "(delivered, retried attempts, given up)", labels=["receiver", "outcome"])
        for name, rs in sorted(dict(self.stats.receivers).items()):
            for outcome, attrs in DELIVERY_OUTCOMES.items():
                value = sum(getattr(rs, a) for a in attrs) + (rs.rejected if outcome == "given_up" else 0)
                family.add_metric([name, outcome], value)
        yield family

    def describe(self) -> Any:
        return []


# -- deliver ------------------------------------------------------------------------------------------------------


def _named(spec: str, default: str) -> tuple[str, str]:
    """``NAME=URL`` or ``URL``."""
    if "=" in spec and "://" in spec and spec.index("=") < spec.index("://"):
        name, url = spec.split("=", 1)
        return name, url
    return default, spec


def build_receivers(args: argparse.Namespace) -> list[Any]:
    from sinks.receivers import AlertmanagerReceiver, ConsoleReceiver, JsonlReceiver, WebhookReceiver

    receivers: list[Any] = []
    for i, spec in enumerate(args.webhook or []):
        name, url = _named(spec, "webhook" if i == 0 else f"webhook-{i + 1}")
        receivers.append(WebhookReceiver(url, name, external_url=args.external_url, max_alerts=args.max_alerts))
    valid_for = args.ends_at_factor * (args.resend_interval or 0)
    for i, spec in enumerate(args.alertmanager or []):
        name, url = _named(spec, "alertmanager" if i == 0 else f"alertmanager-{i + 1}")
        receivers.append(AlertmanagerReceiver(url, name, valid_for_s=valid_for))
    if args.jsonl:
        receivers.append(JsonlReceiver(args.jsonl, backfill=not args.jsonl_no_backfill,
                                       resends=args.jsonl_resends, external_url=args.external_url))
    if args.console:
        receivers.append(ConsoleReceiver(backfill=args.console_backfill))
    return receivers


def cmd_deliver(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.alert_delivery import Grouper, RetryPolicy
    from sinks.alert_sink import AlertDispatcher, AlertSink, UrllibSender

    if not (args.webhook or args.alertmanager or args.jsonl or args.console):
        print("alerts deliver: give at least one receiver (--webhook, --alertmanager, --jsonl, --console)",
              file=sys.stderr)
        return 2
    if args.alertmanager and not args.resend_interval:
        print("alerts deliver: --alertmanager needs re-sends (--resend-interval > 0): Alertmanager resolves an "
              "alert that is not re-sent before its endsAt", file=sys.stderr)
        return 2
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    topic = args.topic or settings.topics.alerts
    retry = RetryPolicy(max_attempts=args.max_attempts, base_s=args.backoff, max_backoff_s=args.max_backoff,
                        max_elapsed_s=args.max_retry_time)
    group_by = tuple(x.strip() for x in args.group_by.split(",") if x.strip())
    dispatcher = AlertDispatcher(build_receivers(args), grouper=Grouper(group_by), retry=retry,
                                 resend_interval_s=args.resend_interval or None,
                                 sender=UrllibSender(timeout_s=args.timeout))
    sink = AlertSink(settings.bootstrap_servers, topic, dispatcher, group_id=args.group,
                     new_group_start=args.start, resend_on_start=not args.no_resend_on_start,
                     consumer_config=with_logger())
    from prometheus_client import CollectorRegistry

    from agentwatch.selfmon import start_selfmon

    registry = CollectorRegistry()
    registry.register(DeliveryCollector(dispatcher.stats))
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    mon = start_selfmon("alert_delivery", args.group, [topic], port, bootstrap_servers=settings.bootstrap_servers,
                        listen_addr=settings.listen_addr, registry=registry)
    names = ", ".join(f"{r.name} ({type(r).__name__})" for r in dispatcher.receivers)
    print(f"delivering {topic} at {settings.bootstrap_servers} (group {args.group}) to {names}"
          + (f"; metrics on http://{settings.listen_addr}:{mon.port}/metrics" if mon.port is not None else ""),
          file=sys.stderr)
    status = StatusLine(overwrite=False)

    def progress(stats: Any) -> None:
        status.show(stats.line())

    # Ctrl-C / SIGTERM: stop after the current delivery (or mid-retry, uncommitted)
    with stop_on_signals() as stop:
        try:
            stats = sink.run(stop=stop, until_end=args.until_end, idle_timeout_s=args.idle_timeout,
                             on_progress=progress)
        except OSError as exc:  # a recording receiver could not write (disk full): nothing was committed
            print(f"alerts deliver: {exc}; stopped without committing, the batch is re-read after a restart",
                  file=sys.stderr)
            return 1
        finally:
            dispatcher.close()
            mon.close()
    print(f"  {stats.line()}", file=sys.stderr)
    for name, rs in stats.receivers.items():
        print(f"  {name}: {rs.delivered} delivered ({rs.resends} re-sends), {rs.retries} retries, "
              f"{rs.gave_up} gave up, {rs.skipped} skipped, {rs.rejected} rejected"
              + (f"; last error: {rs.last_error}" if rs.last_error else ""), file=sys.stderr)
    if stats.undecodable:
        print("  undecodable: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.undecodable.items())),
              file=sys.stderr)
    lost = sum(rs.gave_up + rs.skipped + rs.rejected for rs in stats.receivers.values())
    if lost and args.until_end:
        # a batch run (a script, a demo, a backfill) must not report success when alerts did not get through
        print(f"alerts deliver: {lost} notification(s) not delivered (given up or rejected); exit status 1",
              file=sys.stderr)
        return 1
    return 0


# -- tail ---------------------------------------------------------------------------------------------------------


def render_alert(alert: Alert) -> str:
    """One line per transition: when, status, name, labels, summary, fingerprint."""
    when = alert.starts_at if alert.status == FIRING else alert.ends_at
    labels = " ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k != "alertname")
    summary = alert.annotations.get("summary", "")
    flag = "  [backfill]" if alert.backfill else ""
    return f"{when}  {alert.status.upper():<8}  {alert.alertname}  {labels}  {summary}  fp={alert.fingerprint}{flag}"


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Consumer, KafkaError

    from schemas.codec import DecodeError
    from sinks.alert_delivery import ActiveAlerts
    from streams.alerts import AlertCodec

    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    topic = args.topic or settings.topics.alerts
    codec = AlertCodec()
    state = ActiveAlerts()
    last: deque[Alert] = deque(maxlen=max(args.lines, 0))
    bad = 0
    consumer = Consumer(with_logger({"bootstrap.servers": settings.bootstrap_servers,
                                     "group.id": f"agentwatch-alerts-tail-{uuid.uuid4().hex[:8]}",
                                     "enable.auto.commit": False, "isolation.level": "read_committed"}))

    def show(alert: Alert) -> None:
        print(json.dumps(alert.to_record(), ensure_ascii=False) if args.json else render_alert(alert), flush=True)

    try:
        try:
            whole = WholeTopic(consumer, topic)
        except RuntimeError as exc:
            print(f"alerts tail: {exc}", file=sys.stderr)
            return 1
        caught_up = False
        idle_since = time.monotonic()
        while True:
            msgs = consumer.consume(500, timeout=0.5)
            for msg in msgs:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        print(f"alerts tail: {msg.error()}", file=sys.stderr)
                    continue
                idle_since = time.monotonic()
                try:
                    alert = codec.decode(msg.value())
                except DecodeError as exc:
                    bad += 1
                    print(f"alerts tail: undecodable record at offset {msg.offset()}: {exc}", file=sys.stderr)
                    continue
                state.apply(alert, msg.partition())
                if args.backfill or not alert.backfill:
                    if caught_up:
                        show(alert)
                    else:
                        last.append(alert)
                whole.saw(msg)
            if not caught_up and (whole.done or time.monotonic() - idle_since > 5.0):
                caught_up = True
                if args.active:
                    for entry in sorted(state.entries(), key=lambda e: e.alert.starts_at_us):
                        if entry.paged or args.backfill:
                            show(entry.alert)
                    print(f"{len(state)} open alert(s)", file=sys.stderr)
                    return 0
                for alert in last:
                    show(alert)
                if not args.follow:
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()


# -- the parser ---------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "alerts", help="deliver alerts to Alertmanager / webhooks / JSONL / console, or tail them",
        description="Send the alerts topic to Alertmanager-style receivers (deliver), or look at it (tail). "
        "deliver runs in its own consumer group with the receivers given as flags: webhooks (Alertmanager webhook "
        "payload, version 4), Alertmanagers (POST /api/v2/alerts), a JSONL file, the console. On start it re-reads "
        "the alerts topic to rebuild the set of open alerts, re-sends that set, then delivers what arrived since "
        "its last commit and re-sends open alerts every --resend-interval seconds. A new group pages nothing from "
        "history (--from earliest delivers it all). tail prints transitions, or the open set with --active.")
    alerts_sub = p.add_subparsers(dest="alerts_command", metavar="ACTION")

    d = alerts_sub.add_parser(
        "deliver", help="consume the alerts topic and deliver notifications to receivers",
        description="Consume the alerts topic in its own consumer group and deliver firing and resolved alerts: "
        "Alertmanager webhook payloads (version 4, grouped by --group-by) to each --webhook, postable alerts to "
        "each --alertmanager's POST /api/v2/alerts (firing alerts with endsAt = now + --ends-at-factor x "
        "--resend-interval, so Alertmanager resolves them if this sink dies), one JSON line per notification "
        "to --jsonl, one human line to the console. Retries connection errors, timeouts, 408, 429 (honouring "
        "Retry-After) and 5xx with exponential backoff and jitter; any other 4xx is logged and counted, not "
        "retried. Offsets are committed after delivery (or after a receiver gave up): at-least-once. Backfill "
        "alerts never page (webhooks, Alertmanager, console); the JSONL file records them with the flag.")
    d.add_argument("--webhook", action="append", metavar="[NAME=]URL",
                   help="an Alertmanager-style webhook receiver (repeatable)")
    d.add_argument("--alertmanager", action="append", metavar="[NAME=]URL",
                   help="an Alertmanager base URL; alerts go to URL/api/v2/alerts (repeatable)")
    d.add_argument("--jsonl", metavar="FILE", help="append one JSON line per notification to FILE")
    d.add_argument("--jsonl-resends", action="store_true", help="also record periodic re-sends in the JSONL file")
    d.add_argument("--jsonl-no-backfill", action="store_true", help="do not record backfill alerts in the JSONL file")
    d.add_argument("--console", action="store_true", help="print one line per notification on stdout")
    d.add_argument("--console-backfill", action="store_true", help="also print backfill notifications")
    d.add_argument("--resend-interval", type=float, default=60.0, metavar="SECONDS",
                   help="re-send open alerts this often (Alertmanager wants 30 s to 3 min; 0 disables; "
                   "default 60)")
    d.add_argument("--ends-at-factor", type=float, default=4.0,
                   help="firing alerts pushed to Alertmanager end this many re-send intervals ahead (default 4, "
                   "as Prometheus)")
    d.add_argument("--no-resend-on-start", action="store_true",
                   help="do not re-send the rebuilt open set right after start")
    d.add_argument("--group-by", default="alertname,tenant",
                   help="labels that group alerts into one webhook notification (default alertname,tenant)")
    d.add_argument("--external-url", default="", help="externalURL in webhook payloads (e.g. a dashboard)")
    d.add_argument("--max-alerts", type=int, default=0,
                   help="at most this many alerts per webhook notification (0: all; the rest is truncatedAlerts)")
    d.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout per attempt, seconds (default 10)")
    d.add_argument("--max-attempts", type=int, default=8, help="attempts per notification before giving up")
    d.add_argument("--backoff", type=float, default=0.5, help="first retry delay, seconds (doubles each retry)")
    d.add_argument("--max-backoff", type=float, default=30.0, help="longest retry delay, seconds")
    d.add_argument("--max-retry-time", type=float, default=120.0,
                   help="give up on a receiver after retrying this long within one delivery, seconds")
    d.add_argument("--group", default=DEFAULT_GROUP, help=f"consumer group (default {DEFAULT_GROUP})")
    d.add_argument("--from", dest="start", choices=("latest", "earliest"), default="latest",
                   help="for a group without committed offsets: 'latest' (default) treats the whole topic as "
                   "already delivered (state only), 'earliest' delivers it all")
    add_bootstrap_servers(d, legacy_alias=True, needs_kafka=True)
    add_topic(d, "alerts")
    add_metrics_port(d, "alert_delivery")
    add_run_bounds(d, until_end_help="stop once what the topic held at start is delivered; exit status 1 if any "
                   "notification was given up on or rejected")
    d.set_defaults(func=cmd_deliver)

    t = alerts_sub.add_parser(
        "tail", help="print the last alert transitions (or the open alerts) from the alerts topic",
        description="Read the alerts topic from the beginning (its own throw-away group, no commits) and print "
        "the last N transitions, then follow new ones with --follow; or, with --active, the alerts that are "
        "open now (the set the delivery sink re-sends).")
    t.add_argument("-n", "--lines", type=int, default=20, help="how many past transitions to print (default 20)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new transitions")
    t.add_argument("--active", action="store_true", help="print the open alerts instead of transitions")
    t.add_argument("--backfill", action="store_true", help="include backfill alerts")
    t.add_argument("--json", action="store_true", help="print alerts-topic records as JSON lines")
    add_bootstrap_servers(t, legacy_alias=True, needs_kafka=True)
    add_topic(t, "alerts")
    t.set_defaults(func=cmd_tail)

    def no_subcommand(args: argparse.Namespace, settings: Settings) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_subcommand)
