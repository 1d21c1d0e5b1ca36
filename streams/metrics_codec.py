"""Encode and decode ``WindowedMetrics`` record values (Avro single-object encoding, as schemas/codec.py does).

``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of ``schemas/windowed_metrics.avsc`` + the Avro body. Timestamps
travel as int microseconds (logical types stripped, see :mod:`schemas.contract`). Decoding errors raise
:class:`schemas.codec.DecodeError` with the same reasons as the event codec.

Records written with an earlier version (``schemas/history/windowed_metrics.vN.avsc``) are read too, resolved to
the current schema (fields added since get their defaults: ``revision`` 0, ``sealed`` false), so a metrics topic
written before an upgrade stays readable; the policy is FULL_TRANSITIVE, as for AgentEvent.

:func:`duration_datum` pre-encodes the ``Duration`` records (one per tool, per window, per emission: the largest
item of stage 2's encoding) with one ``struct`` call for their seven doubles; the bytes are the generated
encoder's (tests compare them with fastavro's), and anything it does not expect is left to the generated encoder.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from typing import Any

import fastavro

from schemas.codec import SINGLE_OBJECT_MAGIC, DecodeError
from schemas.codegen import _ZZ, PreEncoded, _enc_long, _uvarint
from schemas.contract import HISTORY_DIR, SCHEMA_DIR, crc64_fingerprint, load_json, strip_logical_types

SCHEMA_FILE = SCHEMA_DIR / "windowed_metrics.avsc"
RECORD_NAME = "io.agentwatch.WindowedMetrics"


@cache
def schema_json() -> dict[str, Any]:
    return load_json(SCHEMA_FILE)


def history_json() -> list[dict[str, Any]]:
    """Earlier released versions, oldest first."""
    files = sorted(HISTORY_DIR.glob("windowed_metrics.v*.avsc"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    return [load_json(p) for p in files]


class MetricsCodec:
    """Stateless after construction; safe to share between threads."""

    def __init__(self) -> None:
        self.parsed = fastavro.parse_schema(strip_logical_types(schema_json()))
        self.fingerprint = crc64_fingerprint(self.parsed)
        self._prefix = SINGLE_OBJECT_MAGIC + self.fingerprint
        self._writers: dict[bytes, Any] = {self.fingerprint: None}  # fingerprint -> writer schema (None: current)
        for old in history_json():
            parsed = fastavro.parse_schema(strip_logical_types(old))
            self._writers.setdefault(crc64_fingerprint(parsed), parsed)

    def encode(self, record: dict[str, Any]) -> bytes:
        """One WindowedMetrics dict (see :meth:`streams.aggregate.TenantWindowAggregate.to_record`) as bytes."""
        buf = io.BytesIO()
        buf.write(self._prefix)
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """The record dict; raises :class:`DecodeError`, never anything else."""
        if not value:
            raise DecodeError("empty", "record value is empty or null")
        if value[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("bad_magic", f"first bytes {bytes(value[:2]).hex()} are not C301")
        if len(value) < 10:
            raise DecodeError("truncated_header", f"single-object header needs 10 bytes, got {len(value)}")
        fp = bytes(value[2:10])
        if fp not in self._writers:
            raise DecodeError("unknown_fingerprint", f"{fp.hex()} is not WindowedMetrics")
        writer = self._writers[fp]
        buf = io.BytesIO(value)
        buf.seek(10)
        try:
            if writer is None:
                record = fastavro.schemaless_reader(buf, self.parsed, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, self.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, IndexError, ...
            raise DecodeError("invalid_avro", f"{type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(value):
            raise DecodeError("invalid_avro", f"{len(value) - buf.tell()} trailing bytes after the Avro body")
        return record  # type: ignore[return-value]


DURATION_RECORD = "io.agentwatch.Duration"
_NUMBER = {int, float}
_INT = {int}
# sum, then min, max, p50, p95, p99 (each the union branch 1 = double, zig-zag 2), then relative_accuracy
_DOUBLES = struct.Struct("<dBdBdBdBdBdd").pack
_pack_d = struct.Struct("<d").pack
_NULLS5 = b"\x00" * 5


def _long(n: int) -> bytes:
    return _ZZ[n] if -8192 <= n < 8192 else _enc_long(n)


def _array(items: list[int]) -> bytes:
    """An Avro array of int/long (one block, then the end marker); the caller checked the items are ints."""
    if not items:
        return b"\x00"
    if -8192 <= min(items) and max(items) < 8192:
        return _uvarint(2 * len(items)) + b"".join(map(_ZZ.__getitem__, items)) + b"\x00"
    return _uvarint(2 * len(items)) + b"".join(map(_long, items)) + b"\x00"


def duration_datum(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (a :meth:`streams.sketch.DurationSketch.to_dict` with p50/p95/p99) with its Avro body attached
    (:class:`schemas.codegen.PreEncoded`), or ``d`` itself when a value is not of the types the sketch makes."""
    count, zero, keys, counts = d["count"], d["zero_count"], d["bucket_keys"], d["bucket_counts"]
    lo, hi, p50, p95, p99 = d["min"], d["max"], d["p50"], d["p95"], d["p99"]
    total, alpha = d["sum"], d["relative_accuracy"]
    if (
        count.__class__ is not int
        or zero.__class__ is not int
        or not -(1 << 63) <= count < (1 << 63)
        or not -(1 << 63) <= zero < (1 << 63)
        or keys.__class__ is not list
        or counts.__class__ is not list
        or (keys and ({*map(type, keys)} != _INT or not -(1 << 31) <= min(keys) or max(keys) >= 1 << 31))
        or (counts and ({*map(type, counts)} != _INT or not -(1 << 63) <= min(counts) or max(counts) >= 1 << 63))
        or total.__class__ not in _NUMBER
        or alpha.__class__ not in _NUMBER
    ):
        return d
    try:  # struct refuses a number no double holds: then the generated encoder says which
        if lo is None and hi is None and p50 is None and p95 is None and p99 is None:
            doubles = _pack_d(total) + _NULLS5 + _pack_d(alpha)
        elif {lo.__class__, hi.__class__, p50.__class__, p95.__class__, p99.__class__} <= _NUMBER:
            doubles = _DOUBLES(total, 2, lo, 2, hi, 2, p50, 2, p95, 2, p99, alpha)
        else:
            return d
        body = _long(count) + doubles + _long(zero) + _array(keys) + _array(counts)
    except (OverflowError, struct.error):
        return d
    return PreEncoded(d, body, DURATION_RECORD)
