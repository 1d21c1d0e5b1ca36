"""The AgentEvent contract: the `.avsc` files beside this module, loaded once.

Timestamps are `timestamp-micros` in the files (what other languages and the registry see) but travel through
agentwatch as plain ``int`` microseconds since the epoch: the codec parses a copy of each schema with the logical
types stripped, which leaves the binary encoding and the fingerprint (Parsing Canonical Form ignores logical
types) unchanged and spares a datetime per field on the hot path.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
EVENT_NAME = "io.agentwatch.AgentEvent"
BATCH_NAME = "io.agentwatch.AgentEventBatch"

_VERSION_FILE = re.compile(r"agent_event\.v(\d+)\.avsc$")


def load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def strip_logical_types(schema: Any) -> Any:
    """A deep copy of ``schema`` without ``logicalType`` keys (see the module docstring)."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


def expand_batch(event_schema: dict[str, Any], batch_schema: dict[str, Any]) -> dict[str, Any]:
    """The batch schema with the named AgentEvent reference replaced by ``event_schema`` itself.

    A self-contained schema has one Parsing Canonical Form, so one fingerprint, and registers in a Schema
    Registry without references.
    """
    expanded = copy.deepcopy(batch_schema)
    for field in expanded["fields"]:
        if field["name"] == "events":
            field["type"] = {"type": "array", "items": copy.deepcopy(event_schema)}
    return expanded


def crc64_fingerprint(parsed_schema: Any) -> bytes:
    """CRC-64-AVRO of the schema's Parsing Canonical Form, as the 8 little-endian bytes of single-object encoding."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed_schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class SchemaVersion:
    """One released version of the event contract, as both an event schema and the batch schema around it."""

    version: int
    event_json: dict[str, Any]
    batch_json: dict[str, Any]
    event_parsed: Any
    batch_parsed: Any
    event_fingerprint: bytes
    batch_fingerprint: bytes


def build_version(version: int, event_json: dict[str, Any], batch_json: dict[str, Any]) -> SchemaVersion:
    batch_full = expand_batch(event_json, batch_json)
    event_parsed = fastavro.parse_schema(strip_logical_types(event_json))
    batch_parsed = fastavro.parse_schema(strip_logical_types(batch_full))
    return SchemaVersion(
        version=version,
        event_json=event_json,
        batch_json=batch_full,
        event_parsed=event_parsed,
        batch_parsed=batch_parsed,
        event_fingerprint=crc64_fingerprint(event_parsed),
        batch_fingerprint=crc64_fingerprint(batch_parsed),
    )


@cache
def current() -> SchemaVersion:
    """The version this code writes and reads into."""
    event_json = load_json(SCHEMA_DIR / "agent_event.avsc")
    version = _current_version_number(event_json)
    return build_version(version, event_json, load_json(SCHEMA_DIR / "agent_event_batch.avsc"))


@cache
def history() -> tuple[SchemaVersion, ...]:
    """Earlier released versions (``history/agent_event.vN.avsc``), oldest first; the decoder knows them all."""
    batch_json = load_json(SCHEMA_DIR / "agent_event_batch.avsc")
    found = []
    for path in HISTORY_DIR.glob("agent_event.v*.avsc"):
        m = _VERSION_FILE.search(path.name)
        if m:
            found.append(build_version(int(m.group(1)), load_json(path), batch_json))
    return tuple(sorted(found, key=lambda v: v.version))


def event_types() -> tuple[str, ...]:
    """The symbols of the current EventType enum."""
    for field in current().event_json["fields"]:
        if field["name"] == "type":
            return tuple(field["type"]["symbols"])
    raise AssertionError("AgentEvent has no type field")


def event_field_names() -> tuple[str, ...]:
    return tuple(f["name"] for f in current().event_json["fields"])


def _current_version_number(event_json: dict[str, Any]) -> int:
    for field in event_json["fields"]:
        if field["name"] == "schema_version":
            return int(field["default"])
    raise AssertionError("AgentEvent has no schema_version field")
