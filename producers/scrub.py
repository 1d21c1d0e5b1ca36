"""Secret scrubbing and truncation of raw Agentao data before it leaves the process (on by default).

Agentao's transport events are raw: tool results, shell output and LLM message deltas can hold API keys. Agentao
itself scans only its replay files and its log, with a regex scanner and per-field caps configured by
``capture_flags``. :class:`Scrubber` applies the same policy to an AgentEvent's ``payload`` (and its
``error_message``), so what reaches Kafka matches what Agentao would have written to a replay file:

* every string (recursively) goes through the contract's secret scanner (:func:`schemas.redaction.redact`, the
  kinds and patterns of ``agentao.security.secret_scan`` 0.5.17); per-event counts land in
  ``payload["redaction_hits"]``;
* the fields Agentao caps are head/tail truncated with its marker and metadata: ``tool_result.content`` 8,000
  (20 % head, unless ``capture_tool_result_full``), ``tool_output.chunk`` 4,000 (flat metadata),
  ``ask_user_answered.answer`` 500, ``memory_write.value`` 2,000, ``plugin_hook_fired.output_preview`` 500
  (unless ``capture_plugin_hook_output_full``);
* ``capture_llm_delta=False`` drops ``llm_call_delta.added_messages`` and ``capture_full_llm_io=False`` drops
  ``llm_call_io.messages`` / ``tools`` (counts are kept), the way Agentao then emits no such data at all.

Besides the payload, the typed free-text fields (:data:`SCANNED_FIELDS`: ``error_message``, ``tool_name``,
``model``, ``status``, ...) are scanned. Identity fields (tenant, session, user, agent, turn, call, trace ids) are
not: they are keys and labels chosen by the host, and rewriting them would misfile the event; a secret put there is
the host's bug and travels as given.

Evidence: with an :class:`~schemas.evidence.EvidenceSealer` (the audit public key), an event of an audited type
(:data:`~schemas.evidence.EVIDENCE_EVENT_TYPES`) whose fields scrubbing changed also carries the raw values, sealed,
in its ``evidence`` field; only the audit private key opens them (:mod:`schemas.evidence`).

The scanner and the limits are the redaction contract (:mod:`schemas.redaction`), shared with the archive; this
module is the producer's policy: which AgentEvent fields are scanned, capped or dropped. It is best-effort pattern
matching, not DLP, and runs on the publisher's sender thread, never on the agent's.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from schemas.redaction import (
    ASK_USER_ANSWER_MAX_CHARS,
    DEFAULT_CAPTURE_FLAGS,
    MEMORY_WRITE_MAX_CHARS,
    MIN_SCAN_LEN,
    PII_CLASSES,
    PLUGIN_HOOK_OUTPUT_MAX_CHARS,
    TOOL_OUTPUT_CHUNK_MAX_CHARS,
    TOOL_RESULT_MAX_CHARS,
    may_hold_secret_json,
    redact,
    truncate_head_tail,
)
from schemas.redaction import TRUNCATION_MARKER as TRUNCATION_MARKER  # re-exported: producers.normalize uses it

#: Typed string fields scanned like the payload (free text an agent or a tool wrote); the other string fields are
#: identities and labels, kept as given (see the module docstring).
SCANNED_FIELDS: tuple[str, ...] = ("error_message", "tool_name", "status", "model", "error_class", "finish_reason",
                                   "incomplete_reason", "confirm_outcome", "permission_decision")

# (event type, payload key) -> (max chars, head ratio, metadata style, capture flag that lifts the cap)
_CAPS: dict[tuple[str, str], tuple[int, float, str, str | None]] = {
    ("tool_output", "chunk"): (TOOL_OUTPUT_CHUNK_MAX_CHARS, 0.5, "flat", None),
    ("tool_result", "content"): (TOOL_RESULT_MAX_CHARS, 0.2, "nested", "capture_tool_result_full"),
    ("ask_user_answered", "answer"): (ASK_USER_ANSWER_MAX_CHARS, 0.5, "nested", None),
    ("memory_write", "value"): (MEMORY_WRITE_MAX_CHARS, 0.5, "nested", None),
    ("plugin_hook_fired", "output_preview"): (PLUGIN_HOOK_OUTPUT_MAX_CHARS, 0.5, "nested",
                                              "capture_plugin_hook_output_full"),
}
_STRING_VALUE = re.compile(r':\s*"|\[')  # where a JSON object text can hold a string value (see payload_text_is_clean)
_NON_STR_SCALARS = frozenset({int, float, bool, type(None)})
_CLEAN_CACHE_SIZE = 4096
_CLEAN_CACHE_MAX_CHARS = 256
_VERBATIM: frozenset[tuple[str, str]] = frozenset({("tool_result", "content_hash")})
# (event type, payload key, capture flag that keeps it, key that records how many items were dropped)
_DROPS: tuple[tuple[str, str, str, str], ...] = (
    ("llm_call_delta", "added_messages", "capture_llm_delta", "added_messages_count"),
    ("llm_call_io", "messages", "capture_full_llm_io", "messages_count"),
    ("llm_call_io", "tools", "capture_full_llm_io", "tools_count"),
)


class Scrubber:
    """Redacts secrets and applies Agentao's field caps to one event at a time; stateless, so thread-safe."""

    def __init__(self, capture_flags: Mapping[str, bool] | None = None, *,
                 pii_classes: Collection[str] = PII_CLASSES, evidence: Any = None) -> None:
        unknown = set(pii_classes) - set(PII_CLASSES)
        if unknown:
            raise ValueError(f"unknown PII classes {sorted(unknown)} (known: {', '.join(PII_CLASSES)})")
        self.capture_flags = {**DEFAULT_CAPTURE_FLAGS, **(capture_flags or {})}
        self.pii_classes = frozenset(pii_classes)
        #: a :class:`schemas.evidence.EvidenceSealer`, or None: no evidence is kept
        self.evidence = evidence
        flags = self.capture_flags
        self._caps = {key: cap for key, cap in _CAPS.items() if not (cap[3] and flags.get(cap[3]))}
        self._drops = tuple(d for d in _DROPS if not flags.get(d[2]))
        # per event type: the smallest cap, and the payload keys dropped (a payload text shorter than the cap and
        # naming no dropped key needs no policy work, only the secret check)
        self._min_cap: dict[str, int] = {}
        for (et, _key), cap in self._caps.items():
            self._min_cap[et] = min(cap[0], self._min_cap.get(et, cap[0]))
        self._clean: dict[str, None] = {}  # texts redact() found clean (bounded; dict ops are atomic under the GIL)
        self._drop_keys: dict[str, tuple[str, ...]] = {}
        for et, key, _flag, _count in self._drops:
            self._drop_keys[et] = (*self._drop_keys.get(et, ()), f'"{key}"')

    def redact(self, text: str, hits: dict[str, int] | None = None) -> str:
        """``text`` redacted (:func:`schemas.redaction.redact` with this scrubber's PII classes).

        Short texts found clean are remembered (bounded): the typed fields scanned on every event (tool names,
        models, statuses) repeat, and the scan is a pure function of the text, so a text once clean stays clean."""
        if text in self._clean:
            return text
        out = redact(text, hits, self.pii_classes)
        if len(text) <= _CLEAN_CACHE_MAX_CHARS and out == text:
            if len(self._clean) >= _CLEAN_CACHE_SIZE:
                self._clean.clear()
            self._clean[text] = None
        return out

    def payload_text_is_clean(self, event_type: str, text: str) -> bool:
        """True when scrubbing the JSON object ``text`` would change nothing (no secret can match, no capped field
        can be over its cap, no dropped key is present); False means "maybe": scrub it.

        A text with no string value at all (numbers, booleans, null: most LLM-call and tool-completion payloads) is
        clean without the secret check: the scrubber rewrites string values only, never keys (see
        :meth:`scrub_payload`). In a JSON object text every string value follows a ``:`` (whitespace between
        allowed) or sits in an array, so no ``:"`` and no ``[`` means no string value (a ``:`` or ``[`` inside a
        key only sends the text to the full check)."""
        cap = self._min_cap.get(event_type)
        if cap is not None and len(text) > cap:
            return False
        for key in self._drop_keys.get(event_type, ()):
            if key in text:
                return False
        if _STRING_VALUE.search(text) is None:
            return True
        return not may_hold_secret_json(text)

    def flat_payload_is_clean(self, event_type: str, payload: dict[str, Any]) -> bool:
        """:meth:`payload_text_is_clean` for a payload dict of scalars (what the Agentao bridge hands over): True
        when :meth:`scrub_payload` would return it unchanged with no hits; False (scrub it) for anything else, a
        container included."""
        caps = self._caps
        drops = self._drop_keys.get(event_type)
        redact_ = self.redact
        for key, value in payload.items():
            cls = value.__class__
            if cls is str:
                if len(value) >= MIN_SCAN_LEN and redact_(value) != value:
                    return False
                if caps and (event_type, key) in caps and len(value) > caps[(event_type, key)][0]:
                    return False
            elif cls not in _NON_STR_SCALARS:
                return False
            if drops is not None and key.__class__ is str and f'"{key}"' in drops:
                return False
        return True

    def scrub_value(self, value: Any, hits: dict[str, int]) -> Any:
        """A copy of ``value`` with every string inside it redacted (dicts, lists and tuples walked)."""
        if isinstance(value, str):
            return redact(value, hits, self.pii_classes)
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
                value = redact(value, hits, self.pii_classes)
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
