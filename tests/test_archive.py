"""The replay archive speaks Agentao's replay format: checked against the real ``agentao`` package.

* The same transport stream is fed to Agentao's own ``ReplayAdapter`` + ``ReplayRecorder`` and, through our bridge,
  the Avro codec and the archive writer, to our archive: the two files hold the same rows (kinds, payloads after
  redaction and truncation, turn structure, footer totals), apart from the documented additions.
* Archive files are read by ``agentao.replay`` (``ReplayReader``, ``list_replays`` / ``find_replay_candidates`` /
  ``open_replay`` on a project root whose ``.agentao/replays`` is the tenant directory) and validate against the
  package's replay-event 1.6 JSON Schema (``agentao.replay.schema.build_event_schema``; the wheel ships no
  ``schemas/replay-event-1.6.json`` file, its generator is the source of truth).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from agentao.host.models import PermissionDecisionEvent, SubagentLifecycleEvent, ToolLifecycleEvent
from agentao.host.replay_projection import HostReplaySink
from agentao.replay import ReplayReader, find_replay_candidates, list_replays, open_replay
from agentao.replay.adapter import ReplayAdapter
from agentao.replay.recorder import ReplayRecorder
from agentao.replay.schema import build_event_schema
from agentao.transport import AgentEvent, EventType

from producers.agentao_bridge import AgentaoBridge
from producers.mapping import fields_from_host, host_event_dump
from producers.simulator import FleetSimulator
from producers.stamp import Stamper
from schemas.codec import AvroCodec
from sinks.archive import REPLAY_KINDS, Row, encode_line, iso_ts, map_event, tenant_dirname
from sinks.archive_store import ArchiveWriter
from sinks.redact import DEFAULT_CAPTURE_FLAGS

SID = "sess-7f3a"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
HEX12 = re.compile(r"^[0-9a-f]{12}$")
AGENTAO_UNSAFE = re.compile(r"[^\w\-]")  # agentao.replay.recorder's file-name sanitiser
OPENAI_KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
AWS_KEY = "AKIA" + "ABCDEFGHIJKLMNOP"


class Collecting:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, event: dict[str, Any]) -> bool:
        self.events.append(event)
        return True


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(build_event_schema("1.6"), format_checker=jsonschema.FormatChecker())


def through_kafka_codec(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a consumer decodes after the publisher encoded the events in batches."""
    codec = AvroCodec()
    out = []
    for i in range(0, len(events), 7):
        out += codec.decode(codec.encode_batch("test-producer", i, 0, events[i:i + 7])).events
    return out


def ev(t: EventType, **data: Any) -> AgentEvent:
    return AgentEvent(t, data)


