"""AvroCodec: both framings, every DecodeError reason, and the generated codec against fastavro (the reference).

The property tests draw events from a seeded generator (unicode, empty and long strings, extreme longs, nulls and
missing keys everywhere, every enum symbol) and require the generated encoder's bytes to equal fastavro's and the
generated decoder's values to equal fastavro's decode, for single events and for batches.
"""

from __future__ import annotations

import io
import random
import struct
from typing import Any

import fastavro
import pytest
from agentao.host import PermissionDecisionEvent, SubagentLifecycleEvent, ToolLifecycleEvent
from agentao.transport import EventType

from schemas import contract
from schemas.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    DecodeError,
    EncodeError,
)
from schemas.codegen import LONG_MAX, LONG_MIN, UnsupportedSchema, compile_schema
from schemas.registry import RegistrySchemaIds

SYMBOLS = contract.event_types()
OPTIONAL = [f["name"] for f in contract.current().event_json["fields"] if isinstance(f["type"], list)]
LONG_FIELDS = ["duration_ms", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens",
               "reasoning_tokens"]
T0 = 1_767_225_600_000_000

STRINGS = ["", "a", "ok", "é", "日本語のテキスト", "emoji 🚀🔥", "zero\x00byte", "tab\tnew\nline", "\u0301combining",
           "x" * 63, "y" * 64, '{"k": [1, 2, {"n": null}]}']
LONG_STRINGS = ["z" * 8191, "w" * 8192, "ü" * 5000]  # length prefixes of 2 and 3 bytes
LONGS = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, -8192, -8193, 2**31, -(2**31) - 1, 2**53 + 1, T0, -T0,
         LONG_MIN, LONG_MAX, LONG_MIN + 1, LONG_MAX - 1]
INTS = [0, 1, -1, 63, 64, 200, 503, 8192, 2**31 - 1, -(2**31)]


def random_string(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return rng.choice(LONG_STRINGS)
    if rng.random() < 0.6:
        return rng.choice(STRINGS)
    alphabet = "abcXYZ019 _-/é中🙂\u0300\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def random_long(rng: random.Random) -> int:
    return rng.choice(LONGS) if rng.random() < 0.5 else rng.randint(LONG_MIN, LONG_MAX) >> rng.randrange(64)


def random_event(rng: random.Random, i: int) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": f"{rng.getrandbits(128):032x}",
        "event_time": random_long(rng),
        "producer_time": random_long(rng),
        "tenant": random_string(rng),
        "session_id": random_string(rng),
        "seq": random_long(rng),
        "type": SYMBOLS[i % len(SYMBOLS)],  # every symbol, in turn
    }
    if rng.random() < 0.3:
        ev["schema_version"] = rng.choice(INTS)
    for name in OPTIONAL:
        roll = rng.random()
        if roll < 0.35:
            continue  # missing key: the default (null)
        if roll < 0.55:
            ev[name] = None
        elif name in LONG_FIELDS:
            ev[name] = random_long(rng)
        elif name == "http_status":
            ev[name] = rng.choice(INTS)
        else:
            ev[name] = random_string(rng)
    return ev


def expected_datum(ev: dict[str, Any]) -> dict[str, Any]:
    """What any reader returns for ``ev``: every field, defaults filled in."""
    out = {}
    for f in contract.current().event_json["fields"]:
        out[f["name"]] = ev.get(f["name"], f.get("default"))
    return out


def fastavro_body(parsed: Any, datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


@pytest.fixture(scope="module")
def reference() -> AvroCodec:
    return AvroCodec(compiled=False)


@pytest.fixture(scope="module")
def registry_codec() -> AvroCodec:
    return AvroCodec(registry=RegistrySchemaIds.from_url("mock://test-codec", "agent-events"))


def sample_event(**extra: Any) -> dict[str, Any]:
    ev = {"event_id": "0123456789abcdef0123456789abcdef", "event_time": T0, "producer_time": T0 + 150,
          "tenant": "acme", "session_id": "s-1", "seq": 7, "type": "tool_complete"}
    ev.update(extra)
    return ev


# -- the generated codec is fastavro, faster ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_generated_encoder_bytes_equal_fastavro_and_decoders_agree(seed: int, codec: AvroCodec,
                                                                   reference: AvroCodec) -> None:
    rng = random.Random(seed)
    cur = contract.current()
    for i in range(150):
        ev = random_event(rng, i + seed)
        value = codec.encode_event(ev)
        assert value == reference.encode_event(ev), ev
        assert value[10:] == fastavro_body(cur.event_parsed, ev)
        ours, theirs = codec.decode(value), reference.decode(value)
        assert ours.events == theirs.events == [expected_datum(ev)]
        assert not ours.is_batch and ours.schema_version == cur.version


