"""Optional secret scrubbing and truncation of raw Agentao data before it leaves the process.

Agentao's transport events are raw: tool results, shell output and LLM message deltas can hold API keys. Agentao
itself scans only its replay files and its log, with a regex scanner and per-field caps configured by
``capture_flags``. :class:`Scrubber` applies the same policy to an AgentEvent's ``payload`` (and its
``error_message``), so what reaches Kafka matches what Agentao would have written to a replay file:

* every string (recursively) is scanned and matches become ``[REDACTED:<kind>]`` for the kinds Agentao knows
  (the patterns mirror ``agentao.security.secret_scan`` 0.5.17, in the same order, so a JWT or a key block is
  not partly eaten by a looser pattern; strings shorter than 13 characters cannot hold any of them and are
  skipped); per-event counts land in ``payload["redaction_hits"]``;
* the fields Agentao caps are head/tail truncated with its marker and metadata: ``tool_result.content`` 8,000
  (20 % head, unless ``capture_tool_result_full``), ``tool_output.chunk`` 4,000 (flat metadata),
  ``ask_user_answered.answer`` 500, ``memory_write.value`` 2,000, ``plugin_hook_fired.output_preview`` 500
  (unless ``capture_plugin_hook_output_full``);
* ``capture_llm_delta=False`` drops ``llm_call_delta.added_messages`` and ``capture_full_llm_io=False`` drops
  ``llm_call_io.messages`` / ``tools`` (counts are kept), the way Agentao then emits no such data at all.

It is best-effort pattern matching, not DLP. It runs on the publisher's sender thread, never on the agent's.
One combined regex decides whether a string is clean in a single pass (most are); only a string that matches
pays for the ordered per-kind substitutions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MIN_SCAN_LEN = 13
TRUNCATION_MARKER = "\n\n[… truncated …]\n\n"

TOOL_OUTPUT_CHUNK_MAX_CHARS = 4_000
TOOL_RESULT_MAX_CHARS = 8_000
ASK_USER_ANSWER_MAX_CHARS = 500
MEMORY_WRITE_MAX_CHARS = 2_000
PLUGIN_HOOK_OUTPUT_MAX_CHARS = 500

DEFAULT_CAPTURE_FLAGS: dict[str, bool] = {
    "capture_llm_delta": True,
    "capture_full_llm_io": False,
    "capture_tool_result_full": False,
    "capture_plugin_hook_output_full": False,
}

_PRIVATE_KEY = (
    r"-----BEGIN [A-Z ]+KEY(?: BLOCK)?-----(?:(?!-----BEGIN )[\s\S])+?-----END [A-Z ]+KEY(?: BLOCK)?-----"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[ \t]*(?:\r?\n|\\n)"
    r"(?:[A-Za-z][A-Za-z0-9-]*:[^\r\n\\]*(?:\r?\n|\\n))*"
    r"(?:\s|\\n)*[A-Za-z0-9+/=]+(?:(?:\r?\n|\\n)[A-Za-z0-9+/=]+)*"
)

#: (kind, pattern), most specific first; scoped ``(?i:...)`` flags so the patterns can be OR-ed together.
SECRET_PATTERNS: tuple[tuple[str, str], ...] = (
    ("private_key_block", _PRIVATE_KEY),
    ("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_api_key", r"\bsk-(?!ant-)(?:proj-)?[A-Za-z0-9_\-]{20,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    ("google_oauth_secret", r"\bGOCSPX-[A-Za-z0-9_\-]{20,}"),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    ("github_token", r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    ("slack_token", r"\bxox[baprs]-[0-9A-Za-z\-]{10,}\b"),
    ("slack_token", r"\bxapp-\d-[A-Za-z0-9\-]{10,}"),
    ("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}"),
    ("stripe_key", r"\bwhsec_[A-Za-z0-9]{20,}"),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\b"),
    ("bearer", r"(?i:\bbearer\s+[A-Za-z0-9_\-\.=+/]{20,})"),
    ("bearer", r"(?i:\bauthorization\s*[:=]\s*(?:bearer\s+)?[A-Za-z0-9_\-\.=+/]{20,})"),
    ("oauth_token",
     r"(?i:(?:\b(?:access_token|refresh_token|id_token|code_verifier)[\"']?\s*[:=]\s*[\"']?"
     r"|(?<=[?&])code=|\"code\"\s*:\s*\")[^\s\"'&,}]{8,})"),
    ("kv_secret",
     r"(?i:(?<![A-Za-z0-9_])(?:api[_-]?key|token|secret|password|passwd)\s*[:=]\s*[\"']?[^\s\"']{8,}[\"']?)"),
)

SECRET_KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for kind, _ in SECRET_PATTERNS))

_COMPILED: tuple[tuple[str, re.Pattern[str]], ...] = tuple((k, re.compile(p)) for k, p in SECRET_PATTERNS)
# One pass over a clean string (the common case) instead of one per pattern.
_ANY = re.compile("|".join(f"(?:{p})" for _, p in SECRET_PATTERNS))

# (event type, payload key) -> (max chars, head ratio, metadata style, capture flag that lifts the cap)
_CAPS: dict[tuple[str, str], tuple[int, float, str, str | None]] = {
    ("tool_output", "chunk"): (TOOL_OUTPUT_CHUNK_MAX_CHARS, 0.5, "flat", None),
    ("tool_result", "content"): (TOOL_RESULT_MAX_CHARS, 0.2, "nested", "capture_tool_result_full"),
    ("ask_user_answered", "answer"): (ASK_USER_ANSWER_MAX_CHARS, 0.5, "nested", None),
    ("memory_write", "value"): (MEMORY_WRITE_MAX_CHARS, 0.5, "nested", None),
    ("plugin_hook_fired", "output_preview"): (PLUGIN_HOOK_OUTPUT_MAX_CHARS, 0.5, "nested",
                                              "capture_plugin_hook_output_full"),
}
_VERBATIM: frozenset[tuple[str, str]] = frozenset({("tool_result", "content_hash")})
# (event type, payload key, capture flag that keeps it, key that records how many items were dropped)
_DROPS: tuple[tuple[str, str, str, str], ...] = (
    ("llm_call_delta", "added_messages", "capture_llm_delta", "added_messages_count"),
    ("llm_call_io", "messages", "capture_full_llm_io", "messages_count"),
    ("llm_call_io", "tools", "capture_full_llm_io", "tools_count"),
)


def redact(text: str, hits: dict[str, int] | None = None) -> str:
    """``text`` with every secret replaced by ``[REDACTED:<kind>]``; counts go into ``hits`` when given."""
    if len(text) < MIN_SCAN_LEN or _ANY.search(text) is None:
        return text
    for kind, pattern in _COMPILED:
        if pattern.search(text) is None:
            continue
        text, n = pattern.subn(f"[REDACTED:{kind}]", text)
        if hits is not None and n:
            hits[kind] = hits.get(kind, 0) + n
    return text


def truncate_head_tail(text: str, max_chars: int, head_ratio: float) -> tuple[str, int]:
    """Agentao's head/tail cut: ``(text, omitted_chars)``; the marker sits between head and tail."""
    total = len(text)
    if total <= max_chars:
        return text, 0
    head_len = max(1, int(max_chars * head_ratio))
    tail_len = max(1, max_chars - head_len)
    return text[:head_len] + TRUNCATION_MARKER + text[-tail_len:], max(0, total - head_len - tail_len)


