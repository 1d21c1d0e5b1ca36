"""Encode and decode AgentEvent / AgentEventBatch Kafka record values.

Two framings, told apart by their first byte:

* Avro single-object encoding (default, needs no registry): ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema + the Avro binary body. The decoder knows the fingerprints of every released
  version (``schemas/history``) and resolves older writers to the current reader schema.
* Confluent Schema Registry wire format (when a registry is configured): ``00`` + 4-byte big-endian schema id +
  body. The writer schema is fetched by id, so data from newer writers resolves too.

Bodies written with the current schema are encoded and decoded by code generated from it (:mod:`schemas.codegen`:
byte-for-byte fastavro's output, about 3x less CPU to encode and 2x less to decode, see bench/bench_codec.py);
bodies from other writer versions go through fastavro's schema resolution. ``AvroCodec(compiled=False)`` uses
fastavro throughout (the benchmark's baseline).

Anything else raises :class:`DecodeError` with a short machine-readable ``reason``; consumers send the record to
the dead-letter topic with that reason and carry on.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

import fastavro

from schemas import contract
from schemas.codegen import (  # EncodeError is part of this module's API: what encode_* raise
    AvroDecodeError,
    CompiledCodec,
    EncodeError,
    UnsupportedSchema,
    compile_schema,
    varint_long,
)
from schemas.contract import SchemaVersion

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024


class DecodeError(ValueError):
    """A record value that is not a decodable AgentEvent or AgentEventBatch.

    ``reason`` is one of: ``empty``, ``oversize``, ``bad_magic``, ``truncated_header``, ``unknown_fingerprint``,
    ``unknown_schema_id``, ``unsupported_schema``, ``invalid_avro``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Decoded:
    """What one record value held: a batch (with its producer id and sequence) or a single event."""

    events: list[Any]  # dicts (tuples from a Projector)
    is_batch: bool
    producer_id: str | None = None
    batch_seq: int | None = None
    schema_version: int | None = None
    framing: str = "single-object"


class SchemaIdResolver(Protocol):
    """The registry side of the Confluent framing (see :mod:`schemas.registry`)."""

    def schema_id_for(self, record_name: str, schema_json: dict[str, Any]) -> int: ...

    def schema_for_id(self, schema_id: int) -> dict[str, Any]: ...


@dataclass
class _Reader:
    writer: Any
    reader: Any | None  # None when the writer is the current schema: no resolution needed
    is_batch: bool
    version: int | None
    compiled: CompiledCodec | None = None  # the generated decoder, when the writer is the current schema


