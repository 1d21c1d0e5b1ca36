"""The long-lived local broker behind ``agentwatch broker start|stop|status``.

Unlike a test's throw-away broker it keeps its data dir and port across restarts and outlives the command that
started it. ``<home>/broker.pid`` holds its pid (for shell tools) and ``<home>/broker.json`` its bootstrap address,
data dir and log, so any later command, in any shell, can find, check and stop it.
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


def load(home: Path) -> BrokerRecord | None:
    try:
        return BrokerRecord(**json.loads((home / RECORD_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save(home: Path, record: BrokerRecord) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(home / RECORD_FILE)
    (home / PID_FILE).write_text(f"{record.pid}\n")


def clear(home: Path) -> None:
    for name in (RECORD_FILE, PID_FILE):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()


def running(home: Path) -> BrokerRecord | None:
    """The recorded broker if its JVM is still alive (a stale record is removed)."""
    record = load(home)
    if record is None:
        return None
    if is_kafka_process(record.pid, must_contain=record.data_dir):
        return record
    clear(home)
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
    current = running(home)
    if current is not None:
        if port is not None and port != current.port:
            raise BrokerError(f"a local broker already runs on {current.bootstrap_servers} (pid {current.pid}); "
                              "`agentwatch broker stop` it first to use another port")
        return current, False
    kafka = LocalKafka(home, port=port or default_port, data_dir=data_dir or default_data_dir(home), detach=True,
                       progress=progress)
    kafka.start()
    record = record_for(kafka)
    save(home, record)
    kafka.release()
    return record, True


def stop(home: Path, timeout: float = 30.0) -> BrokerRecord | None:
    """Stop the recorded broker (SIGTERM, SIGKILL after ``timeout``); returns it, or None if none was running."""
    record = running(home)
    if record is None:
        return None
    terminate(record.pid, timeout)
    clear(home)
    return record
