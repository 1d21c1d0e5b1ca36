"""Agentao's logger taken over (issue 10, item 4): a real Agentao agent against the fake OpenAI server logs through
AgentaoLogBridge; its records travel as ``log`` events (scrubbed by the producer's normaliser, rate-limited, never
raising into the agent), land in the tenant's log file, and ``agentao.log`` is not written. The worker counts log
events as events of their type and nothing else."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from agentao import Agentao
from fakes.openai_server import FakeOpenAIServer, ToolCall, text_reply, tool_reply, usage

from producers.agentao_bridge import AgentaoBridge, AgentaoLogBridge
from producers.normalize import EventNormalizer
from producers.scrub import Scrubber
from producers.stamp import Stamper
from schemas.codec import AvroCodec
from schemas.redaction import TRUNCATION_MARKER
from sinks.logs_store import LogWriter
from streams.ingest import Ingest

MODEL = "fake-model"
SECRET = "sk-proj-" + "Qq1Ww2Ee3Rr4Tt5Yy6Uu" * 2
US = 1_000_000


class CollectingPublisher:
    def __init__(self, accept: bool = True) -> None:
        self.events: list[dict[str, Any]] = []
        self.accept = accept
        self._lock = threading.Lock()

    def publish(self, event: dict[str, Any]) -> bool:
        with self._lock:
            self.events.append(event)
        return self.accept


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def through_the_pipeline(events: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """What the publisher (scrubber), Kafka (Avro) and ``logs run`` make of the events: the lines written."""
    normalizer, codec = EventNormalizer(scrubber=Scrubber()), AvroCodec()
    with_positions = []
    for offset, e in enumerate(events):
        clean, _status = normalizer.normalize(e)
        assert clean is not None
        (decoded,) = codec.decode(codec.encode_event(clean)).events
        with_positions.append((decoded, (0, offset, 0)))
    writer = LogWriter(root, fsync=False)
    for decoded, pos in with_positions:
        writer.add(decoded, pos)
    writer.close()
    out = []
    for path in sorted(root.rglob("*.jsonl")):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


def test_a_real_agents_log_lands_in_the_tenant_log_and_agentao_log_is_not_written(tmp_path: Path) -> None:
    publisher = CollectingPublisher()
    bridge = AgentaoBridge(publisher, tenant="acme", user_id="u-1", stamper=Stamper(tenant="acme"))
    logs = AgentaoLogBridge(bridge, rate=1000, burst=1000)
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "notes.txt").write_text("alpha\n")
    with FakeOpenAIServer(model=MODEL) as srv:
        srv.enqueue(tool_reply(ToolCall("read_file", {"file_path": "notes.txt", "note": f"key {SECRET}"}),
                               usage=usage(100, 10)),
                    text_reply("Done.", usage=usage(120, 5)))
        agent = Agentao(api_key="sk-fake", base_url=srv.base_url, model=MODEL, working_directory=wd,
                        transport=bridge.transport(), logger=logs.logger)
        try:
            bridge.attach(agent)
            assert agent.chat(f"read notes, my key is {SECRET}") == "Done."
        finally:
            agent.close()
            logs.close()
            bridge.close()
    assert not (wd / "agentao.log").exists()
    assert publisher.events[0]["type"] == "session_start" and publisher.events[0]["seq"] == 1
    log_events = [e for e in publisher.events if e["type"] == "log"]
    assert log_events and logs.stats()["emitted"] == len(log_events) and logs.stats()["errors"] == 0
    assert any(SECRET in json.dumps(e["payload"]) for e in log_events)  # Agentao logged the raw request...
    lines = through_the_pipeline(publisher.events, tmp_path / "logs")
    raw = (json.dumps(lines))
    assert SECRET not in raw  # ...and neither the log records nor the tool arguments reach the files with it
    logged = [r for r in lines if r["event_type"] == "log"]
    assert len(logged) == len(log_events)
    assert any("LLM REQUEST" in r["data"]["message"] for r in logged)
    assert {r["tenant_id"] for r in lines} == {"acme"} and {r["session_id"] for r in lines} == {agent._session_id}
    assert all(r["data"]["logger"] == logs.logger.name and r["level"] == "info" for r in logged)
    tool = next(r for r in lines if r["event_type"] == "tool_start")
    assert "[REDACTED:" in tool["data"]["args"]["note"]


def test_without_the_bridge_agentao_writes_its_own_log(tmp_path: Path) -> None:
    """The counterpart, so the test above can fail: Agentao given no logger creates ``<wd>/agentao.log``."""
    pkg = logging.getLogger("agentao")
    before, level = list(pkg.handlers), pkg.level
    wd = tmp_path / "wd"
    wd.mkdir()
    agent = Agentao(api_key="sk-fake", base_url="http://127.0.0.1:9/v1", model=MODEL, working_directory=wd)
    try:
        assert (wd / "agentao.log").exists()
    finally:
        agent.close()
        for h in list(pkg.handlers):
            if h not in before:
                pkg.removeHandler(h)
                h.close()
        pkg.setLevel(level)


def started_bridge(publisher: Any) -> AgentaoBridge:
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"), defer_payload=False)
    bridge.start()
    return bridge


def test_token_bucket_suppresses_counts_and_summarises() -> None:
    publisher, clock = CollectingPublisher(), Clock()
    logs = AgentaoLogBridge(started_bridge(publisher), rate=1.0, burst=3, clock=clock)
    for i in range(10):
        logs.logger.info("burst %d", i)
    assert logs.stats() == {"records": 10, "emitted": 3, "suppressed": 7, "errors": 0}
    clock.t = 2.0
    logs.logger.warning("after the burst")
    last = json.loads(publisher.events[-1]["payload"])
    assert (last["message"], last["level"], last["suppressed"]) == ("after the burst", "WARNING", 7)
    for _ in range(5):
        logs.logger.info("again")
    logs.close()
    summary = json.loads(publisher.events[-1]["payload"])
    assert summary["suppressed"] == 4 and "suppressed by the rate limit" in summary["message"]
    assert [e["seq"] for e in publisher.events] == list(range(1, len(publisher.events) + 1))


def test_never_raises_into_the_agent_and_counts_failures() -> None:
    class Exploding:
        def publish(self, event: dict[str, Any]) -> bool:
            raise RuntimeError("broker gone")

    logs = AgentaoLogBridge(started_bridge(Exploding()), rate=100, burst=100)
    logs.logger.info("a record")
    logs.logger.info("bad format %d", "not a number")
    try:
        raise ValueError("inside")
    except ValueError:
        logs.logger.exception("with a traceback")
    assert logs.stats()["errors"] == 3 and logs.stats()["records"] == 3

    publisher = CollectingPublisher()
    logs = AgentaoLogBridge(started_bridge(publisher), rate=100, burst=100, max_message_chars=100)
    logs.logger.info("bad format %d", "not a number")
    logs.logger.info("x" * 10_000)
    try:
        raise ValueError("inside")
    except ValueError:
        logs.logger.exception("with a traceback")
    bad, long, exc = (json.loads(e["payload"]) for e in publisher.events[1:])
    assert "TypeError" in bad["message"]
    assert len(long["message"]) <= 100 + len(TRUNCATION_MARKER) and TRUNCATION_MARKER in long["message"]
    assert exc["exc_type"] == "ValueError" and exc["level"] == "ERROR"


def test_records_before_the_session_starts_wait_for_it() -> None:
    publisher = CollectingPublisher()
    bridge = AgentaoBridge(publisher, tenant="t", session_id="s", stamper=Stamper(tenant="t"), defer_payload=False)
    logs = AgentaoLogBridge(bridge, max_early=2)
    for i in range(3):
        logs.logger.info("early %d", i)  # while Agentao is being built
    assert publisher.events == [] and logs.stats()["suppressed"] == 1
    bridge.start()
    logs.logger.info("later")
    assert [e["type"] for e in publisher.events] == ["session_start", "log", "log", "log"]
    assert [json.loads(e["payload"])["message"] for e in publisher.events[1:]] == ["early 0", "early 1", "later"]


def test_capture_package_takes_agentaos_module_loggers_and_close_restores() -> None:
    publisher = CollectingPublisher()
    logs = AgentaoLogBridge(started_bridge(publisher), rate=100, burst=100)
    pkg = logging.getLogger("agentao")
    level = pkg.level
    logs.capture_package()
    logging.getLogger("agentao.mcp.client").info("MCP server 'files' started")
    logging.getLogger("agentao.mcp.client").debug("below the captured level")
    logs.close()
    logging.getLogger("agentao.mcp.client").info("after close")
    messages = [json.loads(e["payload"])["message"] for e in publisher.events if e["type"] == "log"]
    assert messages == ["MCP server 'files' started"]
    assert logs not in pkg.handlers and pkg.level == level


def test_the_worker_counts_log_events_as_events_of_their_type_and_nothing_else() -> None:
    codec, stage = AvroCodec(), Ingest(AvroCodec(), window_s=60, grace_s=10, max_future_s=None)
    t0 = 1_767_225_600 * US

    def event(t_s: float, type_: str, **kw: Any) -> dict[str, Any]:
        return {"event_id": uuid.uuid4().hex, "event_time": t0 + int(t_s * US), "producer_time": t0 + int(t_s * US),
                "tenant": "acme", "session_id": "s", "seq": 1, "type": type_, **kw}

    batch = [event(1, "log", payload=json.dumps({"logger": "agentao", "level": "ERROR", "message": "boom"})),
             event(2, "log", status="error"), event(3, "turn_end", status="ok", duration_ms=5)]
    out = stage.handle(0, 0, codec.encode_batch("p", 1, t0, batch))
    assert out.dead_letter is None and out.folded == 3 and not out.rejected
    closed = stage.handle(0, 1, codec.encode_event(event(200, "turn_begin")))
    (partial,) = [p for p in closed.partials if p.record["window_start_us"] == t0]
    rec = partial.record
    assert rec["events"] == 3 and rec["events_by_type"] == {"log": 2, "turn_end": 1}
    assert rec["turns"] == 1 and rec["tool_calls"] == 0 and rec["llm_calls"] == 0
