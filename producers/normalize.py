"""Make any dict a publisher is handed into a valid AgentEvent, or say why it cannot be one.

``publish()`` promises never to raise and a bad event must never poison the batch it travels in, so every event
passes through :meth:`EventNormalizer.normalize` on the sender thread before encoding. The rules (decided here,
tested in tests/test_publisher.py):

* Unknown top-level keys are not dropped: they move into ``payload`` (the open part of the contract).
* A typed field of the wrong type is coerced when the meaning is clear (``"12"`` -> 12, 12.0 -> 12, an Enum ->
  its value, bytes -> UTF-8 text, a number -> its text for a string field). When it is not (``"abc"`` for
  ``prompt_tokens``) an optional field becomes null and the original goes to ``payload["_invalid_fields"]``;
  an unknown ``type`` becomes ``unknown`` with the original in ``payload["_original_type"]``. Coerced events
  are counted, and the names land in ``payload["_coerced_fields"]``.
* A required envelope field (event_id, event_time, producer_time, tenant, session_id, seq) that is missing or
  cannot be coerced makes the event invalid: it is dropped with reason ``invalid``. Guessing a session or a time
  would put the event in the wrong place, which is worse than a counted drop.
* ``payload`` may be a dict (serialised here), a JSON object text (validated by parsing it, unless it is a
  :class:`JsonObjectText`, which this package's own serialisers make), or anything else (wrapped as
  ``{"_value": ...}``). Values JSON cannot hold (bytes, sets, datetimes, arbitrary objects, NaN, cycles) are
  converted (text, list, ISO time, ``str()``, null, a marker) instead of failing.
* Sizes are bounded so one event always fits in a record: typed strings are cut at ``max_field_chars``; a
  payload whose JSON is longer than ``max_payload_chars`` has its long strings cut at ``max_payload_string_chars``
  (Agentao's head/tail marker), and if it is still too long it is replaced by a marker holding its head.

Cost: the sender pays this for every event, so the common case (an event that needs no fixing, from a producer
that builds each kind of event with the same keys) runs a check generated per key set (see
:meth:`EventNormalizer._learn`) instead of the generic per-field loop; the result is the same either way.
"""

from __future__ import annotations

import json
import json.scanner
import math
from collections.abc import Callable, Mapping
from datetime import date, datetime
from datetime import time as dtime
from enum import Enum
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

from producers.scrub import SCANNED_FIELDS, TRUNCATION_MARKER, Scrubber, truncate_head_tail
from schemas import contract
from schemas.evidence import EVIDENCE_EVENT_TYPES
from schemas.evidence import FIELD as EVIDENCE_FIELD
from schemas.redaction import MIN_SCAN_LEN

OK = "ok"
COERCED = "coerced"
INVALID = "invalid"

