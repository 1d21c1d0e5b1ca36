"""A real OpenTelemetry backend: an agent session's events go through `agentwatch traces run` into Arize Phoenix
(started here, SQLite in a temporary directory), and the span tree is read back from Phoenix's REST API.

Phoenix lives in its own virtualenv (it pins many packages): ``.ci/phoenix-venv`` makes ``.venv-phoenix`` (or
``$AGENTWATCH_PHOENIX_VENV``). Without it these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_traces_kafka import publish
from trace_session import HOST_SPAN_ID, HOST_TRACE_ID, crafted_session

from agentwatch.cli import main

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("AGENTWATCH_PHOENIX_VENV") or ROOT / ".venv-phoenix")
PHOENIX = VENV / "bin" / "phoenix"

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not PHOENIX.exists(), reason=f"Arize Phoenix is not installed at {VENV} (run .ci/phoenix-venv "
                       "to make its own venv, or set AGENTWATCH_PHOENIX_VENV)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``phoenix serve`` on free ports with its own working dir; its base URL."""
    work = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(work), "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(_free_port())}
    log = (work / "phoenix.log").open("wb")
    proc = subprocess.Popen([str(PHOENIX), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"{base}/v1/projects")
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = (work / "phoenix.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"phoenix serve did not come up (exit {proc.poll()}):\n{tail}")
                time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _spans(base: str, project: str, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The project's spans once ``want`` have arrived (Phoenix ingests asynchronously)."""
    deadline = time.monotonic() + timeout
    data: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            data = _get(f"{base}/v1/projects/{project}/spans?limit=1000")["data"]
        except urllib.error.HTTPError as exc:  # the project appears with its first span
            if exc.code != 404:
                raise
        if len(data) >= want:
            return data
        time.sleep(0.5)
    return data


def test_a_session_lands_in_phoenix_as_one_trace_under_the_hosts_span(phoenix, kafka_bootstrap, make_topic,
                                                                      monkeypatch, capsys):
    topic = make_topic(partitions=1)
    publish(kafka_bootstrap, topic, crafted_session())
    project = f"agentwatch-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix)  # + /v1/traces, as the OTLP spec says
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project}")
    code = main(["traces", "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--until-end",
                 "--group", f"traces-{topic}"])
    assert code == 0, capsys.readouterr().err

    spans = _spans(phoenix, project, 7)
    assert sorted(s["name"] for s in spans) == sorted([
        "invoke_agent support", "chat gpt-5-mini", "chat gpt-5-mini", "execute_tool run_shell_command",
        "execute_tool generalist", "invoke_agent generalist", "execute_tool read_file"])
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert {s["context"]["trace_id"] for s in spans} == {HOST_TRACE_ID}, "one trace with the host's request"
    root = next(s for s in spans if s["name"] == "invoke_agent support")
    assert root["parent_id"] == HOST_SPAN_ID
    assert root["attributes"]["gen_ai.conversation.id"] == "sess-trace-1"

    def parent(s: dict[str, Any]) -> str:
        return by_id[s["parent_id"]]["name"]

    for s in spans:
        if s is not root:
            assert s["parent_id"] in by_id, f"{s['name']} hangs on a span Phoenix has"
    assert {parent(s) for s in spans if s["name"] == "chat gpt-5-mini"} == {"invoke_agent support"}
    assert parent(next(s for s in spans if s["name"] == "invoke_agent generalist")) == "execute_tool generalist"
    assert parent(next(s for s in spans if s["name"] == "execute_tool read_file")) == "invoke_agent generalist"

    chats = sorted((s for s in spans if s["name"] == "chat gpt-5-mini"), key=lambda s: s["start_time"])
    assert [c["attributes"]["gen_ai.usage.input_tokens"] for c in chats] == [1200, 2000]
    assert [c["attributes"]["gen_ai.usage.output_tokens"] for c in chats] == [80, 120]
    assert chats[0]["attributes"]["gen_ai.request.model"] == "gpt-5-mini"
    assert [e["name"] for e in chats[0]["events"]] == ["gen_ai.retry", "gen_ai.retry"]

    shell = next(s for s in spans if s["name"] == "execute_tool run_shell_command")
    assert shell["status_code"] == "ERROR" and shell["attributes"]["error.type"] == "CalledProcessError"
    assert shell["status_message"] == "exit status 2"
    assert [e["name"] for e in shell["events"]] == ["agentwatch.confirmation.requested",
                                                    "agentwatch.confirmation.resolved"]
    assert root["status_code"] == "OK"