@pytest.mark.parametrize("size", [0, 1, 7, 500, 1500])
def test_generated_batch_codec_equals_fastavro(size: int, codec: AvroCodec, reference: AvroCodec) -> None:
    rng = random.Random(size)
    events = [random_event(rng, i) for i in range(size)]
    producer_id = random_string(rng)
    batch_seq = random_long(rng)
    value = codec.encode_batch(producer_id, batch_seq, T0, events)
    assert value == reference.encode_batch(producer_id, batch_seq, T0, events)
    ours, theirs = codec.decode(value), reference.decode(value)
    assert ours.events == theirs.events == [expected_datum(e) for e in events]
    assert (ours.is_batch, ours.producer_id, ours.batch_seq) == (True, producer_id, batch_seq)
    assert (theirs.producer_id, theirs.batch_seq) == (producer_id, batch_seq)


def test_every_event_type_symbol_round_trips(codec: AvroCodec) -> None:
    for symbol in SYMBOLS:
        assert codec.decode(codec.encode_event(sample_event(type=symbol))).events[0]["type"] == symbol


def test_agentao_str_enum_members_encode_as_their_value(codec: AvroCodec, reference: AvroCodec) -> None:
    ev = sample_event(type=EventType.TOOL_START, status=EventType.ERROR)
    assert codec.encode_event(ev) == reference.encode_event(ev) == codec.encode_event(
        sample_event(type="tool_start", status="error"))


def test_unknown_keys_are_ignored_like_fastavro(codec: AvroCodec, reference: AvroCodec) -> None:
    ev = sample_event(not_a_field={"x": 1})
    assert codec.encode_event(ev) == reference.encode_event(ev) == codec.encode_event(sample_event())


def test_decoder_accepts_bytearray_and_memoryview(codec: AvroCodec) -> None:
    value = codec.encode_event(sample_event(tool_name="t"))
    for view in (bytearray(value), memoryview(value)):
        assert codec.decode(view).events == codec.decode(value).events


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"duration_ms": "12"}, "duration_ms", "expected long"),
        ({"duration_ms": 1.5}, "duration_ms", "expected long"),
        ({"seq": True}, "seq", "expected long"),
        ({"seq": 2**63}, "seq", "out of the Avro long range"),
        ({"event_time": -(2**63) - 1}, "event_time", "out of the Avro long range"),
        ({"http_status": 2**31}, "http_status", "out of the Avro int range"),
        ({"schema_version": None}, "schema_version", "required"),
        ({"tool_name": 42}, "tool_name", "expected string"),
        ({"tool_name": b"bytes"}, "tool_name", "expected string"),
        ({"payload": "\ud800 lone surrogate"}, "payload", "UTF-8"),
        ({"type": "no_such_type"}, "type", "not a symbol of io.agentwatch.EventType"),
        ({"type": ["tool_start"]}, "type", "not a symbol"),
        ({"tenant": None}, "tenant", "required"),
    ],
)
def test_encoder_names_the_field_of_a_wrong_value(change: dict[str, Any], field: str, words: str,
                                                  codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match=words) as info:
        codec.encode_event(sample_event(**change))
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_encoder_reports_a_missing_required_field_and_a_non_dict(codec: AvroCodec) -> None:
    ev = sample_event()
    del ev["event_id"]
    with pytest.raises(EncodeError, match="required field is missing") as info:
        codec.encode_event(ev)
    assert info.value.field == "event_id"
    with pytest.raises(EncodeError, match="expected a dict"):
        codec.encode_event(["not", "a", "dict"])  # type: ignore[arg-type]


def test_batch_encoder_names_the_event_and_field(codec: AvroCodec) -> None:
    events = [sample_event(seq=i) for i in range(5)]
    events[3]["prompt_tokens"] = "many"
    with pytest.raises(EncodeError) as info:
        codec.encode_batch("p", 1, T0, events)
    assert info.value.field == "events[3].prompt_tokens"
    with pytest.raises(EncodeError) as info:
        codec.encode_batch("p", 1, T0, {"not": "a list"})  # type: ignore[arg-type]
    assert info.value.field == "events"


