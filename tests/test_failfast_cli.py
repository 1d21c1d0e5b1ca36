"""Acceptance (issue 11): every long-running command, run as a subprocess against a closed Kafka port and against a
taken metrics port, ends quickly with exit status 2 and one or two traceback-free lines on stderr saying what is
wrong and what to do. No broker is needed: the closed-port case fails the start-up check, and the taken-port case
is checked before Kafka is waited for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"AGENTWATCH_AUDIT_HMAC_KEY": "0123456789abcdef0123456789", "AGENTWATCH_AUDIT_ANCHORS": "none"}

# each long-running command, with the flags it needs to get as far as Kafka; "{port}" is its metrics port
COMMANDS = {
    "worker": ["worker", "--metrics-port", "{port}"],
    "exporter": ["exporter", "--port", "{port}"],
    "alerts deliver": ["alerts", "deliver", "--console", "--metrics-port", "{port}"],
    "replay run": ["replay", "run", "--metrics-port", "{port}"],
    "audit run": ["audit", "run", "--insecure-plaintext", "--metrics-port", "{port}"],
    "traces run": ["traces", "run", "--metrics-port", "{port}"],
    "logs run": ["logs", "run", "--metrics-port", "{port}"],
}
KAFKA_TIMEOUT_S = 2.0
# the interpreter start and agentwatch's imports take ~1-2 s on this machine, more under load
SLACK_S = 8.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run(argv: list[str], home: Path, extra_env: dict[str, str] | None = None) -> tuple[int, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "AGENTWATCH_"))}
    env.update(PYTHONPATH=str(ROOT), AGENTWATCH_HOME=str(home), **KEYS, **(extra_env or {}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentwatch", *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, time.monotonic() - t0, proc.stderr


def assert_short_and_clean(stderr: str, *expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, stderr
    assert "Traceback" not in stderr and "%3|" not in stderr, stderr  # no Python trace, no raw librdkafka line
    for text in expected:
        assert text in lines[-1], stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_broker_at_the_address(name, tmp_path):
    kafka = f"127.0.0.1:{closed_port()}"
    argv = [a.replace("{port}", "0") for a in COMMANDS[name]]
    code, elapsed, stderr = run([*argv, "--bootstrap-servers", kafka, "--kafka-timeout", str(KAFKA_TIMEOUT_S)],
                                tmp_path)
    print(f"{name}: exit {code} after {elapsed:.1f} s: {stderr.strip()}")
    assert code == 2
    assert KAFKA_TIMEOUT_S <= elapsed < KAFKA_TIMEOUT_S + SLACK_S
    assert_short_and_clean(stderr, f"agentwatch {name}: no Kafka broker at {kafka} within 2 s (connection refused)",
                           "agentwatch broker start")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_metrics_port_taken(name, tmp_path, taken_port):
    argv = [a.replace("{port}", str(taken_port)) for a in COMMANDS[name]]
    code, elapsed, stderr = run([*argv, "--bootstrap-servers", f"127.0.0.1:{closed_port()}"], tmp_path)
    print(f"{name}: exit {code} after {elapsed:.1f} s: {stderr.strip()}")
    assert code == 2
    assert elapsed < SLACK_S  # before any Kafka wait
    flag = "--port" if name == "exporter" else "--metrics-port"
    assert_short_and_clean(stderr, f"agentwatch {name}: port {taken_port} on 127.0.0.1 is already in use",
                           f"choose another with {flag}")


def test_the_start_up_timeout_comes_from_the_environment(tmp_path):
    code, elapsed, stderr = run(["replay", "run", "--bootstrap-servers", f"127.0.0.1:{closed_port()}"], tmp_path,
                                {"AGENTWATCH_KAFKA_STARTUP_TIMEOUT": "1"})
    assert code == 2 and 1.0 <= elapsed < 1.0 + SLACK_S
    assert_short_and_clean(stderr, "within 1 s")


def test_verbose_shows_the_traceback(tmp_path, taken_port):
    code, _elapsed, stderr = run(["-v", "replay", "run", "--metrics-port", str(taken_port)], tmp_path)
    assert code == 2 and "Traceback" in stderr and "already in use" in stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name,argv,expected", [
    ("replay run", ["replay", "run", "--dir", "{file}/replays"], "the replay archive"),
    ("audit run", ["audit", "run", "--insecure-plaintext", "--dir", "{file}/audit"], "the audit directory"),
])
def test_unwritable_directories(name, argv, expected, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _elapsed, stderr = run([a.replace("{file}", str(blocker)) for a in argv], tmp_path)
    assert code == 2
    assert_short_and_clean(stderr, f"agentwatch {name}: {expected}", "is not writable", "--dir")


def test_a_missing_audit_key_is_said_before_waiting_for_kafka(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "AGENTWATCH_"))}
    env.update(PYTHONPATH=str(ROOT), AGENTWATCH_HOME=str(tmp_path))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentwatch", "audit", "run", "--bootstrap-servers",
                           f"127.0.0.1:{closed_port()}"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and time.monotonic() - t0 < SLACK_S
    assert_short_and_clean(proc.stderr, "set AGENTWATCH_AUDIT_HMAC_KEY")


def test_broker_module_help_prints_help_and_starts_nothing():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentwatch.broker", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m agentwatch.broker")
    assert proc.stderr == "" and time.monotonic() - t0 < SLACK_S


def test_simulate_without_a_broker_ends_in_one_line(tmp_path):
    """simulate publishes, so it checks for a broker first (it used to print librdkafka's retry lines for 30 s and
    end with a metadata error, exit 1)."""
    kafka = f"127.0.0.1:{closed_port()}"
    code, elapsed, stderr = run(["simulate", "--duration", "30s", "--bootstrap-servers", kafka, "--kafka-timeout",
                                 str(KAFKA_TIMEOUT_S)], tmp_path)
    print(f"simulate: exit {code} after {elapsed:.1f} s: {stderr.strip()}")
    assert code == 2
    assert elapsed < KAFKA_TIMEOUT_S + SLACK_S
    assert_short_and_clean(stderr, f"agentwatch simulate: no Kafka broker at {kafka}")
    assert not (tmp_path / "simulate" / "truth.json").exists()  # nothing generated for a run that cannot publish


def test_simulate_dry_run_needs_no_broker(tmp_path):
    kafka = f"127.0.0.1:{closed_port()}"
    code, _, stderr = run(["simulate", "--dry-run", "--duration", "30s", "--tenants", "2", "-q",
                           "--bootstrap-servers", kafka, "--kafka-timeout", "1"], tmp_path)
    assert code == 0, stderr
    assert (tmp_path / "simulate" / "truth.json").exists()


def test_demo_with_an_unreachable_configured_broker_ends_in_one_line(tmp_path):
    """With KAFKA_BOOTSTRAP_SERVERS set the demo uses that broker instead of starting one: check it answers."""
    kafka = f"127.0.0.1:{closed_port()}"
    code, elapsed, stderr = run(["demo", "--workdir", str(tmp_path / "demo")], tmp_path,
                                {"KAFKA_BOOTSTRAP_SERVERS": kafka, "AGENTWATCH_KAFKA_STARTUP_TIMEOUT": "2"})
    print(f"demo: exit {code} after {elapsed:.1f} s: {stderr.strip()}")
    assert code == 2
    assert elapsed < KAFKA_TIMEOUT_S + SLACK_S
    assert "Traceback" not in stderr and "%3|" not in stderr, stderr
    assert f"agentwatch demo: no Kafka broker at {kafka}" in stderr.strip().splitlines()[-1], stderr
