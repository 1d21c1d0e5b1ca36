"""The long-lived local broker behind ``agentwatch broker start|stop|status``.

Unlike a test's throw-away broker it keeps its data dir and port across restarts and outlives the command that
started it. Its state lives in its data directory (default ``$AGENTWATCH_HOME/broker``): ``broker.pid`` holds its
pid (for shell tools) and ``broker.json`` its bootstrap address, data dir and log, so any later command, in any
shell, can find, check and stop it, and two brokers with different data directories under one ``AGENTWATCH_HOME``
(two users, two checkouts) never see, nor stop, each other.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agentwatch.broker.errors import BrokerError
from agentwatch.broker.launcher import LocalKafka, Progress, is_kafka_process, terminate

PID_FILE = "broker.pid"
RECORD_FILE = "broker.json"
DEFAULT_PORT = 9092


@dataclass(frozen=True)
class BrokerRecord:
    pid: int
    bootstrap_servers: str
    data_dir: str
    log_path: str
    kafka_version: str
    started_at: float
    foreground: bool = False

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.rsplit(":", 1)[1])


def default_data_dir(home: Path) -> Path:
    return home / "broker"


def load(data_dir: Path) -> BrokerRecord | None:
    try:
        return BrokerRecord(**json.loads((data_dir / RECORD_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save(data_dir: Path, record: BrokerRecord) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(data_dir / RECORD_FILE)
    (data_dir / PID_FILE).write_text(f"{record.pid}\n")


def clear(data_dir: Path) -> None:
    for name in (RECORD_FILE, PID_FILE):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()


def running(data_dir: Path) -> BrokerRecord | None:
    """The broker recorded in ``data_dir`` if its JVM is still alive (a stale record is removed)."""
    record = load(data_dir)
    if record is None:
        return None
    if is_kafka_process(record.pid, must_contain=record.data_dir):
        return record
    clear(data_dir)
    return None


def record_for(kafka: LocalKafka, foreground: bool = False) -> BrokerRecord:
    if kafka.pid is None or kafka.data_dir is None:
        raise BrokerError("the broker is not running")
    return BrokerRecord(pid=kafka.pid, bootstrap_servers=kafka.bootstrap_servers, data_dir=str(kafka.data_dir),
                        log_path=str(kafka.log_path), kafka_version=kafka.kafka_version, started_at=time.time(),
                        foreground=foreground)


def start(home: Path, port: int | None = None, data_dir: Path | None = None, progress: Progress | None = None,
          default_port: int = DEFAULT_PORT) -> tuple[BrokerRecord, bool]:
    """Start the detached broker unless it already runs; returns ``(record, started_now)``.

    ``port`` is a demand (a running broker on another port is an error); ``default_port`` only applies to a new one.
    """
    data_dir = (data_dir or default_data_dir(home)).resolve()
    current = running(data_dir)
    if current is not None:
        if port is not None and port != current.port:
            raise BrokerError(f"a local broker already runs on {current.bootstrap_servers} (pid {current.pid}); "
                              "`agentwatch broker stop` it first to use another port")
        return current, False
    kafka = LocalKafka(home, port=port or default_port, data_dir=data_dir, detach=True, progress=progress)
    kafka.start()
    record = record_for(kafka)
    save(data_dir, record)
    kafka.release()
    return record, True


def stop(data_dir: Path, timeout: float = 30.0) -> BrokerRecord | None:
    """Stop the broker recorded in ``data_dir`` (SIGTERM, SIGKILL after ``timeout``); returns it, or None if none
    was running."""
    record = running(data_dir)
    if record is None:
        return None
    terminate(record.pid, timeout)
    clear(data_dir)
    return record
