"""producers.mapping: Agentao event data -> typed AgentEvent fields + payload (pure, no Kafka)."""

from __future__ import annotations

import json
import math

import pytest

from producers.mapping import (
    AGENTAO_LIFTS,
    ERROR_MESSAGE_MAX,
    confirm_fields,
    event_symbol,
    fields_from_agentao,
    fields_from_host,
    host_event_dump,
    http_status_from_error,
    http_status_from_retry_reason,
    payload_text,
    strip_tool_label,
)
from schemas import contract
from schemas.codec import AvroCodec

AGENTAO_TYPES = [
    "turn_start", "turn_begin", "turn_end", "tool_start", "tool_output", "tool_complete", "tool_result", "thinking",
    "llm_text", "llm_call_started", "llm_call_completed", "llm_call_delta", "llm_call_io", "llm_retry", "error",
    "agent_start", "agent_end", "tool_confirmation", "ask_user_requested", "ask_user_answered",
    "background_notification_injected", "context_compressed", "compaction_settled", "compaction_started",
    "session_summary_written", "skill_activated", "skill_deactivated", "memory_write", "memory_delete",
    "memory_cleared", "model_changed", "permission_mode_changed", "readonly_mode_changed", "plugin_hook_fired",
    "images_removed",
]


def payload(fields: dict) -> dict:
    return json.loads(fields["payload"]) if fields["payload"] is not None else {}


def encodable(fields: dict, type_: str = "tool_complete") -> dict:
    """The fields as a complete event, round-tripped through the real codec (proves the types fit the schema)."""
    codec = AvroCodec()
    event = {"event_id": "0" * 32, "event_time": 1, "producer_time": 1, "tenant": "t", "session_id": "s", "seq": 1,
             "type": type_, **fields}
    return codec.decode(codec.encode_event(event)).events[0]


def test_all_35_agentao_types_are_contract_symbols() -> None:
    from agentao.transport.events import EventType

    assert sorted(e.value for e in EventType) == sorted(AGENTAO_TYPES)
    for t in AGENTAO_TYPES + ["tool_lifecycle", "permission_decision", "subagent_lifecycle"]:
        assert event_symbol(t) == t
    assert event_symbol("brand_new_kind") == "unknown"
    assert event_symbol(EventType.TOOL_START) == "tool_start"


def test_tool_complete_lifts_verbatim_and_leaves_nothing_else() -> None:
    f = fields_from_agentao("tool_complete", {"tool": "read_file", "call_id": "c1", "status": "error",
                                              "duration_ms": 12, "error": "boom"})
    assert f == {"tool_name": "read_file", "call_id": "c1", "status": "error", "duration_ms": 12,
                 "error_message": "boom", "payload": None}
    assert encodable(f)["error_message"] == "boom"


def test_subagent_label_is_stripped_and_kept_in_payload() -> None:
    f = fields_from_agentao("tool_start", {"tool": "[generalist 1/100] read_file", "args": {"file_path": "a"},
                                           "call_id": "c", "child_task_id": "ct"})
    assert f["tool_name"] == "read_file"
    assert f["child_task_id"] == "ct"
    assert payload(f) == {"tool": "[generalist 1/100] read_file", "args": {"file_path": "a"}}
    assert strip_tool_label("[generalist] write_file") == "write_file"
    assert strip_tool_label("read_file") == "read_file"
    assert strip_tool_label("[odd]") == "[odd]"  # nothing after the label: not a label


def test_llm_call_completed_tokens_and_null_is_not_zero() -> None:
    ok = {"attempt": 1, "status": "ok", "duration_ms": 93, "model_latency_ms": 93, "first_token_ms": None,
          "first_reasoning_ms": None, "error_class": None, "error_message": None, "finish_reason": "stop",
          "finish_reason_reported": True, "prompt_tokens": 150, "completion_tokens": 5, "cache_read_tokens": 100,
          "cache_creation_tokens": 0, "reasoning_tokens": None}
    f = fields_from_agentao("llm_call_completed", ok)
    assert (f["prompt_tokens"], f["completion_tokens"], f["cache_read_tokens"], f["cache_creation_tokens"],
            f["reasoning_tokens"]) == (150, 5, 100, 0, None)
    assert f["status"] == "ok" and f["finish_reason"] == "stop" and f.get("http_status") is None
    assert payload(f) == {"attempt": 1, "model_latency_ms": 93, "first_token_ms": None, "first_reasoning_ms": None,
                          "finish_reason_reported": True}
    decoded = encodable(f, "llm_call_completed")
    assert decoded["cache_creation_tokens"] == 0 and decoded["reasoning_tokens"] is None


