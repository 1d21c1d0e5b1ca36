"""The schema evolution policy, checked: FULL_TRANSITIVE compatibility and agentwatch's own field rules.

FULL_TRANSITIVE means every version can read data written by every other version, in both directions, so producers
and consumers can be upgraded in any order and any old record stays readable (docs/schema-evolution.md). The pair
check is Apache Avro's own ``avro.compatibility.ReaderWriterCompatibilityChecker`` (the reference implementation
of the resolution rules, the same logic a Schema Registry applies); :func:`policy_violations` adds the house rules
that keep every future change compatible (optional fields are ``["null", T]`` defaulting to null, the EventType
enum has a default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import contract

KEY_FIELDS = frozenset(
    {"event_id", "schema_version", "event_time", "producer_time", "tenant", "session_id", "seq", "type"}
)
"""The envelope every AgentEvent has; all other fields must be optional (see :func:`policy_violations`)."""

MODES = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
"""Schema Registry compatibility levels, with the registry's meaning (see :func:`check_compatibility`)."""


@dataclass(frozen=True)
class Incompatibility:
    """Data written with ``writer`` cannot be read with ``reader`` (labels are version names)."""

    reader: str
    writer: str
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return f"reader {self.reader} cannot read writer {self.writer}: {'; '.join(self.problems)}"


def read_problems(reader_json: Any, writer_json: Any) -> tuple[str, ...]:
    """Why data written with ``writer_json`` cannot be resolved to ``reader_json``; empty when it can."""
    reader = avro.schema.parse(json.dumps(reader_json))
    writer = avro.schema.parse(json.dumps(writer_json))
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return ()
    kinds = ", ".join(sorted({k.value for k in result.incompatibilities}))
    where = ", ".join(sorted(result.locations))
    return (f"{kinds} at {where}: {'; '.join(sorted(result.messages))}",)


def check_compatibility(mode: str, new: Any, existing: Sequence[Any], labels: Sequence[str] | None = None,
                        new_label: str = "new") -> list[Incompatibility]:
    """Check ``new`` against ``existing`` (oldest first) as a Schema Registry does for ``mode``.

    BACKWARD: the new schema reads data of the latest (TRANSITIVE: of all); FORWARD: those read the new schema's
    data; FULL: both. Returns the incompatibilities, empty when ``new`` may be registered.
    """
    mode = mode.upper()
    if mode not in MODES:
        raise ValueError(f"unknown compatibility mode {mode!r}; one of {', '.join(MODES)}")
    labels = list(labels) if labels is not None else [f"#{i + 1}" for i in range(len(existing))]
    if mode == "NONE" or not existing:
        return []
    pairs = list(zip(labels, existing, strict=True))
    against = pairs if mode.endswith("_TRANSITIVE") else pairs[-1:]
    found = []
    for label, old in against:
        if mode.startswith(("BACKWARD", "FULL")):
            problems = read_problems(new, old)
            if problems:
                found.append(Incompatibility(new_label, label, problems))
        if mode.startswith(("FORWARD", "FULL")):
            problems = read_problems(old, new)
            if problems:
                found.append(Incompatibility(label, new_label, problems))
    return found


def check_full_transitive(versions: Sequence[Any], labels: Sequence[str] | None = None) -> list[Incompatibility]:
    """Every ordered pair of ``versions`` (reader, writer), both directions: empty when FULL_TRANSITIVE holds."""
    labels = list(labels) if labels is not None else [_label(v, i) for i, v in enumerate(versions)]
    found = []
    for i, reader in enumerate(versions):
        for j, writer in enumerate(versions):
            if i != j:
                problems = read_problems(reader, writer)
                if problems:
                    found.append(Incompatibility(labels[i], labels[j], problems))
    return found


def policy_violations(event_json: dict[str, Any]) -> list[str]:
    """The house rules that keep the next change FULL_TRANSITIVE-compatible, for one AgentEvent schema version.

    Every field outside :data:`KEY_FIELDS` is ``["null", T]`` with default null (so it can be added and removed);
    every key field is present; every enum has a default that is one of its symbols (so a reader survives a symbol
    it does not know yet).
    """
    found = []
    names = {f["name"] for f in event_json["fields"]}
    for missing in sorted(KEY_FIELDS - names):
        found.append(f"key field {missing!r} is missing")
    for field in event_json["fields"]:
        name, ftype = field["name"], field["type"]
        if name not in KEY_FIELDS:
            nullable = isinstance(ftype, list) and len(ftype) == 2 and ftype[0] == "null"
            if not nullable or "default" not in field or field["default"] is not None:
                found.append(f"field {name!r} must be [\"null\", T] with default null")
        for enum in _enums(ftype):
            if enum.get("default") not in enum["symbols"]:
                found.append(f"enum {enum['name']!r} (field {name!r}) needs a default among its symbols")
    return found


def released_versions() -> list[tuple[str, dict[str, Any]]]:
    """(label, event schema) of every version in schemas/history plus the current one, oldest first."""
    versions = [(f"v{v.version}", v.event_json) for v in contract.history()]
    cur = contract.current()
    versions.append((f"v{cur.version} (current)", cur.event_json))
    return versions


def _enums(ftype: Any) -> list[dict[str, Any]]:
    if isinstance(ftype, list):
        return [e for branch in ftype for e in _enums(branch)]
    if isinstance(ftype, dict):
        if ftype.get("type") == "enum":
            return [ftype]
        if ftype.get("type") == "array":
            return _enums(ftype["items"])
        if ftype.get("type") == "map":
            return _enums(ftype["values"])
    return []


def _label(schema: Any, index: int) -> str:
    for field in schema.get("fields", []) if isinstance(schema, dict) else []:
        if field["name"] == "schema_version" and "default" in field:
            return f"v{field['default']}"
    return f"#{index + 1}"
