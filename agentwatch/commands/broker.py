"""``agentwatch broker start|stop|status``: a real local Apache Kafka for development and demos.

``start`` prints ``KAFKA_BOOTSTRAP_SERVERS=host:port`` on stdout (progress goes to stderr), so
``export $(agentwatch broker start)`` points the current shell at the broker.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agentwatch.broker import daemon
from agentwatch.broker.errors import BrokerError, with_tail
from agentwatch.broker.launcher import LocalKafka
from agentwatch.config import Settings
from agentwatch.kafka_log import quiet_admin

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "broker", help="run a local Apache Kafka broker (single node, KRaft, 127.0.0.1)",
        description="Run a real Apache Kafka broker (pinned version, jars fetched once from Maven Central with "
        "`mvn` and cached under $AGENTWATCH_HOME, default ~/.cache/agentwatch). Needs Java 17+. The broker listens "
        "on 127.0.0.1 only, has topic auto-creation off (create topics with `agentwatch topics create`) and keeps "
        "its data across restarts.")
    sub = parser.add_subparsers(dest="broker_action", metavar="ACTION", required=True)

    start = sub.add_parser("start", help="start the broker in the background (or in the foreground)",
                           description="Start the broker and wait until it answers. Prints "
                           "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT on stdout. Does nothing if it already runs.")
    start.add_argument("--port", type=int, help="client port (default: the port of KAFKA_BOOTSTRAP_SERVERS when "
                       f"that is a loopback address, else {daemon.DEFAULT_PORT})")
    start.add_argument("--data-dir", type=Path, help="log directory, kept across restarts "
                       "(default: $AGENTWATCH_HOME/broker)")
    start.add_argument("--foreground", action="store_true",
                       help="stay attached and stop the broker on Ctrl-C or SIGTERM")
    start.set_defaults(func=_start)

    stop = sub.add_parser("stop", help="stop the broker started by `broker start`",
                          description="Stop the broker (SIGTERM, SIGKILL after --timeout seconds).")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait before SIGKILL (default 30)")
    stop.set_defaults(func=_stop)

    status = sub.add_parser("status", help="say whether the broker runs and answers",
                            description="Exit status 0 when the broker runs and answers a metadata request, "
                            "1 otherwise.")
    status.set_defaults(func=_status)
    for p in (stop, status):
        p.add_argument("--data-dir", type=Path, help="the data directory of the broker meant; brokers are told apart "
                       "by it (default: $AGENTWATCH_HOME/broker)")


def _data_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return (getattr(args, "data_dir", None) or daemon.default_data_dir(settings.home)).resolve()


def default_port(settings: Settings) -> int:
    """The port of the first bootstrap server when it is on this machine, so clients and broker agree."""
    first = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return int(port) if host in LOOPBACK and port.isdigit() else daemon.DEFAULT_PORT


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _start(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.foreground:
            return _run_foreground(settings.home, args.port or default_port(settings), _data_dir(args, settings))
        record, started = daemon.start(settings.home, args.port, args.data_dir, _progress,
                                       default_port=default_port(settings))
    except BrokerError as exc:
        print(f"agentwatch broker start: {exc}", file=sys.stderr)
        return 1
    verb = "started" if started else "already running:"
    _progress(f"{verb} Kafka {record.kafka_version} on {record.bootstrap_servers} (pid {record.pid}); "
              f"data {record.data_dir}; log {record.log_path}")
    print(f"KAFKA_BOOTSTRAP_SERVERS={record.bootstrap_servers}", flush=True)
    return 0


def _run_foreground(home: Path, port: int, data_dir: Path) -> int:
    current = daemon.running(data_dir)
    if current is not None:
        raise BrokerError(f"a local broker already runs on {current.bootstrap_servers} (pid {current.pid})")
    kafka = LocalKafka(home, port=port, data_dir=data_dir, progress=_progress)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with kafka:
            daemon.save(data_dir, daemon.record_for(kafka, foreground=True))
            _progress(f"Kafka {kafka.kafka_version} on {kafka.bootstrap_servers} (pid {kafka.pid}); "
                      f"log {kafka.log_path}; Ctrl-C stops it")
            print(f"KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}", flush=True)
            try:
                while kafka.running():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                _progress("stopping Kafka")
                return 0
            code = kafka.process.returncode if kafka.process else None
            if code in (0, 143, -signal.SIGTERM):  # stopped from elsewhere (`agentwatch broker stop`)
                _progress("Kafka was stopped")
                return 0
            _progress(with_tail(f"Kafka exited with code {code}", kafka.log_path))
            return 1
    finally:
        daemon.clear(data_dir)
        signal.signal(signal.SIGTERM, previous)


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    data_dir = _data_dir(args, settings)
    record = daemon.stop(data_dir, timeout=args.timeout)
    if record is None:
        print(f"no local broker is running with data directory {data_dir}", file=sys.stderr)
    else:
        print(f"stopped Kafka on {record.bootstrap_servers} (pid {record.pid})", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    record = daemon.running(_data_dir(args, settings))
    if record is None:
        print(f"not running (data directory {_data_dir(args, settings)})")
        return 1
    try:
        md = AdminClient(quiet_admin({"bootstrap.servers": record.bootstrap_servers})).list_topics(timeout=5)
        answer = f"answering, {len([t for t in md.topics if not t.startswith('__')])} topics"
        ok = True
    except KafkaException as exc:
        answer, ok = f"NOT answering ({exc})", False
    uptime = time.time() - record.started_at
    mode = "foreground" if record.foreground else "background"
    print(f"running ({mode}): Kafka {record.kafka_version} on {record.bootstrap_servers}, pid {record.pid}, "
          f"up {uptime:.0f}s, {answer}\n  data {record.data_dir}\n  log  {record.log_path}")
    print(f"KAFKA_BOOTSTRAP_SERVERS={record.bootstrap_servers}")
    return 0 if ok else 1