def script(adapter: ReplayAdapter, bridge: AgentaoBridge, host_sink: HostReplaySink) -> None:
    """Two turns exercising every mirrored kind, caps, split secrets, confirmations, a sub-agent, host events."""
    emit = adapter.emit

    def host(model: Any) -> None:
        bridge.host_observer(model)
        host_sink.record(model)

    emit(ev(EventType.TURN_BEGIN, user_message=f"deploy it, token={OPENAI_KEY[-12:]}x please"))
    emit(ev(EventType.TURN_START))
    emit(ev(EventType.LLM_CALL_STARTED, attempt=1, model="gpt-x", temperature=0.2, max_tokens=None, n_messages=3,
            n_tool_messages=0, n_system_reminder_blocks=1, system_prompt_hash="0123456789abcdef",
            tools_hash="fedcba9876543210", tool_count=4))
    emit(ev(EventType.LLM_CALL_DELTA, attempt=1, delta_start_index=0, total_messages=3,
            added_messages=[{"role": "user", "content": f"my key is {OPENAI_KEY}"}]))
    emit(ev(EventType.THINKING, text="Let me look at the key sk-"))
    emit(ev(EventType.THINKING, text=OPENAI_KEY[3:] + " and then decide."))
    emit(ev(EventType.LLM_TEXT, chunk="I'll run the tests."))
    emit(ev(EventType.LLM_RETRY, retry=1, max_retries=4, delay_s=0.1, reason="status=503"))
    emit(ev(EventType.LLM_CALL_COMPLETED, attempt=1, status="ok", duration_ms=120, model_latency_ms=120,
            first_token_ms=40, first_reasoning_ms=10, error_class=None, error_message=None,
            finish_reason="tool_calls", finish_reason_reported=True, prompt_tokens=100, completion_tokens=20,
            cache_read_tokens=50, cache_creation_tokens=0, reasoning_tokens=5))
    args = {"command": "make test", "description": "run the suite"}
    emit(ev(EventType.TOOL_CONFIRMATION, tool="run_shell_command", args=args, call_id="c1"))
    assert adapter.confirm_tool("run_shell_command", "run", args) is True
    emit(ev(EventType.TOOL_CONFIRMATION, tool="drop_table", args={"table": "users"}, call_id="c2"))
    assert adapter.confirm_tool("drop_table", "drop", {"table": "users"}) is False
    emit(ev(EventType.TURN_START, display_reset=True))
    emit(ev(EventType.TOOL_START, tool="run_shell_command", args=args, call_id="c1"))
    emit(ev(EventType.TOOL_OUTPUT, tool="run_shell_command", chunk="x" * 5000 + f" {AWS_KEY} done", call_id="c1"))
    emit(ev(EventType.TOOL_COMPLETE, tool="run_shell_command", call_id="c1", status="ok", duration_ms=30,
            error=None))
    emit(ev(EventType.TOOL_START, tool="drop_table", args={"table": "users"}, call_id="c2"))
    emit(ev(EventType.TOOL_COMPLETE, tool="drop_table", call_id="c2", status="cancelled", duration_ms=0,
            error="not approved"))
    content = "y" * 3000 + f" password: hunter2hunter2 {AWS_KEY} " + "z" * 9000
    emit(ev(EventType.TOOL_RESULT, tool="run_shell_command", call_id="c1", content=content,
            content_hash="ab" * 32, original_chars=len(content), saved_to_disk=False, disk_path=None, status="ok",
            duration_ms=30, error=None))
    emit(ev(EventType.TOOL_RESULT, tool="drop_table", call_id="c2", content="", content_hash="cd" * 32,
            original_chars=0, saved_to_disk=False, disk_path=None, status="cancelled", duration_ms=0,
            error="not approved"))
    host(PermissionDecisionEvent(session_id=SID, turn_id="rt-1", tool_call_id="c2", tool_name="drop_table",
                                 decision_id="d-1", outcome="prompt", mode="workspace-write", matched_rule=None,
                                 reason="tool requires_confirmation fallback", loaded_sources=["preset:x"],
                                 decided_at="2026-01-01T00:00:01.000Z"))
    host(ToolLifecycleEvent(session_id=SID, turn_id="rt-1", tool_call_id="c2", tool_name="drop_table",
                            phase="failed", started_at="2026-01-01T00:00:01.000Z",
                            completed_at="2026-01-01T00:00:01.500Z", outcome="cancelled", summary="not approved",
                            error_type=None))
    emit(ev(EventType.AGENT_START, agent="generalist", task="find the config", max_turns=10, child_task_id="ct-1"))
    emit(ev(EventType.TOOL_START, tool="[generalist 1/10] read_file", args={"path": "a.py"}, call_id="c3",
            child_task_id="ct-1"))
    emit(ev(EventType.TOOL_COMPLETE, tool="read_file", call_id="c3", status="error", duration_ms=5,
            error="boom", child_task_id="ct-1"))
    emit(ev(EventType.AGENT_END, agent="generalist", state="completed", turns=2, tool_calls=1, tokens=500,
            duration_ms=900, error=None, child_task_id="ct-1"))
    host(SubagentLifecycleEvent(session_id=SID, child_task_id="ct-1", phase="completed", task_summary="sub-agent: g",
                                started_at="2026-01-01T00:00:02.000Z", completed_at="2026-01-01T00:00:03.000Z",
                                usage={"prompt_tokens": 10, "completion_tokens": 2, "cache_read_tokens": 0,
                                       "cache_creation_tokens": 0, "reasoning_tokens": 1}))
    emit(ev(EventType.LLM_CALL_STARTED, attempt=2, model="gpt-x", temperature=None, max_tokens=1000, n_messages=9,
            n_tool_messages=4, n_system_reminder_blocks=0, system_prompt_hash="0123456789abcdef",
            tools_hash="fedcba9876543210", tool_count=4))
    emit(ev(EventType.LLM_CALL_COMPLETED, attempt=2, status="error", duration_ms=80, model_latency_ms=80,
            first_token_ms=None, first_reasoning_ms=None, error_class="InternalServerError",
            error_message="Error code: 500 - " + "e" * 700, finish_reason=None, prompt_tokens=None,
            completion_tokens=None, cache_read_tokens=None, cache_creation_tokens=None, reasoning_tokens=None,
            streamed=True))
    emit(ev(EventType.COMPACTION_STARTED, trigger="auto", kind="full", reason="compression_threshold"))
    emit(ev(EventType.CONTEXT_COMPRESSED, type="full", reason="compression_threshold", pre_msgs=40, post_msgs=8,
            pre_est_tokens=9000, post_est_tokens=2000, duration_ms=300))
    emit(ev(EventType.COMPACTION_SETTLED, trigger="auto", kind="full", reason="compression_threshold",
            status="success", pre_msgs=40, post_msgs=8, pre_tokens_history=8000, post_tokens_history=1500,
            duration_ms=300, detail=None))
    emit(ev(EventType.MEMORY_WRITE, version_before=1, version_after=2, total_entries=3, value="v" * 2500))
    emit(ev(EventType.PLUGIN_HOOK_FIRED, hook_name="PreToolUse", outcome="deny", matched_rule_count=1,
            tool="drop_table", output_preview="o" * 800))
    emit(ev(EventType.SKILL_ACTIVATED, skill="pdf"))
    emit(ev(EventType.IMAGES_REMOVED, reason="model_unsupported", images_removed=2, message_indices=[1, 4]))
    emit(ev(EventType.ERROR, message="runtime hiccup", detail="Traceback: Bearer " + "t" * 30))
    emit(ev(EventType.LLM_TEXT, chunk="Done: tests pass."))
    emit(ev(EventType.TURN_END, final_text="Done: tests pass.", status="ok", error=None, tool_count=3,
            incomplete_reason=None, finish_reason_missing=False))
    emit(ev(EventType.MODEL_CHANGED, old_model="gpt-x", new_model="gpt-y", base_url_changed=False,
            cause="set_model"))
    emit(ev(EventType.TURN_BEGIN, user_message="again"))
    emit(ev(EventType.THINKING, text="hmm"))
    emit(ev(EventType.TURN_END, final_text="Maximum tool call iterations reached.", status="ok", error=None,
            tool_count=12, incomplete_reason="max_iterations", finish_reason_missing=True))


