"""The partials topic between the worker's two stages: partial window aggregates and watermark markers.

Stage 1 (per events partition) sends, when a window closes in its partition, one **partial** per (tenant, window):
the tenant's aggregate of that window *from that source partition only*. Then it sends a **marker** to every
partition of the partials topic: "source partition ``p`` has closed (and sent) every window ending at or before
``watermark_us``", or "source partition ``p`` is idle" (empty and caught up: do not wait for it). Stage 2
(keyed by tenant) merges a window's partials once every non-idle source partition's watermark has passed its end.

Records are small JSON documents (the aggregate is a ``WindowedMetrics`` dict without the duration quantiles, see
:meth:`streams.aggregate.TenantWindowAggregate.to_record`): internal, so readable beats compact. Partials are
sent to an explicit partition, a stable hash of the tenant (:func:`tenant_partition`), so every worker sends one
tenant's partials to the same place whatever its client's partitioner, and stage 2 can tell from a tenant name
which partition's state it belongs to.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

PARTIAL = "partial"
MARKER = "marker"
FORMAT_VERSION = 1


def tenant_partition(tenant: str, partitions: int) -> int:
    """The partials partition of a tenant: CRC-32 of its UTF-8 name modulo the partition count (stable)."""
    return zlib.crc32(tenant.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class Partial:
    """One tenant's aggregate of one window from one source partition (``record`` is a WindowedMetrics dict)."""

    source_partition: int
    record: dict[str, Any]

    @property
    def tenant(self) -> str:
        return str(self.record["tenant"])

    @property
    def window_start_us(self) -> int:
        return int(self.record["window_start_us"])

    @property
    def window_end_us(self) -> int:
        return int(self.record["window_end_us"])


@dataclass(frozen=True, slots=True)
class Marker:
    """Source partition ``source_partition`` closed every window ending at or before ``watermark_us``.

    ``idle``: the partition has no data to wait for (empty and caught up); ``watermark_us`` is then ``None``
    or its last watermark. A later non-idle marker of the same partition ends the idle state.
    """

    source_partition: int
    watermark_us: int | None
    idle: bool = False


class PartialsFormatError(ValueError):
    """A record on the partials topic that is not a partial or a marker of this format."""


def encode_partial(partial: Partial) -> tuple[bytes, bytes]:
    """(key, value) of a partial record; the key is the tenant."""
    doc = {"v": FORMAT_VERSION, "type": PARTIAL, "source_partition": partial.source_partition,
           "record": partial.record}
    return partial.tenant.encode("utf-8"), orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


def encode_marker(marker: Marker) -> tuple[bytes, bytes]:
    """(key, value) of a marker record (sent to every partition; the key names the source partition)."""
    doc = {"v": FORMAT_VERSION, "type": MARKER, "source_partition": marker.source_partition,
           "watermark_us": marker.watermark_us, "idle": marker.idle}
    return f"@marker/{marker.source_partition}".encode(), orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


def decode(value: bytes | None) -> Partial | Marker:
    """A partials-topic record value; raises :class:`PartialsFormatError`."""
    if not value:
        raise PartialsFormatError("empty partials record")
    try:
        doc = orjson.loads(value)
    except ValueError as exc:
        raise PartialsFormatError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise PartialsFormatError(f"unknown partials format {doc.get('v') if isinstance(doc, dict) else doc!r}")
    try:
        source = int(doc["source_partition"])
        if doc["type"] == PARTIAL:
            record = doc["record"]
            if not isinstance(record, dict) or "tenant" not in record:
                raise PartialsFormatError("a partial needs a WindowedMetrics record")
            return Partial(source, record)
        if doc["type"] == MARKER:
            wm = doc.get("watermark_us")
            return Marker(source, None if wm is None else int(wm), bool(doc.get("idle", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise PartialsFormatError(f"malformed partials record: {exc!r}") from exc
    raise PartialsFormatError(f"unknown partials record type {doc.get('type')!r}")
