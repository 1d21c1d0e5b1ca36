"""Per-tenant structured logs (the seed's axis 1): what one log line holds and which file and day it belongs to.

Pure: no files, no Kafka, no clock (the store, :mod:`sinks.logs_store`, passes "now" in).

**A line** is one JSON object per AgentEvent, keys in this order: ``ts`` (the event time, RFC 3339 UTC with
microseconds and ``Z``), ``level`` (``error`` for an event that reports a failure, a ``log`` event's own level,
else ``info``), the seed's essential fields ``event_type``, ``tenant_id``, ``session_id``, ``user_id``, then the
other identities (``turn_id``, ``seq``, ``event_id``, ``service``, ``agent_name``, ``child_task_id``,
``traceparent``; null ones left out), ``data`` (the event's typed fields that are set, then its payload's keys;
a typed field wins a clash) and last ``kafka_position`` = ``[partition, offset, index in the record]``: the
offset stored with the data, how the store knows after a crash what it already wrote (:mod:`sinks.logs_store`).

**Scrubbed** with the producer's :class:`producers.scrub.Scrubber` (the same scanner, the same field caps): the
payload and the free-text typed fields (:data:`producers.scrub.SCANNED_FIELDS`); identities are kept as given,
as the producer keeps them. A producer that published raw (``publish_raw``) is scrubbed here; a scrubbed one is
left as it was (the scanner finds nothing twice). The ``evidence`` field (sealed raw values for the audit log)
is never written.

**Files**: ``<root>/<tenant dir>/<YYYY-MM-DD>.jsonl`` (:func:`sinks.archive.tenant_dirname`: any tenant string,
hostile ones included, becomes a safe, reversible directory name). **Rotation is by event time**, UTC day: a
record re-delivered after a crash goes to the same file as the first time whatever the wall clock says, which
is what makes the offset check exact. A day's file is closed and gzipped once the store's clock is past the day's
end plus a grace period (and the file has been idle that long), as ``<day>.<n>.jsonl.gz`` (n = 1, 2, ... for events
that arrive after a day was compressed: they start a new ``<day>.jsonl``, compressed in turn). **Retention** keeps
the last ``retention_days`` days, today included, by the store's clock; older days are deleted and events for them
are counted as expired, not written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from producers.scrub import SCANNED_FIELDS, Scrubber

DEFAULT_RETENTION_DAYS = 14  # the seed's "minimum viable" setup
US = 1_000_000
DAY_US = 86_400 * US
_MIN_US = 0
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, the last instant a datetime holds

#: the envelope and identity fields: lifted to the top of the line, never into ``data``
IDENTITY_FIELDS: tuple[str, ...] = ("turn_id", "seq", "event_id", "service", "agent_name", "child_task_id",
                                    "traceparent")
_NOT_DATA = frozenset({"event_id", "schema_version", "event_time", "producer_time", "tenant", "session_id", "seq",
                       "type", "user_id", "payload", "evidence", *IDENTITY_FIELDS})
_SCANNED = frozenset(SCANNED_FIELDS)
_LEVELS = {"debug", "info", "warning", "error", "critical"}
_LIVE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
_SEGMENT = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(\d+)\.jsonl(\.gz)?$")
_POSITION_KEY = b',"kafka_position":['
_EPOCH = date(1970, 1, 1)

Position = tuple[int, int, int]  # (partition, offset, index of the event in its record)


def clamp_us(t_us: Any) -> int:
    """An event time made representable: a non-integer is 0 (1970), out-of-range values are cut to year 0..9999."""
    if not isinstance(t_us, int) or isinstance(t_us, bool):
        return _MIN_US
    return min(max(t_us, _MIN_US), _MAX_US)


@lru_cache(maxsize=4096)
def day_text(day_index: int) -> str:
    """The ``YYYY-MM-DD`` of a :func:`day_index`."""
    return (_EPOCH + timedelta(days=day_index)).isoformat()


def day_index(t_us: Any) -> int:
    """Days since 1970-01-01 (UTC) of an event time."""
    return clamp_us(t_us) // DAY_US


def rfc3339(t_us: Any) -> str:
    """Microseconds since the epoch as RFC 3339 UTC: ``2026-12-07T21:02:34.123456Z``."""
    t_us = clamp_us(t_us)
    day, rest = divmod(t_us, DAY_US)
    secs, us = divmod(rest, US)
    h, secs = divmod(secs, 3600)
    m, secs = divmod(secs, 60)
    return f"{day_text(day)}T{h:02d}:{m:02d}:{secs:02d}.{us:06d}Z"


def day_of(t_us: Any) -> str:
    """The UTC day (``YYYY-MM-DD``) of an event time: the file it is written to."""
    return day_text(day_index(t_us))


def day_end_us(day: str) -> int:
    """The first microsecond after ``day`` (UTC)."""
    d = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    return int(d.timestamp()) * US


def oldest_kept_day(now_s: float, retention_days: int) -> str:
    """The oldest day retention keeps at ``now_s``: today and the ``retention_days - 1`` days before it."""
    today = datetime.fromtimestamp(now_s, UTC).date()
    return (today - timedelta(days=retention_days - 1)).isoformat()


def is_expired(day: str, now_s: float, retention_days: int) -> bool:
    return day < oldest_kept_day(now_s, retention_days)


def oldest_kept_index(now_s: float, retention_days: int) -> int:
    """:func:`oldest_kept_day` as a :func:`day_index`."""
    return int(now_s // 86_400) - (retention_days - 1)


def is_closed(day: str, now_s: float, grace_s: float) -> bool:
    """A day is over, and its live file may be compressed, ``grace_s`` after its end (late events have come)."""
    return now_s * US >= day_end_us(day) + grace_s * US


def live_name(day: str) -> str:
    return f"{day}.jsonl"


def segment_name(day: str, n: int, gz: bool) -> str:
    return f"{day}.{n}.jsonl" + (".gz" if gz else "")


def parse_log_name(name: str) -> tuple[str, int | None, bool] | None:
    """``(day, segment number or None for the live file, gzipped)`` of a log file name; None for any other name."""
    m = _LIVE.match(name)
    if m:
        return (m.group(1), None, False) if _valid_day(m.group(1)) else None
    m = _SEGMENT.match(name)
    if m and _valid_day(m.group(1)):
        return m.group(1), int(m.group(2)), m.group(3) is not None
    return None


def _valid_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def level_of(event: Mapping[str, Any], payload: Mapping[str, Any] | None) -> str:
    """``error`` when the event reports a failure; a ``log`` event's own level; else ``info``."""
    if event.get("type") == "log" and payload is not None:
        level = payload.get("level")
        if isinstance(level, str) and level.lower() in _LEVELS:
            return level.lower()
    if event.get("type") == "error" or event.get("status") == "error" or event.get("error_class"):
        return "error"
    return "info"


