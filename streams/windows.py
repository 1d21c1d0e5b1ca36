"""Event-time windows that survive replays: stream time, grace, emit-final, late counting, batch dedup.

Kafka Streams' model (field-notes §3.4), kept in plain dicts so a batch of events is folded in one tight loop:

* **Windows.** :class:`TumblingWindows` and :class:`HoppingWindows` are aligned to the epoch; a window is
  ``[start, end)`` in microseconds, so an event exactly on a boundary belongs to the window starting there.
* **Stream time** is kept per partition: the highest event time seen. A window *closes* when
  ``stream_time >= end + grace``. Closing is a pure function of stream time, never of the wall clock or of when
  :meth:`WindowEngine.close_due` is called, so a replay of the same records gives the same results (Faust's
  windowed tables expire by wall clock, which breaks exactly that).
* **Allowed lateness** (Flink's and Beam's term; ``allowed_lateness_s``, default 0 = Kafka Streams' behaviour): a
  window is *emitted* when it closes and *expires* when ``stream_time >= end + grace + allowed_lateness``. An event
  for a closed window that has not expired is folded into a *delta* of that window, which the next
  :meth:`WindowEngine.close_due` returns (``ClosedWindow.delta``; Beam's discarding panes: only what came late)
  and forgets. The closed window itself is not kept: whoever holds the window's result merges the delta into it
  (stage 2 of the worker does, once per delta: it knows each by the record that caused it). So the allowed
  lateness costs no state here, and a late event costs one fold.
* **Late events**, i.e. events for a window that has expired, are not folded in; they are counted per partition
  and key (one count per (event, window) pair, as Kafka Streams' dropped-records sensor does), and handed back to
  the caller (``too_late``) so it can keep them somewhere (the worker's late side topic): never silently dropped.
* **Emit-final.** :meth:`WindowEngine.close_due` returns each closed (key, window, aggregate) once and forgets it,
  plus the deltas of late events since the last call.
* **Panes.** Events are folded into panes one advance long, so a hopping window (size a multiple of the advance)
  costs one fold per event and is built by merging its panes when collected; see :class:`WindowEngine`.
* **Idle partitions.** :meth:`WindowEngine.advance_idle` is a wall-clock heartbeat; see its docstring for the rule.
* **Future events.** With ``max_future_s`` set and ``now_us`` passed to :meth:`WindowEngine.process`, an event
  stamped further in the future than that (a skewed agent clock) is folded into its window but does not advance
  stream time, so it cannot close every other tenant's windows early; such events are counted.

Redelivery (at-least-once) and crash recovery
---------------------------------------------
A batch record carries ``(producer_id, batch_seq)``, strictly increasing per producer. The engine remembers, per
partition, the highest ``batch_seq`` applied per producer, and per slot (partition, key, pane) the highest
``batch_seq`` per producer folded into that slot. A batch whose seq is <= the recorded one is a redelivery and is
skipped, at partition level (nothing happens, not even late counting) or at slot level (that slot already holds
it). This is safe because an idempotent producer writes one producer's batches to a partition in
order, and a partition is consumed in order: when a batch with seq ``n`` has been applied, every earlier batch of
that producer on that partition has been applied too, so ``seq <= n`` means "seen". The precondition is that a
producer never sends an older batch after a newer one to the same partition (a disk spool must drain in order
before fresh batches go out). Records without a producer id (single events) can use the Kafka offset as the
sequence: ``producer_id="@offset"``, ``batch_seq=offset``. They are also deduplicated by their ``event_id``
(``event_ids=True``), against the same event sent again as another record: each slot keeps the ids of the single
events folded into it, and when it closes the partition keeps them (``closed_ids``) until its windows expire, so a
late copy is caught too and the state stays bounded. They are persisted one record per retired pane (never in the
partition's meta, which is rewritten at every flush and must fit one changelog record whatever the rate).

The state can be persisted two ways. :meth:`WindowEngine.snapshot` / :meth:`WindowEngine.restore` give one
JSON-able dict per partition. For a changelog-backed table that is written key by key,
:meth:`WindowEngine.export_changes` gives what changed since the last call and the order to write it in:
**slot upserts (and the retired panes' single-event ids), then the partition meta, then slot deletes (and the
expired ids)**, all before the source offsets are committed. With
that order a crash at any point leaves every slot at least as new as the meta (a pane retired by close_due is
written once more with its final state before the meta, and deleted only after it), so the replay from the
committed offset skips what the meta holds, recomputes the same stream time and late decisions for the rest, and
lets slot-level dedup skip what a newer slot already holds. A window's content depends only on the slots, so a
window emitted before the crash and again after it carries the same content: key the metrics topic by (tenant,
window) and compact it. ``tests/test_windows.py`` crashes a simulated worker at every point of that protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

US_PER_S = 1_000_000
NO_TIME = -(1 << 62)  # stream time of a partition that has seen nothing
_FAR_FUTURE = 1 << 62
_NO_KEY = object()  # equal to no key: the "previous event's key" before the first event

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")


def _to_us(seconds: float, what: str, allow_zero: bool = False) -> int:
    us = round(seconds * US_PER_S)
    if us < 0 or (us == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else '> 0'} seconds, got {seconds}")
    return us


class TumblingWindows:
    """Fixed-size, non-overlapping windows aligned to the epoch."""

    __slots__ = ("size_us",)

    def __init__(self, size_s: float) -> None:
        self.size_us = _to_us(size_s, "window size")

    @property
    def advance_us(self) -> int:
        return self.size_us

    def windows_for(self, event_time_us: int) -> tuple[tuple[int, int], ...]:
        start = event_time_us - event_time_us % self.size_us
        return ((start, start + self.size_us),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TumblingWindows) and other.size_us == self.size_us

    def __hash__(self) -> int:
        return hash(("tumbling", self.size_us))

    def __repr__(self) -> str:
        return f"TumblingWindows(size_s={self.size_us / US_PER_S:g})"


class HoppingWindows:
    """Windows of ``size_s`` starting every ``advance_s``, aligned to the epoch: an event is in ~size/advance."""

    __slots__ = ("size_us", "advance_us")

    def __init__(self, size_s: float, advance_s: float) -> None:
        self.size_us = _to_us(size_s, "window size")
        self.advance_us = _to_us(advance_s, "window advance")
        if self.advance_us > self.size_us:
            raise ValueError("a hopping window's advance must not exceed its size (gaps would drop events)")
        if self.size_us % self.advance_us:
            raise ValueError("a hopping window's size must be a multiple of its advance (windows are unions of panes)")

    def windows_for(self, event_time_us: int) -> tuple[tuple[int, int], ...]:
        """Every window containing the event, oldest first."""
        size = self.size_us
        start = event_time_us - event_time_us % self.advance_us
        low = event_time_us - size
        found = []
        while start > low:
            found.append((start, start + size))
            start -= self.advance_us
        found.reverse()
        return tuple(found)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HoppingWindows) and (other.size_us, other.advance_us) == (
            self.size_us,
            self.advance_us,
        )

    def __hash__(self) -> int:
        return hash(("hopping", self.size_us, self.advance_us))

    def __repr__(self) -> str:
        return f"HoppingWindows(size_s={self.size_us / US_PER_S:g}, advance_s={self.advance_us / US_PER_S:g})"


Windows = TumblingWindows | HoppingWindows


class AggregateOps(Protocol[K, A]):
    """How the engine creates, feeds, merges and persists the aggregates it keeps per (key, pane)."""

    def new(self, key: K, start_us: int, end_us: int) -> A: ...

    def adder(self, aggregate: A) -> Callable[[Any], None]:
        """The per-event fold, usually a bound method: called once per event in the hot loop."""
        ...

    def merge(self, into: A, other: A) -> None:
        """Fold ``other`` into ``into`` (hopping windows only: a window is the merge of its panes)."""
        ...

    def dump(self, aggregate: A) -> Any:
        """A JSON-able form of the aggregate."""
        ...

    def load(self, key: K, start_us: int, end_us: int, state: Any) -> A: ...

    def on_close(self, aggregate: A) -> None:
        """Called once per pane when no open window needs it any more (for tumbling windows: the window)."""
        ...


@dataclass(frozen=True, slots=True)
class ClosedWindow(Generic[K, A]):
    """One final result (emitted once per (partition, key, window)), or with ``delta`` the late events of a closed
    window since the last :meth:`WindowEngine.close_due` (to be merged into the result emitted before)."""

    partition: int
    key: K
    start_us: int
    end_us: int
    aggregate: A
    delta: bool = False


@dataclass(frozen=True, slots=True)
class StateChanges:
    """What changed in one partition since the last export. Write in this order: upserts, id upserts, meta,
    deletes, id deletes.

    ``upserts`` are ``(key, pane_start_us, slot_state)`` of every pane changed since the last export, including the
    final state of panes retired meanwhile; ``deletes`` are ``(key, pane_start_us)`` of the panes retired meanwhile.
    ``id_upserts`` / ``id_deletes`` are the same for the single-event ids kept per retired pane until its windows
    expire (``(key, pane, {"key", "pane", "ids"})``): one record per pane, so no value grows with the events held
    for the allowed lateness. A table key of ``(partition, key, pane_start_us)`` for slots, another family for the
    ids, and ``(partition, "meta")`` for the meta fits. Restore with :meth:`WindowEngine.restore_parts`.
    """

    upserts: list[tuple[Any, int, dict[str, Any]]]
    meta: dict[str, Any]
    deletes: list[tuple[Any, int]]
    id_upserts: list[tuple[Any, int, dict[str, Any]]] = field(default_factory=list)
    id_deletes: list[tuple[Any, int]] = field(default_factory=list)


class _Slot:
    """One (key, pane) of one partition: the aggregate, its fold, the batches and the single events folded into it."""

    __slots__ = ("agg", "add", "applied", "ids")

    def __init__(self, agg: Any, add: Callable[[Any], None], applied: dict[str, int],
                 ids: set[str] | None = None) -> None:
        self.agg = agg
        self.add = add
        self.applied = applied
        self.ids = ids  # event ids of the single-event records folded in (None: none yet)


class _SkipCounter:
    """Stands in for a slot's fold when the slot already holds the batch: counts instead of folding."""

    __slots__ = ("part",)

    def __init__(self, part: _Partition) -> None:
        self.part = part

    def __call__(self, _event: Any) -> None:
        self.part.duplicate_events += 1


