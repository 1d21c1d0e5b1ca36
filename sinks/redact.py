"""Agentao's replay sanitisation, applied by the archive before a row reaches disk.

Agentao scans every replay payload at write time (``agentao.replay.sanitize.sanitize_event``); an archive that
claims its format must do the same, whatever the producers did upstream. Per payload, in Agentao's order:

1. JSON coercion: anything that is not JSON-native becomes ``str()``; non-finite floats become strings too
   (Agentao would write ``NaN``, which strict JSON readers reject);
2. per-field policy, keyed by *replay kind*: ``tool_output_chunk.chunk`` 4,000 chars (flat metadata),
   ``tool_result.content`` 8,000 (20 % head, nested ``content_truncation``), ``ask_user_answered.answer`` 500,
   ``memory_write.value`` 2,000, ``plugin_hook_fired.output_preview`` 500, ``tool_result.content_hash`` verbatim;
   ``capture_tool_result_full`` / ``capture_plugin_hook_output_full`` lift their cap (the scanner still runs);
3. the secret scanner (:func:`schemas.redaction.redact`) on every string, recursively: matches become
   ``[REDACTED:<kind>]``; per-row counts land in the payload's ``redaction_hits``.

Two differences from Agentao, both about data that was already sanitised upstream (our producers may run
:mod:`producers.scrub` with the same policy): a ``redaction_hits`` already in the payload is *added to*, not
overwritten, and a field whose truncation metadata is already present is not cut a second time (the marker
would otherwise be cut in half).

The scanner, the field limits and the truncation marker are the redaction contract in :mod:`schemas.redaction`,
shared with :mod:`producers.scrub` (``tests/test_redaction.py`` checks it against the installed Agentao); this
module is the archive's policy: which replay kinds' fields are capped, JSON coercion, and the footer's counts.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.redaction import (
    ASK_USER_ANSWER_MAX_CHARS,
    DEFAULT_CAPTURE_FLAGS,
    MEMORY_WRITE_MAX_CHARS,
    MIN_SCAN_LEN,
    PLUGIN_HOOK_OUTPUT_MAX_CHARS,
    TOOL_OUTPUT_CHUNK_MAX_CHARS,
    TOOL_RESULT_MAX_CHARS,
    may_hold_secret,
    may_hold_secret_json,
    redact,
    truncate_head_tail,
)

#: ``may_hold_secret`` of string values seen before. Most values of a fleet's rows repeat (tool names, call ids
#: across a call's four rows, canned chunks: 17 % distinct on the bench workload), and a dict hit costs one hash
#: and one compare where the check lowers the text and runs ~45 substring searches. The answer is a pure function
#: of the string, so the cache changes the cost only. Bounded: strings up to 512 characters, dropped whole at
#: 32,768 entries (at most ~20 MB).
_MAY_HOLD: dict[str, bool] = {}
_MAY_HOLD_MAX_LEN = 512
_MAY_HOLD_MAX_ENTRIES = 32_768

#: :func:`redact` of string values scanned before: ``text -> (result, the counts it added)``. A row reaches the full
#: sanitiser when one of its values may hold a secret, and those values repeat too (a URL, a model name with an
#: anchor in it: 199 distinct of 6,130 on the bench workload); a regex pass per pattern costs far more than a
#: lookup. ``redact`` is a pure function of the text, and the counts are added as it would add them. Bounded like
#: ``_MAY_HOLD`` (512 characters, dropped whole at 4,096 entries).
_REDACTED: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
_REDACTED_MAX_ENTRIES = 4_096


def scan_text(text: str, hits: dict[str, int]) -> str:
    """:func:`redact` of ``text`` (counts added to ``hits``), answered from the caches when it can be."""
    if _MAY_HOLD.get(text) is False:  # redact() would return it untouched: its own pre-check says so
        return text
    if len(text) > _MAY_HOLD_MAX_LEN:
        return redact(text, hits)
    found = _REDACTED.get(text)
    if found is None:
        added: dict[str, int] = {}
        found = (redact(text, added), tuple(added.items()))
        if len(_REDACTED) >= _REDACTED_MAX_ENTRIES:
            _REDACTED.clear()
        _REDACTED[text] = found
    for kind, n in found[1]:
        hits[kind] = hits.get(kind, 0) + n
    return found[0]


def scan_value(value: Any, hits: dict[str, int]) -> Any:
    """A JSON-safe copy of ``value`` with every string inside it scanned (dicts and lists walked)."""
    if isinstance(value, str):
        return scan_text(value, hits)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): scan_value(v, hits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scan_value(v, hits) for v in value]
    try:
        return redact(str(value), hits)
    except Exception:
        return "<unprintable>"


def coerce_value(value: Any) -> Any:
    """A JSON-safe copy of ``value`` without scanning (for verbatim fields such as a content hash)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): coerce_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [coerce_value(v) for v in value]
    return str(value)


