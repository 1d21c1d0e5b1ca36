"""One crafted Agentao session for the trace tests: every branch of the span tree in one turn.

The turn (host traceparent on every event, as the bridge stamps it inside the host's request span):
an LLM call that fails twice with HTTP 503 and is retried, then succeeds with tool calls; a ``run_shell_command``
that needs a confirmation (allowed) and fails; a delegation to the ``generalist`` sub-agent, whose forwarded
``read_file`` succeeds; a second LLM call that answers. A second turn has no traceparent and no turn_end.
Data keys are Agentao 0.5.17's, mapped by :mod:`producers.mapping` as the bridge maps them.
"""

from __future__ import annotations

from typing import Any

from producers.mapping import confirm_fields, fields_from_agentao, fields_from_host

HOST_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{HOST_TRACE_ID}-{HOST_SPAN_ID}-01"
T0_US = 1_767_225_600_000_000
CHILD = "6f1c2a4e-0000-4000-8000-00000000c41d"
MODEL = "gpt-5-mini"


class SessionBuilder:
    """Stamps events the way the bridge does: per-session seq, event ids, strictly increasing times."""

    def __init__(self, session_id: str = "sess-trace-1", tenant: str = "acme", user_id: str = "u-42",
                 service: str = "support-bot", agent_name: str = "support") -> None:
        self.base = {"schema_version": 1, "tenant": tenant, "session_id": session_id, "user_id": user_id,
                     "service": service, "agent_name": agent_name, "turn_id": None, "traceparent": None}
        self.seq = 0
        self.t = T0_US
        self.events: list[dict[str, Any]] = []

    def ev(self, type_: str, data: dict[str, Any] | None = None, *, after_ms: float = 5, host: bool = False,
           **typed: Any) -> dict[str, Any]:
        self.seq += 1
        self.t += int(after_ms * 1000)
        ev = dict(self.base)
        if data is not None:
            ev.update(fields_from_host(type_, data) if host else fields_from_agentao(type_, data))
        ev.update(typed)
        ev.update(event_id=f"{self.base['session_id']}-{self.seq:06d}", event_time=self.t,
                  producer_time=self.t + 500, seq=self.seq, type=type_)
        self.events.append(ev)
        return ev


def crafted_session(session_id: str = "sess-trace-1", *, open_second_turn: bool = True) -> list[dict[str, Any]]:
    """The events of the session described in the module docstring, in emission order."""
    b = SessionBuilder(session_id)
    b.ev("session_start", {"cwd": "/srv/app"})
    b.base.update(turn_id="turn-1", traceparent=TRACEPARENT)
    b.ev("turn_begin", {"user_message": "Fix the failing build"})
    b.ev("turn_start", {})
    b.ev("llm_call_started", {"attempt": 1, "model": MODEL, "n_messages": 3})
    for retry in (1, 2):
        b.ev("llm_retry", {"retry": retry, "max_retries": 4, "delay_s": 0.5 * retry, "reason": "status=503"},
             after_ms=200, model=MODEL)
    b.ev("llm_text", {"chunk": "Let me run the build."}, after_ms=900)
    b.ev("llm_call_completed", {"attempt": 1, "status": "ok", "duration_ms": 1500, "finish_reason": "tool_calls",
                                "prompt_tokens": 1200, "completion_tokens": 80, "cache_read_tokens": 1024,
                                "cache_creation_tokens": None, "reasoning_tokens": 16}, model=MODEL)
    args = {"command": "make build"}
    b.ev("tool_confirmation", {"tool": "run_shell_command", "args": args, "call_id": "call-sh"})
    b.ev("confirm_resolved", None, after_ms=1200, **confirm_fields("run_shell_command", "call-sh", "allow", 1200))
    b.ev("tool_start", {"tool": "run_shell_command", "args": args, "call_id": "call-sh"})
    b.ev("tool_output", {"tool": "run_shell_command", "chunk": "make: *** [build] Error 2", "call_id": "call-sh"})
    b.ev("tool_complete", {"tool": "run_shell_command", "call_id": "call-sh", "status": "error",
                           "duration_ms": 2400, "error": "exit status 2"}, after_ms=2400)
    b.ev("tool_lifecycle", {"event_type": "tool_lifecycle", "tool_name": "run_shell_command",
                            "tool_call_id": "call-sh", "phase": "failed", "outcome": "error",
                            "error_type": "CalledProcessError"}, host=True)
    b.ev("tool_start", {"tool": "generalist", "args": {"task": "find the broken module"}, "call_id": "call-sub"})
    b.ev("subagent_lifecycle", {"event_type": "subagent_lifecycle", "child_task_id": CHILD, "phase": "spawned",
                                "parent_tool_call_id": "call-sub", "task_summary": "sub-agent: generalist"},
         host=True)
    b.ev("agent_start", {"agent": "generalist", "task": "find the broken module", "max_turns": 100,
                         "child_task_id": CHILD})
    b.ev("turn_start", {"child_task_id": CHILD})
    b.ev("tool_start", {"tool": "[generalist 1/100] read_file", "args": {"path": "Makefile"}, "call_id": "call-rf",
                        "child_task_id": CHILD})
    b.ev("tool_complete", {"tool": "read_file", "call_id": "call-rf", "status": "ok", "duration_ms": 30,
                           "child_task_id": CHILD}, after_ms=30)
    b.ev("agent_end", {"agent": "generalist", "state": "completed", "turns": 2, "tool_calls": 1, "tokens": 5000,
                       "duration_ms": 4000, "child_task_id": CHILD}, after_ms=4000)
    b.ev("subagent_lifecycle", {"event_type": "subagent_lifecycle", "child_task_id": CHILD, "phase": "completed",
                                "parent_tool_call_id": "call-sub",
                                "usage": {"prompt_tokens": 6067, "completion_tokens": 71, "cache_read_tokens": 0,
                                          "cache_creation_tokens": 0, "reasoning_tokens": 0}}, host=True)
    b.ev("tool_complete", {"tool": "generalist", "call_id": "call-sub", "status": "ok", "duration_ms": 4100})
    b.ev("turn_start", {})
    b.ev("llm_call_started", {"attempt": 2, "model": MODEL, "n_messages": 7})
    b.ev("llm_call_completed", {"attempt": 2, "status": "ok", "duration_ms": 800, "finish_reason": "stop",
                                "prompt_tokens": 2000, "completion_tokens": 120, "cache_read_tokens": 1024,
                                "cache_creation_tokens": None, "reasoning_tokens": None}, after_ms=800, model=MODEL)
    b.ev("turn_end", {"final_text": "The build fails in module x.", "status": "ok", "tool_count": 2,
                      "incomplete_reason": None}, duration_ms=10_000)
    b.base.update(turn_id=None, traceparent=None)
    if open_second_turn:
        b.base.update(turn_id="turn-2")
        b.ev("turn_begin", {"user_message": "and now?"}, after_ms=60_000)
        b.ev("llm_call_started", {"attempt": 1, "model": MODEL})
        b.ev("llm_call_completed", {"attempt": 1, "status": "error", "duration_ms": 300,
                                    "error_class": "InternalServerError", "error_message": "Error code: 500",
                                    "prompt_tokens": None, "completion_tokens": None}, after_ms=300, model=MODEL)
    return b.events