def run_both(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """``(Agentao's rows, our rows, our file)`` for :func:`script`."""
    pub = Collecting()
    bridge = AgentaoBridge(pub, tenant="acme", session_id=SID, defer_payload=False)
    inner = bridge.transport(confirm_tool=lambda name, desc, args: name != "drop_table")
    recorder = ReplayRecorder.create(SID, tmp_path / "agentao", capture_flags=dict(DEFAULT_CAPTURE_FLAGS))
    adapter = ReplayAdapter(inner, recorder)
    host_sink = HostReplaySink(recorder, turn_id_provider=lambda: adapter._turn_id)
    bridge.start()
    recorder.record("session_started", payload={"session_id": SID, "cwd": None, "model": None})
    script(adapter, bridge, host_sink)
    bridge.close()
    recorder.record("session_ended", payload={"session_id": SID})
    recorder.close()
    with ArchiveWriter(tmp_path / "archive") as w:
        for i, e in enumerate(through_kafka_codec(pub.events)):
            w.add(e, (0, i))
    ours = sorted((tmp_path / "archive").rglob("*.jsonl"))
    assert len(ours) == 1
    return ReplayReader(recorder.path).events(), ReplayReader(ours[0]).events(), ours[0]


# Keys our rows add to Agentao's payloads (documented in sinks.archive).
ADDED = {"tool_confirmation_requested": {"call_id"}, "tool_confirmation_resolved": {"call_id", "outcome"},
         "session_started": {"agentao_version"}}
TIMES = {"created_at", "closed_at"}


def test_same_rows_as_agentaos_own_recorder(tmp_path):
    theirs, ours, _ = run_both(tmp_path)
    assert [r["kind"] for r in ours] == [r["kind"] for r in theirs]

    def norm_turns(rows: list[dict[str, Any]]) -> list[tuple[int | None, int | None]]:
        order: dict[str, int] = {}
        out = []
        for r in rows:
            t, p = r["turn_id"], r["parent_turn_id"]
            out.append((order.setdefault(t, len(order)) if t else None, order.setdefault(p, len(order)) if p else None))
        return out

    assert norm_turns(ours) == norm_turns(theirs)
    for a, b in zip(theirs, ours, strict=True):
        kind = a["kind"]
        pa = {k: v for k, v in a["payload"].items() if k not in TIMES and not (kind == "replay_header" and
                                                                                 k == "instance_id")}
        pb = {k: v for k, v in b["payload"].items() if k not in TIMES and k not in ADDED.get(kind, ())
              and not (kind == "replay_header" and k == "instance_id")}
        if kind == "session_started":
            pa, pb = {"session_id": pa["session_id"]}, {"session_id": pb["session_id"]}
        assert pb == pa, kind
        assert b["seq"] == a["seq"]
    footer = ours[-1]["payload"]
    assert footer["redaction_hits"] == {"aws_access_key": 2, "bearer": 1, "kv_secret": 2, "openai_api_key": 2}
    assert footer["truncated_field_hits"] == {"chunk": 1, "content": 1, "output_preview": 1, "value": 1}
    assert footer["event_count"] == len(ours) - 1
    # the split secret: joined pieces, redacted once, as Agentao's adapter does
    thought = next(r for r in ours if r["kind"] == "assistant_thought_chunk")
    assert "[REDACTED:openai_api_key]" in thought["payload"]["text"] and "A1b2" not in thought["payload"]["text"]
    resolved = [r["payload"] for r in ours if r["kind"] == "tool_confirmation_resolved"]
    assert [(p["call_id"], p["approved"], p["outcome"]) for p in resolved] == [("c1", True, "allow"),
                                                                                ("c2", False, "reject")]


def test_archive_files_are_read_by_agentao_and_validate_against_schema_1_6(tmp_path):
    _, _, ours = run_both(tmp_path)
    sim = FleetSimulator(seed=3, tenants=["acme", "globex"], services=1, duration_s=45)
    root = tmp_path / "archive"
    with ArchiveWriter(root) as w:
        for i, e in enumerate(through_kafka_codec(list(sim.events()))):
            w.add(e, (1, i))
    v = validator()
    files = sorted(root.rglob("*.jsonl"))
    assert len(files) > 20
    kinds: Counter[str] = Counter()
    for path in files:
        rows = [json.loads(line) for line in path.read_bytes().splitlines()]
        reader = ReplayReader(path)
        assert reader.events() == rows
        meta = reader.meta()
        assert (meta.session_id, meta.instance_id, meta.malformed_lines, meta.event_count) == \
            (rows[0]["session_id"], rows[0]["instance_id"], 0, len(rows))
        assert path.name == AGENTAO_UNSAFE.sub("_", meta.session_id) + f".{meta.instance_id}.jsonl"
        assert rows[0]["kind"] == "replay_header" and rows[0]["payload"]["schema_version"] == "1.6"
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        for r in rows:
            kinds[r["kind"]] += 1
            errors = [e.message for e in v.iter_errors(r)]
            assert not errors, (path.name, r["kind"], errors[:2])
            assert HEX12.match(r["event_id"]) and HEX12.match(r["instance_id"]) and TS_RE.match(r["ts"])
            assert r["turn_id"] is None or HEX12.match(r["turn_id"])
        if rows[-1]["kind"] == "replay_footer":
            assert rows[-1]["payload"]["event_count"] == rows[-2]["seq"]
    assert set(kinds) <= REPLAY_KINDS
    assert {"tool_lifecycle", "permission_decision", "subagent_lifecycle"} <= \
        {r["kind"] for r in ReplayReader(ours).events()}
    for r in ReplayReader(ours).events():
        assert not list(v.iter_errors(r)), r["kind"]
    # Agentao's directory-based API: a project root whose .agentao/replays is the tenant directory
    project = tmp_path / "project"
    (project / ".agentao").mkdir(parents=True)
    (project / ".agentao" / "replays").symlink_to(root / tenant_dirname("acme"), target_is_directory=True)
    metas = list_replays(project)
    assert len(metas) == len(list((root / tenant_dirname("acme")).glob("*.jsonl")))
    newest = metas[-1]
    found = find_replay_candidates(newest.short_id, project)
    assert [m.path for m in found] == [newest.path]
    assert open_replay(newest.session_id, newest.instance_id, project).events()[0]["kind"] == "replay_header"
    assert newest.first_user_message


def test_host_events_round_trip_to_agentaos_models(tmp_path):
    """The closed host payloads are rebuilt from our typed fields exactly as ``model_dump`` gave them."""
    models = [
        ToolLifecycleEvent(session_id=SID, turn_id=None, tool_call_id="c9", tool_name="write_file", phase="completed",
                           started_at="2026-01-01T00:00:01.000Z", completed_at="2026-01-01T00:00:02.250Z",
                           outcome="ok", summary="write_file succeeded", error_type=None),
        ToolLifecycleEvent(session_id=SID, tool_call_id="c10", tool_name="explode", phase="failed",
                           started_at="2026-01-01T00:00:01.000Z", outcome="error", error_type="RuntimeError",
                           summary="explode failed"),
        PermissionDecisionEvent(session_id=SID, tool_name="rm", decision_id="d9", outcome="deny", mode="read-only",
                                matched_rule={"tool": "rm", "action": "deny"}, reason="rule", loaded_sources=["a"],
                                decided_at="2026-01-01T00:00:01.000Z"),
        SubagentLifecycleEvent(session_id=SID, parent_session_id="p", child_task_id="ct", phase="spawned",
                               task_summary="sub-agent: x", started_at="2026-01-01T00:00:01.000Z"),
    ]
    stamper = Stamper(tenant="acme")
    events = [stamper.stamp(kind, fields_from_host(kind, dump), session_id=SID)
              for kind, dump in (host_event_dump(m) for m in models)]
    with ArchiveWriter(tmp_path) as w:
        for e in through_kafka_codec(events):
            w.add(e)
    rows = ReplayReader(next(tmp_path.rglob("*.jsonl"))).events()
    assert [r["payload"] for r in rows[1:]] == [m.model_dump(mode="json") for m in models]


def test_lines_are_exactly_json_dumps_and_lone_surrogates_stay_valid_json():
    payload = {"text": "héllo 世界 \"q\" \\ \n\t", "n": 1.5, "list": [None, True, {"k": "v"}]}
    row = Row("0123456789ab", "user_message", 1_767_225_600_040_566, "aaaaaaaaaaaa", None, payload)
    line = encode_line(row, payload, "sid/ü", "abcdefabcdef", 7)
    expected = {"event_id": "0123456789ab", "session_id": "sid/ü", "instance_id": "abcdefabcdef", "seq": 7,
                "ts": "2026-01-01T00:00:00.040566+00:00", "kind": "user_message", "turn_id": "aaaaaaaaaaaa",
                "parent_turn_id": None, "payload": payload}
    assert line == (json.dumps(expected, ensure_ascii=False) + "\n").encode()
    bad = {"text": "broken \ud800 surrogate"}
    line = encode_line(Row("0123456789ab", "user_message", 0, None, None, bad), bad, "s", "abcdefabcdef", 1)
    assert json.loads(line)["payload"] == bad and line.isascii()
    assert iso_ts(0) == "1970-01-01T00:00:00.000000+00:00"
    assert iso_ts(1_767_225_600_000_001) == "2026-01-01T00:00:00.000001+00:00"


def _event(etype: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"{seq:032x}", "event_time": 1_767_225_600_000_000 + seq, "producer_time": 0,
            "tenant": "t", "session_id": "s", "seq": seq, "type": etype, **fields}


@pytest.mark.parametrize("etype", ["turn_start", "llm_retry", "compaction_started", "unknown"])
def test_types_without_a_replay_kind_are_skipped(etype):
    assert map_event(_event(etype, 2, payload='{"x": 1}'), DEFAULT_CAPTURE_FLAGS) == []


def test_capture_flags_decide_llm_delta_and_llm_io(tmp_path):
    delta = _event("llm_call_delta", 2, payload='{"attempt":1,"added_messages":[]}')
    io = _event("llm_call_io", 3, payload='{"attempt":1,"messages":[],"tools":[]}')
    assert [r.kind for r in map_event(delta, DEFAULT_CAPTURE_FLAGS)] == ["llm_call_delta"]
    assert map_event(io, DEFAULT_CAPTURE_FLAGS) == []
    deep = {**DEFAULT_CAPTURE_FLAGS, "capture_llm_delta": False, "capture_full_llm_io": True}
    assert map_event(delta, deep) == [] and [r.kind for r in map_event(io, deep)] == ["llm_call_io"]
    with ArchiveWriter(tmp_path, flags={"capture_full_llm_io": True, "capture_llm_delta": False}) as w:
        for e in (_event("session_start", 1), delta, io):
            w.add(e)
    rows = ReplayReader(next(tmp_path.rglob("*.jsonl"))).events()
    assert [r["kind"] for r in rows] == ["replay_header", "session_started", "llm_call_io"]
    assert rows[0]["payload"]["capture_flags"] == deep