class _Partition:
    __slots__ = (
        "stream_time",
        "emitted_limit",
        "lag_us",
        "panes",
        "late",
        "late_total",
        "applied",
        "duplicate_batches",
        "duplicate_events",
        "future_events",
        "revised",
        "deltas",
        "closed_ids",
        "ids_dirty",
        "ids_gone",
        "dirty",
        "retired",
    )

    def __init__(self) -> None:
        self.stream_time = NO_TIME
        self.emitted_limit = NO_TIME  # every window starting at or before this has been returned by close_due
        self.lag_us: int | None = None  # wall clock minus stream time at the last batch processed with now_us
        self.panes: dict[int, dict[Any, _Slot]] = {}  # pane id (start + windows closed at fold time) -> key -> slot
        self.late: dict[Any, int] = {}
        self.late_total = 0
        self.applied: dict[str, list[int]] = {}  # producer_id -> [max batch_seq, stream time when last seen]
        self.duplicate_batches = 0
        self.duplicate_events = 0
        self.future_events = 0
        self.revised = 0  # (event, window) pairs folded into a delta of a closed, not yet expired window
        self.deltas: dict[tuple[Any, int], Any] = {}  # (key, window start) -> late events since the last close_due
        # (key, pane) -> ids of single events folded into a pane already retired, kept until its windows expire
        self.closed_ids: dict[tuple[Any, int], set[str]] = {}
        self.ids_dirty: set[tuple[Any, int]] = set()  # closed_ids entries changed since the last export
        self.ids_gone: list[tuple[Any, int]] = []  # closed_ids entries expired since the last export
        self.dirty: set[tuple[Any, int]] = set()
        self.retired: list[tuple[Any, int, _Slot | None]] = []  # since the last export (slot when dirty)


