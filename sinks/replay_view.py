"""Text views of archived replays, modelled on Agentao's ``/replay list|show|tail`` (0.5.17), for a terminal.

Pure functions over rows (the JSON objects of a replay file); no I/O, no colour. What mirrors Agentao:

* ids: ``<session>.<instance>`` in full, ``<session[:8]>.<instance[:6]>`` short; a requested id matches by prefix of
  either, of the instance id or of the session id, and an exact match wins (:func:`find_candidates`);
* ``list``: newest first, each with its short id, first user message (80 chars), ``N events · M turns``, created /
  updated (local time) and file name;
* ``show``: a banner (file, updated, events, turns, schema, created, capture flags with a deep-capture badge, cwd,
  model, redactions), the session-level rows, then one block per turn: ``━ Turn <tid6> ━`` with seq range, start ->
  end, duration, parent, counts; ``user``, ``think``, the tools table (one row per call id), ``confirm`` rows,
  sub-agents, the ``LLM`` roll-up (calls, summed prompt/completion tokens and time, model, finish reasons, one line
  per failed call), compaction / state / host-event lines, the assistant text and the turn's status; a footer
  banner with redaction / truncation / drop totals. ``--turn`` keeps the turns whose id starts so, ``--errors``
  those with an ``error`` row or an error / cancelled ``turn_completed`` / ``tool_completed`` /
  ``llm_call_completed``;
* ``--raw`` and ``--kind`` (a *prefix* of the kind) and ``tail``: one ``#seq kind turn=<tid6> <ts>`` line per row and a
  one-line summary under it.

One deliberate difference: "⚠ has errors" in ``list`` uses the ``--errors`` rule (Agentao 0.5.17 only flags an
``error`` row, which its runtime never writes, so the badge never showed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

USER_PREVIEW = 80
FIRST_USER_MESSAGE_MAX = 256


@dataclass(frozen=True)
class ReplayEntry:
    """A replay file's summary (Agentao's ``ReplayMeta``, plus the tenant and whether it was closed)."""

    tenant: str
    path: Path
    session_id: str
    instance_id: str
    created_at: str | None
    updated_at: str | None
    event_count: int
    turn_count: int
    has_errors: bool
    malformed_lines: int
    first_user_message: str | None
    closed: bool

    @property
    def full_id(self) -> str:
        return f"{self.session_id}.{self.instance_id}"

    @property
    def short_id(self) -> str:
        return f"{self.session_id[:8]}.{self.instance_id[:6]}"


def summarize(rows: Sequence[dict[str, Any]], *, tenant: str, path: Path, session_id: str, instance_id: str,
              updated_at: str | None, malformed_lines: int = 0) -> ReplayEntry:
    """A :class:`ReplayEntry` from a file's rows (header ids win over the ones from the file name)."""
    created = None
    turns: set[str] = set()
    first_user = None
    closed = False
    for row in rows:
        kind = row.get("kind")
        payload = row.get("payload") if isinstance(row.get("payload"), dict) else {}
        if kind == "replay_header":
            created = payload.get("created_at") if created is None else created
            session_id = str(row.get("session_id") or session_id)
            instance_id = str(row.get("instance_id") or instance_id)
        if first_user is None and kind == "user_message" and isinstance(payload.get("content"), str):
            text = payload["content"].strip()
            first_user = text[:FIRST_USER_MESSAGE_MAX] or None
        if row.get("turn_id"):
            turns.add(str(row["turn_id"]))
        closed = kind == "replay_footer"
    has_errors = any(t["has_error"] for t in group_turns(rows)[0])
    return ReplayEntry(tenant, path, session_id, instance_id, created, updated_at, len(rows), len(turns),
                       has_errors, malformed_lines, first_user, closed)


def find_candidates(entries: Iterable[ReplayEntry], requested: str) -> list[ReplayEntry]:
    """Agentao's ``find_replay_candidates``: an exact id match alone, else every prefix match."""
    entries = list(entries)
    if not requested:
        return []
    exact = [e for e in entries if requested in (e.full_id, e.short_id, e.instance_id, e.session_id)]
    if exact:
        return exact
    return [e for e in entries if e.full_id.startswith(requested) or e.short_id.startswith(requested)
            or e.instance_id.startswith(requested) or e.session_id.startswith(requested)]