@dataclass
class AvroCodec:
    """Thread-safe after construction (encoding state lives on the stack; caches only grow).

    ``compiled=False`` encodes and decodes with fastavro only; the output is the same, only slower.
    """

    registry: SchemaIdResolver | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    compiled: bool = True
    _by_fingerprint: dict[bytes, _Reader] = field(init=False, default_factory=dict)
    _by_schema_id: dict[int, _Reader] = field(init=False, default_factory=dict)
    _cur: SchemaVersion = field(init=False)
    _event_prefix: bytes = field(init=False)
    _batch_prefix: bytes = field(init=False)
    _event_codec: CompiledCodec | None = field(init=False, default=None)
    _batch_codec: CompiledCodec | None = field(init=False, default=None)
    _projectors: dict[tuple[str, ...], Projector] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._cur = contract.current()
        if self.compiled:
            self._event_codec, self._batch_codec = _compiled_codecs(self._cur)
        for version in (*contract.history(), self._cur):
            self._by_fingerprint[version.event_fingerprint] = self._reader_of(version, is_batch=False)
            self._by_fingerprint[version.batch_fingerprint] = self._reader_of(version, is_batch=True)
        if self.registry is None:
            self._event_prefix = SINGLE_OBJECT_MAGIC + self._cur.event_fingerprint
            self._batch_prefix = SINGLE_OBJECT_MAGIC + self._cur.batch_fingerprint
        else:
            event_id = self.registry.schema_id_for(contract.EVENT_NAME, self._cur.event_json)
            batch_id = self.registry.schema_id_for(contract.BATCH_NAME, self._cur.batch_json)
            self._event_prefix = struct.pack(">bI", CONFLUENT_MAGIC, event_id)
            self._batch_prefix = struct.pack(">bI", CONFLUENT_MAGIC, batch_id)
            self._by_schema_id[event_id] = self._reader_of(self._cur, is_batch=False)
            self._by_schema_id[batch_id] = self._reader_of(self._cur, is_batch=True)

    def _reader_of(self, version: SchemaVersion, *, is_batch: bool) -> _Reader:
        writer = version.batch_parsed if is_batch else version.event_parsed
        if version is self._cur:
            compiled = self._batch_codec if is_batch else self._event_codec
            return _Reader(writer, None, is_batch, version.version, compiled)
        reader = self._cur.batch_parsed if is_batch else self._cur.event_parsed
        return _Reader(writer, reader, is_batch, version.version)

    @property
    def framing(self) -> str:
        return "single-object" if self.registry is None else "confluent"

    # -- encoding ---------------------------------------------------------------------------------------------

    def encode_event(self, event: dict[str, Any]) -> bytes:
        """One AgentEvent as a record value. Missing optional fields take their schema defaults.

        Raises :class:`EncodeError` (a ``ValueError``) naming the offending field.
        """
        if self._event_codec is not None:
            return self._event_codec.encode(event, self._event_prefix)
        return _fastavro_encode(self._event_prefix, self._cur.event_parsed, event)

    def encode_batch(self, producer_id: str, batch_seq: int, created_at: int, events: list[dict[str, Any]]) -> bytes:
        """Many AgentEvents in one record value; the events must share the record key (see producers).

        Raises :class:`EncodeError` naming the offending field (``events[i].<name>`` for an event's).
        """
        batch = {"producer_id": producer_id, "batch_seq": batch_seq, "created_at": created_at, "events": events}
        if self._batch_codec is not None:
            return self._batch_codec.encode(batch, self._batch_prefix)
        return _fastavro_encode(self._batch_prefix, self._cur.batch_parsed, batch)

    def encode_event_body(self, event: dict[str, Any]) -> bytes:
        """One AgentEvent's Avro body, without framing: an item for :meth:`encode_batch_bodies`.

        Raises :class:`EncodeError` naming the offending field.
        """
        if self._event_codec is not None:
            return self._event_codec.encode(event)
        return _fastavro_encode(b"", self._cur.event_parsed, event)

    @property
    def event_body_encoder(self) -> Any:
        """:meth:`encode_event_body` as a plain callable bound once (the generated encoder itself when compiled):
        for a loop that encodes every event, one Python call per event fewer."""
        if self._event_codec is not None:
            return self._event_codec.encode
        return self.encode_event_body

    def encode_batch_bodies(self, producer_id: str, batch_seq: int, created_at: int, bodies: list[bytes]) -> bytes:
        """The same bytes as :meth:`encode_batch` of the events ``bodies`` were encoded from.

        An Avro array is written as one block (item count, the items' bodies, a 0), so a batch is its header and
        the bodies side by side: a producer can encode each event as it validates it, while the event is still
        in the CPU cache, find a bad one alone, and size records exactly before framing them.
        """
        head = self.encode_batch(producer_id, batch_seq, created_at, [])  # header + the closing 0 of the array
        if not bodies:
            return head
        return b"".join((head[:-1], varint_long(len(bodies)), *bodies, head[-1:]))

    # -- decoding ---------------------------------------------------------------------------------------------

    def decode(self, value: bytes | None) -> Decoded:
        """Decode a record value of either framing; raises :class:`DecodeError`, never anything else."""
        return self._read(*self._locate(value))

    def projector(self, fields: tuple[str, ...]) -> Projector:
        """A decoder whose events are tuples of ``fields`` (AgentEvent field names) instead of dicts; see
        :class:`Projector`."""
        found = self._projectors.get(fields)
        if found is None:
            found = self._projectors[fields] = Projector(self, fields)
        return found

    def _locate(self, value: bytes | None) -> tuple[_Reader, bytes, int, str]:
        """The reader for ``value``'s writer schema and where its body starts."""
        if not value:
            raise DecodeError("empty", "record value is empty or null")
        if len(value) > self.max_record_bytes:
            raise DecodeError("oversize", f"{len(value)} bytes > limit {self.max_record_bytes}")
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < 10:
                raise DecodeError("truncated_header", f"single-object header needs 10 bytes, got {len(value)}")
            fp = bytes(value[2:10])
            reader = self._by_fingerprint.get(fp)
            if reader is None:
                raise DecodeError("unknown_fingerprint", f"no known writer schema has fingerprint {fp.hex()}")
            return reader, value, 10, "single-object"
        if value[0] == CONFLUENT_MAGIC:
            if len(value) < 5:
                raise DecodeError("truncated_header", f"Confluent header needs 5 bytes, got {len(value)}")
            (schema_id,) = struct.unpack_from(">I", value, 1)
            reader = self._by_schema_id.get(schema_id) or self._reader_for_id(schema_id)
            return reader, value, 5, "confluent"
        raise DecodeError("bad_magic", f"first bytes {bytes(value[:2]).hex()} are neither C301 nor 00")

    def _reader_for_id(self, schema_id: int) -> _Reader:
        if self.registry is None:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id}: no schema registry configured")
        try:
            writer_json = self.registry.schema_for_id(schema_id)
        except Exception as exc:  # the registry client raises its own error types
            raise DecodeError("unknown_schema_id", f"schema id {schema_id}: {exc}") from exc
        name = writer_json.get("name", "") if isinstance(writer_json, dict) else ""
        full = name if "." in name else f"{writer_json.get('namespace', '')}.{name}"
        if full not in (contract.BATCH_NAME, contract.EVENT_NAME):
            raise DecodeError("unsupported_schema", f"schema id {schema_id} is {full!r}, not an AgentEvent")
        try:
            writer = _parse(writer_json)
        except Exception as exc:
            raise DecodeError("unsupported_schema", f"schema id {schema_id} does not parse: {exc}") from exc
        known = self._by_fingerprint.get(contract.crc64_fingerprint(writer))
        if known is not None:  # a released version (or the current one: decoded by the generated code)
            reader = known
        elif full == contract.BATCH_NAME:
            reader = _Reader(writer, self._cur.batch_parsed, True, None)
        else:
            reader = _Reader(writer, self._cur.event_parsed, False, None)
        self._by_schema_id[schema_id] = reader
        return reader

    @staticmethod
    def _read(reader: _Reader, value: bytes, offset: int, framing: str) -> Decoded:
        if reader.compiled is not None:
            if value.__class__ is not bytes:
                value = bytes(value)
            try:
                datum, end = reader.compiled.decode(value, offset)
            except AvroDecodeError as exc:
                raise DecodeError("invalid_avro", str(exc)) from exc
            except Exception as exc:  # not expected; a consumer must still never crash on a record
                raise DecodeError("invalid_avro", f"{type(exc).__name__}: {exc}") from exc
        else:
            buf = io.BytesIO(value)
            buf.seek(offset)
            try:
                datum = fastavro.schemaless_reader(buf, reader.writer, reader.reader)
            except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, IndexError, ...
                raise DecodeError("invalid_avro", f"{type(exc).__name__}: {exc}") from exc
            end = buf.tell()
        if end != len(value):
            raise DecodeError("invalid_avro", f"{len(value) - end} trailing bytes after the Avro body")
        if reader.is_batch:
            return Decoded(datum["events"], True, datum["producer_id"], datum["batch_seq"], reader.version, framing)
        return Decoded([datum], False, None, None, reader.version, framing)


