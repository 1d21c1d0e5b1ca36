"""Alerts: the Alertmanager-shaped record, its fingerprint, its Avro encoding, and the firing/resolved lifecycle.

Both detectors (:mod:`streams.rules`, :mod:`streams.spike`) reduce a closed window to a :class:`Verdict` per alert
key and let :func:`step` decide whether that starts or ends an alert. The output is one :class:`Alert` per
*transition*: a ``firing`` record when an alert starts, a ``resolved`` record when it ends, nothing while it stays
open (Alertmanager wants active alerts re-sent every 30 s to 3 min; that is the delivery sink's job, it can rebuild
the open set from this topic: fingerprints whose last record is ``firing``).

Times are event time: ``startsAt`` is the start of the first window of the breaching run (when the problem began,
not when persistence was satisfied), ``endsAt`` the end of the window that resolved it. Replaying the same windows
therefore yields byte-identical records, which is what makes downstream dedup by (fingerprint, status, startsAt)
possible after an at-least-once redelivery.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from typing import Any, Literal, TypeAlias
from urllib.parse import quote

import fastavro

from schemas.codec import SINGLE_OBJECT_MAGIC, DecodeError
from schemas.contract import SCHEMA_DIR, crc64_fingerprint, load_json, strip_logical_types

FIRING = "firing"
RESOLVED = "resolved"
Status = Literal["firing", "resolved"]

# Alertmanager's "not set" time (Go's zero time.Time), used as endsAt of a firing alert.
ZERO_TIME = "0001-01-01T00:00:00Z"
ALERT_SCHEMA_FILE = SCHEMA_DIR / "alert.avsc"

_FNV64_OFFSET = 14695981039346656037
_FNV64_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1
_SEPARATOR = 0xFF
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- fingerprint and time formats -------------------------------------------------------------------------------


def fingerprint(labels: Mapping[str, str]) -> str:
    """The alert's identity: 16 lowercase hex digits, independent of label order and of the process.

    FNV-1a 64 over the labels sorted by name, each name and each value (UTF-8) followed by the byte 0xFF, which
    cannot occur in UTF-8 and so keeps ``{"a": "bc"}`` apart from ``{"ab": "c"}``. This is Prometheus'
    ``labelSetToFingerprint`` (prometheus/common model/signature.go), the fingerprint Alertmanager itself shows, so
    our records and Alertmanager's notifications can be joined on it. (Python's ``hash()`` is salted per process.)
    """
    h = _FNV64_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                h = ((h ^ byte) * _FNV64_PRIME) & _MASK64
            h = ((h ^ _SEPARATOR) * _FNV64_PRIME) & _MASK64
    return f"{h:016x}"


def rfc3339(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC with a ``Z``; the fraction only when non-zero (like Go)."""
    dt = _EPOCH + timedelta(microseconds=us)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_rfc3339(text: str) -> int | None:
    """The inverse of :func:`rfc3339`; ``None`` for Alertmanager's zero time."""
    if text == ZERO_TIME:
        return None
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# -- the record -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Alert:
    """One alert transition: an Alertmanager alert plus the evaluation it came from.

    ``threshold`` is the one this transition crossed: the fire threshold on ``firing``, the resolve threshold on
    ``resolved`` (``value`` and ``threshold`` are ``None`` when the alert resolved because data stopped coming).
    ``backfill`` marks alerts computed while reading history: they are recorded but must never page.
    """

    labels: dict[str, str]
    annotations: dict[str, str]
    status: Status
    starts_at_us: int
    ends_at_us: int | None
    window_start_us: int
    window_end_us: int
    value: float | None = None
    threshold: float | None = None
    backfill: bool = False
    generator_url: str | None = None
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.labels)
        return self._fingerprint

    @property
    def starts_at(self) -> str:
        """``startsAt`` as RFC 3339."""
        return rfc3339(self.starts_at_us)

    @property
    def ends_at(self) -> str:
        """``endsAt`` as RFC 3339; Alertmanager's zero time while firing."""
        return ZERO_TIME if self.ends_at_us is None else rfc3339(self.ends_at_us)

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]

    def key(self) -> bytes:
        """The Kafka record key: one alert's transitions stay ordered in one partition."""
        return self.fingerprint.encode("ascii")

    def transition_key(self) -> str:
        """``fingerprint:status:startsAt``: equal for the same transition produced twice (a window re-evaluated
        after a crash between sending the alert and persisting the state), so a sink can drop the copy."""
        return f"{self.fingerprint}:{self.status}:{self.starts_at_us}"

    def to_record(self) -> dict[str, Any]:
        """The alerts-topic record (``schemas/alert.avsc``) as a plain dict; also JSON-serialisable."""
        return {
            "fingerprint": self.fingerprint,
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at,
            "endsAt": self.ends_at,
            "generatorURL": self.generator_url,
            "window_start": self.window_start_us,
            "window_end": self.window_end_us,
            "value": self.value,
            "threshold": self.threshold,
            "backfill": self.backfill,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Alert:
        """Rebuild from :meth:`to_record` output; a stored fingerprint that disagrees with the labels is an error."""
        starts = parse_rfc3339(record["startsAt"])
        if starts is None:
            raise ValueError("startsAt cannot be the zero time")
        alert = cls(
            labels=dict(record["labels"]),
            annotations=dict(record["annotations"]),
            status=record["status"],
            starts_at_us=starts,
            ends_at_us=parse_rfc3339(record["endsAt"]),
            window_start_us=record["window_start"],
            window_end_us=record["window_end"],
            value=record.get("value"),
            threshold=record.get("threshold"),
            backfill=bool(record.get("backfill", False)),
            generator_url=record.get("generatorURL"),
        )
        stored = record.get("fingerprint")
        if stored is not None and stored != alert.fingerprint:
            raise ValueError(f"fingerprint {stored} does not match the labels ({alert.fingerprint})")
        return alert

    def as_postable(self) -> dict[str, Any]:
        """The body item of Alertmanager's ``POST /api/v2/alerts`` (an ``endsAt`` in the past resolves it)."""
        body: dict[str, Any] = {"labels": dict(self.labels), "annotations": dict(self.annotations),
                                "startsAt": self.starts_at}
        if self.ends_at_us is not None:
            body["endsAt"] = self.ends_at
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body

    def as_webhook(self) -> dict[str, Any]:
        """One entry of an Alertmanager webhook (version 4) ``alerts`` list."""
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at,
            "endsAt": self.ends_at,
            "generatorURL": self.generator_url or "",
            "fingerprint": self.fingerprint,
        }