@pytest.mark.parametrize(("error_class", "message", "expected"), [
    ("InternalServerError", "Error code: 500 - fake upstream failure", 500),
    ("InternalServerError", "upstream said no", 500),
    ("InternalServerError", "Error code: 502 - bad gateway", 502),
    ("RateLimitError", "slow down", 429),
    ("APIConnectionError", "Connection error.", None),
    ("ValueError", "HTTP 503 from proxy", 503),
    ("openai.RateLimitError", None, 429),
])
def test_llm_error_http_status(error_class: str, message: str | None, expected: int | None) -> None:
    assert http_status_from_error(error_class, message) == expected
    f = fields_from_agentao("llm_call_completed", {"status": "error", "error_class": error_class,
                                                   "error_message": message, "streamed": False,
                                                   "prompt_tokens": None})
    assert f.get("http_status") == expected
    assert f["error_class"] == error_class and f["prompt_tokens"] is None


def test_llm_retry_reason() -> None:
    f = fields_from_agentao("llm_retry", {"retry": 1, "max_retries": 4, "delay_s": 0.0, "reason": "status=503"})
    assert f["http_status"] == 503 and f.get("error_class") is None
    assert payload(f) == {"retry": 1, "max_retries": 4, "delay_s": 0.0, "reason": "status=503"}
    f = fields_from_agentao("llm_retry", {"retry": 2, "reason": "RemoteProtocolError"})
    assert f.get("http_status") is None and f["error_class"] == "RemoteProtocolError"
    f = fields_from_agentao("llm_retry", {"retry": 1, "reason": "parameter_repair"})
    assert f.get("http_status") is None and f.get("error_class") is None
    assert http_status_from_retry_reason(None) is None
    assert http_status_from_retry_reason("status=abc") is None


def test_turn_end_and_error_message_cap() -> None:
    long = "x" * (ERROR_MESSAGE_MAX + 50)
    f = fields_from_agentao("turn_end", {"final_text": "t", "status": "error", "error": long, "tool_count": 2,
                                         "incomplete_reason": None, "finish_reason_missing": False})
    assert f["status"] == "error" and f["incomplete_reason"] is None
    assert len(f["error_message"]) == ERROR_MESSAGE_MAX
    assert payload(f) == {"final_text": "t", "error": long, "tool_count": 2, "finish_reason_missing": False}
    f = fields_from_agentao("turn_end", {"status": "ok", "incomplete_reason": "max_iterations"},
                            {"_max_iterations": [{"cap": 3, "action": "stop"}]})
    assert f["incomplete_reason"] == "max_iterations"
    assert payload(f) == {"_max_iterations": [{"cap": 3, "action": "stop"}]}


def test_error_message_key_wins_over_error() -> None:
    f = fields_from_agentao("llm_call_completed", {"error_message": "primary", "error": "secondary"})
    assert f["error_message"] == "primary"
    assert payload(f) == {"error": "secondary"}


def test_per_type_lifts() -> None:
    f = fields_from_agentao("agent_end", {"agent": "generalist", "state": "failed", "turns": 3, "tokens": 1200,
                                          "duration_ms": 8000, "error": "bad", "child_task_id": "ct"})
    assert (f["agent_name"], f["status"], f["duration_ms"], f["error_message"], f["child_task_id"]) == \
        ("generalist", "failed", 8000, "bad", "ct")
    assert payload(f) == {"turns": 3, "tokens": 1200}  # tokens is a history estimate, never a token count
    assert "prompt_tokens" not in f
    f = fields_from_agentao("model_changed", {"old_model": "a", "new_model": "b", "cause": "set_model"})
    assert f["model"] == "b" and payload(f) == {"old_model": "a", "cause": "set_model"}
    assert set(AGENTAO_LIFTS) == {"agent_start", "agent_end", "model_changed"}


@pytest.mark.parametrize("type_", AGENTAO_TYPES)
def test_every_type_with_hostile_values_never_raises_and_encodes(type_: str) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    cyclic: list = []
    cyclic.append(cyclic)
    data = {"tool": 5, "call_id": {"x": 1}, "status": ["ok"], "duration_ms": "12", "prompt_tokens": "lots",
            "completion_tokens": True, "cache_read_tokens": 2**70, "reasoning_tokens": 3.6, "model": None,
            "error_class": Opaque(), "finish_reason": math.nan, "child_task_id": b"\x00", "reason": "status=500",
            "nan": math.inf, "set": {1}, (1, 2): "tuple key", "cyclic": cyclic, "big": "y" * 1_100_000}
    f = fields_from_agentao(type_, data)
    decoded = encodable(f, type_)
    assert decoded["tool_name"] == "5" and decoded["duration_ms"] == 12 and decoded["reasoning_tokens"] == 4
    assert decoded["prompt_tokens"] is None and decoded["completion_tokens"] is None
    assert decoded["cache_read_tokens"] is None and decoded["call_id"] is None
    p = json.loads(f["payload"])
    # Everything that was not lifted verbatim is still there.
    for key in ("tool", "call_id", "status", "duration_ms", "prompt_tokens", "completion_tokens",
                "cache_read_tokens", "reasoning_tokens", "error_class", "finish_reason", "child_task_id", "set",
                "(1, 2)", "cyclic", "nan"):
        assert key in p, key
    assert len(p["big"]) == 1_100_000
    assert p["error_class"] == "opaque!" and p["nan"] == "inf" and p["cyclic"] == ["<cycle>"]