# -- formatting helpers ---------------------------------------------------------------------------------------------


def format_ts(value: object, tz: tzinfo | None = None, *, with_date: bool = True) -> str:
    """An ISO-8601 timestamp in ``tz`` (local time when None); the text itself when it does not parse."""
    if not value:
        return ""
    text = str(value)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return dt.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def format_ms(value: object) -> str:
    try:
        if value is None:
            return "?ms"
        ms = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "?ms"
    return f"{ms / 1000:.2f}s" if ms >= 1000 else f"{ms}ms"


def _duration_ms(start: object, end: object) -> int | None:
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0, round((b - a).total_seconds() * 1000))


def _preview(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}  …(+{len(text) - limit} chars)"


def _json_preview(value: object, limit: int) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _p(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.get("payload")
    return payload if isinstance(payload, dict) else {}


# -- one-line summaries ---------------------------------------------------------------------------------------------


def summarize_event(row: dict[str, Any]) -> str:
    """The one-line summary under a raw-view line (Agentao's ``_summarize_replay_event``, without markup)."""
    kind = row.get("kind")
    p = _p(row)
    if kind == "replay_header":
        on = sorted(k for k, v in (p.get("capture_flags") or {}).items() if v)
        flags = f", capture=[{','.join(on)}]" if on else ""
        return (f"schema={p.get('schema_version', '')}, session={str(p.get('session_id', ''))[:8]}, "
                f"instance={p.get('instance_id', '')}{flags}")
    if kind == "replay_footer":
        bits = [f"events={p.get('event_count', 0)}"]
        hits = sum(int(v) for v in (p.get("redaction_hits") or {}).values())
        if hits:
            bits.append(f"redactions={hits}")
        if p.get("truncated_field_hits"):
            bits.append(f"truncated_fields={sum(p['truncated_field_hits'].values())}")
        if p.get("dropped_field_hits"):
            bits.append(f"dropped_fields={sum(p['dropped_field_hits'].values())}")
        return ", ".join(bits)
    if kind == "session_started":
        return f"cwd={p.get('cwd', '')} model={p.get('model', '')}"
    if kind == "session_ended":
        return f"session={str(p.get('session_id', ''))[:8]}"
    if kind == "user_message":
        text = _one_line(str(p.get("content", "")))
        return text[:120] + ("…" if len(text) > 120 else "")
    if kind == "assistant_text_chunk":
        return _one_line(str(p.get("chunk", "")))[:120]
    if kind == "assistant_thought_chunk":
        return _one_line(str(p.get("text", "")))[:120]
    if kind == "tool_started":
        return f"{p.get('tool', '')} source={p.get('tool_source', '')}"
    if kind == "tool_output_chunk":
        return f"{p.get('tool', '')}" + (" (truncated)" if p.get("truncated") else "")
    if kind == "tool_completed":
        return f"{p.get('status')} {p.get('tool', '')} in {p.get('duration_ms')}ms" + (
            f" err={str(p['error'])[:80]}" if p.get("error") else "")
    if kind == "tool_result":
        bits = [str(p.get("tool", ""))]
        if isinstance(p.get("original_chars"), int):
            bits.append(f"{p['original_chars']:,} chars")
        if (p.get("content_truncation") or {}).get("truncated"):
            bits.append("truncated")
        if p.get("saved_to_disk"):
            bits.append("saved_to_disk")
        return ", ".join(bits)
    if kind == "tool_confirmation_requested":
        return f"ask: {p.get('tool', '')}"
    if kind == "tool_confirmation_resolved":
        outcome = f" ({p['outcome']})" if p.get("outcome") not in (None, "allow", "reject") else ""
        return f"tool={p.get('tool', '')} approved={p.get('approved')}{outcome}"
    if kind == "subagent_started":
        return f"agent={p.get('agent', '')} task={str(p.get('task', ''))[:80]}"
    if kind == "subagent_completed":
        turns = f" turns={p['turns']}" if p.get("turns") is not None else ""
        return f"agent={p.get('agent', '')} state={p.get('state', '')}{turns}"
    if kind == "turn_completed":
        extra = f" ({p['incomplete_reason']})" if p.get("incomplete_reason") else ""
        return f"{p.get('status', 'ok')}{extra}  {_one_line(str(p.get('final_text', '')))[:120]}"
    if kind == "error":
        return str(p.get("message", ""))
    if kind == "llm_call_started":
        return f"attempt={p.get('attempt')} model={p.get('model', '')} msgs={p.get('n_messages')} " \
               f"tools={p.get('tool_count')}"
    if kind == "llm_call_completed":
        usage = []
        for key, label in (("prompt_tokens", "p"), ("completion_tokens", "c")):
            if p.get(key) is not None:
                usage.append(f"{label}={p[key]}")
        for key, label in (("cache_read_tokens", "cached"), ("cache_creation_tokens", "cache-write"),
                           ("reasoning_tokens", "reasoning")):
            if p.get(key):
                usage.append(f"{label}={p[key]}")
        err = f" {p.get('error_class')}: {str(p.get('error_message') or '')[:80]}" if p.get("status") == "error" \
            else ""
        return f"{p.get('status', 'ok')} finish={p.get('finish_reason')} {p.get('duration_ms')}ms " \
               f"{' '.join(usage)}{err}".rstrip()
    if kind == "llm_call_delta":
        return f"+{len(p.get('added_messages') or [])} msg(s) (total={p.get('total_messages')})"
    if kind == "llm_call_io":
        return "deep-capture: full_messages + tools"
    if kind == "ask_user_requested":
        return str(p.get("question", ""))[:120]
    if kind == "ask_user_answered":
        return f"answer: {str(p.get('answer', ''))[:120]}"
    if kind == "background_notification_injected":
        return f"note_count={p.get('note_count')}"
    if kind == "context_compressed":
        return f"{p.get('type', '?')} msgs={p.get('pre_msgs')}→{p.get('post_msgs')} " \
               f"tok={p.get('pre_est_tokens')}→{p.get('post_est_tokens')}"
    if kind == "compaction_settled":
        line = (f"{p.get('kind', '?')} {p.get('status', '?')} ({p.get('trigger', '?')}/{p.get('reason', '?')}) "
                f"msgs={p.get('pre_msgs')}→{p.get('post_msgs')} "
                f"hist_tok={p.get('pre_tokens_history')}→{p.get('post_tokens_history')}")
        return line + (f" {str(p['detail'])[:80]}" if p.get("detail") else "")
    if kind == "images_removed":
        return f"{p.get('images_removed')} image(s) removed ({p.get('reason', '?')}) from message(s) " \
               f"{str(p.get('message_indices') or [])[:80]}"
    if kind == "session_summary_written":
        return f"id={str(p.get('summary_id', ''))[:8]} msgs={p.get('messages_summarized')} " \
               f"size={p.get('summary_size')}b"
    if kind in ("skill_activated", "skill_deactivated"):
        return str(p.get("skill", ""))
    if kind == "memory_write":
        return f"v{p.get('version_before')}→v{p.get('version_after')} entries={p.get('total_entries')}"
    if kind == "memory_delete":
        return f"key={p.get('key', '')} count={p.get('deleted_count')}"
    if kind == "memory_cleared":
        return f"memories={p.get('memories_cleared')} summaries={p.get('session_summaries_cleared')}"
    if kind == "model_changed":
        return f"{p.get('old_model', '')} → {p.get('new_model', '')} ({p.get('cause', '')})"
    if kind in ("permission_mode_changed", "readonly_mode_changed"):
        cause = f" ({p['cause']})" if p.get("cause") else ""
        return f"{p.get('previous')} → {p.get('current')}{cause}"
    if kind == "plugin_hook_fired":
        count = p.get("matched_rule_count", p.get("rule_count"))
        return f"{p.get('outcome', 'allow')} {p.get('hook_name', '')}" + (
            f" rules={count}" if count is not None else "")
    if kind == "tool_lifecycle":
        bits = [str(p.get("tool_name", ""))]
        if p.get("tool_call_id"):
            bits.append(f"id={str(p['tool_call_id'])[:8]}")
        if p.get("error_type"):
            bits.append(str(p["error_type"]))
        if p.get("summary"):
            bits.append(str(p["summary"])[:80])
        return f"{p.get('outcome') or p.get('phase', '')} " + " · ".join(b for b in bits if b)
    if kind == "subagent_lifecycle":
        task = str(p.get("task_summary") or "")
        err = f" {p['error_type']}" if p.get("error_type") else ""
        return f"{p.get('phase', '')} {task[:80]}{err}".rstrip()
    if kind == "permission_decision":
        reason = f" {str(p['reason'])[:80]}" if p.get("reason") else ""
        return f"{p.get('outcome', '')} {p.get('tool_name', '')} mode={p.get('mode', '')}{reason}"
    return ", ".join(sorted(str(k) for k in p)[:5])


# -- grouping -------------------------------------------------------------------------------------------------------


def group_turns(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(turns, session-level rows)``; a turn is flagged when it holds an error or an error/cancelled status."""
    top: list[dict[str, Any]] = []
    turns: dict[str, dict[str, Any]] = {}
    for row in rows:
        tid = row.get("turn_id")
        kind = row.get("kind", "")
        if kind in ("replay_header", "replay_footer"):
            continue
        if not tid:
            top.append(row)
            continue
        turn = turns.get(tid)
        if turn is None:
            turn = turns[tid] = {"id": str(tid), "parent_id": row.get("parent_turn_id"), "events": [],
                                 "has_error": False, "start_ts": row.get("ts"), "end_ts": row.get("ts")}
        turn["events"].append(row)
        turn["end_ts"] = row.get("ts") or turn["end_ts"]
        if kind == "error" or (kind in ("turn_completed", "tool_completed", "llm_call_completed")
                               and _p(row).get("status") in ("error", "cancelled")):
            turn["has_error"] = True
    return list(turns.values()), top


def collect_tool_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per call id from the ``tool_*`` and confirmation rows of a turn."""
    calls: dict[str, dict[str, Any]] = {}
    for row in rows:
        kind = row.get("kind")
        if kind not in ("tool_started", "tool_completed", "tool_result", "tool_output_chunk",
                        "tool_confirmation_requested", "tool_confirmation_resolved"):
            continue
        p = _p(row)
        cid = p.get("call_id")
        if not cid:
            continue
        call = calls.setdefault(str(cid), {"call_id": str(cid)})
        if kind == "tool_started":
            call.update(name=p.get("tool", ""), source=p.get("tool_source", ""),
                        args_preview=_json_preview(p.get("args", {}), 240))
        elif kind == "tool_confirmation_requested":
            call.setdefault("name", p.get("tool", ""))
            call.setdefault("args_preview", _json_preview(p.get("args", {}), 240))
        elif kind == "tool_completed":
            call.update(status=p.get("status"), duration_ms=p.get("duration_ms", 0), error=p.get("error"))
        elif kind == "tool_result":
            call.setdefault("name", p.get("tool", ""))
            call["status"] = p.get("status", call.get("status"))
            call["duration_ms"] = p.get("duration_ms", call.get("duration_ms", 0))
            call["error"] = p.get("error", call.get("error"))
            call["truncated"] = bool((p.get("content_truncation") or {}).get("truncated"))
            call["saved_to_disk"] = bool(p.get("saved_to_disk"))
            call["original_chars"] = p.get("original_chars")
            call["content_hash"] = p.get("content_hash")
            call["disk_path"] = p.get("disk_path")
        elif kind == "tool_output_chunk" and p.get("truncated"):
            call["output_truncated"] = True
        elif kind == "tool_confirmation_resolved":
            call["confirmation"] = p.get("approved")
    return list(calls.values())


# -- views ------------------------------------------------------------------------------------------------------------


def render_list(entries: Sequence[ReplayEntry], *, root: Path, max_instances: int | None,
                tz: tzinfo | None = None) -> str:
    """``replay list``: newest first (entries come oldest first, as Agentao's ``list_replays``)."""
    cap = f"max_instances={max_instances}" if max_instances is not None else "no retention"
    out = [f"Replay archive: {root}  ({cap} per tenant)"]
    if not entries:
        out += ["", "No saved replays found.", "Run `agentwatch replay run` (live) or `agentwatch replay rebuild`."]
        return "\n".join(out) + "\n"
    out += ["", f"Saved Replays ({len(entries)}):", ""]
    for e in reversed(entries):
        err = "  ⚠ has errors" if e.has_errors else ""
        state = "" if e.closed else "  (open)"
        out.append(f"  • {e.short_id}  [{e.tenant}]{state}")
        if e.first_user_message:
            text = _one_line(e.first_user_message)
            out.append("    " + (text if len(text) <= USER_PREVIEW else text[:USER_PREVIEW - 1] + "…"))
        out.append(f"    {e.event_count} events · {e.turn_count} turns{err}")
        updated = format_ts(e.updated_at, tz)
        out.append(f"    Created: {format_ts(e.created_at, tz)}  Updated: {updated}" if e.created_at
                   else f"    Updated: {updated}")
        out.append(f"    File: {e.path.name}")
        out.append("")
    out.append("Usage: agentwatch replay show <id>  or  agentwatch replay tail <id> [n]  or  agentwatch replay prune")
    return "\n".join(out) + "\n"


def render_ambiguous(requested: str, candidates: Sequence[ReplayEntry], tz: tzinfo | None = None) -> str:
    out = [f"Prefix '{requested}' is ambiguous — {len(candidates)} replays match:"]
    for e in candidates[:10]:
        out.append(f"  {e.short_id}  {format_ts(e.updated_at, tz)}  {e.event_count} events, {e.turn_count} turns")
    if len(candidates) > 10:
        out.append(f"  … and {len(candidates) - 10} more")
    out.append("Type more characters to disambiguate.")
    return "\n".join(out) + "\n"


def render_raw(rows: Sequence[dict[str, Any]], entry: ReplayEntry, tz: tzinfo | None = None) -> str:
    """The flat view: ``#seq kind turn=<tid6> <ts>`` and a one-line summary per row."""
    out = [f"{entry.full_id}  ({len(rows)} event(s))", ""]
    for row in rows:
        seq = row.get("seq")
        tid = str(row.get("turn_id") or "")[:6]
        turn = f" turn={tid}" if tid else ""
        out.append(f"  #{seq:>4}  {str(row.get('kind', '')):<28}{turn}  {format_ts(row.get('ts'), tz)}"
                   if isinstance(seq, int) else f"  #   ?  {row.get('kind', '')}")
        summary = summarize_event(row)
        if summary:
            out.append(f"    {summary}")
    return "\n".join(out) + "\n"


def render_grouped(rows: Sequence[dict[str, Any]], entry: ReplayEntry, *, turn_filter: str | None = None,
                   errors_only: bool = False, tz: tzinfo | None = None) -> str:
    """The narrative view: banner, session-level rows, one block per turn, footer."""
    out: list[str] = []
    header = next((r for r in rows if r.get("kind") == "replay_header"), None)
    footer = next((r for r in rows if r.get("kind") == "replay_footer"), None)
    started = next((r for r in rows if r.get("kind") == "session_started"), None)
    turns, top = group_turns(rows)
    out.append(f"━━━ Replay {entry.full_id} ━━━")
    out.append(f"tenant={entry.tenant}  file={entry.path}  updated={format_ts(entry.updated_at, tz)}  "
               f"events={entry.event_count}  turns={entry.turn_count}")
    if entry.malformed_lines:
        out.append(f"malformed_lines={entry.malformed_lines} skipped while reading")
    if header:
        hp = _p(header)
        on = sorted(k for k, v in (hp.get("capture_flags") or {}).items() if v)
        deep = "  ⚠ deep-capture" if [k for k in on if k != "capture_llm_delta"] else ""
        out.append(f"schema={hp.get('schema_version')}  created={format_ts(hp.get('created_at'), tz)}  "
                   f"flags=[{', '.join(on) if on else '—'}]{deep}")
    if started:
        sp = _p(started)
        out.append(f"cwd={sp.get('cwd', '')}  model={sp.get('model', '')}")
    if footer:
        hits = _p(footer).get("redaction_hits") or {}
        if hits:
            out.append("redactions: " + ", ".join(f"{k}={v}" for k, v in sorted(hits.items())))
    out.append("")
    if top and not turn_filter:
        out.append("Session-level events:")
        out += [f"  {str(r.get('kind', '')):<28}  {summarize_event(r)}" for r in top]
        out.append("")
    shown = [t for t in turns if (not turn_filter or t["id"].startswith(turn_filter))
             and (not errors_only or t["has_error"])]
    for turn in shown:
        out += _turn_lines(turn, tz)
    if not shown:
        active = ([f"turn={turn_filter}"] if turn_filter else []) + (["errors"] if errors_only else [])
        out.append(f"No turns matched{' (' + ', '.join(active) + ')' if active else ''}.")
        out.append("")
    if footer:
        fp = _p(footer)
        bits = [f"events={fp.get('event_count', 0)}"]
        for key, label in (("redaction_hits", "redactions"), ("truncated_field_hits", "truncated"),
                           ("dropped_field_hits", "dropped")):
            if fp.get(key):
                bits.append(f"{label}=" + "+".join(f"{k}:{v}" for k, v in sorted(fp[key].items())))
        out.append("━━━ End of replay ━━━")
        out.append(", ".join(bits))
    elif not entry.closed:
        out.append("━━━ (session still open: no replay_footer yet) ━━━")
    return "\n".join(out) + "\n"


def _turn_lines(turn: dict[str, Any], tz: tzinfo | None) -> list[str]:
    events = turn["events"]
    out = []
    seqs = [e["seq"] for e in events if isinstance(e.get("seq"), int)]
    counts: dict[str, int] = {}
    for e in events:
        counts[e.get("kind", "")] = counts.get(e.get("kind", ""), 0) + 1
    count_part = ", ".join(f"{k}={counts[k]}" for k in ("llm_call_completed", "tool_started", "error") if counts.get(k))
    parent = f"  parent={turn['parent_id'][:6]}" if turn.get("parent_id") else ""
    out.append(f"━ Turn {turn['id'][:6]} ━{'  ⚠ error' if turn['has_error'] else ''} "
               f"{'seq=' + str(min(seqs)) + '..' + str(max(seqs)) if seqs else 'seq=?'}  "
               f"{format_ts(turn.get('start_ts'), tz)} → {format_ts(turn.get('end_ts'), tz, with_date=False)}  "
               f"{format_ms(_duration_ms(turn.get('start_ts'), turn.get('end_ts')))}{parent}"
               f"{'  ' + count_part if count_part else ''}")
    user = next((e for e in events if e.get("kind") == "user_message"), None)
    if user:
        text = str(_p(user).get("content", ""))
        out.append(f"  user   {_preview(text, 400)} ({len(text)} chars)")
    thinking = "".join(str(_p(e).get("text", "")) for e in events if e.get("kind") == "assistant_thought_chunk")
    if thinking:
        out.append(f"  think  {_preview(thinking, 400)} ({len(thinking)} chars)")
    calls = collect_tool_rows(events)
    if calls:
        out.append(f"  tools  {len(calls)} call(s)")
        for c in calls:
            extras = []
            if c.get("truncated"):
                extras.append("truncated")
            if c.get("output_truncated"):
                extras.append("stream-truncated")
            if c.get("saved_to_disk"):
                extras.append("saved")
            if c.get("confirmation") is False:
                extras.append("denied")
            elif c.get("confirmation") is True:
                extras.append("approved")
            if isinstance(c.get("original_chars"), int):
                extras.append(f"{c['original_chars']:,} chars")
            if c.get("error"):
                extras.append(f"err={str(c['error'])[:40]}")
            status = {"ok": "●", "error": "✗", "cancelled": "○"}.get(str(c.get("status")), "?")
            out.append(f"    {status} {str(c.get('name') or '?'):<28} {format_ms(c.get('duration_ms'))}  "
                       f"id={c['call_id'][:8]}  source={c.get('source') or '?'}  status={c.get('status') or '?'}"
                       f"{'  (' + ', '.join(extras) + ')' if extras else ''}")
            if c.get("args_preview"):
                out.append(f"      args {c['args_preview']}")
            result = ([f"sha256={str(c['content_hash'])[:12]}"] if c.get("content_hash") else []) + (
                [f"disk={c['disk_path']}"] if c.get("disk_path") else [])
            if result:
                out.append(f"      result {'  '.join(result)}")
    confirms = [e for e in events if e.get("kind") in ("tool_confirmation_requested", "tool_confirmation_resolved")]
    if confirms:
        out.append(f"  confirm {len(confirms)} event(s)")
        for e in confirms:
            p = _p(e)
            if e.get("kind") == "tool_confirmation_requested":
                out.append(f"    ? {p.get('tool', '')} requested args={_json_preview(p.get('args', {}), 180)}")
            else:
                label = "approved" if p.get("approved") else "denied"
                if p.get("outcome") not in (None, "allow", "reject"):
                    label += f" ({p['outcome']})"
                out.append(f"    ● {p.get('tool', '')} {label}")
    for e in events:
        if e.get("kind") == "subagent_started":
            p = _p(e)
            out.append(f"  subagent  {p.get('agent', '')} task={str(p.get('task', ''))[:80]}")
    started = [e for e in events if e.get("kind") == "llm_call_started"]
    completed = [e for e in events if e.get("kind") == "llm_call_completed"]
    if completed:
        def total(key: str) -> int:
            return sum(int(_p(e).get(key) or 0) for e in completed)

        models = sorted({str(_p(e).get("model")) for e in started if _p(e).get("model")})
        finishes = sorted({str(_p(e).get("finish_reason")) for e in completed
                           if _p(e).get("finish_reason") is not None})
        errored = any(_p(e).get("status") == "error" for e in completed)
        out.append(f"  {'LLM⚠' if errored else 'LLM'}   {len(started) or len(completed)} call(s), "
                   f"p={total('prompt_tokens')} c={total('completion_tokens')} {format_ms(total('duration_ms'))}"
                   f"{' model=' + models[-1] if models else ''}{' finish=' + ','.join(finishes) if finishes else ''}")
        for e in completed:
            p = _p(e)
            if p.get("status") == "error":
                out.append(f"    llm_error attempt={p.get('attempt')} {p.get('error_class') or ''}: "
                           f"{str(p.get('error_message') or '')[:160]}")
    for e in events:
        kind = e.get("kind")
        p = _p(e)
        if kind in ("context_compressed", "compaction_settled"):
            out.append(f"  compact  {summarize_event(e)}")
        elif kind == "images_removed":
            out.append(f"  images  {summarize_event(e)}")
        elif kind == "session_summary_written":
            out.append(f"  summary  {summarize_event(e)}")
        elif kind == "ask_user_requested":
            out.append(f"  ask  {str(p.get('question', ''))[:120]}")
        elif kind == "ask_user_answered":
            out.append(f"  answer {_preview(str(p.get('answer', '')), 120)}")
        elif kind in ("model_changed", "permission_mode_changed", "readonly_mode_changed", "skill_activated",
                      "skill_deactivated", "memory_write", "memory_delete", "memory_cleared"):
            out.append(f"  state   {kind} {summarize_event(e)}")
        elif kind == "tool_lifecycle" and p.get("outcome") in ("error", "cancelled"):
            out.append(f"  tool*   {summarize_event(e)}")
        elif kind == "subagent_lifecycle":
            out.append(f"  agent*  {summarize_event(e)}")
        elif kind == "permission_decision" and p.get("outcome") != "allow":
            out.append(f"  perm    {summarize_event(e)}")
        elif kind == "plugin_hook_fired":
            out.append(f"  hook    {summarize_event(e)}")
        elif kind == "error":
            out.append(f"  error  {str(p.get('message', ''))[:160]}")
            if p.get("detail"):
                out.append(f"    detail {_preview(str(p['detail']), 240)}")
    text = "".join(str(_p(e).get("chunk", "")) for e in events if e.get("kind") == "assistant_text_chunk")
    tc = next((e for e in events if e.get("kind") == "turn_completed"), None)
    if not text and tc:
        text = str(_p(tc).get("final_text", ""))
    if text:
        out.append(f"  asst   {text} ({len(text)} chars)")
    if tc:
        p = _p(tc)
        err = f"  err={str(p['error'])[:80]}" if p.get("error") else ""
        why = f"  incomplete={p['incomplete_reason']}" if p.get("incomplete_reason") else ""
        out.append(f"  └─  {p.get('status', 'ok')}{why}{err}")
    out.append("")
    return out
