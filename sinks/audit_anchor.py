"""Publishing the audit log's signed heads to an external witness, and reading them back for ``verify --anchors``.

Why: a hash chain with signed checkpoints cannot show on its own that its newest checkpoints (and the records after
the remaining ones) were removed; what is left is a consistent older log. A copy of each stream's newest signed
checkpoint kept where the log's writer cannot rewrite it closes that: ``verify --anchors`` fails when the log no
longer holds a checkpoint the witness saw, or holds a different one under the same number.

Witnesses (:func:`open_witness`, spec from ``AGENTWATCH_AUDIT_ANCHORS``):

* ``kafka`` (default): a compacted topic (``<prefix>.audit.anchors``), keyed by (tenant, stream), so it keeps the
  newest checkpoint of every stream for ever. Give the audit writer's principal write-only ACLs on it.
* ``file:PATH``: JSON lines appended and fsynced (for WORM or append-only storage, another host's mount).
* ``http://...`` / ``https://...``: each checkpoint ``POST``\\ ed as JSON; ``GET`` on the same URL returns JSON lines
  (or a JSON array) of what was posted.

Publishing never stops the audit sink: :class:`AnchorPublisher` keeps the newest unsent checkpoint per stream,
retries at the next flush, and counts failures (``failures``, logged once a minute at most). While it lags, a
rollback to a state after the last delivered anchor is not detectable: the README says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sinks.audit_format import canonical, parse_line
from sinks.audit_store import FILE_MODE
from sinks.fsync import fsync_dir

log = logging.getLogger(__name__)
StreamKey = tuple[str, str]  # (tenant, stream)


class AnchorError(Exception):
    """The witness cannot be used (missing topic, unreadable file, HTTP error); the message says which and why."""


class Witness(Protocol):
    """Where signed heads go and come back from."""

    name: str

    def send(self, checkpoints: list[dict[str, Any]]) -> None:
        """Deliver every checkpoint (durably where the witness allows) or raise."""
        ...

    def read(self) -> list[dict[str, Any]]:
        """Everything the witness holds (any order; the newest per stream wins)."""
        ...

    def close(self) -> None:
        ...


def stream_key(cp: Mapping[str, Any]) -> StreamKey:
    return str(cp.get("tenant")), str(cp.get("stream"))


def newest_per_stream(checkpoints: Iterable[Mapping[str, Any]]) -> dict[StreamKey, dict[str, Any]]:
    """The checkpoint with the highest ``n`` of each stream. Pure."""
    out: dict[StreamKey, dict[str, Any]] = {}
    for cp in checkpoints:
        n = cp.get("n")
        if not isinstance(n, int):
            continue
        key = stream_key(cp)
        if key not in out or n > out[key]["n"]:
            out[key] = dict(cp)
    return out


class FileWitness:
    """JSON lines appended to one file (0600), fsynced per send."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def send(self, checkpoints: list[dict[str, Any]]) -> None:
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            os.write(fd, b"".join(canonical(cp) + b"\n" for cp in checkpoints))
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)

    def read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise AnchorError(f"anchors file {self.path}: {exc.strerror or exc}") from None
        out = []
        for i, line in enumerate(data.splitlines(), 1):
            try:
                out.append(parse_line(line))
            except ValueError:
                raise AnchorError(f"anchors file {self.path} line {i} is not a JSON checkpoint") from None
        return out

    def close(self) -> None:
        pass