class WindowEngine(Generic[K, A]):
    """Per-partition event-time windows over aggregates of type ``A`` keyed by ``K`` (see the module docstring).

    Events are folded into *panes* one advance long (for tumbling windows a pane is the window); a hopping window
    is the merge of its size/advance panes, built when it is collected, so an event costs one fold whatever the
    overlap. An event that arrives when ``k`` of its pane's windows are already closed goes to sub-pane
    ``pane_start + k``, which only the ``size/advance - k`` windows still open at that moment include: a window's
    content is then a pure function of the events and their order, never of when :meth:`close_due` runs.

    Not thread-safe: one engine per worker, fed from one task. Events are mappings; the key and the event time
    (int microseconds) are read from ``key_field`` and ``time_field``.
    """

    def __init__(
        self,
        windows: Windows,
        ops: AggregateOps[K, A],
        grace_s: float = 0.0,
        *,
        key_field: str = "tenant",
        time_field: str = "event_time",
        max_future_s: float | None = None,
        producer_ttl_s: float = 3600.0,
        allowed_lateness_s: float = 0.0,
        id_field: str = "event_id",
    ) -> None:
        self.windows = windows
        self.ops = ops
        self.grace_us = _to_us(grace_s, "grace", allow_zero=True)
        self.key_field = key_field
        self.time_field = time_field
        self.max_future_us = None if max_future_s is None else _to_us(max_future_s, "max_future", allow_zero=True)
        self.producer_ttl_us = _to_us(producer_ttl_s, "producer_ttl")
        self.lateness_us = _to_us(allowed_lateness_s, "allowed lateness", allow_zero=True)
        self.id_field = id_field
        self._size = windows.size_us
        self._advance = windows.advance_us
        self._per_window = self._size // self._advance  # panes per window = windows per event
        self._parts: dict[int, _Partition] = {}

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        return part

    # -- feeding --------------------------------------------------------------------------------------------------

    def process(
        self,
        partition: int,
        events: Sequence[Mapping[str, Any]],
        producer_id: str | None = None,
        batch_seq: int | None = None,
        now_us: int | None = None,
        *,
        event_ids: bool = False,
        too_late: list[Any] | None = None,
        rows: tuple[int, int, int] | None = None,
    ) -> int:
        """Fold a batch of events, in order; returns how many events were folded (not entirely late, not duplicate).

        ``producer_id``/``batch_seq`` enable redelivery dedup (both or neither). ``event_ids=True`` deduplicates by
        each event's ``id_field`` instead, per slot (for records of single events, which have no batch identity).
        ``now_us`` (wall clock) records the partition's lag for :meth:`advance_idle` and enables the
        ``max_future_s`` guard. Events for windows that have all expired are appended to ``too_late`` when given.
        ``rows=(key index, time index, id index)``: the events are tuples, not mappings, folded by the ops'
        ``row_adder`` (same results as the mappings they were read from; no dict per event).

        Consecutive events of the same key and pane (the usual run within a batch: one tenant, one minute) share
        one slot lookup.
        """
        part = self._part(partition)
        if producer_id is not None:
            if batch_seq is None:
                raise ValueError("batch_seq is required with producer_id")
            seen = part.applied.get(producer_id)
            if seen is not None and batch_seq <= seen[0]:
                part.duplicate_batches += 1
                part.duplicate_events += len(events)
                return 0
        st = part.stream_time
        future_limit = _FAR_FUTURE
        if now_us is not None and self.max_future_us is not None:
            future_limit = now_us + self.max_future_us
        advance = self._advance
        partly_after = advance + self.grace_us  # a pane is in some closed window once stream time reaches p + this
        if rows is None:
            kf, tf, idf = self.key_field, self.time_field, self.id_field
        else:
            kf, tf, idf = rows
        as_rows = rows is not None
        cache: dict[tuple[Any, int], Callable[[Any], None]] = {}
        get = cache.get
        touch = self._touch
        folded = 0
        duplicates_before = part.duplicate_events
        last_key: Any = _NO_KEY
        last_pane = NO_TIME
        add: Callable[[Any], None] | None = None
        for ev in events:
            t = ev[tf]
            if t > st:
                if t > future_limit:
                    part.future_events += 1
                else:
                    st = t
            pane = t - t % advance
            if pane + partly_after <= st:  # rare: later than the grace for at least one of its windows
                shift = self._late_event(part, ev, pane, st, event_ids, too_late, kf, idf, as_rows)
                if shift is None:  # expired everywhere: too late
                    continue
                if shift < 0:  # only in deltas of closed windows (-1), or a duplicate of one already there (-2),
                    folded += 1  # which the duplicate count below takes off again
                    continue
                pane += shift
            key = ev[kf]
            if event_ids:
                touch(part, (key, pane), producer_id, batch_seq, ev[idf], as_rows)(ev)
                folded += 1
                continue
            if pane != last_pane or key != last_key:
                ck = (key, pane)
                add = get(ck)
                if add is None:
                    add = cache[ck] = touch(part, ck, producer_id, batch_seq, None, as_rows)
                last_key, last_pane = key, pane
            add(ev)  # type: ignore[misc]
            folded += 1
        part.stream_time = st
        if now_us is not None and st != NO_TIME:
            part.lag_us = now_us - st
        if producer_id is not None:
            part.applied[producer_id] = [batch_seq, st]  # type: ignore[list-item]
        return folded - (part.duplicate_events - duplicates_before)  # slots that already held them skipped them

    def _late_event(self, part: _Partition, ev: Any, pane: int, st: int, event_ids: bool,
                    too_late: list[Any] | None, kf: Any, idf: Any, as_rows: bool) -> int | None:
        """An event for ``pane`` arriving after some window containing it closed: the sub-pane offset to fold it
        into for the windows still open; -1 when it went only into deltas; -2 when it is a single event those
        deltas already hold (counted as a duplicate); None when it was too late for every window.

        Windows that expired leave it out (counted late; ``too_late`` gets the event when every window did);
        windows closed but not expired get it in their delta (:meth:`close_due` returns those).
        """
        key = ev[kf]
        expired = self._windows_past(pane, st, self._expire_delay)
        if expired:
            self._late(part, key, expired)
            if expired == self._per_window:
                if too_late is not None:
                    too_late.append(ev)
                return None
        closed = self._windows_past(pane, st, self.grace_us)
        if closed > expired:
            if event_ids and self._seen_closed(part, key, pane, ev[idf]):
                part.duplicate_events += 1
                return -2
            first = pane - self._size + self._advance  # the oldest window containing the pane starts here
            for n in range(expired, closed):
                start = first + n * self._advance
                delta = part.deltas.get((key, start))
                if delta is None:
                    delta = part.deltas[(key, start)] = self.ops.new(key, start, start + self._size)
                (self.ops.row_adder if as_rows else self.ops.adder)(delta)(ev)  # type: ignore[attr-defined]
            part.revised += closed - expired
        return -1 if closed == self._per_window else closed

    def _seen_closed(self, part: _Partition, key: Any, pane: int, event_id: str) -> bool:
        """Whether a single event went into the (retired) pane already; remembers it otherwise."""
        ids = part.closed_ids.get((key, pane))
        if ids is None:
            ids = part.closed_ids[(key, pane)] = set()
        elif event_id in ids:
            return True
        ids.add(event_id)
        part.ids_dirty.add((key, pane))
        return False

    @property
    def _expire_delay(self) -> int:
        return self.grace_us + self.lateness_us

    def add(self, partition: int, key: K, event_time_us: int, update: Callable[[A], None]) -> bool:
        """Apply ``update`` to the pane of ``key`` holding ``event_time_us`` (no redelivery dedup); True if applied.

        For folds that are not per-event dicts, e.g. a second stage merging partial aggregates. Advances stream
        time like an event; late when every window containing the time is closed (then counted, not applied: no
        deltas here).
        """
        part = self._part(partition)
        if event_time_us > part.stream_time:
            part.stream_time = event_time_us
        pane = event_time_us - event_time_us % self._advance
        closed = self._closed_windows_of(pane, part.stream_time)
        if closed:
            self._late(part, key, closed)
            if closed == self._per_window:
                return False
        self._touch(part, (key, pane + closed), None, None)
        update(part.panes[pane + closed][key].agg)
        return True

    def _windows_past(self, pane: int, st: int, delay: int) -> int:
        """How many of the windows containing the pane starting at ``pane`` are past ``end + delay`` at stream time
        ``st`` (closed with ``delay`` = grace, expired with grace + allowed lateness); oldest windows go first."""
        oldest_open = st - self._size - delay + self._advance  # the oldest window still open starts at or
        oldest_open -= oldest_open % self._advance  # ... after this multiple of the advance
        first = pane - self._size + self._advance  # start of the oldest window containing the pane
        if oldest_open <= first:
            return 0
        return min(self._per_window, (oldest_open - first) // self._advance)

    def _closed_windows_of(self, pane: int, st: int) -> int:
        """How many of the windows containing the pane starting at ``pane`` are closed at stream time ``st``."""
        return self._windows_past(pane, st, self.grace_us)

    def _touch(
        self, part: _Partition, slot_key: tuple[Any, int], producer_id: str | None, batch_seq: int | None,
        event_id: str | None = None, as_rows: bool = False,
    ) -> Callable[[Any], None]:
        """The fold for one slot in the current batch: the aggregate's adder, or a counter when already applied."""
        key, pane_id = slot_key
        keys = part.panes.get(pane_id)
        if keys is None:
            keys = part.panes[pane_id] = {}
        slot = keys.get(key)
        if slot is None:
            start = pane_id - pane_id % self._advance
            agg = self.ops.new(key, start, start + self._advance)
            slot = keys[key] = _Slot(agg, self.ops.adder(agg), {})
        if producer_id is not None:
            seen = slot.applied.get(producer_id)
            if seen is not None and batch_seq <= seen:  # type: ignore[operator]
                return _SkipCounter(part)
            slot.applied[producer_id] = batch_seq  # type: ignore[assignment]
        if event_id is not None:
            if slot.ids is None:
                slot.ids = set()
            elif event_id in slot.ids:
                return _SkipCounter(part)
            slot.ids.add(event_id)
        part.dirty.add(slot_key)
        return self.ops.row_adder(slot.agg) if as_rows else slot.add  # type: ignore[attr-defined]

    @staticmethod
    def _late(part: _Partition, key: Any, n: int) -> None:
        part.late[key] = part.late.get(key, 0) + n
        part.late_total += n

    # -- closing --------------------------------------------------------------------------------------------------

    def close_due(self, partition: int) -> list[ClosedWindow[K, A]]:
        """Every window of the partition closed since the last call, oldest first, each exactly once; then the
        deltas of closed windows that late events changed since the last call (``delta=True``)."""
        part = self._parts.get(partition)
        if part is None:
            return []
        closed: list[ClosedWindow[K, A]] = []
        limit = part.stream_time - self._size - self.grace_us  # windows starting at or before this are closed
        if limit > part.emitted_limit:
            closed = self._close_new(part, partition, limit)
        if part.deltas:
            for (key, start), agg in sorted(part.deltas.items(), key=lambda kv: (kv[0][1], repr(kv[0][0]))):
                closed.append(ClosedWindow(partition, key, start, start + self._size, agg, delta=True))
            part.deltas = {}
        return closed

    def _close_new(self, part: _Partition, partition: int, limit: int) -> list[ClosedWindow[K, A]]:
        advance = self._advance
        first_new = part.emitted_limit - part.emitted_limit % advance + advance
        last_new = limit - limit % advance
        starts: set[int] = set()
        for pane_id in part.panes:
            pane = pane_id - pane_id % advance
            starts.update(range(max(pane - self._size + advance, first_new), min(pane, last_new) + 1, advance))
        closed: list[ClosedWindow[K, A]] = []
        end = self._size
        for start in sorted(starts):
            closed += [ClosedWindow(partition, k, start, start + end, agg) for k, agg in self._build(part, start)]
        part.emitted_limit = limit
        keep_ids = self.lateness_us > 0
        for pane_id in sorted(p for p in part.panes if p - p % advance <= limit):  # in no open window any more
            for key, slot in part.panes.pop(pane_id).items():
                self.ops.on_close(slot.agg)
                was_dirty = (key, pane_id) in part.dirty
                part.dirty.discard((key, pane_id))
                part.retired.append((key, pane_id, slot if was_dirty else None))
                if keep_ids and slot.ids:  # a late copy of a single event must still be recognised
                    part.closed_ids.setdefault((key, pane_id), set()).update(slot.ids)
                    part.ids_dirty.add((key, pane_id))
        if part.closed_ids:
            self._expire_ids(part, limit)
        self._prune_producers(part)
        return closed

    def _expire_ids(self, part: _Partition, limit: int) -> None:
        """Forget the single-event ids of panes in no unexpired window once windows up to ``limit`` are closed."""
        expire_limit = limit - self.lateness_us  # panes starting at or before this are in no unexpired window
        advance = self._advance
        for kp in [kp for kp in part.closed_ids if kp[1] - kp[1] % advance <= expire_limit]:
            del part.closed_ids[kp]
            part.ids_dirty.discard(kp)
            part.ids_gone.append(kp)

    def _build(self, part: _Partition, start: int) -> list[tuple[Any, Any]]:
        """(key, aggregate) of the window starting at ``start``: its pane itself, or the merge of its (sub-)panes."""
        if self._per_window == 1:
            return [(key, slot.agg) for key, slot in part.panes.get(start, {}).items()]
        merged: dict[Any, Any] = {}
        advance = self._advance
        for index, pane in enumerate(range(start, start + self._size, advance)):
            # this window is number per_window - 1 - index (oldest first) of the windows containing that pane;
            # sub-pane k holds events that arrived when k of those were closed
            position = self._per_window - 1 - index
            for pane_id in range(pane, pane + position + 1):
                for key, slot in part.panes.get(pane_id, {}).items():
                    into = merged.get(key)
                    if into is None:
                        into = merged[key] = self.ops.new(key, start, start + self._size)
                    self.ops.merge(into, slot.agg)
        return list(merged.items())

    def advance_idle(self, partition: int, wall_clock_us: int) -> bool:
        """Heartbeat for a quiet partition: stream time moves to ``wall_clock_us - lag``; True when it moved.

        ``lag`` is wall clock minus stream time as observed at the partition's last batch processed with
        ``now_us``. So while no records arrive, stream time advances exactly as fast as the wall clock from where
        the last record left it, which is what a steady trickle of records with the same lag would have done: a
        live partition (lag of seconds) closes its windows about ``lag + grace`` after their end, and a backfill
        (lag of hours) is moved only by the wall time that passed, never to "now". Call it only for a partition
        whose consumer has no records waiting (position at the high watermark); a stalled consumer with a backlog
        must not be treated as quiet. A partition with no lag observed yet is not moved.
        """
        part = self._parts.get(partition)
        if part is None or part.lag_us is None or part.stream_time == NO_TIME:
            return False
        candidate = wall_clock_us - part.lag_us
        if candidate <= part.stream_time:
            return False
        part.stream_time = candidate
        return True

    def _prune_producers(self, part: _Partition) -> None:
        """Forget producers not seen for ``producer_ttl`` of stream time (redeliveries come from minutes back)."""
        horizon = part.stream_time - self.producer_ttl_us
        stale = [pid for pid, (_seq, seen_st) in part.applied.items() if seen_st < horizon]
        for pid in stale:
            del part.applied[pid]

    # -- inspection -----------------------------------------------------------------------------------------------

    def partitions(self) -> list[int]:
        return sorted(self._parts)

    def stream_time(self, partition: int) -> int | None:
        part = self._parts.get(partition)
        return None if part is None or part.stream_time == NO_TIME else part.stream_time

    def late_counts(self, partition: int) -> dict[K, int]:
        """Late (event, window) pairs per key since the state began (a monotonic counter)."""
        part = self._parts.get(partition)
        return dict(part.late) if part else {}

    def counters(self, partition: int) -> dict[str, int]:
        part = self._parts.get(partition) or _Partition()
        return {
            "late": part.late_total,
            "duplicate_batches": part.duplicate_batches,
            "duplicate_events": part.duplicate_events,
            "future_events": part.future_events,
            "revised": part.revised,
            "open_panes": sum(len(keys) for keys in part.panes.values()),
        }

    def open_windows(self, partition: int) -> list[ClosedWindow[K, A]]:
        """The windows not closed yet, as they stand: intermediate results for live dashboards.

        For tumbling windows the aggregate is the live one (read it, do not change it); hopping windows are merged
        copies.
        """
        part = self._parts.get(partition)
        if part is None:
            return []
        size, advance = self._size, self._advance
        limit = max(part.stream_time - size - self.grace_us, part.emitted_limit)
        starts = {
            s
            for pane_id in part.panes
            for s in range(pane_id - pane_id % advance - size + advance, pane_id + 1, advance)
        }
        out: list[ClosedWindow[K, A]] = []
        for start in sorted(s for s in starts if s > limit):
            out += [ClosedWindow(partition, k, start, start + size, agg) for k, agg in self._build(part, start)]
        return out

    def drop_partition(self, partition: int) -> None:
        """Forget a partition (revoked on rebalance; its state lives in the table)."""
        self._parts.pop(partition, None)

    # -- persistence ----------------------------------------------------------------------------------------------

    def snapshot(self, partition: int) -> dict[str, Any]:
        """The whole state of one partition as a JSON-able dict (keys must be JSON-able)."""
        part = self._parts.get(partition) or _Partition()
        slots = [
            self._slot_state(key, pane, slot) for pane in sorted(part.panes) for key, slot in part.panes[pane].items()
        ]
        closed = [self._ids_state(key, pane, ids) for (key, pane), ids in part.closed_ids.items()]
        return {"meta": self._meta(part), "slots": slots, "closed_ids": closed}

    def restore(self, partition: int, snapshot: Mapping[str, Any]) -> None:
        """Replace the partition's state with a :meth:`snapshot` (possibly after a JSON round trip)."""
        self.restore_parts(partition, snapshot["meta"], snapshot["slots"], snapshot.get("closed_ids", ()))

    def export_changes(self, partition: int) -> StateChanges:
        """Panes changed and retired since the last export, plus the meta; see :class:`StateChanges`."""
        part = self._parts.get(partition) or _Partition()
        upserts = []
        for key, pane in sorted(part.dirty, key=lambda kp: (kp[1], repr(kp[0]))):
            upserts.append((key, pane, self._slot_state(key, pane, part.panes[pane][key])))
        # a pane retired since the last export is written once more with its final state, before the meta that
        # says its batches are applied, and deleted only after that meta (see the module docstring)
        upserts += [(key, pane, self._slot_state(key, pane, slot)) for key, pane, slot in part.retired if slot]
        deletes = [(key, pane) for key, pane, _slot in part.retired]
        id_upserts = [(key, pane, self._ids_state(key, pane, part.closed_ids[(key, pane)]))
                      for key, pane in sorted(part.ids_dirty, key=lambda kp: (kp[1], repr(kp[0])))]
        id_deletes = part.ids_gone
        part.dirty = set()
        part.retired = []
        part.ids_dirty = set()
        part.ids_gone = []
        return StateChanges(upserts, self._meta(part), deletes, id_upserts, id_deletes)

    def restore_parts(self, partition: int, meta: Mapping[str, Any] | None, slots: Iterable[Mapping[str, Any]],
                      closed_ids: Iterable[Mapping[str, Any]] = ()) -> None:
        """Rebuild a partition from a meta dict (None: nothing seen yet), slot states and the single-event ids of
        retired panes (``id_upserts`` states), e.g. read from a table.

        Ids of panes already expired by the meta (a crash between the meta and the id deletes) are dropped and
        reported for deletion at the next export; ids a meta of an older version held are moved to their own
        records at the next export."""
        part = _Partition()
        if meta is not None:
            st = meta["stream_time"]
            part.stream_time = NO_TIME if st is None else int(st)
            part.emitted_limit = int(meta["emitted_limit"])
            part.lag_us = meta.get("lag_us")
            part.applied = {pid: [int(v[0]), int(v[1])] for pid, v in meta["applied"].items()}
            part.late = {_key(k): int(n) for k, n in meta["late"]}
            part.late_total = int(meta["late_total"])
            part.duplicate_batches = int(meta["duplicate_batches"])
            part.duplicate_events = int(meta["duplicate_events"])
            part.future_events = int(meta["future_events"])
            part.revised = int(meta.get("revised", 0))
            for k, p, ids in meta.get("closed_ids", ()):  # written by versions that kept the ids in the meta
                kp = (_key(k), int(p))
                part.closed_ids.setdefault(kp, set()).update(ids)
                part.ids_dirty.add(kp)
        for s in slots:
            key, pane_id = _key(s["key"]), int(s["pane"])
            start = pane_id - pane_id % self._advance
            agg = self.ops.load(key, start, start + self._advance, s["aggregate"])
            keys = part.panes.setdefault(pane_id, {})
            ids = s.get("ids")
            keys[key] = _Slot(agg, self.ops.adder(agg), {pid: int(seq) for pid, seq in s["applied"].items()},
                              set(ids) if ids else None)
        for c in closed_ids:
            part.closed_ids.setdefault((_key(c["key"]), int(c["pane"])), set()).update(c["ids"])
        if part.closed_ids and part.emitted_limit != NO_TIME:
            self._expire_ids(part, part.emitted_limit)
        self._parts[partition] = part

    def _slot_state(self, key: Any, pane: int, slot: _Slot) -> dict[str, Any]:
        state = {"key": key, "pane": pane, "applied": dict(slot.applied), "aggregate": self.ops.dump(slot.agg)}
        if slot.ids:
            state["ids"] = sorted(slot.ids)
        return state

    @staticmethod
    def _ids_state(key: Any, pane: int, ids: set[str]) -> dict[str, Any]:
        return {"key": key, "pane": pane, "ids": sorted(ids)}

    @staticmethod
    def _meta(part: _Partition) -> dict[str, Any]:
        return {
            "stream_time": None if part.stream_time == NO_TIME else part.stream_time,
            "emitted_limit": part.emitted_limit,
            "lag_us": part.lag_us,
            "applied": {pid: list(v) for pid, v in part.applied.items()},
            "late": [[k, n] for k, n in part.late.items()],
            "late_total": part.late_total,
            "duplicate_batches": part.duplicate_batches,
            "duplicate_events": part.duplicate_events,
            "future_events": part.future_events,
            "revised": part.revised,
        }


def _key(value: Any) -> Any:
    """JSON turns tuple keys into lists; make them hashable again."""
    return tuple(_key(v) for v in value) if isinstance(value, list) else value
