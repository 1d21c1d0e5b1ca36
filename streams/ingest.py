"""Stage 1 of the worker, without Kafka: one events-topic record in, dead letter or partials and markers out.

The Faust shell (:mod:`streams.app`) hands every record of its events partitions to :meth:`Ingest.handle`:

* a value that does not decode becomes a :class:`DeadLetter` (reason, detail, source coordinates as headers);
* each event of a decoded record is checked against its valid ranges (:mod:`streams.validation`); an event
  outside them is *rejected* (``Outcome.rejected``: the shell sends it to the dead-letter topic as a single-event
  record with the reason) and the rest of the record is folded;
* the valid events are folded by the :class:`~streams.windows.WindowEngine` in one tight loop, deduplicated by
  ``(producer_id, batch_seq)`` for batches, and for single-event records by the Kafka offset (``producer_id=
  "@offset"``, ``batch_seq=offset``: a partition's offsets only grow; a redelivery of the same record) and by
  ``event_id`` (the same event sent again as another record, e.g. by a retrying proxy);
* events for a closed window within the allowed lateness are folded into a delta of it, sent as a delta partial
  (``Partial.delta`` = this record's offset, by which stage 2 applies it once); events later than that for every
  window they belong to are not folded: ``Outcome.too_late`` has them, for the late side topic;
* anything unexpected while handling one record (a bug, not bad data: the checks above keep bad data out) makes
  that record a :class:`DeadLetter` with reason ``processing_error``: the worker never stops on one record;
* windows closed by the new stream time become :class:`~streams.partials.Partial` records (the tenant's aggregate
  of that window from this partition), followed by a :class:`~streams.partials.Marker` once the partition's
  watermark crosses a window boundary: ``watermark = stream_time - grace``, and every window ending at or before
  it is closed (the engine closes a window when ``stream_time >= end + grace``).

State for the changelog-backed table comes from :meth:`Ingest.state_changes` as ``(key, value or None)`` pairs in
the engine's crash-safe write order (slot upserts, the partition meta, slot deletes; see
:meth:`streams.windows.WindowEngine.export_changes`). The shell must have every partial, marker and dead letter
produced *before* it writes those pairs: a meta that says "closed" must never be durable while the partials it
closed are not, or a crash would lose them (the replay skips what the meta holds). Keys are strings:
``"<partition>|m"`` for the meta, ``"<partition>|s|<pane start>|<tenant>"`` for a slot,
``"<partition>|i|<pane start>|<tenant>"`` for the single-event ids of a retired pane (kept for the lateness).

A slot opened and closed between two flushes (the usual case when reading a backlog: a second of work covers
minutes of event time) is never written: no final upsert, no tombstone. That is safe in both orders a crash can
cut the flush: before the meta, the replay rebuilds the slot from the batches the old meta does not hold; after
it, the window is closed and its partial already in Kafka. It halves the changelog records of a backfill.

Label guards (which label names a window keeps when a tenant has more than ``label_limit`` tools or models) are
learned again after a restart, not persisted: they never change a total, only which names are folded into
``__other__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import AvroCodec, DecodeError
from schemas.pricing import PriceTable
from streams.aggregate import FOLD_FIELDS, TenantWindowAggregate, TenantWindowOps
from streams.partials import Marker, Partial
from streams.validation import EventBounds, Rejection, check_rows
from streams.windows import TumblingWindows, WindowEngine

OFFSET_PRODUCER = "@offset"
_TENANT = FOLD_FIELDS.index("tenant")
_ROW_INDEXES = (_TENANT, FOLD_FIELDS.index("event_time"), FOLD_FIELDS.index("event_id"))  # key, time, id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a record goes to the dead-letter topic."""

    reason: str
    detail: str


def dead_letter_headers(dead: DeadLetter, topic: str, partition: int, offset: int, timestamp_ms: int | None,
                        original: Sequence[tuple[str, bytes]] = (), worker: str = "") -> list[tuple[str, bytes]]:
    """The dead-letter record's headers: the original ones, then ``dlq.*`` naming why and where from."""
    out = [(k, v) for k, v in original if not k.startswith("dlq.")]
    out += [
        ("dlq.reason", dead.reason.encode()),
        ("dlq.detail", dead.detail[:1000].encode("utf-8", "replace")),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.source.timestamp", str(timestamp_ms if timestamp_ms is not None else "").encode()),
    ]
    if worker:
        out.append(("dlq.worker", worker.encode()))
    return out