class HttpWitness:
    """POST each checkpoint as JSON; GET returns JSON lines or a JSON array."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.name = url
        self._timeout = timeout_s

    def send(self, checkpoints: list[dict[str, Any]]) -> None:
        for cp in checkpoints:
            req = urllib.request.Request(self.url, data=canonical(cp), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:  # noqa: S310 (operator-given URL)
                if not 200 <= resp.status < 300:
                    raise AnchorError(f"anchors URL {self.url}: HTTP {resp.status}")

    def read(self) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url, timeout=self._timeout) as resp:  # noqa: S310
                body = resp.read()
        except OSError as exc:
            raise AnchorError(f"anchors URL {self.url}: {exc}") from None
        text = body.strip()
        try:
            if text.startswith(b"["):
                items = json.loads(text)
            else:
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise AnchorError(f"anchors URL {self.url} did not return JSON lines or a JSON array") from None
        return [i for i in items if isinstance(i, dict)]

    def close(self) -> None:
        pass


class KafkaWitness:
    """A compacted topic keyed by (tenant, stream); produce is asynchronous, delivery checked at the next send."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout_s: float = 10.0) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.name = f"kafka topic {topic}"
        self._bootstrap = bootstrap_servers
        self._timeout = timeout_s
        self._producer: Any = None
        self._failed: list[dict[str, Any]] = []
        self._producer_cls = Producer

    def check(self) -> None:
        """Fail fast (AnchorError) when the topic does not exist: auto-creation is off, and publishing would only
        time out later."""
        from confluent_kafka.admin import AdminClient

        md = AdminClient({"bootstrap.servers": self._bootstrap}).list_topics(timeout=self._timeout)
        if self.topic not in md.topics or md.topics[self.topic].error is not None:
            raise AnchorError(f"anchors topic {self.topic} does not exist at {self._bootstrap}; create it "
                              "(`agentwatch topics create`) or choose another witness with AGENTWATCH_AUDIT_ANCHORS")

    def send(self, checkpoints: list[dict[str, Any]]) -> None:
        if self._producer is None:
            self._producer = self._producer_cls({
                "bootstrap.servers": self._bootstrap, "enable.idempotence": True, "acks": "all",
                "message.timeout.ms": int(self._timeout * 1000), "linger.ms": 5})
        failed: list[dict[str, Any]] = []

        def delivered(err: Any, msg: Any, cp: dict[str, Any] | None = None) -> None:
            if err is not None and cp is not None:
                failed.append(cp)

        for cp in checkpoints:
            self._producer.produce(self.topic, key=canonical([cp.get("tenant"), cp.get("stream")]),
                                   value=canonical(cp), on_delivery=lambda e, m, cp=cp: delivered(e, m, cp))
        remaining = self._producer.flush(self._timeout)
        if failed or remaining:
            raise AnchorError(f"anchors topic {self.topic}: {len(failed) + remaining} checkpoint(s) not delivered")

    def read(self) -> list[dict[str, Any]]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        consumer = Consumer({"bootstrap.servers": self._bootstrap, "group.id": "agentwatch-audit-anchors-read",
                             "enable.auto.commit": False, "enable.partition.eof": True})
        out: list[dict[str, Any]] = []
        try:
            md = consumer.list_topics(self.topic, timeout=self._timeout).topics.get(self.topic)
            if md is None or md.error is not None:
                raise AnchorError(f"anchors topic {self.topic} does not exist at {self._bootstrap}")
            ends = {}
            for p in md.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self._timeout)
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            deadline = time.monotonic() + self._timeout * 3
            while ends and time.monotonic() < deadline:
                for msg in consumer.consume(1000, timeout=0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            ends.pop(msg.partition(), None)
                        continue
                    if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                        ends.pop(msg.partition(), None)
                    if msg.value():
                        try:
                            out.append(parse_line(msg.value()))
                        except ValueError:
                            continue  # a foreign record: it cannot vouch for anything
            if ends:
                raise AnchorError(f"anchors topic {self.topic}: could not read to the end within the timeout")
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout)


def open_witness(spec: str, *, bootstrap_servers: str, default_topic: str) -> Witness | None:
    """The witness a spec names: ``kafka`` / ``kafka:TOPIC``, ``file:PATH``, ``http(s)://URL``, or ``none``."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if spec == "kafka" or spec.startswith("kafka:"):
        return KafkaWitness(bootstrap_servers, spec[len("kafka:"):] or default_topic)
    if spec.startswith("file:"):
        return FileWitness(spec[len("file:"):])
    if spec.startswith(("http://", "https://")):
        return HttpWitness(spec)
    raise AnchorError(f"unknown anchors witness {spec!r}: use kafka, kafka:TOPIC, file:PATH, http(s)://URL or none")


class AnchorPublisher:
    """Collects signed checkpoints (the log's ``on_checkpoint``) and sends the newest per stream on :meth:`flush`."""

    def __init__(self, witness: Witness, *, log_interval_s: float = 60.0) -> None:
        self.witness = witness
        self.sent = 0
        self.failures = 0
        self._pending: dict[StreamKey, dict[str, Any]] = {}
        self._log_interval = log_interval_s
        self._last_log = 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def publish(self, cp: dict[str, Any]) -> None:
        key = stream_key(cp)
        if key not in self._pending or cp["n"] > self._pending[key]["n"]:
            self._pending[key] = cp

    def flush(self) -> bool:
        """Send what is pending; False (counted, logged at most once a minute) when the witness failed."""
        if not self._pending:
            return True
        batch = list(self._pending.values())
        try:
            self.witness.send(batch)
        except Exception as exc:  # never stop the sink for the witness: keep the newest and retry later
            self.failures += 1
            now = time.monotonic()
            if now - self._last_log >= self._log_interval:
                self._last_log = now
                log.warning("audit anchors: could not publish %d signed head(s) to %s (%s); %d failure(s) so far; "
                            "retrying at the next flush (rollback past the last published head is undetectable "
                            "meanwhile)", len(batch), self.witness.name, exc, self.failures)
            return False
        for cp in batch:
            if self._pending.get(stream_key(cp)) is cp:
                del self._pending[stream_key(cp)]
        self.sent += len(batch)
        return True

    def close(self) -> bool:
        ok = self.flush()
        self.witness.close()
        return ok
