"""FULL_TRANSITIVE, proven with a next schema version (tests/fixtures/agent_event.next.avsc: adds the optional field
``sandbox_id`` and the EventType symbol ``tool_cancelled``): old readers read new data, new readers read old data,
with fastavro's resolution directly and through AvroCodec; the checker rejects changes that break either direction.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas import contract, evolution
from schemas.codec import AvroCodec, DecodeError
from schemas.registry import RegistrySchemaIds

FIXTURES = Path(__file__).resolve().parent / "fixtures"
T0 = 1_767_225_600_000_000


@pytest.fixture(scope="module")
def v1_json() -> dict[str, Any]:
    return contract.load_json(contract.SCHEMA_DIR / "agent_event.avsc")


@pytest.fixture(scope="module")
def v2_json() -> dict[str, Any]:
    return contract.load_json(FIXTURES / "agent_event.next.avsc")


def _version(number: int, event_json: dict[str, Any]) -> contract.SchemaVersion:
    batch_json = contract.load_json(contract.SCHEMA_DIR / "agent_event_batch.avsc")
    return contract.build_version(number, event_json, batch_json)


def _event(**extra: Any) -> dict[str, Any]:
    ev = {"event_id": "ab" * 16, "event_time": T0, "producer_time": T0 + 1, "tenant": "acme", "session_id": "s-1",
          "seq": 1, "type": "tool_start", "tool_name": "read_file"}
    ev.update(extra)
    return ev


def _write(parsed: Any, datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_fixture_is_the_change_it_claims(v1_json: dict[str, Any], v2_json: dict[str, Any]) -> None:
    v1_names = [f["name"] for f in v1_json["fields"]]
    assert [f["name"] for f in v2_json["fields"]] == [*v1_names, "sandbox_id"]
    assert _field(v2_json, "type")["type"]["symbols"] == [*_field(v1_json, "type")["type"]["symbols"],
                                                          "tool_cancelled"]
    assert _field(v2_json, "schema_version")["default"] == _field(v1_json, "schema_version")["default"] + 1


# -- fastavro schema resolution ----------------------------------------------------------------------------------


def test_old_reader_reads_new_data(v1_json: dict[str, Any], v2_json: dict[str, Any]) -> None:
    v1, v2 = _version(1, v1_json), _version(2, v2_json)
    body = _write(v2.event_parsed, _event(type="tool_cancelled", sandbox_id="sb-1", schema_version=2))
    datum = fastavro.schemaless_reader(io.BytesIO(body), v2.event_parsed, v1.event_parsed)
    assert datum["type"] == "unknown"  # the symbol v1 does not know maps to the enum default
    assert "sandbox_id" not in datum  # the field v1 does not know is skipped
    assert (datum["tool_name"], datum["schema_version"]) == ("read_file", 2)


def test_new_reader_reads_old_data(v1_json: dict[str, Any], v2_json: dict[str, Any]) -> None:
    v1, v2 = _version(1, v1_json), _version(2, v2_json)
    body = _write(v1.event_parsed, _event(type="tool_start"))
    datum = fastavro.schemaless_reader(io.BytesIO(body), v1.event_parsed, v2.event_parsed)
    assert datum["sandbox_id"] is None  # the new field takes its default
    assert (datum["type"], datum["schema_version"]) == ("tool_start", _field(v1_json, "schema_version")["default"])


# -- the same through AvroCodec, v1 released into history ------------------------------------------------------


@pytest.fixture
def release_v2(monkeypatch: pytest.MonkeyPatch, v1_json: dict[str, Any], v2_json: dict[str, Any]) -> Any:
    """Switch the contract to "v2 is current, v1 is in history" for codecs built after calling the result."""
    v1, v2 = _version(1, v1_json), _version(2, v2_json)

    def switch() -> None:
        monkeypatch.setattr(contract, "current", lambda: v2)
        monkeypatch.setattr(contract, "history", lambda: (v1,))

    return switch


def test_new_codec_decodes_old_records_of_both_kinds(release_v2: Any) -> None:
    old = AvroCodec()  # built while v1 is current: an old producer
    old_event = old.encode_event(_event())
    old_batch = old.encode_batch("p", 1, T0, [_event(seq=1), _event(seq=2, type="turn_end")])
    release_v2()
    new = AvroCodec()
    assert new._event_codec is not None  # v2 is compiled too
    single = new.decode(old_event)
    assert single.schema_version == 1 and not single.is_batch
    assert single.events[0]["sandbox_id"] is None and single.events[0]["tool_name"] == "read_file"
    batch = new.decode(old_batch)
    assert batch.is_batch and batch.schema_version == 1
    assert [(e["seq"], e["type"], e["sandbox_id"]) for e in batch.events] == [(1, "tool_start", None),
                                                                             (2, "turn_end", None)]


def test_old_codec_meets_new_records(release_v2: Any) -> None:
    """Single-object framing names the writer by fingerprint only: a reader that predates a version cannot
    resolve it and says so (upgrade consumers first); the registry framing resolves it (the writer schema is
    fetched by id): the new symbol becomes ``unknown``, the new field is dropped."""
    old_single_object = AvroCodec()
    resolver = RegistrySchemaIds.from_url("mock://evolution", "events")
    old_registry = AvroCodec(registry=resolver)
    release_v2()
    new_event = _event(type="tool_cancelled", sandbox_id="sb-9", schema_version=2)
    new_single_object = AvroCodec().encode_event(new_event)
    with pytest.raises(DecodeError) as info:
        old_single_object.decode(new_single_object)
    assert info.value.reason == "unknown_fingerprint"

    new_registry = AvroCodec(registry=resolver)  # registers v2 under the same subjects
    for value in (new_registry.encode_event(new_event), new_registry.encode_batch("p", 5, T0, [new_event])):
        decoded = old_registry.decode(value)
        (datum,) = decoded.events
        assert datum["type"] == "unknown" and "sandbox_id" not in datum
        assert (datum["tool_name"], datum["schema_version"]) == ("read_file", 2)
    assert sorted(resolver.client.get_versions("events-io.agentwatch.AgentEvent")) == [1, 2]  # the mock keeps a set


# -- the checker ---------------------------------------------------------------------------------------------------


def test_v2_is_full_transitive_with_v1(v1_json: dict[str, Any], v2_json: dict[str, Any]) -> None:
    assert evolution.check_full_transitive([v1_json, v2_json]) == []
    assert evolution.policy_violations(v2_json) == []


def test_current_schema_is_full_transitive_with_every_released_version() -> None:
    labels, schemas = zip(*evolution.released_versions(), strict=True)
    assert labels[-1].endswith("(current)")
    assert evolution.check_full_transitive(list(schemas), list(labels)) == []
    for schema in schemas:
        assert evolution.policy_violations(schema) == []
    assert contract.current().version not in [v.version for v in contract.history()]


def _with(schema: dict[str, Any], change: Any) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    change(changed)
    return changed


def test_adding_a_required_field_is_rejected(v2_json: dict[str, Any], v1_json: dict[str, Any]) -> None:
    bad = _with(v2_json, lambda s: s["fields"].append({"name": "region", "type": "string"}))
    problems = evolution.check_full_transitive([v1_json, bad])
    assert len(problems) == 1
    assert (problems[0].reader, problems[0].writer) == ("v4", "v3")  # the new reader cannot read old data
    assert "reader_field_missing_default_value" in str(problems[0])
    assert any("region" in v for v in evolution.policy_violations(bad))


def test_a_new_symbol_without_the_enum_default_is_rejected(v1_json: dict[str, Any], v2_json: dict[str, Any]) -> None:
    def drop_default(s: dict[str, Any]) -> None:
        del _field(s, "type")["type"]["default"]

    v1_without, v2_without = _with(v1_json, drop_default), _with(v2_json, drop_default)
    problems = evolution.check_full_transitive([v1_without, v2_without])
    assert [(p.reader, p.writer) for p in problems] == [("v3", "v4")]  # the old reader fails on tool_cancelled
    assert "missing_enum_symbols" in str(problems[0]) and "tool_cancelled" in str(problems[0])
    assert any("EventType" in v for v in evolution.policy_violations(v2_without))


def test_other_breaking_changes_are_rejected(v1_json: dict[str, Any]) -> None:
    def retype(s: dict[str, Any]) -> None:
        _field(s, "duration_ms")["type"] = ["null", "string"]

    def drop_key(s: dict[str, Any]) -> None:
        s["fields"] = [f for f in s["fields"] if f["name"] != "tenant"]

    def drop_symbol(s: dict[str, Any]) -> None:
        _field(s, "type")["type"]["symbols"].remove("memory_cleared")

    for change in (retype, drop_key):
        assert evolution.check_full_transitive([v1_json, _with(v1_json, change)]), change.__name__
    # Removing a symbol is safe for old data only because of the default; the checker still sees both ways.
    assert evolution.check_full_transitive([v1_json, _with(v1_json, drop_symbol)]) == []
    assert evolution.policy_violations(_with(v1_json, drop_key)) == ["key field 'tenant' is missing"]


def test_removing_an_optional_field_is_allowed(v1_json: dict[str, Any]) -> None:
    def drop_payload(s: dict[str, Any]) -> None:
        s["fields"] = [f for f in s["fields"] if f["name"] != "traceparent"]

    assert evolution.check_full_transitive([v1_json, _with(v1_json, drop_payload)]) == []


ZONE = {"NONE": 0, "BACKWARD": 0, "BACKWARD_TRANSITIVE": 1, "FORWARD": 0, "FORWARD_TRANSITIVE": 0, "FULL": 0,
        "FULL_TRANSITIVE": 1}
DROP_TENANT = {"NONE": 0, "BACKWARD": 0, "BACKWARD_TRANSITIVE": 0, "FORWARD": 1, "FORWARD_TRANSITIVE": 2, "FULL": 1,
               "FULL_TRANSITIVE": 2}


@pytest.mark.parametrize("mode", evolution.MODES)
def test_registry_modes_check_the_right_pairs(mode: str, v1_json: dict[str, Any], v2_json: dict[str, Any]) -> None:
    # "zone": v1, then v1 + zone with a default, then zone made required: reads the latest, not v1's data.
    with_zone = _with(v1_json, lambda s: s["fields"].append({"name": "zone", "type": "string", "default": "eu"}))
    zone_required = _with(v1_json, lambda s: s["fields"].append({"name": "zone", "type": "string"}))
    assert len(evolution.check_compatibility(mode, zone_required, [v1_json, with_zone])) == ZONE[mode]
    # "drop tenant": the new schema reads everything, but neither older reader can read its data.
    no_tenant = _with(v2_json, lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != "tenant"]))
    assert len(evolution.check_compatibility(mode, no_tenant, [v1_json, v2_json])) == DROP_TENANT[mode]


def test_unknown_mode_is_an_error(v1_json: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown compatibility mode"):
        evolution.check_compatibility("SIDEWAYS", v1_json, [v1_json])


def test_fixture_file_is_valid_json_avro(v2_json: dict[str, Any]) -> None:
    fastavro.parse_schema(json.loads(json.dumps(v2_json)))
