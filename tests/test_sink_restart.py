"""Durable sinks restarted right after a SIGKILL: ``replay run`` and ``audit run`` with ``--until-end`` must not
fail while the consumer group still waits for the killed member's session to expire (the committed offsets are
then unavailable to the group's own consumer: librdkafka times out with ``_TIMED_OUT``).

Each cycle: a live sink (no ``--until-end``) reads the topic and is killed with SIGKILL while it is a group member;
an ``--until-end`` run is started at once in the same group and must exit 0.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from producers.publisher import EventPublisher
from producers.stamp import Stamper

ROOT = Path(__file__).resolve().parents[1]
KEY = "k" * 32


def publish(bootstrap: str, topic: str, n: int) -> None:
    stamper = Stamper(tenant="restart")
    with EventPublisher(bootstrap, topic, linger_ms=5) as pub:
        for i in range(n):
            ev = stamper.stamp("tool_complete", {"tool_name": "crm_update", "status": "ok", "duration_ms": i},
                               session_id=f"s{i % 12}")
            assert pub.publish(ev)
        assert pub.flush(60)


def sink_cmd(kind: str, bootstrap: str, topic: str, group: str, out: Path, until_end: bool) -> list[str]:
    cmd = [sys.executable, "-m", "agentwatch", kind, "run", "--dir", str(out), "--bootstrap", bootstrap,
           "--topic", topic, "--group", group]
    if kind == "audit":
        cmd += ["--business-tools", "crm_update"]
    return cmd + (["--until-end"] if until_end else [])


@pytest.mark.parametrize("kind", ["replay", "audit"])
def test_an_until_end_run_right_after_a_sigkill_succeeds(kind: str, kafka_bootstrap: str,
                                                         make_topic: Callable[..., str], tmp_path: Path) -> None:
    topic = make_topic(3)
    group = f"restart-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    # the audit log is encrypted at rest by default and publishes its signed heads to a witness (here a file)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTWATCH_AUDIT_HMAC_KEY": KEY,
           "AGENTWATCH_AUDIT_ENC_KEY": base64.b64encode(bytes(range(32))).decode(),
           "AGENTWATCH_AUDIT_ANCHORS": f"file:{tmp_path / 'anchors.jsonl'}"}
    for cycle in range(2):  # each restart waits out the session timeout (~45 s)
        publish(kafka_bootstrap, topic, 600)
        log = tmp_path / f"live-{cycle}.log"
        with open(log, "wb") as log_file:
            live = subprocess.Popen(sink_cmd(kind, kafka_bootstrap, topic, group, out, until_end=False), env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        try:
            time.sleep(6)  # joined the group, read and committed what is there
            assert live.poll() is None, f"the live {kind} sink exited early:\n{log.read_text()[-2000:]}"
        finally:
            live.send_signal(signal.SIGKILL)
            live.wait(10)
        publish(kafka_bootstrap, topic, 100)  # something new for the restarted run to read
        started = time.monotonic()
        done = subprocess.run(sink_cmd(kind, kafka_bootstrap, topic, group, out, until_end=True), env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"cycle {cycle}: rc {done.returncode}\n{done.stderr[-3000:]}"
        assert "Failed to get committed offsets" not in done.stderr
        assert "waiting for the consumer group to assign partitions" in done.stderr  # it says what it waits for
        print(f"{kind} cycle {cycle}: --until-end run after SIGKILL took {time.monotonic() - started:.1f} s")
