"""AgentEvents -> Agentao replay rows: the pure half of the session replay archive (no I/O).

The archive keeps one JSONL file per session *instance*, in Agentao's replay format (schema 1.6), so Agentao's own
reader and ``/replay`` views work on it. Everything a file holds is a pure function of the events, so a rebuild
from the topic is byte-identical to the live archive:

* **instance**: a producer session restarts ``seq`` at 1 when it starts over (the bridge's stamper forgets a session
  at ``session_end``), so a ``seq == 1`` event opens a new instance; its ``instance_id`` is 12 hex of a hash of
  (tenant, session id, that event's id). A session first seen mid-way (a rebuild from a time) opens an instance
  at its first event the same way.
* **ids**: a row's ``event_id`` is the first 12 hex of our event id (for the event's first row: a join key back to
  the topic) or 12 hex of a hash of (our event id, row index); a replay ``turn_id`` is a hash of (tenant, session,
  our host turn id), a sub-agent's of its ``child_task_id`` (with ``parent_turn_id`` the parent turn, as Agentao
  nests them); ``ts`` is the event's ``event_time`` (ISO 8601, microseconds, ``+00:00``).
* **footer**: ``session_end`` writes ``session_ended`` and the ``replay_footer`` (totals summed from the rows'
  payloads); an instance still open when its session starts a new one gets its footer then.
* **file name**: ``<session>.<instance>.jsonl``, the session id sanitised as Agentao does (``[^\\w-]`` -> ``_``),
  under ``tenant_dirname(tenant)`` (a reversible escape; hashed past 120 characters). A sanitised id over 200
  bytes is cut and suffixed ``~<hash>``; the instance id keeps colliding sanitised names apart.

What each event type becomes (Agentao's ``ReplayAdapter`` mapping, see ``reference/agentao.md`` §5):

================================  ===================================================================
turn_begin                        ``turn_started`` + ``user_message``
turn_end                          ``turn_completed``
llm_text / thinking               ``assistant_text_chunk`` / ``assistant_thought_chunk`` (consecutive
                                  pieces of one turn joined; see :class:`Thought`)
tool_confirmation                 ``tool_confirmation_requested`` (plus ``call_id``)
confirm_resolved                  ``tool_confirmation_resolved`` (plus ``call_id``, ``outcome``)
tool_start/output/complete/result ``tool_started`` / ``tool_output_chunk`` / ``tool_completed`` / ``tool_result``
agent_start / agent_end           ``subagent_started`` / ``subagent_completed``
session_start / session_end       ``session_started`` / ``session_ended`` + ``replay_footer``
host events                       ``tool_lifecycle`` / ``permission_decision`` / ``subagent_lifecycle``
                                  (the host model's dump, rebuilt from our fields: closed payloads)
llm_call_*, error, ask_user_*,    the same-named kind, Agentao data rebuilt from our typed fields +
state changes                     payload (``llm_call_delta`` / ``llm_call_io`` only if captured)
turn_start, llm_retry,            skipped: Agentao does not mirror them (no replay kind exists, and a
compaction_started, unknown       kind outside the 1.6 vocabulary fails its schema); so is the bridge's
                                  sub-agent usage ``llm_call_completed`` (payload ``_subagent_usage``)
================================  ===================================================================

Payload keys agentwatch adds itself (``_``-prefixed) are not archived.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sinks.redact import RowStats, dumps

SCHEMA_VERSION = "1.6"
THOUGHT_MAX_CHARS = 64_000
MAX_SESSION_NAME_BYTES = 200
_TENANT_MAX_READABLE = 120

#: Agentao 1.6's kind vocabulary (``agentao.replay.events.EventKind.V1_6``).
REPLAY_KINDS: frozenset[str] = frozenset({
    "replay_header", "replay_footer", "session_started", "session_ended", "session_saved", "session_loaded",
    "session_forked", "turn_started", "turn_completed", "user_message", "assistant_text_chunk",
    "assistant_thought_chunk", "tool_confirmation_requested", "tool_confirmation_resolved", "tool_started",
    "tool_output_chunk", "tool_completed", "tool_result", "subagent_started", "subagent_completed", "error",
    "llm_call_started", "llm_call_completed", "llm_call_delta", "llm_call_io", "ask_user_requested",
    "ask_user_answered", "background_notification_injected", "context_compressed", "compaction_settled",
    "session_summary_written", "skill_activated", "skill_deactivated", "memory_write", "memory_delete",
    "memory_cleared", "model_changed", "permission_mode_changed", "readonly_mode_changed", "plugin_hook_fired",
    "images_removed", "tool_lifecycle", "permission_decision", "subagent_lifecycle",
})

SKIPPED_TYPES: frozenset[str] = frozenset({"turn_start", "llm_retry", "compaction_started", "unknown"})

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens",
                "reasoning_tokens")

# -- layout -------------------------------------------------------------------------------------------------------

_SAFE_TENANT_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")
_SESSION_UNSAFE = re.compile(r"[^\w\-]")
_FILENAME_RE = re.compile(r"^(?P<session>.+)\.(?P<instance>[0-9a-f]{12})\.jsonl$")


def tenant_dirname(tenant: str) -> str:
    """A safe directory name for any tenant id: ``t-`` + the UTF-8 bytes, all but ``[a-z0-9_-]`` as ``%xx``.

    Never ``.``, ``..``, empty, or containing ``/`` or NUL; upper case is escaped too, so names do not collide on
    case-insensitive filesystems. Reversible (:func:`tenant_from_dirname`) up to 120 characters; longer ones keep
    a readable prefix plus ``~`` and 128 bits of SHA-256 (``~`` never occurs in the short form).
    """
    raw = tenant.encode("utf-8", "surrogatepass")
    escaped = "".join(chr(b) if b in _SAFE_TENANT_BYTES else f"%{b:02x}" for b in raw)
    if len(escaped) + 2 <= _TENANT_MAX_READABLE:
        return "t-" + escaped
    prefix = escaped[:80]
    cut = prefix.rfind("%", len(prefix) - 2)  # never split a %xx escape
    if cut != -1:
        prefix = prefix[:cut]
    return f"t-{prefix}~{hashlib.sha256(raw).hexdigest()[:32]}"


def tenant_from_dirname(name: str) -> str | None:
    """The tenant id a short directory name encodes; ``None`` for a hashed (long) or foreign name."""
    if not name.startswith("t-") or "~" in name:
        return None
    body = name[2:]
    try:
        raw = bytearray()
        i = 0
        while i < len(body):
            if body[i] == "%":
                raw.append(int(body[i + 1:i + 3], 16))
                i += 3
            else:
                raw.append(ord(body[i]))
                i += 1
        tenant = bytes(raw).decode("utf-8", "surrogatepass")
    except (ValueError, IndexError):
        return None
    return tenant if tenant_dirname(tenant) == name else None


def safe_session(session_id: str) -> str:
    """Agentao's file-name form of a session id (``[^\\w-]`` -> ``_``), cut to 200 bytes with a hash suffix."""
    safe = _SESSION_UNSAFE.sub("_", session_id) or "_"
    if len(safe.encode("utf-8", "surrogatepass")) <= MAX_SESSION_NAME_BYTES:
        return safe
    raw = safe.encode("utf-8", "surrogatepass")[:100].decode("utf-8", "ignore")
    digest = hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{raw}~{digest}"