def test_fastavro_engine_raises_encode_error_too(reference: AvroCodec) -> None:
    with pytest.raises(EncodeError):
        reference.encode_event(sample_event(duration_ms="12"))


def test_codegen_refuses_what_it_does_not_compile() -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "record", "name": "R", "fields": [{"name": "u", "type": ["int", "string"]}]})
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "record", "name": "R",
                        "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}}]})


def test_codegen_covers_the_other_avro_types() -> None:
    """Types AgentEvent does not use yet, so that a compatible change to it keeps the generated codec."""
    schema = {
        "type": "record", "name": "R", "namespace": "t",
        "fields": [
            {"name": "b", "type": "boolean"}, {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
            {"name": "raw", "type": "bytes"}, {"name": "fx", "type": {"type": "fixed", "name": "F", "size": 3}},
            {"name": "m", "type": {"type": "map", "values": ["null", "long"]}},
            {"name": "a", "type": {"type": "array", "items": {"type": "array", "items": "string"}}},
            {"name": "nested", "type": ["null", {"type": "record", "name": "N", "fields": [
                {"name": "x", "type": "int"}, {"name": "tail", "type": ["null", "t.N"], "default": None}]}]},
            {"name": "last", "type": ["string", "null"], "default": "dflt"},
            {"name": "blob", "type": ["null", "bytes"], "default": None},
        ],
    }
    parsed = fastavro.parse_schema(schema)
    codec = compile_schema(schema)
    data = [
        {"b": True, "f": 1.5, "d": -2.25e300, "raw": b"\x00\xff", "fx": b"abc", "m": {"k": 1, "é": None, "": -9},
         "a": [["x", ""], [], ["日本"]], "nested": {"x": -5, "tail": {"x": 2**31 - 1, "tail": None}},
         "last": None, "blob": b""},
        {"b": False, "f": 0.0, "d": 0, "raw": b"", "fx": b"\x00\x00\x00", "m": {}, "a": [], "nested": None},
    ]
    for datum in data:
        body = codec.encode(datum)
        assert body == fastavro_body(parsed, datum)
        decoded, end = codec.decode(body)
        assert end == len(body)
        assert decoded == fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
    with pytest.raises(EncodeError) as info:
        codec.encode({**data[0], "fx": b"toolong"})
    assert info.value.field == "fx"
    with pytest.raises(EncodeError) as info:
        codec.encode({**data[0], "nested": {"x": "1"}})
    assert info.value.field == "nested.x"


@pytest.mark.parametrize("items", ["int", "long"])
def test_int_arrays_take_the_table_path_only_when_every_item_fits(items: str) -> None:
    """Arrays of small ints are joined from the zig-zag table in one pass; the bytes equal fastavro's either way,
    and an item that is not a plain int in range falls back to the per-item code and its checks."""
    schema = {"type": "record", "name": "A", "fields": [{"name": "xs", "type": {"type": "array", "items": items}}]}
    parsed = fastavro.parse_schema(schema)
    codec = compile_schema(schema)
    big = 2**31 - 1 if items == "int" else 2**62
    for xs in ([0], [1, -1, 63, 64, -64, -65, 8191, -8192], [8192, -8193, 0], [big, -big, 5], list(range(-300, 300)),
               [3, 7, 8191, 8192]):
        body = codec.encode({"xs": xs})
        assert body == fastavro_body(parsed, {"xs": xs}), xs
        assert codec.decode(body)[0] == {"xs": xs}
    for bad in ([1, True], [1, 2.0], [1, "2"], [1, None]):
        with pytest.raises(EncodeError) as info:
            codec.encode({"xs": bad})
        assert info.value.field.startswith("xs"), bad


# -- framings ----------------------------------------------------------------------------------------------------


def test_single_object_framing_header(codec: AvroCodec) -> None:
    cur = contract.current()
    event_value = codec.encode_event(sample_event())
    batch_value = codec.encode_batch("p", 1, T0, [sample_event()])
    assert event_value[:10] == SINGLE_OBJECT_MAGIC + cur.event_fingerprint
    assert batch_value[:10] == SINGLE_OBJECT_MAGIC + cur.batch_fingerprint
    assert cur.event_fingerprint != cur.batch_fingerprint
    assert codec.framing == "single-object"


def test_confluent_framing_round_trip_and_subjects(registry_codec: AvroCodec, codec: AvroCodec) -> None:
    event_value = registry_codec.encode_event(sample_event(model="m"))
    batch_value = registry_codec.encode_batch("p", 9, T0, [sample_event(seq=1), sample_event(seq=2)])
    assert event_value[0] == CONFLUENT_MAGIC and batch_value[0] == CONFLUENT_MAGIC
    event_id, batch_id = struct.unpack(">I", event_value[1:5])[0], struct.unpack(">I", batch_value[1:5])[0]
    assert event_id != batch_id
    client = registry_codec.registry.client  # type: ignore[union-attr]
    assert set(client.get_subjects()) == {"agent-events-io.agentwatch.AgentEvent",
                                          "agent-events-io.agentwatch.AgentEventBatch"}
    single = registry_codec.decode(event_value)
    assert (single.is_batch, single.framing, single.events[0]["model"]) == (False, "confluent", "m")
    batch = registry_codec.decode(batch_value)
    assert (batch.is_batch, batch.producer_id, batch.batch_seq) == (True, "p", 9)
    assert [e["seq"] for e in batch.events] == [1, 2]
    # The Avro body is the same in both framings; a registry codec also reads single-object records.
    assert event_value[5:] == codec.encode_event(sample_event(model="m"))[10:]
    assert registry_codec.decode(codec.encode_event(sample_event())).framing == "single-object"


def test_confluent_framing_from_a_fresh_reader_fetches_the_schema_by_id(registry_codec: AvroCodec) -> None:
    """A second codec over the same registry (another process) resolves the ids it did not register itself."""
    value = registry_codec.encode_batch("p", 3, T0, [sample_event(model="m")])
    reader = AvroCodec(registry=registry_codec.registry)
    reader._by_schema_id.clear()  # as if it had registered nothing
    decoded = reader.decode(value)
    assert decoded.is_batch and decoded.events[0]["model"] == "m"
    assert decoded.schema_version == contract.current().version


# -- every DecodeError reason ------------------------------------------------------------------------------------


def _reason(codec: AvroCodec, value: Any) -> str:
    with pytest.raises(DecodeError) as info:
        codec.decode(value)
    return info.value.reason


@pytest.fixture(scope="module", params=["generated", "fastavro"])
def any_codec(request: pytest.FixtureRequest) -> AvroCodec:
    return AvroCodec(compiled=request.param == "generated")


def test_empty_and_none(any_codec: AvroCodec) -> None:
    assert _reason(any_codec, b"") == "empty"
    assert _reason(any_codec, None) == "empty"


def test_oversize() -> None:
    small = AvroCodec(max_record_bytes=100)
    value = small.encode_event(sample_event(payload="x" * 200))
    assert _reason(small, value) == "oversize"


def test_random_bytes_and_bad_magic(any_codec: AvroCodec) -> None:
    assert _reason(any_codec, b'{"event_id": "json, not avro"}') == "bad_magic"
    rng = random.Random(5)
    for _ in range(200):
        value = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        with pytest.raises(DecodeError):
            any_codec.decode(value)


def test_truncated_headers(any_codec: AvroCodec) -> None:
    assert _reason(any_codec, SINGLE_OBJECT_MAGIC + b"\x01\x02\x03") == "truncated_header"
    assert _reason(any_codec, b"\x00\x00\x01") == "truncated_header"


def test_unknown_fingerprint(any_codec: AvroCodec) -> None:
    value = any_codec.encode_event(sample_event())
    assert _reason(any_codec, SINGLE_OBJECT_MAGIC + b"\xde\xad\xbe\xef\x00\x00\x00\x00" + value[10:]) == (
        "unknown_fingerprint")


def test_unknown_schema_id(any_codec: AvroCodec, registry_codec: AvroCodec) -> None:
    body = any_codec.encode_event(sample_event())[10:]
    value = struct.pack(">bI", CONFLUENT_MAGIC, 4242) + body
    assert _reason(any_codec, value) == "unknown_schema_id"  # no registry configured
    assert _reason(registry_codec, value) == "unknown_schema_id"  # the registry does not know the id


def test_schema_id_of_another_record_is_unsupported(registry_codec: AvroCodec) -> None:
    other = {"type": "record", "name": "Other", "namespace": "x", "fields": [{"name": "a", "type": "long"}]}
    other_id = registry_codec.registry.schema_id_for("x.Other", other)  # type: ignore[union-attr]
    assert _reason(registry_codec, struct.pack(">bI", CONFLUENT_MAGIC, other_id) + b"\x02") == "unsupported_schema"


def test_every_truncation_of_a_record_is_invalid(any_codec: AvroCodec) -> None:
    value = any_codec.encode_batch("p", 1, T0, [sample_event(payload='{"a": 1}', tool_name="t", duration_ms=T0),
                                                sample_event(model="é" * 3)])
    for cut in range(10, len(value)):
        assert _reason(any_codec, value[:cut]) == "invalid_avro", cut


def test_trailing_bytes(any_codec: AvroCodec) -> None:
    value = any_codec.encode_event(sample_event())
    with pytest.raises(DecodeError, match="trailing") as info:
        any_codec.decode(value + b"\x00")
    assert info.value.reason == "invalid_avro"


def _all_null_event_value(codec: AvroCodec) -> bytearray:
    """An event whose optional fields are all null: its body ends with one 0x00 union index per optional field,
    preceded by the EventType index."""
    value = bytearray(codec.encode_event(sample_event(type="session_end")))
    assert value[-len(OPTIONAL):] == bytes(len(OPTIONAL))
    assert value[-len(OPTIONAL) - 1] == 2 * SYMBOLS.index("session_end")
    return value


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        (lambda v: v.__setitem__(-1, 0x04), "union index out of range"),  # payload branch 2 of 2
        (lambda v: v.__setitem__(-1, 0x01), "union index out of range"),  # branch -1
        (lambda v: v.__setitem__(-len(OPTIONAL) - 1, 2 * len(SYMBOLS)), "enum index out of range"),
        (lambda v: v.__setitem__(-len(OPTIONAL) - 1, 0x01), "enum index out of range"),  # index -1
        (lambda v: v.__setitem__(slice(-1, None), b"\x02\x04\xff\xfe"), "UTF-8"),
        (lambda v: v.__setitem__(slice(-1, None), b"\x02\x03ab"), "negative length"),
        (lambda v: v.__setitem__(slice(10, 11), b"\xff" * 11), "longer than 10 bytes"),
        (lambda v: v.__setitem__(slice(10, 11), b"\xff" * 9 + b"\x7f"), "overflows 64 bits"),
    ],
)
def test_malformed_bodies_are_invalid_avro(patch: Any, words: str, codec: AvroCodec) -> None:
    value = _all_null_event_value(codec)
    patch(value)
    with pytest.raises(DecodeError, match=words) as info:
        codec.decode(bytes(value))
    assert info.value.reason == "invalid_avro"


