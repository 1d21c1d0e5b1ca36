"""Encode and decode ``WindowedMetrics`` record values (Avro single-object encoding, as schemas/codec.py does).

``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of ``schemas/windowed_metrics.avsc`` + the Avro body. Timestamps
travel as int microseconds (logical types stripped, see :mod:`schemas.contract`). Decoding errors raise
:class:`schemas.codec.DecodeError` with the same reasons as the event codec.

Records written with an earlier version (``schemas/history/windowed_metrics.vN.avsc``) are read too, resolved to
the current schema (fields added since get their defaults: ``revision`` 0, ``sealed`` false), so a metrics topic
written before an upgrade stays readable; the policy is FULL_TRANSITIVE, as for AgentEvent.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import fastavro

from schemas.codec import SINGLE_OBJECT_MAGIC, DecodeError
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