def test_non_dict_data_and_unknown_type() -> None:
    f = fields_from_agentao("tool_start", ["not", "a", "dict"])
    assert payload(f) == {"_data": ["not", "a", "dict"]}
    f = fields_from_agentao("shiny_new_event", {"k": 1})
    assert payload(f) == {"k": 1, "_agentao_type": "shiny_new_event"}
    assert payload_text({}) is None


def test_host_tool_lifecycle() -> None:
    from agentao.host import ToolLifecycleEvent

    ev = ToolLifecycleEvent(session_id="s", turn_id="t", tool_call_id="c", tool_name="run_shell_command",
                            phase="failed", started_at="2026-01-01T00:00:00.100Z",
                            completed_at="2026-01-01T00:00:01.350Z", outcome="error", summary="failed",
                            error_type="RuntimeError")
    kind, dumped = host_event_dump(ev)
    f = fields_from_host(kind, dumped)
    assert kind == "tool_lifecycle"
    assert (f["tool_name"], f["call_id"], f["status"], f["error_class"], f["duration_ms"]) == \
        ("run_shell_command", "c", "error", "RuntimeError", 1250)
    assert payload(f) == {"session_id": "s", "turn_id": "t", "phase": "failed",
                          "started_at": "2026-01-01T00:00:00.100Z", "completed_at": "2026-01-01T00:00:01.350Z",
                          "summary": "failed"}
    encodable(f, "tool_lifecycle")


def test_host_permission_decision() -> None:
    from agentao.host import PermissionDecisionEvent

    ev = PermissionDecisionEvent(session_id="s", tool_call_id="c", tool_name="write_file", decision_id="d",
                                 outcome="prompt", mode="workspace-write", loaded_sources=["preset:x"],
                                 decided_at="2026-01-01T00:00:00Z")
    f = fields_from_host(*host_event_dump(ev))
    assert (f["tool_name"], f["call_id"], f["permission_decision"]) == ("write_file", "c", "prompt")
    assert f.get("duration_ms") is None
    assert payload(f)["mode"] == "workspace-write" and "outcome" not in payload(f)


def test_host_subagent_usage_and_null_usage() -> None:
    from agentao.host import SubagentLifecycleEvent, SubagentUsage

    done = SubagentLifecycleEvent(session_id="s", child_task_id="ct", phase="completed",
                                  started_at="2026-01-01T00:00:00Z", completed_at="2026-01-01T00:00:02Z",
                                  usage=SubagentUsage(prompt_tokens=10, completion_tokens=2, cache_read_tokens=4))
    f = fields_from_host(*host_event_dump(done))
    assert (f["child_task_id"], f["status"], f["prompt_tokens"], f["cache_read_tokens"], f["reasoning_tokens"],
            f["duration_ms"]) == ("ct", "completed", 10, 4, 0, 2000)
    assert "usage" not in payload(f)
    spawned = SubagentLifecycleEvent(session_id="s", child_task_id="ct", phase="spawned",
                                     started_at="2026-01-01T00:00:00Z")
    f = fields_from_host(*host_event_dump(spawned))
    assert f.get("prompt_tokens") is None and "usage" not in payload(f)


def test_host_dump_of_odd_objects() -> None:
    assert host_event_dump({"event_type": "tool_lifecycle", "tool_name": "x"}) == \
        ("tool_lifecycle", {"event_type": "tool_lifecycle", "tool_name": "x"})
    kind, dumped = host_event_dump(42)
    assert kind == "unknown" and "_repr" in dumped
    f = fields_from_host("mystery", {"event_type": "mystery", "a": 1})
    assert payload(f) == {"event_type": "mystery", "a": 1, "_host_type": "mystery"}
    f = fields_from_host("tool_lifecycle", {"started_at": "garbage", "completed_at": "2026-01-01T00:00:00Z",
                                            "tool_call_id": 7})
    assert f.get("duration_ms") is None and f["call_id"] == "7" and payload(f)["tool_call_id"] == 7


def test_confirm_fields() -> None:
    f = confirm_fields("[generalist] write_file", "c1", "reject", 3)
    assert (f["tool_name"], f["call_id"], f["confirm_outcome"], f["duration_ms"]) == ("write_file", "c1", "reject", 3)
    assert payload(f) == {"tool": "[generalist] write_file"}
    f = confirm_fields("x", None, None, 1, RuntimeError("ui crashed"))
    assert f["confirm_outcome"] is None and f["error_class"] == "RuntimeError"
    assert contract.event_types().count("confirm_resolved") == 1
