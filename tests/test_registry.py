"""schemas.registry over confluent_kafka's SchemaRegistryClient: the in-process ``mock://`` client, and a small
in-process HTTP registry double so that the client's real HTTP path (and the compatibility level) is exercised.
Records interoperate with confluent_kafka's own AvroSerializer / AvroDeserializer both ways.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas import contract, evolution
from schemas.codec import AvroCodec, DecodeError
from schemas.registry import RegistrySchemaIds, topic_record_subject

FIXTURES = Path(__file__).resolve().parent / "fixtures"
T0 = 1_767_225_600_000_000
EVENT_SUBJECT = "events-io.agentwatch.AgentEvent"
BATCH_SUBJECT = "events-io.agentwatch.AgentEventBatch"


class RegistryDouble:
    """The part of the Confluent Schema Registry REST API agentwatch uses, on 127.0.0.1, Avro only.

    Register (``POST /subjects/{s}/versions``, refused with 409 when the subject's compatibility level is
    violated, checked by schemas.evolution), ``GET /schemas/ids/{id}``, ``GET /subjects``,
    ``GET /subjects/{s}/versions``, ``PUT /config[/{s}]``, ``POST /compatibility/subjects/{s}/versions[/{v}]``.
    """

    def __init__(self, compatibility: str = "BACKWARD") -> None:
        self.default_level = compatibility
        self.levels: dict[str, str] = {}
        self.versions: dict[str, list[int]] = {}  # subject -> schema id of each version
        self.texts: list[str] = []  # schema id - 1 -> schema text
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RegistryDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path))
            if method == "GET" and path == "/subjects":
                return 200, sorted(self.versions)
            if m := re.fullmatch(r"/schemas/ids/(\d+)", path):
                schema_id = int(m.group(1))
                if method == "GET" and 1 <= schema_id <= len(self.texts):
                    return 200, {"schema": self.texts[schema_id - 1]}
                return 404, {"error_code": 40403, "message": f"Schema {schema_id} not found"}
            if m := re.fullmatch(r"/subjects/([^/]+)/versions", path):
                subject = m.group(1)
                if method == "POST":
                    return self._register(subject, body)
                if subject in self.versions:
                    return 200, list(range(1, len(self.versions[subject]) + 1))
                return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
            if method == "PUT" and (m := re.fullmatch(r"/config(?:/([^/]+))?", path)):
                level = str(body.get("compatibility", "")).upper()
                if level not in evolution.MODES:
                    return 422, {"error_code": 42203, "message": f"Invalid compatibility level {level}"}
                if m.group(1):
                    self.levels[m.group(1)] = level
                else:
                    self.default_level = level
                return 200, {"compatibility": level}
            if method == "POST" and (m := re.fullmatch(r"/compatibility/subjects/([^/]+)/versions(?:/(\w+))?", path)):
                subject, version = m.group(1), m.group(2)
                existing = [json.loads(self.texts[i - 1]) for i in self.versions.get(subject, [])]
                level = self.levels.get(subject, self.default_level)
                if version is not None:
                    existing = existing[-1:] if version == "latest" else existing[int(version) - 1:int(version)]
                    level = level.removesuffix("_TRANSITIVE")
                problems = evolution.check_compatibility(level, json.loads(body["schema"]), existing)
                return 200, {"is_compatible": not problems, "messages": [str(p) for p in problems]}
            return 404, {"error_code": 404, "message": f"no route {method} {path}"}

    def _register(self, subject: str, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("schemaType", "AVRO") != "AVRO":
            return 422, {"error_code": 42201, "message": "only AVRO schemas"}
        try:
            new = json.loads(body["schema"])
        except (KeyError, ValueError):
            return 422, {"error_code": 42201, "message": "Invalid schema"}
        text = json.dumps(new, sort_keys=True)
        ids = self.versions.setdefault(subject, [])
        for schema_id in ids:
            if self.texts[schema_id - 1] == text:
                return 200, {"id": schema_id}
        existing = [json.loads(self.texts[i - 1]) for i in ids]
        problems = evolution.check_compatibility(self.levels.get(subject, self.default_level), new, existing)
        if problems:
            if not ids:
                del self.versions[subject]
            detail = "; ".join(map(str, problems))
            return 409, {"error_code": 409, "message": f"Schema being registered is incompatible: {detail}"}
        schema_id = self.texts.index(text) + 1 if text in self.texts else len(self.texts) + 1
        if schema_id > len(self.texts):
            self.texts.append(text)
        ids.append(schema_id)
        return 200, {"id": schema_id}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, payload = double.handle(self.command, unquote(urlsplit(self.path).path), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
                pass

        return Handler


@pytest.fixture
def double() -> Iterator[RegistryDouble]:
    with RegistryDouble() as registry:
        yield registry


def _event(**extra: Any) -> dict[str, Any]:
    ev = {"event_id": "cd" * 16, "event_time": T0, "producer_time": T0 + 5, "tenant": "acme", "session_id": "s",
          "seq": 3, "type": "llm_call_completed", "model": "m", "prompt_tokens": 1200, "cache_read_tokens": 800}
    ev.update(extra)
    return ev


# -- RegistrySchemaIds over the mock client ----------------------------------------------------------------------


def test_subjects_follow_topic_record_name_strategy() -> None:
    ctx = SerializationContext("events", MessageField.VALUE)
    assert topic_record_subject("events", contract.EVENT_NAME) == topic_record_subject_name_strategy(
        ctx, contract.EVENT_NAME) == EVENT_SUBJECT


def test_mock_client_registers_once_and_caches() -> None:
    resolver = RegistrySchemaIds.from_url("mock://registry-cache", "events")
    calls = []
    register = resolver.client.register_schema

    def counting(*args: Any, **kwargs: Any) -> int:
        calls.append(args[0])
        return register(*args, **kwargs)

    resolver.client.register_schema = counting  # type: ignore[method-assign]
    cur = contract.current()
    first = resolver.schema_id_for(contract.EVENT_NAME, cur.event_json)
    assert resolver.schema_id_for(contract.EVENT_NAME, cur.event_json) == first
    batch = resolver.schema_id_for(contract.BATCH_NAME, cur.batch_json)
    assert batch != first and calls == [EVENT_SUBJECT, BATCH_SUBJECT]
    assert resolver.schema_for_id(first) == cur.event_json
    with pytest.raises(SchemaRegistryError):
        resolver.schema_for_id(9999)


def test_a_second_resolver_fetches_schemas_by_id() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://registry-fetch"})
    writer = AvroCodec(registry=RegistrySchemaIds(client, "events"))
    value = writer.encode_batch("p", 1, T0, [_event()])
    reader = RegistrySchemaIds(client, "events")
    assert reader.schema_for_id(int.from_bytes(value[1:5], "big")) == contract.current().batch_json


# -- the HTTP path, against the double ---------------------------------------------------------------------------


def test_codec_over_http_registry(double: RegistryDouble) -> None:
    producer = AvroCodec(registry=RegistrySchemaIds.from_url(double.url, "events", compatibility="FULL_TRANSITIVE"))
    assert double.levels == {EVENT_SUBJECT: "FULL_TRANSITIVE", BATCH_SUBJECT: "FULL_TRANSITIVE"}
    event_value = producer.encode_event(_event())
    batch_value = producer.encode_batch("prod-1", 77, T0, [_event(seq=1), _event(seq=2)])

    consumer_ids = RegistrySchemaIds.from_url(double.url, "events")
    consumer = AvroCodec(registry=consumer_ids)
    consumer._by_schema_id.clear()  # forget what it registered itself: make it fetch the writer schemas over HTTP
    consumer_ids._schemas.clear()
    assert consumer.decode(event_value).events[0]["cache_read_tokens"] == 800
    batch = consumer.decode(batch_value)
    assert (batch.producer_id, batch.batch_seq, [e["seq"] for e in batch.events]) == ("prod-1", 77, [1, 2])
    assert ("GET", f"/schemas/ids/{int.from_bytes(batch_value[1:5], 'big')}") in double.requests

    unknown = b"\x00" + (len(double.texts) + 50).to_bytes(4, "big") + event_value[5:]
    with pytest.raises(DecodeError) as info:
        consumer.decode(unknown)
    assert info.value.reason == "unknown_schema_id" and "not found" in info.value.detail


def test_http_registry_enforces_full_transitive(double: RegistryDouble) -> None:
    resolver = RegistrySchemaIds.from_url(double.url, "events", compatibility="FULL_TRANSITIVE")
    v1 = contract.current().event_json
    v2 = contract.load_json(FIXTURES / "agent_event.next.avsc")
    breaking = json.loads(json.dumps(v2))
    breaking["fields"].append({"name": "region", "type": "string"})

    v1_id = resolver.schema_id_for(contract.EVENT_NAME, v1)
    client = resolver.client
    assert client.test_compatibility(EVENT_SUBJECT, Schema(json.dumps(v2), "AVRO"))
    assert not client.test_compatibility(EVENT_SUBJECT, Schema(json.dumps(breaking), "AVRO"))
    v2_id = resolver.schema_id_for(contract.EVENT_NAME, v2)
    assert v2_id != v1_id and client.get_versions(EVENT_SUBJECT) == [1, 2]
    with pytest.raises(SchemaRegistryError) as info:
        resolver.schema_id_for(contract.EVENT_NAME, breaking)
    assert info.value.http_status_code == 409 and "reader_field_missing_default_value" in info.value.error_message
    assert client.get_versions(EVENT_SUBJECT) == [1, 2]


# -- interoperability with confluent_kafka's own serde -----------------------------------------------------------


def _to_micros(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return value


def test_confluent_deserializer_reads_our_records(double: RegistryDouble) -> None:
    resolver = RegistrySchemaIds.from_url(double.url, "events")
    codec = AvroCodec(registry=resolver)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": double.url}))
    ctx = SerializationContext("events", MessageField.VALUE)
    datum = deserializer(codec.encode_event(_event()), ctx)
    assert {k: _to_micros(v) for k, v in datum.items()} == codec.decode(codec.encode_event(_event())).events[0]
    batch = deserializer(codec.encode_batch("p", 2, T0, [_event(seq=9)]), ctx)
    assert batch["producer_id"] == "p" and batch["events"][0]["seq"] == 9


def test_we_read_records_of_the_confluent_serializer(double: RegistryDouble) -> None:
    client = SchemaRegistryClient({"url": double.url})
    serializer = AvroSerializer(client, json.dumps(contract.current().event_json),
                                conf={"subject.name.strategy": topic_record_subject_name_strategy})
    value = serializer(_event(), SerializationContext("events", MessageField.VALUE))
    codec = AvroCodec(registry=RegistrySchemaIds.from_url(double.url, "events"))
    decoded = codec.decode(value)
    assert decoded.framing == "confluent" and not decoded.is_batch
    assert decoded.events[0]["model"] == "m" and decoded.events[0]["event_time"] == T0
    assert EVENT_SUBJECT in double.versions