class Projector:
    """Decodes record values like :meth:`AvroCodec.decode`, but each event is the tuple of ``fields`` (``None``
    where absent) instead of a dict: for consumers that read a few fields of every event (the worker's fold).

    Bodies written with the current schema are read by a generated reader that builds only those fields
    (:func:`schemas.codegen.compile_schema` with ``project``) and raises exactly where the full decoder raises;
    other writers (and ``AvroCodec(compiled=False)``) are decoded in full, then projected. The same value gives the
    same tuples either way, and the same :class:`DecodeError` as :meth:`AvroCodec.decode`.
    """

    def __init__(self, codec: AvroCodec, fields: tuple[str, ...]) -> None:
        self.codec = codec
        self.fields = tuple(fields)
        self._event: CompiledCodec | None = None
        self._batch: CompiledCodec | None = None
        if codec.compiled and codec._batch_codec is not None:
            cur = contract.current()
            self._event, self._batch = _projected_codecs(cur, self.fields)
            self._readers = {True: _Reader(cur.batch_parsed, None, True, cur.version, self._batch),
                             False: _Reader(cur.event_parsed, None, False, cur.version, self._event)}

    def decode(self, value: bytes | None) -> Decoded:
        """The record's events as tuples of ``fields``; raises :class:`DecodeError`, never anything else."""
        reader, value, offset, framing = self.codec._locate(value)
        if reader.compiled is None or self._batch is None:
            decoded = self.codec._read(reader, value, offset, framing)
            fields = self.fields
            decoded.events = [tuple([ev.get(f) for f in fields]) for ev in decoded.events]
            return decoded
        return self.codec._read(self._readers[reader.is_batch], value, offset, framing)


