"""The partials topic between the worker's two stages: partial window aggregates and watermark markers.

Stage 1 (per events partition) sends, when a window closes in its partition, one **partial** per (tenant, window):
the tenant's aggregate of that window *from that source partition only*; and for late events within the allowed
lateness, a **delta** partial (``delta`` = the offset of the events record that brought them). Then it sends a
**marker** to every partition of the partials topic: "source partition ``p`` has closed (and sent) every window
ending at or before ``watermark_us``", or "source partition ``p`` is idle" (empty and caught up: do not wait for
it). Stage 2 (keyed by tenant) merges a window's partials once every non-idle source partition's watermark has
passed its end.

Stage 1 sends what one events record (or heartbeat) caused to one partials partition as **one** record: a batch
of items in order, the partials of that partition's tenants first, then the marker, so the marker still follows the
partials it covers (format 2; format 1 records, one item each, are still read). Kafka and Faust pay per record,
and a closing window boundary of a busy partition closes one window per tenant at once.

Items are small JSON documents (the aggregate is a ``WindowedMetrics`` dict without the duration quantiles, see
:meth:`streams.aggregate.TenantWindowAggregate.to_record`): internal, so readable beats compact. Partials are
sent to an explicit partition, a stable hash of the tenant (:func:`tenant_partition`), so every worker sends one
tenant's partials to the same place whatever its client's partitioner, and stage 2 can tell from a tenant name
which partition's state it belongs to.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

PARTIAL = "partial"
MARKER = "marker"
FORMAT_VERSION = 2  # a batch of items; 1: a single item (still read)


def tenant_partition(tenant: str, partitions: int) -> int:
    """The partials partition of a tenant: CRC-32 of its UTF-8 name modulo the partition count (stable)."""
    return zlib.crc32(tenant.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class Partial:
    """One tenant's aggregate of one window from one source partition (``record`` is a WindowedMetrics dict).

    ``delta``: not the window's aggregate but the late events that one events record (at that offset of the source
    partition) added to it after it closed; stage 2 merges it into the partial it holds, once per offset.
    """

    source_partition: int
    record: dict[str, Any]
    delta: int | None = None

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


def _partial_doc(partial: Partial) -> dict[str, Any]:
    doc = {"type": PARTIAL, "source_partition": partial.source_partition, "record": partial.record}
    if partial.delta is not None:
        doc["delta"] = partial.delta
    return doc


def _marker_doc(marker: Marker) -> dict[str, Any]:
    return {"type": MARKER, "source_partition": marker.source_partition, "watermark_us": marker.watermark_us,
            "idle": marker.idle}


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


def encode_items(source_partition: int, items: Sequence[Partial | Marker]) -> tuple[bytes, bytes]:
    """(key, value) of one record carrying ``items`` in order (all from ``source_partition``)."""
    docs = [_partial_doc(i) if isinstance(i, Partial) else _marker_doc(i) for i in items]
    return f"@stage1/{source_partition}".encode(), _dumps({"v": FORMAT_VERSION, "items": docs})


def encode_partial(partial: Partial) -> tuple[bytes, bytes]:
    """(key, value) of a single-partial record; the key is the tenant."""
    return partial.tenant.encode("utf-8"), _dumps({"v": FORMAT_VERSION, "items": [_partial_doc(partial)]})


def encode_marker(marker: Marker) -> tuple[bytes, bytes]:
    """(key, value) of a single-marker record (the key names the source partition)."""
    return f"@marker/{marker.source_partition}".encode(), _dumps({"v": FORMAT_VERSION, "items": [_marker_doc(marker)]})


def decode(value: bytes | None) -> Partial | Marker:
    """A partials-topic record holding exactly one item; raises :class:`PartialsFormatError`."""
    items = decode_items(value)
    if len(items) != 1:
        raise PartialsFormatError(f"expected one item, found {len(items)}")
    return items[0]


def decode_items(value: bytes | None) -> list[Partial | Marker]:
    """The items of a partials-topic record, in order (format 2, or a format-1 single item); raises
    :class:`PartialsFormatError` (the whole record is skipped: items are never half applied)."""
    if not value:
        raise PartialsFormatError("empty partials record")
    try:
        doc = orjson.loads(value)
    except ValueError as exc:
        raise PartialsFormatError(f"not JSON: {exc}") from exc
    version = doc.get("v") if isinstance(doc, dict) else None
    if version == 1:
        return [_item(doc)]
    if version != FORMAT_VERSION:
        raise PartialsFormatError(f"unknown partials format {version if isinstance(doc, dict) else doc!r}")
    items = doc.get("items")
    if not isinstance(items, list):
        raise PartialsFormatError("a partials batch needs a list of items")
    return [_item(item) for item in items]


def _item(doc: Any) -> Partial | Marker:
    if not isinstance(doc, dict):
        raise PartialsFormatError(f"a partials item must be an object, not {type(doc).__name__}")
    try:
        source = int(doc["source_partition"])
        if doc["type"] == PARTIAL:
            record = doc["record"]
            if not isinstance(record, dict) or "tenant" not in record:
                raise PartialsFormatError("a partial needs a WindowedMetrics record")
            delta = doc.get("delta")
            return Partial(source, record, None if delta is None else int(delta))
        if doc["type"] == MARKER:
            wm = doc.get("watermark_us")
            return Marker(source, None if wm is None else int(wm), bool(doc.get("idle", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise PartialsFormatError(f"malformed partials record: {exc!r}") from exc
    raise PartialsFormatError(f"unknown partials record type {doc.get('type')!r}")