def test_non_canonical_varints_still_decode(codec: AvroCodec, reference: AvroCodec) -> None:
    """Avro allows padded varints (0x80 0x00 is 0): the generated decoder agrees with fastavro on them."""
    value = _all_null_event_value(codec)
    value[-1:] = b"\x80\x00"  # payload's union index 0, in two bytes
    assert codec.decode(bytes(value)).events == reference.decode(bytes(value)).events
    assert codec.decode(bytes(value)).events[0]["payload"] is None


def test_mutated_records_raise_decode_error_or_match_fastavro(codec: AvroCodec, reference: AvroCodec) -> None:
    rng = random.Random(11)
    good = codec.encode_batch("p", 1, T0, [random_event(rng, i) for i in range(3)])
    for _ in range(400):
        value = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            value[rng.randrange(10, len(value))] = rng.getrandbits(8)
        try:
            ours = codec.decode(bytes(value))
        except DecodeError:
            continue
        assert ours.events == reference.decode(bytes(value)).events


# -- the contract's EventType ------------------------------------------------------------------------------------


def test_event_types_cover_agentao_host_kinds_and_our_own() -> None:
    agentao = {e.value for e in EventType}
    host = {m.model_fields["event_type"].default
            for m in (ToolLifecycleEvent, PermissionDecisionEvent, SubagentLifecycleEvent)}
    ours = {"unknown", "confirm_resolved", "session_start", "session_end", "log"}
    assert len(agentao) == 35 and len(host) == 3
    assert len(SYMBOLS) == len(set(SYMBOLS)) == 43
    assert set(SYMBOLS) == agentao | host | ours
    type_field = next(f for f in contract.current().event_json["fields"] if f["name"] == "type")
    assert type_field["type"]["default"] == "unknown" == SYMBOLS[0]