_STR, _LONG, _INT, _ENUM, _OTHER = "string", "long", "int", "enum", "other"
_PAYLOAD = "payload"
_UNSEEN = object()
_COMPILE_AFTER = 8  # events of one key set before its check is generated (see EventNormalizer._learn)
_is_str = str.__instancecheck__  # isinstance(x, str) as a one-argument callable, for map()
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_KINDS = {_STR: _STR, _LONG: _LONG, _INT: _INT, _ENUM: _ENUM}
_INT_RANGE = {_LONG: (-(1 << 63), (1 << 63) - 1), _INT: (-(1 << 31), (1 << 31) - 1)}
_SCAN = json.scanner.make_scanner(json.JSONDecoder())
_SCANNED = frozenset(SCANNED_FIELDS)
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def compact_json_encoder(default: Callable[[Any], Any]) -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default)``, made once.

    ``json.dumps`` with any argument builds a new encoder per call (a third of its cost for a small payload);
    this keeps the C encoder. It has no cycle check (a shared one would not be thread-safe): a cycle raises
    RecursionError where ``json.dumps`` raises ValueError; callers catch both.
    """
    if c_make_encoder is None:  # no C accelerator: the pure-Python encoder, cycle check included
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default).encode
    chunks = c_make_encoder(None, default, c_encode_basestring, None, ":", ",", False, False, False)

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


class JsonObjectText(str):
    """A payload text known to be one JSON object: made by this package's own serialisers (``json`` encoding a
    dict), so the publisher keeps it without parsing it again. Only for text the caller produced itself from a
    dict; any other text is passed as a plain ``str`` and validated."""

    __slots__ = ()


class _Spec:
    __slots__ = ("name", "kind", "nullable", "required")

    def __init__(self, name: str, kind: str, nullable: bool, required: bool) -> None:
        self.name, self.kind, self.nullable, self.required = name, kind, nullable, required


def _field_specs() -> dict[str, _Spec]:
    specs = {}
    for f in contract.current().event_json["fields"]:
        t = f["type"]
        members = t if isinstance(t, list) else [t]
        base = next((m for m in members if m != "null"), "null")
        if isinstance(base, dict):
            base = "enum" if base.get("type") == "enum" else base.get("type", _OTHER)
        kind = _KINDS.get(base, _OTHER)  # the module's own str objects: the hot path compares with ``is``
        specs[f["name"]] = _Spec(f["name"], kind, "null" in members, "default" not in f)
    return specs


class EventNormalizer:
    """Validates, coerces, scrubs and bounds events; stateless after construction, so any thread may call it."""

    def __init__(self, *, scrubber: Scrubber | None = None, max_field_chars: int = 8_192,
                 max_payload_chars: int = 262_144, max_payload_string_chars: int = 65_536) -> None:
        self.scrubber = scrubber
        self.max_field_chars = max_field_chars
        self.max_payload_chars = max_payload_chars
        self.max_payload_string_chars = max_payload_string_chars
        self._specs = _field_specs()
        self._required = tuple(s.name for s in self._specs.values() if s.required)
        self._symbols = frozenset(contract.event_types())
        # pass-1 classes: the Python type a field's value has when nothing needs fixing
        self._fast: dict[str, Any] = {
            s.name: {_STR: str, _LONG: int, _INT: int, _ENUM: _ENUM}.get(s.kind) for s in self._specs.values()}
        self._fast["payload"] = _PAYLOAD
        self._nullable = frozenset(s.name for s in self._specs.values() if s.nullable)
        self._int32 = tuple(s.name for s in self._specs.values() if s.kind is _INT)
        # an event's keys (in order) -> a check generated for them (see _learn), or None: such events need pass 1
        self._checks: dict[tuple[Any, ...], Callable[[dict[str, Any]], bool] | None] = {}
        self._seen: dict[tuple[Any, ...], int] = {}  # key sets not compiled yet, and how often they came
        # a compiled key set -> the scanned fields (SCANNED_FIELDS) it has, so _finish need not intersect per event
        self._scanned: dict[tuple[Any, ...], tuple[str, ...]] = {}

    def _learn(self, keys: tuple[Any, ...]) -> Callable[[dict[str, Any]], bool] | None:
        """Pass 1 specialised to one key set: straight-line code that tells whether it would find nothing to fix.

        A producer hands over a handful of key sets (one per kind of event it builds), so each is compiled once it
        came ``_COMPILE_AFTER`` times (a stream of ever new key sets stays on pass 1 instead of compiling for each):
        per field, the type test and bound of pass 1 with neither the per-key dispatch nor the loop. None when
        pass 1 has work whatever the values (an unknown key, a missing required field), or the key set is not
        compiled yet. Bounded; any thread may fill it (a lost race compiles the same function twice).
        """
        seen = self._seen.get(keys, 0) + 1
        if seen < _COMPILE_AFTER:
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[keys] = seen
            return None
        self._seen.pop(keys, None)
        if len(self._checks) >= 256:
            self._checks.clear()
        check = None
        if all(k == _PAYLOAD or type(k) is str and k in self._specs and self._specs[k].kind is not _OTHER
               for k in keys) and all(name in keys for name in self._required):
            check = _compile_check([self._specs[k] if k != _PAYLOAD else None for k in keys], self.max_field_chars,
                                   self._symbols)
        self._checks[keys] = check
        if check is not None:
            if len(self._scanned) >= 256:
                self._scanned.clear()
            self._scanned[keys] = tuple(name for name in SCANNED_FIELDS if name in keys)
        return check

    def normalize(self, event: Any, counters: dict[str, int] | None = None) -> tuple[dict[str, Any] | None, str]:
        """``(clean event, OK | COERCED)`` or ``(None, INVALID)``; never raises.

        The result is a shallow copy, fixed in place; the caller's dict and nested values (the payload dict,
        lists) are never mutated, since a producer may still read its event after handing it over (a simulator
        counting it, a test comparing it). ``counters`` (when given) is incremented for ``redactions`` and
        ``truncated`` fields.
        """
        try:
            if event.__class__ is dict:  # the common case, without the call into _normalize: a compiled key set
                copy = dict(event)
                keys = tuple(copy)
                check = self._checks.get(keys)
                if check is not None and check(copy):
                    return self._finish(copy, None, None, 0, counters,
                                        self._scanned.get(keys) if self.scrubber is not None else None)
            return self._normalize(event, counters)  # from the caller's event again: the copy above is dropped
        except Exception:  # a bug or a hostile object: count it as invalid rather than kill the sender
            return None, INVALID

    def _normalize(self, event: Any, counters: dict[str, int] | None) -> tuple[dict[str, Any] | None, str]:
        if type(event) is not dict and not isinstance(event, Mapping):
            return None, INVALID
        event = dict(event)  # never touch the caller's dict: it may still be reading it on another thread
        keys = tuple(event)
        check = self._checks.get(keys, _UNSEEN)
        if check is _UNSEEN:
            check = self._learn(keys)
        if check is not None and check(event):  # pass 1 would find nothing to fix
            return self._finish(event, None, None, 0, counters,
                                self._scanned.get(keys) if self.scrubber is not None else None)
        # Pass 1, the generic loop: recognise fields that are already right.
        fast = self._fast
        nullable = self._nullable
        symbols = self._symbols
        cap = self.max_field_chars
        slow: list[Any] | None = None
        for key, value in event.items():
            t = fast.get(key)
            if t is str:
                if (type(value) is str and len(value) <= cap) or (value is None and key in nullable):
                    continue
            elif t is int:
                if (type(value) is int and _I64_MIN <= value <= _I64_MAX) or (value is None and key in nullable):
                    continue
            elif t is _ENUM:
                if type(value) is str and value in symbols:
                    continue
            elif t is _PAYLOAD:
                continue
            if slow is None:
                slow = [key]
            else:
                slow.append(key)
        for key in self._int32:
            value = event.get(key)
            if type(value) is int and not _I32_MIN <= value <= _I32_MAX:
                slow = [*(slow or ()), key]
        # Pass 2: fix what pass 1 did not recognise, in place.
        extras: dict[str, Any] | None = None
        notes: dict[str, Any] | None = None  # _coerced_fields / _invalid_fields / _original_type
        truncated = 0
        if slow is not None:
            for key in slow:
                spec = self._specs.get(key)
                if spec is None:
                    if extras is None:
                        extras = {}
                    extras[key if isinstance(key, str) else _text(key)] = event.pop(key)
                    continue
                notes, n = self._fix(event, spec, event[key], notes)
                truncated += n
        for name in self._required:
            if name not in event:
                return None, INVALID
        return self._finish(event, extras, notes, truncated, counters)

    def _finish(self, event: dict[str, Any], extras: dict[str, Any] | None, notes: dict[str, Any] | None,
                truncated: int, counters: dict[str, int] | None,
                scanned: tuple[str, ...] | None = None) -> tuple[dict[str, Any], str]:
        """Scrub, serialise the payload, count: what every valid event goes through after its fields are fixed.

        ``scanned``: the scanned fields the event has, when known from its key set (a compiled check's)."""
        scrubber = self.scrubber
        if scrubber is None and extras is None and notes is None:
            payload = event.get("payload")
            if payload is None or (payload.__class__ is JsonObjectText and len(payload) <= self.max_payload_chars):
                event["payload"] = payload  # nothing to add; our own serialiser's text is valid by construction
                if counters is not None and truncated:
                    counters["truncated"] = counters.get("truncated", 0) + truncated
                return event, OK
        raw: dict[str, Any] | None = None  # raw values of the fields scrubbing changed, for the evidence
        if scrubber is not None:
            event.pop(EVIDENCE_FIELD, None)  # only this scrubber's own seal is trusted to hold the raw values
            keep_raw = scrubber.evidence is not None and event["type"] in EVIDENCE_EVENT_TYPES
            hits: dict[str, int] = {}
            for name in scanned if scanned is not None else _SCANNED.intersection(event):
                value = event[name]
                if value is not None and len(value) >= MIN_SCAN_LEN:
                    clean = scrubber.redact(value, hits)
                    if clean is not value:
                        event[name] = clean
                        if keep_raw and clean != value:
                            raw = raw or {}
                            raw[name] = value
            if hits and counters is not None:
                counters["redactions"] = counters.get("redactions", 0) + sum(hits.values())
            payload = event.get("payload")
            if payload.__class__ is JsonObjectText and extras is None and notes is None \
                    and len(payload) <= self.max_payload_chars \
                    and scrubber.payload_text_is_clean(event["type"], payload):
                event["payload"], raw_payload = str.__str__(payload), None  # _payload's first case, without the call
            else:
                event["payload"], raw_payload = self._payload(event["type"], payload, extras, notes, counters,
                                                              keep_raw)
            if raw_payload is not None:
                raw = raw or {}
                raw["payload"] = raw_payload
            if raw:
                try:
                    event[EVIDENCE_FIELD] = scrubber.evidence.seal(raw, event)
                except Exception:  # never lose the (scrubbed) event over its evidence; the loss is counted
                    if counters is not None:
                        counters["evidence_failed"] = counters.get("evidence_failed", 0) + 1
        else:
            event["payload"] = self._payload(event["type"], event.get("payload"), extras, notes, counters)[0]
        if counters is not None and truncated:
            counters["truncated"] = counters.get("truncated", 0) + truncated
        return event, (COERCED if notes else OK)

    def _fix(self, event: dict[str, Any], spec: _Spec, value: Any,
             notes: dict[str, Any] | None) -> tuple[dict[str, Any] | None, int]:
        """Coerce one field in place; returns the notes and how many strings were truncated (0 or 1)."""
        key, kind, cap = spec.name, spec.kind, self.max_field_chars
        if value is None:
            if not spec.nullable:
                del event[key]  # a required field: the event becomes invalid
            return notes, 0
        if kind is _ENUM:
            text = str.__str__(value) if isinstance(value, str) else _text(value)
            if text in self._symbols:
                event[key] = text  # a str Enum (Agentao's EventType) or a str subclass: lossless
                return (notes if isinstance(value, str) else _note(notes, "_coerced_fields", key)), 0
            event[key] = "unknown"
            notes = notes or {}
            notes["_original_type"] = text[:200]
            return notes, 0
        if kind is _STR and isinstance(value, str):  # too long, or a str subclass (lossless)
            value = str.__str__(value)
            if len(value) <= cap:
                event[key] = value
                return notes, 0
            event[key] = truncate_head_tail(value, cap, 0.5)[0]
            return notes, 1
        try:
            coerced = _coerce(kind, value)
        except (TypeError, ValueError, OverflowError):
            notes = notes or {}
            notes.setdefault("_invalid_fields", {})[key] = _text(value)[:200]
            if spec.nullable:
                event[key] = None
            else:
                del event[key]
            return notes, 0
        n = 0
        if kind is _STR and len(coerced) > cap:
            coerced = truncate_head_tail(coerced, cap, 0.5)[0]
            n = 1
        event[key] = coerced
        return _note(notes, "_coerced_fields", key), n

    def _payload(self, event_type: str, payload: Any, extras: dict[str, Any] | None, notes: dict[str, Any] | None,
                 counters: dict[str, int] | None, keep_raw: bool = False) -> tuple[str | None, str | None]:
        """The payload's JSON text, and (with ``keep_raw``) its text before scrubbing when scrubbing changed it."""
        scrubber = self.scrubber
        if payload is None and extras is None and notes is None:
            return None, None
        if scrubber is not None and type(payload) in (JsonObjectText, str) and extras is None and notes is None \
                and len(payload) <= self.max_payload_chars and scrubber.payload_text_is_clean(event_type, payload):
            if payload.__class__ is JsonObjectText:
                return str.__str__(payload), None  # our own serialiser's text: valid by construction
            try:
                obj, end = _SCAN(payload, 0)
                if type(obj) is dict and (end == len(payload) or not payload[end:].strip()):
                    return payload, None
            except (ValueError, RecursionError, StopIteration):
                pass
        if scrubber is not None and type(payload) is dict and extras is None and notes is None \
                and all(map(_is_str, payload)) and scrubber.flat_payload_is_clean(event_type, payload):
            # a dict of clean scalars (the Agentao bridge's deferred payloads): serialised as it is, no copy, no walk
            return self._bounded(dumps_lenient(payload), counters), None
        if type(payload) is str and extras is None and notes is None and scrubber is None \
                and len(payload) <= self.max_payload_chars:
            try:  # the C scanner directly: json.loads adds ~1 µs of Python around it
                obj, end = _SCAN(payload, 0)
                if type(obj) is dict and (end == len(payload) or not payload[end:].strip()):
                    return payload, None  # a valid JSON object text: keep it byte for byte
            except (ValueError, RecursionError, StopIteration):
                pass
        if type(payload) is dict and extras is None and notes is None and scrubber is None \
                and all(map(_is_str, payload)):
            pd = payload  # nothing will be added: serialise the caller's dict as it is, no copy
        else:
            pd = _as_dict(payload)
        if extras:
            for k, v in extras.items():
                pd[k if k not in pd else f"_extra_{k}"] = v
        if notes:
            pd.update(notes)
        raw_text = None
        if scrubber is not None:
            if keep_raw:
                raw_text = self._bounded(dumps_lenient(pd), None)
            before = pd
            pd, hits = scrubber.scrub_payload(event_type, pd)
            if counters is not None:
                if hits:
                    counters["redactions"] = counters.get("redactions", 0) + sum(hits.values())
                cuts = sum(1 for k in pd if k.endswith("_truncation") and k not in before)
                cuts += pd.get("truncated") is True and before.get("truncated") is not True
                if cuts:  # Agentao's field caps: counted like the payload bound's cuts
                    counters["truncated"] = counters.get("truncated", 0) + cuts
        text = self._bounded(dumps_lenient(pd), counters)
        return text, (raw_text if raw_text is not None and raw_text != text else None)

    def _bounded(self, text: str, counters: dict[str, int] | None) -> str:
        """A payload text cut to ``max_payload_chars`` (long strings first, then the whole)."""
        if len(text) > self.max_payload_chars:
            if counters is not None:
                counters["truncated"] = counters.get("truncated", 0) + 1
            text = _DUMPS(_cut_strings(json.loads(text), self.max_payload_string_chars))
            if len(text) > self.max_payload_chars:
                text = _DUMPS({"_truncated_payload": text[: self.max_payload_chars // 8], "original_chars": len(text)})
        return text


def _compile_check(specs: list[_Spec | None], cap: int, symbols: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    """``check(event) -> bool``: pass 1's test of each of ``specs`` (the event's keys in order, None for the
    payload, which pass 1 does not check), as generated code. The values come from one C-level unpack of
    ``e.values()`` instead of an ``e[name]`` each; an event of another size (changed meanwhile by another thread)
    raises, and ``normalize`` counts it invalid as it would any exception."""
    names = [f"v{i}" if spec is not None else "_" for i, spec in enumerate(specs)]
    lines = ["def check(e):", f"    {', '.join(names)}, = e.values()"]
    for spec, v in zip(specs, names, strict=True):
        if spec is None:
            continue
        if spec.kind is _STR:
            bad = f"type({v}) is not str or len({v}) > {cap}"
        elif spec.kind is _LONG:
            bad = f"type({v}) is not int or not {_I64_MIN} <= {v} <= {_I64_MAX}"
        elif spec.kind is _INT:
            bad = f"type({v}) is not int or not {_I32_MIN} <= {v} <= {_I32_MAX}"
        else:  # _ENUM (_learn compiles no check for a key set with a field of another kind)
            bad = f"type({v}) is not str or {v} not in symbols"
        if spec.nullable:
            bad = f"{v} is not None and ({bad})"
        lines.append(f"    if {bad}: return False")
    lines.append("    return True")
    namespace: dict[str, Any] = {"symbols": symbols}
    exec(compile("\n".join(lines), "<event check>", "exec"), namespace)
    return namespace["check"]


def _note(notes: dict[str, Any] | None, key: str, name: str) -> dict[str, Any]:
    notes = notes or {}
    notes.setdefault(key, []).append(name)
    return notes


def _coerce(kind: str, value: Any) -> Any:
    """Raises TypeError/ValueError/OverflowError when the value has no clear meaning for the field."""
    if kind is _STR:
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8", "replace")
        if isinstance(value, Enum):
            return _coerce(kind, value.value)
        if isinstance(value, (bool, int, float)):
            return str(value)
        if isinstance(value, (dict, list, tuple)):
            return dumps_lenient(value)
        return _text(value)
    if kind is _LONG or kind is _INT:
        if isinstance(value, Enum):
            value = value.value
        if isinstance(value, bool):
            result = int(value)
        elif isinstance(value, int):
            result = int(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            result = int(value)
        elif isinstance(value, (str, bytes)):
            text = value.decode() if isinstance(value, bytes) else value
            text = text.strip()
            try:
                result = int(text)
            except ValueError:
                f = float(text)
                if not math.isfinite(f):
                    raise ValueError("not a finite number") from None
                result = int(f)
        else:
            result = int(value)  # Decimal, numpy scalars; TypeError for the rest
        lo, hi = _INT_RANGE[kind]
        if not lo <= result <= hi:
            raise OverflowError(f"{result} out of range")
        return result
    raise TypeError(f"no coercion to {kind}")


def _text(value: Any) -> str:
    """``str(value)``, bounded, for objects whose ``__str__`` may be huge or may raise."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        try:
            text = repr(value)
        except Exception:
            text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= 4096 else text[:4096] + TRUNCATION_MARKER


def _as_dict(payload: Any) -> dict[str, Any]:
    """A fresh dict for the payload (the caller's object is never mutated)."""
    if payload is None:
        return {}
    if isinstance(payload, Mapping):
        try:
            return {k if isinstance(k, str) else _text(k): v for k, v in payload.items()}
        except RuntimeError:  # changed size while we copied it (another thread): one more try
            return {k if isinstance(k, str) else _text(k): v for k, v in dict(payload).items()}
    if isinstance(payload, (str, bytes, bytearray)):
        text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return {"_raw": text}
        return parsed if isinstance(parsed, dict) else {"_value": parsed}
    return {"_value": payload}


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    dump = getattr(value, "model_dump", None)  # pydantic models (Agentao's host events)
    if callable(dump):
        try:
            return dump(mode="json")
        except Exception:
            pass
    return _text(value)


_dumps_default = compact_json_encoder(_json_default)


def _jsonable(value: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A structure ``json`` accepts: cycles and depth > 64 become markers, NaN/inf become null."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 64:
        return "<too deep>"
    seen = seen if seen is not None else set()
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in seen:
            return "<cycle>"
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                return {(k if isinstance(k, str) else _text(k)): _jsonable(v, depth + 1, seen)
                        for k, v in list(value.items())}
            return [_jsonable(v, depth + 1, seen) for v in list(value)]
        finally:
            seen.discard(id(value))
    return _jsonable(_json_default(value), depth + 1, seen)


def dumps_lenient(value: Any) -> str:
    """Compact JSON of ``value`` that never fails (see :func:`_jsonable` for what gets converted)."""
    try:
        return _dumps_default(value)
    except (TypeError, ValueError, RecursionError, RuntimeError):
        pass
    for _ in range(2):  # RuntimeError: the structure changed size while we walked it (another thread)
        try:
            return _DUMPS(_jsonable(value))
        except (RuntimeError, RecursionError, TypeError, ValueError):
            continue
    return _DUMPS({"_unserialisable": _text(type(value).__name__)})


def _cut_strings(value: Any, max_chars: int) -> Any:
    if isinstance(value, str):
        return truncate_head_tail(value, max_chars, 0.5)[0] if len(value) > max_chars else value
    if isinstance(value, dict):
        return {k: _cut_strings(v, max_chars) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cut_strings(v, max_chars) for v in value]
    return value