def _parse(schema_json: dict[str, Any]) -> Any:
    return fastavro.parse_schema(contract.strip_logical_types(schema_json))


_COMPILED: dict[bytes, tuple[CompiledCodec | None, CompiledCodec | None]] = {}


def _compiled_codecs(version: SchemaVersion) -> tuple[CompiledCodec | None, CompiledCodec | None]:
    """The generated codecs of ``version``'s event and batch schemas (compiled once), or (None, None) to keep
    fastavro when the schema uses something :mod:`schemas.codegen` does not compile."""
    found = _COMPILED.get(version.batch_fingerprint)
    if found is None:
        try:
            found = (
                compile_schema(contract.strip_logical_types(version.event_json)),
                compile_schema(contract.strip_logical_types(version.batch_json)),
            )
        except UnsupportedSchema:
            found = (None, None)
        _COMPILED[version.batch_fingerprint] = found
    return found


_PROJECTED: dict[tuple[bytes, tuple[str, ...]], tuple[CompiledCodec, CompiledCodec]] = {}


def _projected_codecs(version: SchemaVersion, fields: tuple[str, ...]) -> tuple[CompiledCodec, CompiledCodec]:
    """The generated event and batch readers of ``version`` projecting AgentEvents to ``fields`` (compiled once)."""
    key = (version.batch_fingerprint, fields)
    found = _PROJECTED.get(key)
    if found is None:
        project = {contract.EVENT_NAME: fields}
        found = _PROJECTED[key] = (compile_schema(contract.strip_logical_types(version.event_json), project),
                                   compile_schema(contract.strip_logical_types(version.batch_json), project))
    return found


def _fastavro_encode(prefix: bytes, parsed: Any, datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(prefix)
    try:
        fastavro.schemaless_writer(buf, parsed, datum)
    except Exception as exc:  # fastavro raises ValueError, TypeError, AttributeError, struct.error, ...
        raise EncodeError("", f"{type(exc).__name__}: {exc}") from exc
    return buf.getvalue()


def payload_of(event: dict[str, Any]) -> dict[str, Any]:
    """The open ``payload`` field as a dict ({} when absent)."""
    text = event.get("payload")
    return json.loads(text) if text else {}
