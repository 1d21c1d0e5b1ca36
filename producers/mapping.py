"""Agentao event data -> the typed fields of an AgentEvent plus an open ``payload``.

Pure functions, no I/O, never raise on odd input. The rule that makes the mapping lossless: every key of the
Agentao data either lands *verbatim* in a typed field (see ``AGENTAO_LIFTS`` / ``HOST_LIFTS`` for which key goes
where) or stays in ``payload``. A value that had to be changed to fit its field (a sub-agent label stripped from a
tool name, an error message cut to 500 characters, ``"12"`` coerced to 12) is lifted *and* kept in full in the
payload. A value that cannot be coerced (a dict where a string belongs) stays only in the payload.

``null`` stays ``null``: a missing or null token count means "the provider reported no usage" and is never
turned into 0. Payload keys that agentwatch adds itself start with ``_`` (Agentao's keys never do).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from producers.normalize import JsonObjectText, compact_json_encoder
from schemas import contract

ERROR_MESSAGE_MAX = 500
_ENCODE = compact_json_encoder(str)
#: The encoder :func:`payload_text` tries first (compact, non-ASCII kept, ``str()`` for what JSON cannot hold, no
#: NaN); the bridge snapshots container-holding data with it, so the payload text it maps later is the same.
encode_json: Callable[[Any], str] = _ENCODE
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens",
                "reasoning_tokens")

# Typed fields and their Avro kind: "s" string, "l" long, "i" int (HTTP status).
_KIND: dict[str, str] = {
    "tool_name": "s", "call_id": "s", "status": "s", "duration_ms": "l", "model": "s", "error_class": "s",
    "error_message": "s", "http_status": "i", "finish_reason": "s", "incomplete_reason": "s",
    "permission_decision": "s", "child_task_id": "s", "agent_name": "s", "confirm_outcome": "s",
    **dict.fromkeys(TOKEN_FIELDS, "l"),
}

# (data key, typed field), in priority order: the first key that fills a field wins, a later key aiming at an
# already filled field stays in the payload (e.g. turn_end "error" vs llm_call_completed "error_message").
_COMMON: tuple[tuple[str, str], ...] = (
    ("tool", "tool_name"),
    ("call_id", "call_id"),
    ("status", "status"),
    ("duration_ms", "duration_ms"),
    *((f, f) for f in TOKEN_FIELDS),
    ("model", "model"),
    ("error_class", "error_class"),
    ("error_message", "error_message"),
    ("error", "error_message"),
    ("finish_reason", "finish_reason"),
    ("incomplete_reason", "incomplete_reason"),
    ("child_task_id", "child_task_id"),
)

AGENTAO_LIFTS: dict[str, tuple[tuple[str, str], ...]] = {
    "agent_start": (("agent", "agent_name"), *_COMMON),
    "agent_end": (("agent", "agent_name"), ("state", "status"), *_COMMON),
    "model_changed": (("new_model", "model"), *_COMMON),
}
"""Per-type overrides of the common lifts (``_COMMON`` applies to every other type)."""

_USAGE_LIFTS: tuple[tuple[str, str], ...] = tuple((f, f) for f in TOKEN_FIELDS)

HOST_LIFTS: dict[str, tuple[tuple[str, str], ...]] = {
    "tool_lifecycle": (("tool_name", "tool_name"), ("tool_call_id", "call_id"), ("outcome", "status"),
                       ("error_type", "error_class")),
    "permission_decision": (("tool_name", "tool_name"), ("tool_call_id", "call_id"),
                            ("outcome", "permission_decision")),
    "subagent_lifecycle": (("child_task_id", "child_task_id"), ("phase", "status"), ("error_type", "error_class")),
}
"""Host event (``model_dump(mode="json")``) keys lifted per kind."""

# A sub-agent's forwarded events name the tool "[generalist 1/100] read_file"; its confirmations "[generalist] x".
_LABEL_RE = re.compile(r"^\[[^\]\n]{1,200}\]\s+(?=\S)")
_RETRY_STATUS_RE = re.compile(r"^\s*status\s*=\s*(\d{3})\s*$")
_MESSAGE_STATUS_RE = re.compile(r"(?:error code|status(?:[ _]code)?|http)\s*[:=]?\s*([1-5]\d\d)\b", re.I)
# Provider SDK exception classes (OpenAI, Anthropic) that imply one status. InternalServerError covers every 5xx
# in the OpenAI SDK, so a code found in the message wins over this table.
ERROR_CLASS_STATUS: dict[str, int] = {
    "BadRequestError": 400, "AuthenticationError": 401, "PermissionDeniedError": 403, "NotFoundError": 404,
    "ConflictError": 409, "UnprocessableEntityError": 422, "RateLimitError": 429, "InternalServerError": 500,
    "ServiceUnavailableError": 503, "DeadlineExceededError": 504, "OverloadedError": 529,
}
_RETRY_NON_CLASS_REASONS = frozenset({"parameter_repair", "streaming_unsupported"})


_KNOWN: frozenset[str] = frozenset()  # known_types(), once loaded (read on the hot path without a call)


@cache
def known_types() -> frozenset[str]:
    """The EventType symbols of the current contract."""
    global _KNOWN
    _KNOWN = frozenset(contract.event_types())
    return _KNOWN


def event_symbol(agentao_type: Any) -> str:
    """The contract symbol for an Agentao (or host) event type; ``unknown`` for one the contract lacks yet."""
    name = agentao_type if agentao_type.__class__ is str else getattr(agentao_type, "value", agentao_type)
    return name if isinstance(name, str) and name in (_KNOWN or known_types()) else "unknown"


def strip_tool_label(name: str) -> str:
    """``"[generalist 1/100] read_file"`` -> ``"read_file"``; a bare name is returned unchanged."""
    m = _LABEL_RE.match(name)
    return name[m.end():] if m else name


def http_status_from_retry_reason(reason: Any) -> int | None:
    """``llm_retry.reason`` is ``status=<code>`` for an HTTP failure, else an exception class or a keyword."""
    if not isinstance(reason, str):
        return None
    m = _RETRY_STATUS_RE.match(reason)
    return int(m.group(1)) if m else None


def http_status_from_error(error_class: Any, error_message: Any) -> int | None:
    """The provider HTTP status of a failed LLM call: a code stated in the message, else one implied by the class."""
    if isinstance(error_message, str):
        m = _MESSAGE_STATUS_RE.search(error_message[:2000])
        if m:
            return int(m.group(1))
    if isinstance(error_class, str):
        return ERROR_CLASS_STATUS.get(error_class.rsplit(".", 1)[-1])
    return None


def fields_from_agentao(type: str, data: Any, extra: Mapping[str, Any] | None = None, *,
                        defer: bool = False) -> dict[str, Any]:
    """Typed fields + ``payload`` for one transport ``AgentEvent`` (``ev.type`` value, ``ev.data``).

    ``extra`` holds the bridge's own additions to the payload (``_``-prefixed keys). ``defer=True`` returns the
    payload as a dict instead of text when every value is an immutable scalar, so the publisher serialises it
    off the agent's thread; a payload holding containers is serialised now, because Agentao may mutate them
    (message lists, args dicts) after the callback returned.
    """
    name = type if type.__class__ is str else getattr(type, "value", type)
    if data.__class__ is not dict and not isinstance(data, Mapping):
        out: dict[str, Any] = {}
        rest: dict[str, Any] = {"_data": data}
    else:
        out, rest = _lift(data, AGENTAO_LIFTS.get(name, _COMMON))
        if name == "llm_retry":
            reason = data.get("reason")
            status = http_status_from_retry_reason(reason)
            if status is not None:
                out["http_status"] = status
            elif isinstance(reason, str) and reason and reason not in _RETRY_NON_CLASS_REASONS:
                out.setdefault("error_class", reason)  # e.g. RemoteProtocolError; reason stays in payload
        elif name == "llm_call_completed" and (out.get("error_class") or out.get("status") == "error"):
            status = http_status_from_error(out.get("error_class"), data.get("error_message"))
            if status is not None:
                out["http_status"] = status
    if not (name.__class__ is str and name in (_KNOWN or known_types())) and event_symbol(name) == "unknown":
        rest["_agentao_type"] = name if isinstance(name, str) else repr(name)
    if extra:
        rest.update(extra)
    out["payload"] = rest if defer and rest and _all_scalars(rest) else payload_text(rest)
    return out


def fields_from_host(event_type: str, data: Any, *, defer: bool = False) -> dict[str, Any]:
    """Typed fields + ``payload`` for one host event dumped with ``model_dump(mode="json")``.

    ``defer=True`` returns the payload as a dict for the publisher to serialise off the agent's thread; only
    for ``data`` that is a fresh JSON-safe dump nobody else holds (what :func:`host_event_dump` returns).
    """
    if not isinstance(data, Mapping):
        return {"payload": payload_text({"_data": data})}
    out, rest = _lift(data, HOST_LIFTS.get(event_type, ()))
    known = event_symbol(event_type) != "unknown"
    if known and rest.get("event_type") == event_type:
        del rest["event_type"]  # it is the event's type symbol
    duration = _duration_ms(data.get("started_at"), data.get("completed_at"))
    if duration is not None:
        out["duration_ms"] = duration
    if event_type == "subagent_lifecycle" and "usage" in rest:
        usage = rest["usage"]
        if isinstance(usage, Mapping):
            lifted, usage_rest = _lift(usage, _USAGE_LIFTS)
            out.update(lifted)
            if usage_rest:
                rest["usage"] = usage_rest
            else:
                del rest["usage"]
        elif usage is None:
            del rest["usage"]  # no usage: the token fields stay null
    if not known:
        rest["_host_type"] = event_type
    out["payload"] = (rest or None) if defer else payload_text(rest)
    return out


def host_event_dump(ev: Any) -> tuple[str, dict[str, Any]]:
    """``(event_type, json-mode dict)`` of an ``agentao.host`` model (or anything dict-like), never raising.

    The dict is always a fresh, JSON-safe copy that nothing else holds (what ``fields_from_host(defer=True)``
    needs).
    """
    try:
        dumped = ev.model_dump(mode="json")
    except Exception:
        try:
            dumped = _jsonable(dict(ev) if isinstance(ev, Mapping) else dict(vars(ev)), 0, set())
        except Exception:
            dumped = {"_repr": repr(ev)}
    kind = dumped.get("event_type") if isinstance(dumped, dict) else None
    return (kind if isinstance(kind, str) else "unknown"), dumped


def confirm_fields(tool: Any, call_id: Any, outcome: str | None, duration_ms: int | None,
                   error: BaseException | None = None) -> dict[str, Any]:
    """Fields of our ``confirm_resolved`` event (``outcome`` allow|reject|timeout; None when the host raised)."""
    data: dict[str, Any] = {"tool": tool, "call_id": call_id, "duration_ms": duration_ms}
    if error is not None:
        data["error_class"] = type(error).__name__
        data["error_message"] = str(error)
    out, rest = _lift(data, _COMMON)
    out["confirm_outcome"] = outcome
    out["payload"] = payload_text(rest)
    return out


def payload_text(rest: Mapping[str, Any]) -> str | None:
    """Compact JSON object text, ``None`` when empty. Non-serialisable values become ``str()``; never raises.

    The text is a :class:`~producers.normalize.JsonObjectText`: the publisher keeps it without parsing it again.
    """
    if not rest:
        return None
    try:
        text = _ENCODE(rest)
        return JsonObjectText(text) if type(rest) is dict else text  # another Mapping may not encode as one
    except Exception:  # cycles, NaN, non-string keys: convert the slow way
        pass
    try:
        return JsonObjectText(json.dumps(_jsonable(rest, 0, set()), separators=(",", ":"), ensure_ascii=False))
    except Exception as exc:  # a key whose str() raises: keep what can be said
        return JsonObjectText(json.dumps({"_unserialisable": type(exc).__name__}))


# -- internals ------------------------------------------------------------------------------------------------

_SCALARS = frozenset({str, int, bool, type(None)})


def _all_scalars(rest: Mapping[str, Any]) -> bool:
    for k, v in rest.items():
        tv = type(v)
        if type(k) is not str or (tv not in _SCALARS and not (tv is float and math.isfinite(v))):
            return False
    return True


_Entries = tuple[tuple[Any, str, str], ...]
_Lifter = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


def _plan_slow(data: Mapping[str, Any], lifts: tuple[tuple[str, str], ...]) -> tuple[_Entries, bool]:
    """The lifts of ``lifts`` whose key ``data`` has, in priority order, as (key, target, mode), and whether two
    of them aim at the same field. Modes: ``s`` string, ``t`` tool name (label stripped), ``e`` error message
    (capped), ``l`` long, ``i`` HTTP status."""
    entries = tuple((key, target, _MODE[target]) for key, target in lifts if key in data)
    return entries, len({target for _, target, _ in entries}) < len(entries)


# Per lift table of this module (known by id: they live as long as the module), a lifter per key tuple of the
# data: Agentao emits each event type with the same few keys, so :func:`_lift` runs code generated for exactly
# those keys (see _compile_lifter) instead of walking the table. Bounded.
_LIFTERS: dict[int, dict[tuple[Any, ...], _Lifter]] = {
    id(t): {} for t in (_COMMON, _USAGE_LIFTS, (), *AGENTAO_LIFTS.values(), *HOST_LIFTS.values())}
_SEEN: dict[tuple[int, tuple[Any, ...]], int] = {}  # (table, keys) not compiled yet, and how often they came
_COMPILE_AFTER = 8
_MODE = {target: {"tool_name": "t", "error_message": "e"}.get(target, kind) for target, kind in _KIND.items()}
# per mode, the test of a value that is lifted as it is (and consumed): the common case, inline
_AS_IS = {"s": "v.__class__ is str", "t": "v.__class__ is str and v[:1] != '['",
          "e": f"v.__class__ is str and len(v) <= {ERROR_MESSAGE_MAX}",
          "l": f"v.__class__ is int and {_LONG_MIN} <= v <= {_LONG_MAX}",
          "i": "v.__class__ is int and 100 <= v <= 599"}


def _lift(data: Mapping[str, Any], lifts: tuple[tuple[str, str], ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    lifters = _LIFTERS.get(id(lifts)) if data.__class__ is dict else None
    if lifters is not None:
        keys = tuple(data)
        lifter = lifters.get(keys)
        if lifter is not None:
            try:
                return lifter(data)  # type: ignore[arg-type]
            except Exception:  # the dict changed under us (another thread): the generic walk copes
                pass
        else:
            seen = _SEEN.get((id(lifts), keys), 0) + 1
            if seen < _COMPILE_AFTER:  # a stream of ever new key sets stays on the generic walk
                if len(_SEEN) >= 4096:
                    _SEEN.clear()
                _SEEN[(id(lifts), keys)] = seen
            else:
                _SEEN.pop((id(lifts), keys), None)
                if len(lifters) >= 256:
                    lifters.clear()
                lifters[keys] = _compile_lifter(data, lifts, keys)
    return _lift_generic(data, _plan_slow(data, lifts))


def _compile_lifter(data: Mapping[str, Any], lifts: tuple[tuple[str, str], ...], keys: tuple[Any, ...]) -> _Lifter:
    """:func:`_lift_generic` for dicts with exactly ``keys`` (in this order), as straight-line code: per lifted
    key a test of the common case inline, per key of the data whether it stays in the payload."""
    entries, dup = _plan_slow(data, lifts)
    if dup or not all(type(k) is str for k in keys):  # rare shapes: the generic walk
        return lambda d: _lift_generic(d, (entries, dup))
    lines = ["def lift(data):", "    out = {}"]
    consumed_flag = {}
    for i, (key, target, mode) in enumerate(entries):
        consumed_flag[key] = f"c{i}"
        lines += [f"    v = data[{key!r}]",
                  f"    if v is None or {_AS_IS[mode]}:",
                  f"        out[{target!r}] = v",
                  f"        c{i} = True",
                  "    else:",
                  f"        c{i} = _lift_other(out, {target!r}, v, {mode!r})"]
    lines.append("    rest = {}")
    for key in keys:
        flag = consumed_flag.get(key)
        lines.append(f"    {'if not ' + flag + ': ' if flag else ''}rest[{key!r}] = data[{key!r}]")
    lines.append("    return out, rest")
    namespace: dict[str, Any] = {"_lift_other": _lift_other}
    exec(compile("\n".join(lines), "<agentao lift>", "exec"), namespace)
    return namespace["lift"]  # type: ignore[no-any-return]


def _lift_other(out: dict[str, Any], target: str, value: Any, mode: str) -> bool:
    """Lift a value the inline test did not take (coerced, cut, or not representable); True if consumed."""
    lifted, exact = _lift_value(value, mode)
    if lifted is None:
        return False  # cannot be represented: stays in the payload only, the field stays free
    out[target] = lifted
    return exact


def _lift_generic(data: Mapping[str, Any], plan: tuple[_Entries, bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Typed fields lifted from ``data`` by ``plan`` (priority order: the first key that fills a field wins), and
    the rest: every key not consumed (a value lifted exactly)."""
    entries, dup = plan
    out: dict[str, Any] = {}
    consumed: list[Any] = []
    for key, target, mode in entries:
        if dup and target in out:  # an earlier key filled it: this one stays in the payload
            continue
        value = data[key]
        if value is None:  # lifted as null and consumed, whatever the kind
            out[target] = None
            consumed.append(key)
        elif _lift_other(out, target, value, mode):
            consumed.append(key)
    try:
        rest = {k: v for k, v in data.items() if k not in consumed} if consumed else dict(data.items())
    except Exception:
        rest = {"_data": repr(data)}
    return out, rest


