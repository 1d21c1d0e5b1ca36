"""Encode and decode ``WindowedMetrics`` record values (Avro single-object encoding, as schemas/codec.py does).

``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of ``schemas/windowed_metrics.avsc`` + the Avro body. Timestamps
travel as int microseconds (logical types stripped, see :mod:`schemas.contract`). Decoding errors raise
:class:`schemas.codec.DecodeError` with the same reasons as the event codec.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import fastavro

from schemas.codec import SINGLE_OBJECT_MAGIC, DecodeError
from schemas.contract import SCHEMA_DIR, crc64_fingerprint, load_json, strip_logical_types

SCHEMA_FILE = SCHEMA_DIR / "windowed_metrics.avsc"
RECORD_NAME = "io.agentwatch.WindowedMetrics"


@cache
def schema_json() -> dict[str, Any]:
    return load_json(SCHEMA_FILE)


class MetricsCodec:
    """Stateless after construction; safe to share between threads."""

    def __init__(self) -> None:
        self.parsed = fastavro.parse_schema(strip_logical_types(schema_json()))
        self.fingerprint = crc64_fingerprint(self.parsed)
        self._prefix = SINGLE_OBJECT_MAGIC + self.fingerprint

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
        if value[2:10] != self.fingerprint:
            raise DecodeError("unknown_fingerprint", f"{bytes(value[2:10]).hex()} is not WindowedMetrics")
        buf = io.BytesIO(value)
        buf.seek(10)
        try:
            record = fastavro.schemaless_reader(buf, self.parsed, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, IndexError, ...
            raise DecodeError("invalid_avro", f"{type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(value):
            raise DecodeError("invalid_avro", f"{len(value) - buf.tell()} trailing bytes after the Avro body")
        return record  # type: ignore[return-value]