@dataclass(slots=True)
class Outcome:
    """What one record (or one heartbeat) produced."""

    dead_letter: DeadLetter | None = None  # the whole record goes to the dead-letter topic
    events: int = 0  # events in the record
    folded: int = 0  # of which folded (not rejected, not too late, not duplicate)
    late: int = 0  # (event, window) pairs later than the allowed lateness (not folded)
    revised: int = 0  # (event, window) pairs folded into a closed window (it is emitted again)
    duplicate: bool = False  # the whole record was a redelivery
    tenant: str | None = None  # the first event's tenant, for log lines
    rejected: list[tuple[dict[str, Any], Rejection]] = field(default_factory=list)  # events out of range
    too_late: list[dict[str, Any]] = field(default_factory=list)  # events for the late side topic
    partials: list[Partial] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)


def meta_key(partition: int) -> str:
    return f"{partition}|m"


def slot_key(partition: int, tenant: str, pane_us: int) -> str:
    return f"{partition}|s|{pane_us}|{tenant}"


def ids_key(partition: int, tenant: str, pane_us: int) -> str:
    return f"{partition}|i|{pane_us}|{tenant}"


class Ingest:
    """The per-partition window state of one worker plus the record handling around it (one task, no threads)."""

    def __init__(self, codec: AvroCodec, window_s: float = 60, grace_s: float = 10.0,
                 max_future_s: float | None = 300.0, label_limit: int = 50, *, allowed_lateness_s: float = 0.0,
                 max_age_s: float | None = None, prices: PriceTable | None = None) -> None:
        self.codec = codec
        self._rows = codec.projector(FOLD_FIELDS)
        self.ops = TenantWindowOps(label_limit, prices=prices)
        self.bounds = EventBounds(max_future_s=max_future_s, max_age_s=max_age_s)
        self.engine: WindowEngine[str, TenantWindowAggregate] = WindowEngine(
            TumblingWindows(window_s), self.ops, grace_s, max_future_s=max_future_s,
            allowed_lateness_s=allowed_lateness_s)
        self.size_us = self.engine.windows.size_us
        self.grace_us = self.engine.grace_us
        self._marked: dict[int, int] = {}  # partition -> last watermark sent in a marker
        self._idle_sent: set[int] = set()
        self._restored: set[int] = set()
        self._written_meta: dict[int, dict[str, Any]] = {}
        self._stored: dict[int, set[str]] = {}  # partition -> slot keys the table holds

    # -- lifecycle --------------------------------------------------------------------------------------------

    def is_restored(self, partition: int) -> bool:
        return partition in self._restored

    def restore(self, partition: int, items: Iterable[tuple[Any, Any]]) -> int:
        """Rebuild a partition from the table's ``(key, value)`` pairs (other partitions' keys are skipped).

        Returns how many slots were restored.
        """
        prefix = f"{partition}|"
        meta: Mapping[str, Any] | None = None
        slots = []
        closed_ids = []
        stored = self._stored[partition] = set()
        for key, value in items:
            if not isinstance(key, str) or not key.startswith(prefix) or value is None:
                continue
            if key == meta_key(partition):
                meta = value
            elif key.startswith(prefix + "s|"):
                slots.append(value)
                stored.add(key)
            elif key.startswith(prefix + "i|"):
                closed_ids.append(value)
                stored.add(key)
        self.engine.restore_parts(partition, meta, slots, closed_ids)
        self._restored.add(partition)
        self._marked.pop(partition, None)
        self._idle_sent.discard(partition)
        if meta is not None:
            self._written_meta[partition] = dict(meta)
        return len(slots)

    def drop(self, partition: int) -> None:
        """Forget a partition (revoked): its state lives in the table, its next owner restores it."""
        self.engine.drop_partition(partition)
        self._restored.discard(partition)
        self._marked.pop(partition, None)
        self._idle_sent.discard(partition)
        self._written_meta.pop(partition, None)
        self._stored.pop(partition, None)

    # -- records ----------------------------------------------------------------------------------------------

    def handle(self, partition: int, offset: int, value: bytes | None, now_us: int | None = None) -> Outcome:
        """Decode, check and fold one record of ``partition`` at ``offset``; never raises.

        The events are decoded as :data:`~streams.aggregate.FOLD_FIELDS` tuples (no dict per event, the fields no
        check or metric reads are skipped); the rare events that leave the fold whole (rejected, too late) are
        taken from a full decode of the record, made only then.
        """
        try:
            decoded = self._rows.decode(value)
        except DecodeError as exc:
            return Outcome(dead_letter=DeadLetter(exc.reason, exc.detail))
        rows = decoded.events
        out = Outcome(events=len(rows), tenant=rows[0][_TENANT] if rows else None)
        try:
            self._fold(partition, offset, decoded.is_batch, decoded.producer_id, decoded.batch_seq, rows, now_us,
                       out, value)  # type: ignore[arg-type]
        except Exception as exc:  # a bug, not bad data: this record goes aside, the worker goes on
            return Outcome(dead_letter=DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"),
                           events=len(rows), tenant=out.tenant)
        return out

    def _fold(self, partition: int, offset: int, is_batch: bool, producer_id: str | None, seq: int | None,
              rows: list[tuple[Any, ...]], now_us: int | None, out: Outcome, value: bytes) -> None:
        all_rows = rows
        rejections = check_rows(rows, FOLD_FIELDS, self.bounds, now_us)
        if rejections:
            rejected = {r.index for r in rejections}
            events = self.codec.decode(value).events  # whole events for the dead-letter topic
            out.rejected = [(events[r.index], r) for r in rejections]
            rows = [row for i, row in enumerate(rows) if i not in rejected]
        if not is_batch:
            producer_id, seq = OFFSET_PRODUCER, offset
        engine = self.engine
        before = engine.counters(partition)
        too_late: list[tuple[Any, ...]] = []
        folded = engine.process(partition, rows, producer_id, seq, now_us, event_ids=not is_batch,
                                too_late=too_late, rows=_ROW_INDEXES)
        if too_late:  # whole events for the late side topic
            events = self.codec.decode(value).events
            where = {id(row): i for i, row in enumerate(all_rows)}
            out.too_late = [events[where[id(row)]] for row in too_late]
        after = engine.counters(partition)
        out.folded = folded
        out.late = after["late"] - before["late"]
        out.revised = after["revised"] - before["revised"]
        out.duplicate = folded == 0 and out.late == 0 and len(rows) > 0
        self._close(partition, out, offset)

    def heartbeat(self, partition: int, wall_clock_us: int) -> Outcome:
        """A quiet, caught-up partition: let stream time follow the wall clock (see ``advance_idle``)."""
        out = Outcome()
        if self.engine.advance_idle(partition, wall_clock_us):
            self._close(partition, out)
        return out

    def idle_marker(self, partition: int) -> Marker | None:
        """For a caught-up partition that never saw an event: "do not wait for me" (once until it has data)."""
        if self.engine.stream_time(partition) is not None or partition in self._idle_sent:
            return None
        self._idle_sent.add(partition)
        return Marker(partition, None, idle=True)

    def _close(self, partition: int, out: Outcome, offset: int | None = None) -> None:
        for cw in self.engine.close_due(partition):
            record = cw.aggregate.to_record(final=False, quantiles=False)
            if cw.delta:  # late events of a closed window, from the record at ``offset`` (only records make deltas)
                assert offset is not None
                out.partials.append(Partial(partition, record, delta=offset))
            else:
                out.partials.append(Partial(partition, record))
        st = self.engine.stream_time(partition)
        if st is None:
            return
        watermark = st - self.grace_us
        watermark -= watermark % self.size_us  # the end of the newest closed window boundary
        last = self._marked.get(partition)
        if last is None or watermark > last:
            self._marked[partition] = watermark
            self._idle_sent.discard(partition)
            out.markers.append(Marker(partition, watermark))

    # -- state ------------------------------------------------------------------------------------------------

    def state_changes(self, partition: int) -> list[tuple[str, dict[str, Any] | None]]:
        """What to write to the table for ``partition``, in order; empty when nothing changed."""
        changes = self.engine.export_changes(partition)
        stored = self._stored.setdefault(partition, set())
        deletes = [slot_key(partition, key, pane) for key, pane in changes.deletes]
        retired = set(deletes)
        out: list[tuple[str, dict[str, Any] | None]] = []
        for key, pane, state in changes.upserts:
            k = slot_key(partition, key, pane)
            if k in stored or k not in retired:  # a slot retired before it was ever written stays unwritten
                out.append((k, state))
                stored.add(k)
        for key, pane, state in changes.id_upserts:
            k = ids_key(partition, key, pane)
            out.append((k, state))
            stored.add(k)
        deletes = [k for k in deletes if k in stored]
        deletes += [k for k in (ids_key(partition, key, pane) for key, pane in changes.id_deletes) if k in stored]
        if out or deletes or self._written_meta.get(partition) != changes.meta:
            out.append((meta_key(partition), changes.meta))
            self._written_meta[partition] = changes.meta
        out += [(k, None) for k in deletes]
        stored.difference_update(deletes)
        return out

    def stream_time(self, partition: int) -> int | None:
        return self.engine.stream_time(partition)

    def counters(self, partition: int) -> dict[str, int]:
        return self.engine.counters(partition)