def _lift_value(value: Any, mode: str) -> tuple[Any, bool]:
    """(lifted, exact) for a value the fast cases of :func:`_lift` did not take; lifted is None when it cannot be
    represented in the field."""
    if mode == "l" or mode == "i":
        return _as_int(value, http=mode == "i")
    lifted, exact = _as_str(value)
    if lifted is None:
        return None, False
    if mode == "t":
        stripped = strip_tool_label(lifted)
        return stripped, exact and stripped == lifted
    if mode == "e" and len(lifted) > ERROR_MESSAGE_MAX:
        return lifted[:ERROR_MESSAGE_MAX], False
    return lifted, exact


def _as_str(value: Any) -> tuple[str | None, bool]:
    if value is None:
        return None, True
    if isinstance(value, str):
        return (value, True) if type(value) is str else (str.__str__(value), False)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), False
    return None, False


def _as_int(value: Any, *, http: bool = False) -> tuple[int | None, bool]:
    if value is None:
        return None, True
    exact = False
    if isinstance(value, bool):
        return None, False  # a bool is not a count
    if isinstance(value, int):
        result, exact = int(value), type(value) is int
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None, False
        result = round(value)
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            try:
                f = float(value.strip())
            except ValueError:
                return None, False
            if not math.isfinite(f):
                return None, False
            result = round(f)
    else:
        return None, False
    if http:
        return (result, exact) if 100 <= result <= 599 else (None, False)
    return (result, exact) if _LONG_MIN <= result <= _LONG_MAX else (None, False)


def _duration_ms(started: Any, completed: Any) -> int | None:
    if not (isinstance(started, str) and isinstance(completed, str)):
        return None
    try:
        delta = datetime.fromisoformat(completed) - datetime.fromisoformat(started)
    except (ValueError, TypeError):
        return None
    ms = round(delta.total_seconds() * 1000)
    return ms if ms >= 0 else None


def _jsonable(value: Any, depth: int, seen: set[int]) -> Any:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > 100:
        return "<too deep>"
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if id(value) in seen:
            return "<cycle>"
        seen = seen | {id(value)}
        if isinstance(value, Mapping):
            return {str(k): _jsonable(v, depth + 1, seen) for k, v in value.items()}
        return [_jsonable(v, depth + 1, seen) for v in value]
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
