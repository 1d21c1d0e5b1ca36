"""Confirming an audit log's unanchored tail against the topic it was read from.

A writer that crashed leaves records after its last signed checkpoint. Anyone with write access to the files can
append a record there and recompute the hash chain (no key needed), so a restarting writer must not sign that tail
on the strength of the chain alone. Every record carries where its event was read (``src``: topic, partition,
offset); the restarting writer fetches those offsets again and signs the tail only if each record holds exactly the
event the topic has at its offset (same canonical bytes, decrypted first when the log is encrypted), once.

A record without ``src``, whose offset the topic no longer has (retention), or whose content differs is
*unconfirmed*: the writer refuses the tenant (:class:`~sinks.audit_log.AuditCorruption`) and leaves the files as
found. :func:`unconfirmed` is pure; :class:`KafkaTailSource` does the fetching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sinks.audit_format import DecryptError, RecordCipher, canonical, event_of

SourceRef = tuple[str, int, int]  # (topic, partition, offset)


class TailSource(Protocol):
    """Where a restarting writer re-reads events: the decoded events of each record at the given offsets."""

    def fetch(self, refs: Iterable[SourceRef]) -> dict[SourceRef, list[Mapping[str, Any]]]:
        """Events per ref; a ref the source does not have (deleted by retention, never written) is left out."""
        ...


def event_key(event: Mapping[str, Any]) -> str:
    """The id the log deduplicates on: the event's id, or a content hash when it has none."""
    event_id = event.get("event_id")
    if isinstance(event_id, str) and event_id:
        return event_id
    return "sha256:" + hashlib.sha256(canonical(dict(event))).hexdigest()


def source_ref(record: Mapping[str, Any]) -> SourceRef | None:
    """The record's ``src`` as a ref, or None when it has none (or a malformed one)."""
    src = record.get("src")
    if not isinstance(src, dict):
        return None
    topic, partition, offset = src.get("topic"), src.get("partition"), src.get("offset")
    if not isinstance(topic, str) or not isinstance(partition, int) or not isinstance(offset, int):
        return None
    return topic, partition, offset


def unconfirmed(record: Mapping[str, Any], fetched: Mapping[SourceRef, list[Mapping[str, Any]]],
                cipher: RecordCipher | None) -> str | None:
    """Why ``record`` is not confirmed by the fetched source events, or None when it is.

    Pure. Only event records come from the topic; the writer checks its own ``segment_pruned`` records against the
    segment they name (:meth:`sinks.audit_log.AuditLog`), so one reaching here is not confirmed.
    """
    if record.get("kind") != "event":
        return f"a {record.get('kind')!r} record is not an event read from the topic"
    ref = source_ref(record)
    if ref is None:
        return "it names no source offset"
    events = fetched.get(ref)
    if events is None:
        return f"{ref[0]}[{ref[1]}]@{ref[2]} is not on the topic (never written there, or deleted by retention)"
    try:
        stored = event_of(record, cipher)
    except DecryptError as exc:
        return f"its ciphertext does not open ({exc})"
    if stored is None:
        return "it is encrypted and the writer has no key to compare it"
    wanted = record.get("event_id")
    for event in events:
        if event_key(event) == wanted:
            if canonical(dict(event)) == canonical(stored):
                return None
            return f"{ref[0]}[{ref[1]}]@{ref[2]} holds event {wanted} with different content"
    return f"{ref[0]}[{ref[1]}]@{ref[2]} holds no event {wanted}"


class KafkaTailSource:
    """Fetch given offsets from Kafka by assignment (no consumer group, nothing committed)."""

    def __init__(self, bootstrap_servers: str, *, timeout_s: float = 30.0,
                 consumer_config: dict[str, Any] | None = None) -> None:
        self._config = {"bootstrap.servers": bootstrap_servers, "group.id": "agentwatch-audit-confirm",
                        "enable.auto.commit": False, "enable.partition.eof": True,
                        "isolation.level": "read_committed", **(consumer_config or {})}
        self._timeout_s = timeout_s

    def fetch(self, refs: Iterable[SourceRef]) -> dict[SourceRef, list[Mapping[str, Any]]]:
        import time

        from confluent_kafka import Consumer, KafkaError, TopicPartition

        from schemas.codec import AvroCodec, DecodeError

        wanted: dict[tuple[str, int], set[int]] = {}
        for topic, partition, offset in refs:
            wanted.setdefault((topic, partition), set()).add(offset)
        out: dict[SourceRef, list[Mapping[str, Any]]] = {}
        if not wanted:
            return out
        codec = AvroCodec()
        consumer = Consumer(self._config)
        try:
            for (topic, partition), offsets in wanted.items():
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self._timeout_s)
                todo = {o for o in offsets if low <= o < high}
                if not todo:
                    continue
                consumer.assign([TopicPartition(topic, partition, min(todo))])
                last = max(todo)
                deadline = time.monotonic() + self._timeout_s
                while todo and time.monotonic() < deadline:
                    for msg in consumer.consume(500, timeout=0.5):
                        err = msg.error()
                        if err is not None:
                            if err.code() == KafkaError._PARTITION_EOF:
                                todo.clear()
                            continue
                        if msg.offset() in todo:
                            todo.discard(msg.offset())
                            try:
                                out[(topic, partition, msg.offset())] = list(codec.decode(msg.value()).events)
                            except DecodeError:
                                out[(topic, partition, msg.offset())] = []
                        if msg.offset() >= last:
                            todo.clear()
                if todo:
                    raise TimeoutError(f"could not read {topic}[{partition}] offsets {sorted(todo)[:5]} within "
                                       f"{self._timeout_s:.0f}s to confirm the audit log's unanchored tail")
                consumer.unassign()
        finally:
            consumer.close()
        return out