AlertTransition: TypeAlias = Alert


class LinkTemplate(str):
    """A ``generatorURL`` template (``{tenant}``, ``{alertname}``, ``{tool}``) that fills its placeholders
    percent-encoded: tenant and tool names are free text, and ``acme corp&x=1`` must stay one query value.

    The detectors call ``template.format(tenant=..., ...)``; handing them this instead of a plain ``str`` is all it
    takes, so they need not know about URLs.
    """

    def format(self, *args: object, **kwargs: object) -> str:
        return super().format(*(quote(str(a), safe="") for a in args),
                              **{k: quote(str(v), safe="") for k, v in kwargs.items()})


def link_template(template: str | None) -> LinkTemplate | None:
    """``template`` as a :class:`LinkTemplate` (``None`` stays ``None``: no link)."""
    return None if template is None else LinkTemplate(template)
"""What the detectors return: an :class:`Alert` record *is* a transition (firing = started, resolved = ended)."""


# -- lifecycle --------------------------------------------------------------------------------------------------


class Verdict(Enum):
    """What one window says about one alert key."""

    BREACH = "breach"  # beyond the fire threshold
    HOLD = "hold"  # between the resolve and the fire thresholds: an open alert stays open, a pending run breaks
    CLEAR = "clear"  # beyond the resolve threshold on the good side
    NO_DATA = "no_data"  # below the volume guard, or nothing measured: the state stays as it is


class Change(Enum):
    """What :func:`step` did; the caller builds an :class:`Alert` for the last three."""

    NONE = "none"
    FIRED = "fired"
    RESOLVED = "resolved"
    EXPIRED = "expired"  # resolved because ``stale_windows`` windows in a row gave no verdict


