"""A long-running command that loses Kafka after start (issue 11): it keeps running and retrying, says so once (and
once more when Kafka is back), shows it as agentwatch_kafka_connected 0 on /metrics, counts the disconnect, and does
not flood stderr with librdkafka's reconnect lines. Uses a broker of its own, stopped and restarted on the same
port and data directory (the session broker must not be stopped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agentwatch.broker.launcher import LocalKafka
from agentwatch.config import Settings
from agentwatch.topics import TopicSpec, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
JAR_HOME = Settings.from_env().home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAST_ERROR: dict[int, str] = {}


def metric(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as exc:
        LAST_ERROR[port] = repr(exc)
        return None
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.kafka
def test_commands_survive_a_broker_outage_and_say_so_once(tmp_path):
    port = free_port()
    data = tmp_path / "broker"
    topic = "outage.events"
    kafka = LocalKafka(JAR_HOME, port=port, data_dir=data)
    kafka.start()
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        ensure_topics(kafka.bootstrap_servers, [TopicSpec(topic, 1, 3_600_000)])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "AGENTWATCH_"))}
        env.update(PYTHONPATH=str(ROOT), AGENTWATCH_HOME=str(tmp_path / "home"), PYTHONFAULTHANDLER="1",
                   KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, AGENTWATCH_EVENTS_TOPIC=topic)
        commands = {"exporter": ["exporter", "--no-dead-letter", "--port"], "replay": ["replay", "run",
                                                                                        "--metrics-port"]}
        for name, argv in commands.items():
            mport = free_port()
            procs[name] = (subprocess.Popen([sys.executable, "-m", "agentwatch", *argv, str(mport)], env=env,
                                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                           mport)
        for name, (proc, mport) in procs.items():
            try:
                wait_for(lambda m=mport: metric(m, "agentwatch_kafka_connected") == 1, 90, f"{name} connected")
            except AssertionError:
                proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack on stderr, for the report
                raise AssertionError(f"{name} never showed connected: {LAST_ERROR.get(mport)}") from None

        kafka.stop()
        outage_start = time.monotonic()
        for name, (_proc, mport) in procs.items():
            wait_for(lambda m=mport: metric(m, "agentwatch_kafka_connected") == 0, 30, f"{name} disconnected")
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_start)))  # 30 s without a broker
        for name, (proc, _mport) in procs.items():
            assert proc.poll() is None, f"{name} exited during the outage"

        kafka = LocalKafka(JAR_HOME, port=port, data_dir=data)
        kafka.start()
        for name, (_proc, mport) in procs.items():
            wait_for(lambda m=mport: metric(m, "agentwatch_kafka_connected") == 1, 60, f"{name} reconnected")
            assert metric(mport, "agentwatch_kafka_disconnects_total") == 1
    finally:
        for proc, _mport in procs.values():
            proc.send_signal(signal.SIGTERM)
        outputs = {name: proc.communicate(timeout=60)[1] for name, (proc, _mport) in procs.items()}
        kafka.stop()
        for name, err in outputs.items():
            print(f"--- {name} (exit {procs[name][0].returncode}) stderr ({len(err.splitlines())} lines):\n{err}")
    for err in outputs.values():
        assert "Traceback" not in err and "%3|" not in err
        assert err.count("Kafka unreachable") == 1 and err.count("reachable again") == 1
        assert len(err.splitlines()) <= 40  # ~40 s without a broker; unthrottled it was ~37 lines a second