# (replay kind, field) -> (max chars, head ratio, metadata style, capture flag that lifts the cap)
FIELD_CAPS: dict[tuple[str, str], tuple[int, float, str, str | None]] = {
    ("tool_output_chunk", "chunk"): (TOOL_OUTPUT_CHUNK_MAX_CHARS, 0.5, "flat", None),
    ("tool_result", "content"): (TOOL_RESULT_MAX_CHARS, 0.2, "nested", "capture_tool_result_full"),
    ("ask_user_answered", "answer"): (ASK_USER_ANSWER_MAX_CHARS, 0.5, "nested", None),
    ("memory_write", "value"): (MEMORY_WRITE_MAX_CHARS, 0.5, "nested", None),
    ("plugin_hook_fired", "output_preview"): (PLUGIN_HOOK_OUTPUT_MAX_CHARS, 0.5, "nested",
                                              "capture_plugin_hook_output_full"),
}
VERBATIM_FIELDS: frozenset[tuple[str, str]] = frozenset({("tool_result", "content_hash")})
CAPPED_KINDS: frozenset[str] = frozenset(kind for kind, _ in FIELD_CAPS)


def capture_flags(flags: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """Agentao's defaults overlaid with ``flags``; unknown names are refused (a typo must not pass silently)."""
    out = dict(DEFAULT_CAPTURE_FLAGS)
    for name, value in (flags or {}).items():
        if name not in DEFAULT_CAPTURE_FLAGS:
            raise ValueError(f"unknown capture flag {name!r} (known: {', '.join(DEFAULT_CAPTURE_FLAGS)})")
        if not isinstance(value, bool):
            raise ValueError(f"capture flag {name!r} must be true or false, not {value!r}")
        out[name] = value
    return out


@dataclass
class RowStats:
    """What sanitisation did to the rows of one file: summed into the ``replay_footer``."""

    redaction_hits: dict[str, int] = field(default_factory=dict)
    dropped_field_hits: dict[str, int] = field(default_factory=dict)
    truncated_field_hits: dict[str, int] = field(default_factory=dict)

    def add_payload(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Count one written row, from its payload alone, so a file re-read after a restart gives the same totals."""
        if kind in ("replay_header", "replay_footer"):
            return
        hits = payload.get("redaction_hits")
        if hits and isinstance(hits, dict):
            for k, n in hits.items():
                if isinstance(n, int) and not isinstance(n, bool):
                    self.redaction_hits[k] = self.redaction_hits.get(k, 0) + n
        dropped = payload.get("redacted_fields")
        if dropped and isinstance(dropped, list):
            for name in dropped:
                if isinstance(name, str):
                    self.dropped_field_hits[name] = self.dropped_field_hits.get(name, 0) + 1
        if kind in _CAPS_BY_KIND:
            for name in truncated_fields(kind, payload):
                self.truncated_field_hits[name] = self.truncated_field_hits.get(name, 0) + 1


def truncated_fields(kind: str, payload: Mapping[str, Any]) -> list[str]:
    """The fields of a sanitised payload that carry truncation metadata."""
    out = []
    for (k, name), (_max, _ratio, style, _flag) in FIELD_CAPS.items():
        if k != kind:
            continue
        if style == "flat":
            if payload.get("truncated") is True:
                out.append(name)
        else:
            meta = payload.get(f"{name}_truncation")
            if isinstance(meta, Mapping) and meta.get("truncated") is True:
                out.append(name)
    return out


_CAPS_BY_KIND: dict[str, tuple[tuple[str, int, str | None], ...]] = {}
for (_kind, _name), (_max, _ratio, _style, _flag) in FIELD_CAPS.items():
    _CAPS_BY_KIND[_kind] = (*_CAPS_BY_KIND.get(_kind, ()), (_name, _max, _flag))


def _not_json(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_C_ENCODER = (json.encoder.c_make_encoder(None, _not_json, json.encoder.encode_basestring, None, ": ", ", ",
                                          False, False, False)
              if json.encoder.c_make_encoder is not None else None)


def dumps(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, allow_nan=False)`` for acyclic JSON data, a third cheaper: one C
    encoder made once instead of per call. Raises TypeError / ValueError like ``json.dumps``."""
    if _C_ENCODER is None or isinstance(value, str):
        return _JSON_ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


_ENCODE = dumps


def sanitize_encoded(kind: str, payload: Mapping[str, Any], flags: Mapping[str, bool]) -> tuple[Mapping[str, Any], str]:
    """:func:`sanitize` and the clean payload's JSON text (``json.dumps(..., ensure_ascii=False)``).

    The common case costs one encoding and one anchor check of the payload's long string values (the JSON text is
    checked too only when they may hold a secret): a payload with no string that could hold a secret, no field over
    its cap, no upstream counts to merge and nothing to coerce is already clean, and is returned as is (the same
    object: do not mutate it afterwards). ``tests/test_archive_identity.py`` checks that this never skips a payload
    the full sanitiser would change.
    """
    if "redaction_hits" not in payload or kind == "replay_footer":
        try:
            text = _ENCODE(payload)
        except (TypeError, ValueError, RecursionError):
            text = None
        # The values' check first: it reads only the string values long enough to hold a secret (on most rows a
        # few short ones, or none), where the JSON text check reads every key and number too. Both must say
        # "may hold" for the full sanitiser to run, so the order changes the cost, not the outcome.
        if text is not None and not (_values_may_hold(payload) and may_hold_secret_json(text)):
            for name, max_chars, flag in _CAPS_BY_KIND.get(kind, ()):
                value = payload.get(name)
                if isinstance(value, str) and len(value) > max_chars and not (flag and flags.get(flag)):
                    break
            else:
                return payload, text
    clean = sanitize(kind, payload, flags)
    return clean, _ENCODE(clean)


_SCALARS = frozenset({int, float, bool, type(None)})


def _gather_strings(value: Any, out: list[str]) -> None:
    """The string *values* long enough to hold a secret."""
    t0 = type(value)
    if t0 is dict:
        items = value.values()
    elif t0 is list or t0 is tuple:
        items = value
    else:
        items = value.values() if isinstance(value, Mapping) else value
    for v in items:
        t = type(v)
        if t is str:
            if len(v) >= MIN_SCAN_LEN:
                out.append(v)
        elif t is dict or t is list or t is tuple:
            _gather_strings(v, out)
        elif t not in _SCALARS:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, (Mapping, list, tuple)):
                _gather_strings(v, out)




def _values_may_hold(value: Any) -> bool:
    """Whether any string *value* inside ``value`` may hold a secret (keys are not scanned, as Agentao does).

    Each value is checked alone: the full sanitiser scans each string alone too, so a pattern can only be
    redacted inside one value (no anchor holds the NUL the values used to be joined with)."""
    strings: list[str] = []
    if type(value) is dict:  # the usual payload: its top level walked here, nested values by _gather_strings
        for v in value.values():
            t = type(v)
            if t is str:
                if len(v) >= MIN_SCAN_LEN:
                    strings.append(v)
            elif t not in _SCALARS:
                try:
                    _gather_strings((v,), strings)
                except RecursionError:  # nested too deep to walk here: let the full sanitiser decide
                    return True
    else:
        try:
            _gather_strings(value, strings)
        except RecursionError:
            return True
    cache = _MAY_HOLD
    for text in strings:
        found = cache.get(text)
        if found is None:
            found = may_hold_secret(text)
            if len(text) <= _MAY_HOLD_MAX_LEN:
                if len(cache) >= _MAY_HOLD_MAX_ENTRIES:
                    cache.clear()
                cache[text] = found
        if found:
            return True
    return False


def sanitize(kind: str, payload: Mapping[str, Any], flags: Mapping[str, bool]) -> dict[str, Any]:
    """The payload as Agentao would write it for a row of ``kind`` (see the module docstring). Never raises."""
    hits: dict[str, int] = {}
    clean: dict[str, Any] = {}
    dropped: list[str] = []
    upstream_hits = payload.get("redaction_hits") if kind != "replay_footer" else None
    for raw_key, value in payload.items():
        key = str(raw_key)
        if key == "redaction_hits" and isinstance(value, Mapping) and kind != "replay_footer":
            continue  # merged below (a footer's are its totals: kept as they are)
        cap = FIELD_CAPS.get((kind, key))
        try:
            if cap is not None and isinstance(value, str) and not (cap[3] and flags.get(cap[3])):
                max_chars, head_ratio, style, _flag = cap
                original = len(value)
                scanned = scan_text(value, hits)
                already = (payload.get("truncated") is True if style == "flat"
                           else isinstance(payload.get(f"{key}_truncation"), Mapping))
                if original > max_chars and not already:
                    scanned, omitted = truncate_head_tail(scanned, max_chars, head_ratio)
                    meta = {"truncated": True, "original_chars": original, "omitted_chars": omitted}
                    clean[key] = scanned
                    if style == "flat":
                        clean.update(meta)
                    else:
                        clean[f"{key}_truncation"] = meta
                    continue
                clean[key] = scanned
            elif (kind, key) in VERBATIM_FIELDS:
                clean[key] = coerce_value(value)  # never redacted: a hash, not text
            else:
                clean[key] = scan_value(value, hits)
        except Exception:
            dropped.append(key)
    if dropped:
        clean["redacted"] = "filter_error"
        clean["redacted_fields"] = list(dict.fromkeys(dropped))
    if isinstance(upstream_hits, Mapping):
        for k, n in upstream_hits.items():
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                hits[str(k)] = hits.get(str(k), 0) + n
    if hits:
        clean["redaction_hits"] = dict(sorted(hits.items()))
    return clean