class Scrubber:
    """Redacts secrets and applies Agentao's field caps to one event at a time; stateless, so thread-safe."""

    def __init__(self, capture_flags: Mapping[str, bool] | None = None) -> None:
        self.capture_flags = {**DEFAULT_CAPTURE_FLAGS, **(capture_flags or {})}
        flags = self.capture_flags
        self._caps = {key: cap for key, cap in _CAPS.items() if not (cap[3] and flags.get(cap[3]))}
        self._drops = tuple(d for d in _DROPS if not flags.get(d[2]))

    def redact(self, text: str, hits: dict[str, int] | None = None) -> str:
        return redact(text, hits)

    def scrub_value(self, value: Any, hits: dict[str, int]) -> Any:
        """A copy of ``value`` with every string inside it redacted (dicts, lists and tuples walked)."""
        if isinstance(value, str):
            return redact(value, hits)
        if isinstance(value, dict):
            return {k: self.scrub_value(v, hits) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_value(v, hits) for v in value]
        return value

    def scrub_payload(self, event_type: str, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """A scrubbed copy of ``payload`` and the redaction hits per kind (also stored in ``redaction_hits``)."""
        hits: dict[str, int] = {}
        out: dict[str, Any] = {}
        dropped: list[str] = []
        for et, key, _flag, count_key in self._drops:
            if et == event_type and key in payload:
                dropped.append(key)
                value = payload[key]
                out[count_key] = len(value) if isinstance(value, (list, tuple, dict, str)) else None
        for key, value in payload.items():
            if key in dropped:
                continue
            cap = self._caps.get((event_type, key))
            if cap is not None and isinstance(value, str):
                max_chars, head_ratio, style, _flag = cap
                original = len(value)
                value = redact(value, hits)
                if original > max_chars:
                    value, omitted = truncate_head_tail(value, max_chars, head_ratio)
                    meta = {"truncated": True, "original_chars": original, "omitted_chars": omitted}
                    if style == "flat":
                        out.update(meta)
                    else:
                        out[f"{key}_truncation"] = meta
                out[key] = value
            elif (event_type, key) in _VERBATIM:
                out[key] = value
            else:
                out[key] = self.scrub_value(value, hits)
        if dropped:
            out["dropped_fields"] = dropped
        if hits:
            previous = out.get("redaction_hits")
            if isinstance(previous, dict):  # an upstream scrubber already counted some
                for kind, n in previous.items():
                    if isinstance(n, int):
                        hits[kind] = hits.get(kind, 0) + n
            out["redaction_hits"] = dict(hits)
        return out, hits