@dataclass(slots=True)
class AlertState:
    """Per alert key, plain data (persisted through :meth:`to_dict` in a changelog-backed table).

    ``pending`` counts consecutive breaching windows while not firing, ``run_start_us`` is the start of the first
    of them, ``firing_since_us`` is set while the alert is open (it is the alert's ``startsAt``), ``idle`` counts
    consecutive windows without a verdict, ``firing_windows`` the windows evaluated while open.
    """

    pending: int = 0
    run_start_us: int | None = None
    firing_since_us: int | None = None
    idle: int = 0
    firing_windows: int = 0

    @property
    def firing(self) -> bool:
        return self.firing_since_us is not None

    def is_blank(self) -> bool:
        """Nothing worth keeping: the key can be dropped from state."""
        return self.pending == 0 and self.firing_since_us is None

    def to_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "run_start_us": self.run_start_us, "firing_since_us": self.firing_since_us,
                "idle": self.idle, "firing_windows": self.firing_windows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        return cls(int(data.get("pending", 0)), data.get("run_start_us"), data.get("firing_since_us"),
                   int(data.get("idle", 0)), int(data.get("firing_windows", 0)))


def step(state: AlertState, verdict: Verdict, window_start_us: int, for_windows: int,
         stale_windows: int | None) -> Change:
    """Advance one key by one window (mutates ``state``).

    Fires after ``for_windows`` consecutive BREACH verdicts; NO_DATA windows neither count nor break the run.
    An open alert stays open on BREACH and HOLD (hysteresis) and resolves on CLEAR, or EXPIRES after
    ``stale_windows`` consecutive NO_DATA windows (``None``: never), so a tenant that went quiet does not hold an
    alert open forever (Prometheus resolves as soon as the series disappears; we wait a few windows).
    """
    if verdict is Verdict.NO_DATA:
        state.idle += 1
        if stale_windows is not None and state.idle >= stale_windows:
            was_firing = state.firing
            _reset(state)
            return Change.EXPIRED if was_firing else Change.NONE
        return Change.NONE
    state.idle = 0
    if state.firing:
        if verdict is Verdict.CLEAR:
            _reset(state)
            return Change.RESOLVED
        state.firing_windows += 1
        return Change.NONE
    if verdict is Verdict.BREACH:
        if state.pending == 0:
            state.run_start_us = window_start_us
        state.pending += 1
        if state.pending >= for_windows:
            state.firing_since_us = state.run_start_us
            state.pending = 0
            state.run_start_us = None
            state.firing_windows = 1
            return Change.FIRED
        return Change.NONE
    state.pending = 0
    state.run_start_us = None
    return Change.NONE


def _reset(state: AlertState) -> None:
    state.pending = 0
    state.run_start_us = None
    state.firing_since_us = None
    state.idle = 0
    state.firing_windows = 0


# -- Avro encoding ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AlertSchema:
    json: dict[str, Any]
    parsed: Any
    fingerprint: bytes


@cache
def alert_schema() -> _AlertSchema:
    """``schemas/alert.avsc``, parsed without logical types (window times stay int microseconds)."""
    schema_json = load_json(ALERT_SCHEMA_FILE)
    parsed = fastavro.parse_schema(strip_logical_types(schema_json))
    return _AlertSchema(schema_json, parsed, crc64_fingerprint(parsed))


class AlertCodec:
    """Alerts-topic values in Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint + body).

    Decoding raises :class:`schemas.codec.DecodeError` with the same reasons as the event codec.
    """

    def __init__(self) -> None:
        schema = alert_schema()
        self._parsed = schema.parsed
        self._prefix = SINGLE_OBJECT_MAGIC + schema.fingerprint

    def encode(self, alert: Alert) -> bytes:
        buf = io.BytesIO()
        buf.write(self._prefix)
        fastavro.schemaless_writer(buf, self._parsed, alert.to_record())
        return buf.getvalue()

    def decode(self, value: bytes | None) -> Alert:
        if not value:
            raise DecodeError("empty", "record value is empty or null")
        if value[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("bad_magic", f"first bytes {bytes(value[:2]).hex()} are not C301")
        if len(value) < 10:
            raise DecodeError("truncated_header", f"single-object header needs 10 bytes, got {len(value)}")
        if value[:10] != self._prefix:
            raise DecodeError("unknown_fingerprint", f"{bytes(value[2:10]).hex()} is not the Alert schema")
        buf = io.BytesIO(value)
        buf.seek(10)
        try:
            record = fastavro.schemaless_reader(buf, self._parsed, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, IndexError, ...
            raise DecodeError("invalid_avro", f"{type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(value):
            raise DecodeError("invalid_avro", f"{len(value) - buf.tell()} trailing bytes after the Avro body")
        try:
            return Alert.from_record(record)
        except (ValueError, KeyError) as exc:
            raise DecodeError("invalid_avro", f"not a valid alert: {exc}") from exc