def replay_filename(session_id: str, instance_id: str) -> str:
    return f"{safe_session(session_id)}.{instance_id}.jsonl"


def parse_filename(name: str) -> tuple[str, str] | None:
    """``(safe session, instance id)`` of an archive file name, ``None`` for anything else."""
    m = _FILENAME_RE.match(name)
    return (m.group("session"), m.group("instance")) if m else None


# -- ids and time ---------------------------------------------------------------------------------------------------


def _h12(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


def instance_id_for(tenant: str, session_id: str, first_event_id: str) -> str:
    return _h12(f"instance\0{tenant}\0{session_id}\0{first_event_id}")


def row_id(source_event_id: str, index: int | str) -> str:
    """The replay ``event_id`` of row ``index`` derived from one of our events.

    The first row of an event with a contract-shaped id (32 lowercase hex, a random uuid4) takes its first 12 hex
    digits: a join key back to the topic, and no hashing on the hot path. Every other row hashes (id, index).
    """
    if index == 0 and len(source_event_id) == 32 and not source_event_id.strip("0123456789abcdef"):
        return source_event_id[:12]
    return _h12(f"{source_event_id}\0{index}")


@lru_cache(maxsize=65_536)
def replay_turn_id(tenant: str, session_id: str, host_turn_id: str) -> str:
    return _h12(f"turn\0{tenant}\0{session_id}\0{host_turn_id}")


@lru_cache(maxsize=16_384)
def subagent_turn_id(tenant: str, session_id: str, child_task_id: str) -> str:
    return _h12(f"child\0{tenant}\0{session_id}\0{child_task_id}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ts_prefixes: dict[int, str] = {}


def iso_ts(us: int) -> str:
    """Microseconds since the epoch as Agentao's replay ``ts``: ``2026-01-01T00:00:00.040566+00:00``.

    The date-time part is cached per second (a rebuild interleaves partitions, so a one-entry cache missed on
    most rows); the cache is dropped whole when it reaches 65,536 seconds."""
    sec, micro = divmod(us, 1_000_000)
    prefix = _ts_prefixes.get(sec)
    if prefix is None:
        if len(_ts_prefixes) >= 65_536:
            _ts_prefixes.clear()
        prefix = _ts_prefixes[sec] = (_EPOCH + timedelta(seconds=sec)).isoformat(timespec="seconds")[:19]
    return f"{prefix}.{micro:06d}+00:00"


def parse_ts(text: str) -> int | None:
    """A replay ``ts`` back to microseconds; ``None`` if unparseable."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# -- rows -----------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One replay line before sanitisation and numbering (``seq`` is given by the file it lands in)."""

    event_id: str
    kind: str
    ts_us: int
    turn_id: str | None
    parent_turn_id: str | None
    payload: dict[str, Any]


@dataclass(slots=True)
class Piece:
    """A ``thinking`` event's text: joined with its neighbours into one ``assistant_thought_chunk``."""

    text: str
    turn_id: str | None
    parent_turn_id: str | None
    hits: dict[str, int] | None = None  # counted upstream


@dataclass(slots=True)
class Thought:
    """Consecutive ``thinking`` pieces of one session and turn, written as one row (Agentao joins them so that a
    secret split across two pieces is still caught). Flushed by the session's next other event, a piece of
    another turn, 64,000 characters, or (the archive sink's rule) when its partition moved far past it."""

    turn_id: str | None
    parent_turn_id: str | None
    first_event_id: str
    parts: list[str] = field(default_factory=list)
    size: int = 0
    last_ts_us: int = 0
    position: tuple[int, int] | None = None  # (partition, offset) of the record holding the first piece
    hits: dict[str, int] = field(default_factory=dict)

    def add(self, piece: Piece, ts_us: int) -> None:
        self.parts.append(piece.text)
        self.size += len(piece.text)
        self.last_ts_us = ts_us
        for kind, n in (piece.hits or {}).items():
            if isinstance(n, int):
                self.hits[kind] = self.hits.get(kind, 0) + n

    @property
    def full(self) -> bool:
        return self.size >= THOUGHT_MAX_CHARS

    def row(self) -> Row:
        payload: dict[str, Any] = {"text": "".join(self.parts)}
        if self.hits:
            payload["redaction_hits"] = dict(self.hits)
        return Row(row_id(self.first_event_id, 0), "assistant_thought_chunk", self.last_ts_us, self.turn_id,
                   self.parent_turn_id, payload)


def header_row(tenant: str, session_id: str, instance_id: str, first_event: Mapping[str, Any],
               flags: Mapping[str, bool]) -> Row:
    ts = int(first_event["event_time"])
    return Row(row_id(first_event["event_id"], "header"), "replay_header", ts, None, None, {
        "schema_version": SCHEMA_VERSION, "session_id": session_id, "instance_id": instance_id,
        "created_at": iso_ts(ts), "capture_flags": dict(flags)})


def footer_row(source_event_id: str, index: str, ts_us: int, event_count: int, stats: RowStats,
               flags: Mapping[str, bool]) -> Row:
    """Agentao's ``replay_footer``: ``event_count`` is the seq of the line before it."""
    return Row(row_id(source_event_id, index), "replay_footer", ts_us, None, None, {
        "closed_at": iso_ts(ts_us), "event_count": event_count,
        "redaction_hits": dict(sorted(stats.redaction_hits.items())),
        "dropped_field_hits": dict(sorted(stats.dropped_field_hits.items())),
        "truncated_field_hits": dict(sorted(stats.truncated_field_hits.items())),
        "capture_flags": dict(flags)})


# -- event -> rows ----------------------------------------------------------------------------------------------------

# Agentao data key -> our typed field (the inverse of producers.mapping's lifts), and per-type overrides.
_TYPED: dict[str, str] = {
    "tool": "tool_name", "call_id": "call_id", "status": "status", "duration_ms": "duration_ms",
    "error_class": "error_class", "error_message": "error_message", "error": "error_message",
    "finish_reason": "finish_reason", "incomplete_reason": "incomplete_reason", "child_task_id": "child_task_id",
    **{t: t for t in TOKEN_FIELDS},
}
_TYPED_BY_TYPE: dict[str, dict[str, str]] = {
    "agent_start": {**_TYPED, "agent": "agent_name"},
    "agent_end": {**_TYPED, "agent": "agent_name", "state": "status"},
    "model_changed": {**_TYPED, "new_model": "model"},
    "llm_call_started": {**_TYPED, "model": "model"},
    "tool_lifecycle": {"tool_name": "tool_name", "tool_call_id": "call_id", "outcome": "status",
                       "error_type": "error_class"},
    "permission_decision": {"tool_name": "tool_name", "tool_call_id": "call_id", "outcome": "permission_decision"},
    "subagent_lifecycle": {"child_task_id": "child_task_id", "phase": "status", "error_type": "error_class"},
}
# Keys Agentao always puts in a verbatim kind's data (null included), when our mapping lifted them out.
_ALWAYS: dict[str, tuple[str, ...]] = {
    "llm_call_started": ("model",),
    "llm_call_completed": ("status", "duration_ms", "error_class", "error_message", "finish_reason", *TOKEN_FIELDS),
    "compaction_settled": ("status", "duration_ms"),
    "model_changed": ("new_model",),
}
# Lifted keys restored into a verbatim payload when set (``model`` is not one: the bridge stamps it on
# llm_call_completed, where Agentao has no such key).
_OPTIONAL_VERBATIM = ("tool", "call_id", "status", "duration_ms", "error_class", "error_message",
                      "finish_reason", "incomplete_reason", *TOKEN_FIELDS, "child_task_id")
_OPTIONAL_PAIRS = tuple((key, _TYPED[key]) for key in _OPTIONAL_VERBATIM)
_VERBATIM_TYPES = frozenset({
    "llm_call_started", "llm_call_completed", "llm_call_delta", "llm_call_io", "ask_user_requested",
    "ask_user_answered", "background_notification_injected", "context_compressed", "compaction_settled",
    "session_summary_written", "skill_activated", "skill_deactivated", "memory_write", "memory_delete",
    "memory_cleared", "model_changed", "permission_mode_changed", "readonly_mode_changed", "plugin_hook_fired",
    "images_removed",
})
HOST_FIELDS: dict[str, tuple[str, ...]] = {
    "tool_lifecycle": ("event_type", "session_id", "turn_id", "tool_call_id", "tool_name", "phase", "started_at",
                       "completed_at", "outcome", "summary", "error_type"),
    "permission_decision": ("event_type", "session_id", "turn_id", "tool_call_id", "tool_name", "decision_id",
                            "outcome", "mode", "matched_rule", "reason", "loaded_sources", "decided_at"),
    "subagent_lifecycle": ("event_type", "session_id", "parent_session_id", "parent_task_id", "parent_tool_call_id",
                           "child_session_id", "child_task_id", "phase", "task_summary", "started_at",
                           "completed_at", "error_type", "usage"),
}
"""The closed payloads of the three host kinds (agentao.host models, snapshot v3 = replay schema 1.6)."""
_FLAT_TRUNCATION = ("truncated", "original_chars", "omitted_chars")
_SCAN = json.JSONDecoder().scan_once


def agentao_data(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event's ``payload`` object without agentwatch's own ``_`` keys (``{}`` when absent or not an object)."""
    raw = event.get("payload")
    if not raw:
        return {}
    if isinstance(raw, str):
        try:
            obj, end = _SCAN(raw, 0)  # the C scanner: json.loads adds ~1 µs of Python around it
            if end != len(raw) and raw[end:].strip():
                raise ValueError("trailing data")
        except (ValueError, StopIteration, RecursionError):
            return {"payload_text": raw}
        if isinstance(obj, dict) and '"_' not in raw:
            return obj
    else:
        obj = raw
    if not isinstance(obj, dict):
        return {"payload_value": obj}
    return {k: v for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}


class _Fields:
    """Agentao data keys of one event: the payload's value, else our typed field's."""

    __slots__ = ("event", "data", "typed")

    def __init__(self, event: Mapping[str, Any], data: dict[str, Any], type_: str) -> None:
        self.event = event
        self.data = data
        self.typed = _TYPED_BY_TYPE.get(type_, _TYPED)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.data:
            return self.data[key]
        name = self.typed.get(key)
        if name is not None:
            value = self.event.get(name)
            if value is not None:
                return value
        return default

    def has(self, key: str) -> bool:
        return key in self.data or (key in self.typed and self.event.get(self.typed[key]) is not None)


def tool_source(tool: Any) -> str:
    """Agentao's ``tool_source``: ``mcp`` for MCP-discovered tools, else ``builtin``."""
    return "mcp" if isinstance(tool, str) and tool.startswith("mcp_") else "builtin"


def turn_ids(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(turn_id, parent_turn_id)`` of the rows of a non-session-level event."""
    tenant, session = event["tenant"], event["session_id"]
    host_turn = event.get("turn_id")
    turn = replay_turn_id(tenant, session, host_turn) if host_turn else None
    child = event.get("child_task_id")
    if child and event["type"] not in HOST_FIELDS:
        return subagent_turn_id(tenant, session, child), turn
    return turn, None


def map_event(event: Mapping[str, Any], flags: Mapping[str, bool]) -> list[Row] | Piece:
    """The rows one event becomes (``[]`` for a skipped one), or a :class:`Piece` of thinking to buffer.

    Redaction counts an upstream scrubber left in the payload (``redaction_hits``) go with the event's last row,
    so the footer still counts them.
    """
    build = _BUILDERS.get(event["type"])
    if build is None:
        return []  # skipped, or a type this archive does not know: nothing Agentao would write for it
    if event.get("child_task_id") and '"_subagent_usage"' in str(event.get("payload") or ""):
        return []  # the bridge's count of a sub-agent's usage (producers/subagent_usage.py): Agentao writes no row
    data = agentao_data(event)
    mapped = build(event, data, _Fields(event, data, event["type"]), flags)
    upstream = data.get("redaction_hits")
    if upstream and isinstance(upstream, dict):
        if isinstance(mapped, Piece):
            mapped.hits = dict(upstream)
        elif mapped and "redaction_hits" not in mapped[-1].payload:
            mapped[-1].payload["redaction_hits"] = dict(upstream)
    return mapped


_Built = list[Row] | Piece


def _one(event: Mapping[str, Any], kind: str, payload: dict[str, Any]) -> list[Row]:
    """The one row of most event types: :func:`turn_ids` and :func:`row_id` inlined (once per row)."""
    tenant, session = event["tenant"], event["session_id"]
    host_turn = event.get("turn_id")
    turn = replay_turn_id(tenant, session, host_turn) if host_turn else None
    child = event.get("child_task_id")
    if child and event["type"] not in HOST_FIELDS:
        turn, parent = subagent_turn_id(tenant, session, child), turn
    else:
        parent = None
    eid = event["event_id"]
    rid = eid[:12] if len(eid) == 32 and not eid.strip("0123456789abcdef") else _h12(f"{eid}\0{0}")
    return [Row(rid, kind, int(event["event_time"]), turn, parent, payload)]


def _thinking(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    text = f.get("text")
    if not isinstance(text, str) or not text:
        return []
    return Piece(text, *turn_ids(event))


def _session_start(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    payload = {"session_id": event["session_id"], "cwd": data.get("cwd", data.get("working_directory")),
               "model": f.get("model", event.get("model"))}
    payload.update((k, v) for k, v in data.items() if k not in payload and k != "working_directory")
    return [Row(row_id(event["event_id"], 0), "session_started", int(event["event_time"]), None, None, payload)]


def _session_end(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    return [Row(row_id(event["event_id"], 0), "session_ended", int(event["event_time"]), None, None,
                {"session_id": event["session_id"]})]


def _turn_begin(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    eid, ts = event["event_id"], int(event["event_time"])
    text = f.get("user_message")
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    turn = turn_ids(event)[0] or row_id(eid, "turn")
    return [Row(row_id(eid, 0), "turn_started", ts, turn, None, {"has_user_message": bool(text)}),
            Row(row_id(eid, 1), "user_message", ts, turn, None, {"content": text})]


def _turn_end(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    payload = {"final_text": str(f.get("final_text") or ""), "status": str(f.get("status") or "ok"),
               "error": f.get("error")}
    tool_count = f.get("tool_count")
    if isinstance(tool_count, int) and not isinstance(tool_count, bool):
        payload["tool_count"] = tool_count
    incomplete = f.get("incomplete_reason")
    if isinstance(incomplete, str):
        payload["incomplete_reason"] = incomplete
    if f.get("finish_reason_missing"):
        payload["finish_reason_missing"] = True
    return _one(event, "turn_completed", payload)


def _llm_text(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    chunk = f.get("chunk", "")
    return _one(event, "assistant_text_chunk", {"chunk": chunk}) if chunk else []


def _tool_confirmation(event: Mapping[str, Any], data: dict[str, Any], f: _Fields,
                       flags: Mapping[str, bool]) -> _Built:
    payload = {"tool": f.get("tool"), "args": f.get("args", {})}
    if f.has("call_id"):
        payload["call_id"] = f.get("call_id")
    return _one(event, "tool_confirmation_requested", payload)


def _confirm_resolved(event: Mapping[str, Any], data: dict[str, Any], f: _Fields,
                      flags: Mapping[str, bool]) -> _Built:
    outcome = event.get("confirm_outcome")
    payload = {"tool": f.get("tool"), "approved": outcome == "allow"}
    if f.has("call_id"):
        payload["call_id"] = f.get("call_id")
    payload["outcome"] = outcome
    return _one(event, "tool_confirmation_resolved", payload)


def _tool_start(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    tool = f.get("tool", "")
    return _one(event, "tool_started", {"tool": tool, "args": f.get("args", {}), "call_id": f.get("call_id"),
                                        "tool_source": tool_source(tool)})


def _tool_output(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    payload = {"tool": f.get("tool"), "call_id": f.get("call_id"), "chunk": f.get("chunk", "")}
    if data.get("truncated") is True:  # cut upstream with Agentao's policy: keep its metadata
        payload.update((k, data.get(k)) for k in _FLAT_TRUNCATION)
    return _one(event, "tool_output_chunk", payload)


def _tool_complete(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    return _one(event, "tool_completed", {"tool": f.get("tool"), "call_id": f.get("call_id"),
                                          "status": f.get("status", "ok"), "duration_ms": f.get("duration_ms", 0),
                                          "error": f.get("error")})


def _tool_result(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    payload = {
        "tool": f.get("tool"), "call_id": f.get("call_id"), "content": f.get("content", ""),
        "content_hash": f.get("content_hash"), "original_chars": f.get("original_chars", 0),
        "saved_to_disk": bool(f.get("saved_to_disk", False)), "disk_path": f.get("disk_path"),
        "status": f.get("status", "ok"), "duration_ms": f.get("duration_ms", 0), "error": f.get("error")}
    if isinstance(data.get("content_truncation"), dict):
        payload["content_truncation"] = data["content_truncation"]
    return _one(event, "tool_result", payload)


def _agent_start(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    return _one(event, "subagent_started", {"agent": f.get("agent"), "task": f.get("task"),
                                            "max_turns": f.get("max_turns")})


def _agent_end(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    return _one(event, "subagent_completed", {
        "agent": f.get("agent"), "state": f.get("state"), "turns": f.get("turns"), "tool_calls": f.get("tool_calls"),
        "tokens": f.get("tokens"), "duration_ms": f.get("duration_ms"), "error": f.get("error")})


def _error(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    return _one(event, "error", {"message": f.get("message", f.get("error_message")), "detail": f.get("detail")})


def _host(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    kind = event["type"]
    payload: dict[str, Any] = {}
    for name in HOST_FIELDS[kind]:
        if name == "event_type":
            payload[name] = kind
        elif name == "usage":
            usage = data.get("usage")
            usage = dict(usage) if isinstance(usage, dict) else None
            lifted = {t: event.get(t) for t in TOKEN_FIELDS if event.get(t) is not None}
            if lifted:
                usage = {**(usage or {}), **lifted}
            payload[name] = usage
        else:
            payload[name] = f.get(name)
    if "redaction_hits" in data:  # an upstream scrubber's counts: the sanitiser folds them in
        payload["redaction_hits"] = data["redaction_hits"]
    return _one(event, kind, payload)


def _verbatim(event: Mapping[str, Any], data: dict[str, Any], f: _Fields, flags: Mapping[str, bool]) -> _Built:
    etype = event["type"]
    if etype == "llm_call_delta" and not flags.get("capture_llm_delta", True):
        return []
    if etype == "llm_call_io" and not flags.get("capture_full_llm_io", False):
        return []
    payload = dict(data)
    typed = f.typed
    for key in _ALWAYS.get(etype, ()):
        if key not in payload:
            payload[key] = event.get(typed[key])
    for key, name in _OPTIONAL_PAIRS:
        if key not in payload:
            value = event.get(name)
            if value is not None:
                payload[key] = value
    return _one(event, etype, payload)


_BUILDERS = {
    "thinking": _thinking, "session_start": _session_start, "session_end": _session_end,
    "turn_begin": _turn_begin, "turn_end": _turn_end, "llm_text": _llm_text,
    "tool_confirmation": _tool_confirmation, "confirm_resolved": _confirm_resolved, "tool_start": _tool_start,
    "tool_output": _tool_output, "tool_complete": _tool_complete, "tool_result": _tool_result,
    "agent_start": _agent_start, "agent_end": _agent_end, "error": _error,
    **dict.fromkeys(HOST_FIELDS, _host), **dict.fromkeys(_VERBATIM_TYPES, _verbatim),
}
assert not SKIPPED_TYPES & set(_BUILDERS)


# -- lines ------------------------------------------------------------------------------------------------------------

_ENCODE = dumps
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode


def json_string(text: str) -> str:
    return _ENCODE(text)


def encode_line(row: Row, payload: Mapping[str, Any], session_id: str, instance_id: str, seq: int, *,
                payload_text: str | None = None, session_json: str | None = None) -> bytes:
    """One JSONL line, byte for byte what ``json.dumps(envelope, ensure_ascii=False)`` gives (Agentao's writer).

    ``payload_text`` / ``session_json`` are the JSON texts of the payload and session id when the caller has them.
    A string holding a lone surrogate cannot be UTF-8: such a line is written with ``\\u`` escapes instead.
    """
    if payload_text is None:
        payload_text = _ENCODE(payload)
    if session_json is None:
        session_json = _ENCODE(session_id)
    line = encode_line_fast(row, payload_text, line_head(session_json, instance_id), seq)
    if line is not None:
        return line
    envelope = {"event_id": row.event_id, "session_id": session_id, "instance_id": instance_id, "seq": seq,
                "ts": iso_ts(row.ts_us), "kind": row.kind, "turn_id": row.turn_id,
                "parent_turn_id": row.parent_turn_id, "payload": payload}
    return (_ENCODE_ASCII(envelope) + "\n").encode("ascii")


def line_head(session_json: str, instance_id: str) -> str:
    """The part of every line of one instance file between the row id and the seq (see :func:`encode_line_fast`)."""
    return f'", "session_id": {session_json}, "instance_id": "{instance_id}", "seq": '


def encode_line_fast(row: Row, payload_text: str, head: str, seq: int) -> bytes | None:
    """:func:`encode_line` with the instance's :func:`line_head` made once per file; ``None`` when the line is not
    UTF-8-encodable (a lone surrogate): :func:`encode_line` writes that one."""
    turn = "null" if row.turn_id is None else f'"{row.turn_id}"'
    parent = "null" if row.parent_turn_id is None else f'"{row.parent_turn_id}"'
    sec, micro = divmod(row.ts_us, 1_000_000)  # iso_ts inlined: once per row
    prefix = _ts_prefixes.get(sec)
    if prefix is None:
        prefix = iso_ts(row.ts_us)[:19]
    try:
        return (f'{{"event_id": "{row.event_id}{head}{seq}, "ts": "{prefix}.{micro:06d}+00:00", '
                f'"kind": "{row.kind}", "turn_id": {turn}, "parent_turn_id": {parent}, "payload": {payload_text}}}\n'
                ).encode()
    except UnicodeEncodeError:
        return None


# -- reading a file back ---------------------------------------------------------------------------------------------


class MalformedLine(ValueError):
    """A complete line that is not a replay row: the file was changed by something else than this archive."""

    def __init__(self, line_no: int, detail: str) -> None:
        super().__init__(f"line {line_no}: {detail}")
        self.line_no = line_no


@dataclass
class FileScan:
    """What an archive file holds, as far as appending to it needs to know."""

    session_id: str | None = None
    instance_id: str | None = None
    created_at: str | None = None
    created_us: int = 0  # the header's ts: orders a session's instances
    ids: set[str] = field(default_factory=set)
    last_seq: int = 0
    last_ts_us: int | None = None
    closed: bool = False
    stats: RowStats = field(default_factory=RowStats)
    good_bytes: int = 0  # length up to the end of the last complete line
    torn_bytes: int = 0  # an unterminated tail (a crash mid-write) after it


def scan_bytes(data: bytes) -> FileScan:
    """Read a whole file's rows; a torn last line is reported (``torn_bytes``), a malformed complete one raises."""
    end = data.rfind(b"\n") + 1
    out = FileScan(good_bytes=end, torn_bytes=len(data) - end)
    if not end:
        return out
    for no, line in enumerate(data[:end - 1].split(b"\n"), 1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise MalformedLine(no, f"not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("event_id"), str) or \
                not isinstance(row.get("seq"), int) or not isinstance(row.get("payload"), dict):
            raise MalformedLine(no, "not a replay row")
        if row["seq"] != out.last_seq + 1:
            raise MalformedLine(no, f"seq {row['seq']} after {out.last_seq}")
        kind = row.get("kind")
        if no == 1:
            if kind != "replay_header":
                raise MalformedLine(no, "the first row is not a replay_header")
            out.session_id = row.get("session_id")
            out.instance_id = row.get("instance_id")
            out.created_at = row["payload"].get("created_at")
            out.created_us = parse_ts(row.get("ts") or "") or 0
        out.ids.add(row["event_id"])
        out.last_seq = row["seq"]
        out.last_ts_us = parse_ts(row.get("ts") or "")
        out.closed = kind == "replay_footer"
        out.stats.add_payload(str(kind), row["payload"])
    return out


def read_header(first_line: bytes) -> dict[str, Any] | None:
    """The header row of a file from its first line, ``None`` if that is not one."""
    try:
        row = json.loads(first_line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and row.get("kind") == "replay_header" else None


# -- retention -------------------------------------------------------------------------------------------------------


def select_prunable(entries: Sequence[tuple[str, int, bool]], max_instances: int) -> list[str]:
    """Names to delete so that a tenant keeps its newest ``max_instances`` instances.

    ``entries`` are ``(name, last activity in µs, closed)``. Newest = latest last row (ties by name, so the choice
    does not depend on the order files were written in). An instance still open (no footer: its session may write
    again) is never deleted; it takes one of the N places when it ranks among the newest, as Agentao's active file
    does, and is kept on top of them when it does not.
    """
    if max_instances < 1:
        raise ValueError("max_instances must be >= 1")
    ranked = sorted(entries, key=lambda e: (e[1], e[0]), reverse=True)
    return sorted(name for name, _ts, closed in ranked[max_instances:] if closed)
