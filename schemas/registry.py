"""Confluent Schema Registry as the :class:`schemas.codec.SchemaIdResolver` of the Confluent framing.

Events and batches share one topic, so subjects follow TopicRecordNameStrategy: ``{topic}-{record fullname}``
(``agent-events-io.agentwatch.AgentEvent``, ``agent-events-io.agentwatch.AgentEventBatch``). Ids and schemas are
cached: a codec asks once per schema at start-up and once per unknown id it meets while decoding.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient


def topic_record_subject(topic: str, record_name: str) -> str:
    """The TopicRecordNameStrategy subject (as confluent_kafka's ``topic_record_subject_name_strategy``)."""
    return f"{topic}-{record_name}"


class RegistrySchemaIds:
    """Registers the schemas a codec writes and fetches the ones it meets, through a ``SchemaRegistryClient``.

    ``compatibility`` (e.g. ``"FULL_TRANSITIVE"``) is set on each subject before its first registration when given;
    leave it None where subjects are configured by an administrator (or the client cannot, like ``mock://``).
    Thread-safe.
    """

    def __init__(self, client: SchemaRegistryClient, topic: str, *, compatibility: str | None = None,
                 normalize: bool = False) -> None:
        self.client = client
        self.topic = topic
        self.compatibility = compatibility
        self.normalize = normalize
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, topic: str, *, compatibility: str | None = None,
                 **client_conf: Any) -> RegistrySchemaIds:
        """A resolver with its own client for ``url`` (``http(s)://...`` or ``mock://name`` for tests)."""
        return cls(SchemaRegistryClient.new_client({"url": url, **client_conf}), topic, compatibility=compatibility)

    def schema_id_for(self, record_name: str, schema_json: dict[str, Any]) -> int:
        """The id of ``schema_json`` under ``{topic}-{record_name}``, registering it if needed.

        Raises the client's ``SchemaRegistryError`` when the registry refuses it (e.g. incompatible).
        """
        text = json.dumps(schema_json, sort_keys=True, separators=(",", ":"))
        key = (record_name, text)
        with self._lock:
            found = self._ids.get(key)
            if found is not None:
                return found
            subject = topic_record_subject(self.topic, record_name)
            if self.compatibility:
                self.client.set_compatibility(subject_name=subject, level=self.compatibility)
            schema_id = self.client.register_schema(subject, Schema(text, "AVRO"), normalize_schemas=self.normalize)
            self._ids[key] = schema_id
            self._schemas[schema_id] = json.loads(text)
            return schema_id

    def schema_for_id(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema registered with ``schema_id``; raises the client's error when there is none."""
        with self._lock:
            found = self._schemas.get(schema_id)
        if found is not None:
            return found
        schema = self.client.get_schema(schema_id)
        if (schema.schema_type or "AVRO").upper() != "AVRO":
            raise ValueError(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        parsed = json.loads(schema.schema_str)
        with self._lock:
            self._schemas[schema_id] = parsed
        return parsed