def _payload_dict(event_type: str, payload: Any, scrubber: Scrubber) -> tuple[dict[str, Any] | None, int]:
    """The payload parsed and scrubbed, and the redaction count; a payload that is not a JSON object is kept,
    scrubbed, as ``{"payload_text": ...}``."""
    if payload is None:
        return None, 0
    try:
        parsed = orjson.loads(payload) if isinstance(payload, str) else payload
    except (ValueError, RecursionError):
        try:  # orjson refuses what the stdlib reads (lone surrogates, NaN)
            parsed = json.loads(payload)
        except (ValueError, RecursionError):
            parsed = None
    if not isinstance(parsed, dict):
        hits: dict[str, int] = {}
        return {"payload_text": scrubber.redact(str(payload), hits)}, sum(hits.values())
    if isinstance(payload, str) and scrubber.payload_text_is_clean(event_type, payload):
        return parsed, 0  # nothing to scrub: no secret can match, no cap reached, no dropped key
    scrubbed, hits = scrubber.scrub_payload(event_type, parsed)
    return scrubbed, sum(hits.values())


def log_record(event: Mapping[str, Any], scrubber: Scrubber, position: Position | None = None
               ) -> tuple[dict[str, Any], int]:
    """The line's object for a decoded AgentEvent, and how many secrets scrubbing replaced (see the module
    docstring for the keys)."""
    etype = str(event.get("type"))
    payload, redactions = _payload_dict(etype, event.get("payload"), scrubber)
    hits: dict[str, int] = {}
    data: dict[str, Any] = {}
    for key, value in event.items():
        if value is None or key in _NOT_DATA:
            continue
        data[key] = scrubber.redact(value, hits) if key in _SCANNED and isinstance(value, str) else value
    redactions += sum(hits.values())
    if payload:
        for key, value in payload.items():
            data.setdefault(key, value)
    rec: dict[str, Any] = {"ts": rfc3339(event.get("event_time", 0)), "level": level_of(event, payload),
                           "event_type": etype, "tenant_id": event.get("tenant"),
                           "session_id": event.get("session_id"), "user_id": event.get("user_id")}
    for key in IDENTITY_FIELDS:
        if event.get(key) is not None:
            rec[key] = event[key]
    rec["data"] = data
    if position is not None:
        rec["kafka_position"] = list(position)
    return rec, redactions


def encode_line(rec: Mapping[str, Any]) -> bytes:
    """One JSON line (UTF-8, no raw newline inside: JSON escapes it). Lone surrogates are escaped, never fatal."""
    try:
        return orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except (TypeError, ValueError):  # lone surrogates, integers beyond 64 bits: the stdlib's way
        return json.dumps(rec, ensure_ascii=False, separators=(",", ":"), default=str).encode(
            "utf-8", "backslashreplace") + b"\n"


def position_of_line(line: bytes) -> Position | None:
    """The ``kafka_position`` at the end of a line this module wrote; None for a line without one."""
    i = line.rfind(_POSITION_KEY)
    if i < 0:
        return None
    body = line[i + len(_POSITION_KEY):].rstrip(b"\n")
    if not body.endswith(b"]}"):
        return None
    try:
        p, o, n = (int(x) for x in body[:-2].split(b","))
    except ValueError:
        return None
    return p, o, n
