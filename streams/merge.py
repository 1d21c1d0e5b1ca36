"""Stage 2 of the worker, without Kafka: merge partial windows per tenant, emit finals, evaluate the detectors.

Input: the partials topic (see :mod:`streams.partials`), one partition of it at a time. Per partials partition
``q`` this keeps

* the **watermark** of every source (events-topic) partition, from the markers: the largest ``watermark_us``
  seen (markers may come again after a stage-1 restart; a watermark never goes back), and which sources are idle;
* per tenant and window, the **partials** received, one per source partition. A redelivered partial *replaces*
  the one held (same content: stage 1 recomputes a window from the same events), so redelivery is idempotent;
* per tenant, the end of the last window finalized, the tumbling finals of the last hop (for hopping windows),
  the open alerts, and the :class:`~streams.rules.RuleEngine` / :class:`~streams.spike.SpikeDetector` state.

A window is **final** once every non-idle source partition's watermark has reached its end. Its partials are
merged (in source-partition order, so the result does not depend on arrival order) into the ``WindowedMetrics``
record sent to the metrics topic, keyed ``tenant|window_start_us|window_end_us`` (compaction keeps one record per
window and series; a re-emit after a crash carries the same content). The final then goes to the rule engine and
the spike detector (windows in order per tenant), and their transitions to the alerts topic.

**Late data and revisions** (``allowed_lateness_s``). A final window is kept (its partials per source) until the
watermark passes ``end + allowed_lateness``. Stage 1 sends the late events of a closed window as a **delta**
partial (only what came late, named by the offset of the events record that brought it); the delta is merged into
that source's partial, once (the offsets merged are kept with it), and the window is merged again and emitted as
the next **revision** (``revision`` 1, 2, ... on the same metrics key, so compaction keeps the newest), and the
hopping windows containing it too. A delta already merged, or a full partial equal to the one held, is a
redelivery: nothing is emitted. A delta for a window still pending is merged the same way. When the watermark
passes ``end + allowed_lateness`` the window is **sealed**: its newest revision is sent once more with
``sealed=true`` (nothing can change it any more) and its state is dropped (kept a hop longer when hopping windows
still need it).

A partial for a window already sealed is late beyond the allowed lateness (only possible from a source partition
that was idle and woke up with old data: every other source drops such events in stage 1): it is counted and
returned in ``Output.too_late`` for the late side topic, never silently dropped.

**Detectors and revisions.** The rules and the spike detector see every window once, in order, at revision 0 (or as
an empty window while an alert is open): their persistence and hysteresis state moves forward only. A revision is
judged on its own by :meth:`streams.rules.RuleEngine.revision_alerts`: where late data changed whether the window
breaches a rule's fire threshold, one backfill-marked alert records it (recorded, never paged). The spike detector
does not look at revisions (its baseline is the median of past windows as they were first seen).

**Quiet tenants.** A tenant that stops sending has no partials, so no final: an open alert would never see the
windows that resolve it. When the watermark passes windows of a tenant with *open alerts*, each missing window is
evaluated as an empty window by the detector whose alert is open (the rules give NO_DATA, and after
``stale_windows`` such windows the alert resolves with ``resolve_reason=no_data``). Empty windows are not sent to
the metrics topic (there were no events) and never fed to a detector without an open alert, so they do not drag
a spike baseline down.

**Hopping windows** (``hop_size_s``, advancing by the tumbling size) are built from the tenant's tumbling finals:
when the final ending at ``e`` is emitted, the hopping window ``[e - hop, e)`` is the merge of the finals in it.
A hopping window whose last tumbling window had no events of the tenant is not emitted. The finals inside the
last hop are also kept parsed (not stored): one ``from_record`` per final instead of one per final per hop.

State for the changelog-backed table, from :meth:`MergeStage.state_changes`, in this order: partial upserts, the
partition's watermarks, tenant states, then deletes of partials. A crash after the tenant state but before the
deletes leaves stale partials, dropped at restore (the tenant state no longer lists their window); a crash before
the tenant state leaves the partials and the old tenant state, so the replay finalizes (or revises) the window
again with the same content and revision number. A partial whose window is dropped before the flush after it
arrived is never written (no upsert, no tombstone).
Keys: ``"w|<q>"``, ``"t|<tenant>"``, ``"p|<tenant>|<window start>|<source partition>"``.

**Cost.** A watermark step visits only the tenants with work at it (a window to finalize, seal or drop, or an open
alert), in name order, from a heap of the watermark at which each tenant next has work (rebuilt at restore, not
stored): the result is that of visiting every tenant, and a step costs per window, not per tenant held.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas import keys
from streams.aggregate import TenantWindowAggregate
from streams.alerts import FIRING, Alert
from streams.partials import Marker, Partial, tenant_partition
from streams.rules import RuleEngine, WindowMetrics
from streams.spike import SpikeDetector
from workarounds.orjson_buffers import dumps_held

US = 1_000_000
MAX_EMPTY_WINDOWS = 1000  # per tenant per watermark step: a safety bound for rules that never go stale


@dataclass(slots=True)
class Output:
    """What stage 2 emits for one input: WindowedMetrics records (tumbling and hopping: first emissions and
    revisions in ``metrics``, the sealing re-emissions in ``seals``) and alert transitions."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    late_partials: int = 0
    finals: int = 0
    revisions: int = 0  # of the metrics, re-emissions caused by late data
    seals: list[dict[str, Any]] = field(default_factory=list)  # last records of windows nothing can change any more
    too_late: list[Partial] = field(default_factory=list)  # partials of sealed windows, for the late side topic

    def extend(self, other: Output) -> None:
        self.metrics += other.metrics
        self.seals += other.seals
        self.alerts += other.alerts
        self.late_partials += other.late_partials
        self.finals += other.finals
        self.revisions += other.revisions
        self.too_late += other.too_late


def metrics_key(record: dict[str, Any]) -> bytes:
    """The metrics-topic key: one per tenant, window and window size (compaction keeps the last revision);
    unambiguous for any tenant string (:mod:`schemas.keys`)."""
    return keys.metrics_key(record["tenant"], record["window_start_us"], record["window_end_us"])


@dataclass(slots=True)
class _Closed:
    """A final tumbling window kept for late data: its partials per source and the revision last emitted.

    The partials are kept as compact JSON (about a tenth of the memory of the parsed dicts, and an hour of windows
    per tenant is held): they are parsed only when a delta arrives, or to rebuild a record after a restore.
    """

    revision: int
    parts: dict[int, bytes]  # source -> partial record (orjson)
    sealed: bool = False  # its sealed record went out; kept only because a hopping window still needs it
    last: bytes | None = None  # the record last emitted (orjson; not stored: rebuilt after a restore)


@dataclass(slots=True)
class _Hop:
    """A hopping window emitted (ending at its key in ``_Tenant.hops``) and not sealed yet."""

    revision: int
    last: bytes | None = None


@dataclass(slots=True)
class _Tenant:
    last_final_end: int | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)  # tumbling finals inside the last hop
    recent_aggs: list[TenantWindowAggregate] | None = None  # ``recent`` parsed (not stored; rebuilt when None)
    open_alerts: dict[str, str] = field(default_factory=dict)  # fingerprint -> alertname
    pending: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)  # start -> source -> record
    closed: dict[int, _Closed] = field(default_factory=dict)  # start -> final window kept for late data
    hops: dict[int, _Hop] = field(default_factory=dict)  # end -> hopping window not sealed yet
    due: int | None = None  # the watermark at which it next has work (its entry in ``_Part.due``; not stored)


@dataclass(slots=True)
class _Part:
    watermarks: dict[int, int] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)
    tenants: dict[str, _Tenant] = field(default_factory=dict)
    dirty_pending: set[tuple[str, int, int]] = field(default_factory=set)
    deleted_pending: set[tuple[str, int, int]] = field(default_factory=set)
    stored_pending: set[tuple[str, int, int]] = field(default_factory=set)  # pending keys the table holds
    dirty_tenants: set[str] = field(default_factory=set)
    dirty_watermarks: bool = False
    # which tenants a watermark step has work for (not stored; rebuilt at restore): a heap of (watermark, tenant)
    # entries, the one equal to ``_Tenant.due`` current, others stale; and the tenants with open alerts (every step)
    due: list[tuple[int, str]] = field(default_factory=list)
    alerting: set[str] = field(default_factory=set)


DELTAS = "_deltas"  # in a held partial: the offsets of the delta partials merged into it (each applies once)


def _apply(parts: dict[int, dict[str, Any]], partial: Partial) -> bool:
    """Put ``partial`` into a window's partials by source; False when that changes nothing (a redelivery).

    A full partial replaces the source's (stage 1 recomputes a window from the same events, so a redelivery
    carries the same content). A delta is merged into it once: the offsets of the deltas merged are kept in it.
    """
    source = partial.source_partition
    old = parts.get(source)
    if partial.delta is None:
        if old == partial.record:
            return False
        parts[source] = partial.record
        return True
    if old is None:
        merged = dict(partial.record)
        merged[DELTAS] = [partial.delta]
    else:
        if partial.delta in old.get(DELTAS, ()):
            return False
        agg = TenantWindowAggregate.from_record(old)
        agg.merge(TenantWindowAggregate.from_record(partial.record))
        merged = agg.to_record(final=False, quantiles=False)
        merged[DELTAS] = [*old.get(DELTAS, ()), partial.delta]
    parts[source] = merged
    return True


def _held(value: Any) -> bytes:
    """``value`` as compact JSON to hold for an hour (right-sized: :mod:`workarounds.orjson_buffers`; RSS ~8 KiB per
    held 3.5 KiB document before, ~4 KiB per 70-byte one)."""
    return dumps_held(value)


def _parsed(parts: dict[int, bytes]) -> dict[int, dict[str, Any]]:
    return {source: orjson.loads(value) for source, value in parts.items()}


def _kept(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as kept in ``_Tenant.recent``: the same content without the Avro bodies its Duration records carry
    for the metrics encoder (``DurationSketch.duration_record``; ~130 bytes each, 33 per record here, and every
    tenant keeps a hop of finals: 10,000 tenants would hold ~200 MiB of them)."""
    kept = dict(record)
    for name in ("turn_duration", "tool_duration", "llm_duration"):
        kept[name] = dict(record[name])
    kept["tools"] = [{**t, "duration": dict(t["duration"])} for t in record["tools"]]
    return kept


def pending_key(tenant: str, start_us: int, source: int) -> str:
    return f"p|{tenant}|{start_us}|{source}"


def tenant_key(tenant: str) -> str:
    return f"t|{tenant}"


def watermark_key(partition: int) -> str:
    return f"w|{partition}"


class MergeStage:
    """Stage 2 for the partials partitions this worker owns (one task, no threads)."""

    def __init__(self, window_s: int, source_partitions: int, partitions: int, rules: RuleEngine,
                 spike: SpikeDetector, *, hop_size_s: int | None = None, backfill: bool = False,
                 allowed_lateness_s: float = 0.0) -> None:
        self.window_us = int(window_s * US)
        self.hop_us = int(hop_size_s * US) if hop_size_s else None
        self.lateness_us = int(allowed_lateness_s * US)
        if self.lateness_us < 0:
            raise ValueError("allowed lateness must be >= 0")
        self.sources = tuple(range(source_partitions))
        self.partitions = partitions
        self.rules = rules
        self.spike = spike
        self.backfill = backfill
        self._parts: dict[int, _Part] = {}

    # -- lifecycle --------------------------------------------------------------------------------------------

    def is_restored(self, partition: int) -> bool:
        return partition in self._parts

    def restore(self, partition: int, items: Iterable[tuple[Any, Any]]) -> None:
        """Rebuild partials partition ``partition`` from the table's ``(key, value)`` pairs (others skipped)."""
        part = self._parts[partition] = _Part()
        pending: list[tuple[str, int, int, dict[str, Any]]] = []
        for key, value in items:
            if not isinstance(key, str) or value is None:
                continue
            if key == watermark_key(partition):
                part.watermarks = {int(p): int(t) for p, t in value["watermarks"].items()}
                part.idle = {int(p) for p in value["idle"]}
            elif key.startswith("t|"):
                tenant = key[2:]
                if tenant_partition(tenant, self.partitions) != partition:
                    continue
                ts = part.tenants.setdefault(tenant, _Tenant())
                ts.last_final_end = value.get("last_final_end")
                ts.recent = list(value.get("recent", ()))
                ts.open_alerts = dict(value.get("open_alerts", {}))
                ts.closed = {int(start): _Closed(int(rev), {}, bool(sealed))
                             for start, (rev, sealed) in value.get("closed", {}).items()}
                ts.hops = {int(end): _Hop(int(rev)) for end, rev in value.get("hops", {}).items()}
                self.rules.restore_tenant(tenant, value.get("rules"))
                self.spike.restore_tenant(tenant, value.get("spike"))
            elif key.startswith("p|"):
                tenant, start, source = key[2:].rsplit("|", 2)
                if tenant_partition(tenant, self.partitions) == partition:
                    pending.append((tenant, int(start), int(source), value))
        for tenant, start, source, record in pending:
            ts = part.tenants.setdefault(tenant, _Tenant())
            part.stored_pending.add((tenant, start, source))
            if ts.last_final_end is not None and start + self.window_us <= ts.last_final_end:
                entry = ts.closed.get(start)
                if entry is None:  # stale: its window was dropped already
                    part.deleted_pending.add((tenant, start, source))
                else:
                    entry.parts[source] = _held(record)
                continue
            ts.pending.setdefault(start, {})[source] = record
        for tenant, ts in part.tenants.items():
            self._schedule(part, tenant, ts)

    def drop(self, partition: int) -> None:
        """Forget a revoked partition; its next owner restores it from the table."""
        part = self._parts.pop(partition, None)
        if part is None:
            return
        for tenant in part.tenants:
            self.rules.restore_tenant(tenant, None)
            self.spike.restore_tenant(tenant, None)

    def _part(self, partition: int) -> _Part:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Part()
        return part

    # -- input ------------------------------------------------------------------------------------------------

    def watermark(self, partition: int) -> int | None:
        """The end up to which every window is final: the lowest watermark of the non-idle sources."""
        part = self._parts.get(partition)
        if part is None:
            return None
        lowest: int | None = None
        for source in self.sources:
            if source in part.idle:
                continue
            wm = part.watermarks.get(source)
            if wm is None:
                return None
            if lowest is None or wm < lowest:
                lowest = wm
        return lowest

    def handle(self, partition: int, item: Partial | Marker) -> Output:
        if isinstance(item, Partial):
            return self.on_partial(partition, item)
        return self.on_marker(partition, item)

    def on_partial(self, partition: int, partial: Partial) -> Output:
        part = self._part(partition)
        tenant, start = partial.tenant, partial.window_start_us
        ts = part.tenants.get(tenant)
        if ts is None:
            ts = part.tenants[tenant] = _Tenant()
        if ts.last_final_end is not None and partial.window_end_us <= ts.last_final_end:
            out = self._on_late_partial(part, partition, tenant, ts, partial)
            self._schedule(part, tenant, ts)
            return out
        if not _apply(ts.pending.setdefault(start, {}), partial):
            return Output()
        k = (tenant, start, partial.source_partition)
        part.dirty_pending.add(k)
        part.deleted_pending.discard(k)
        wm = self.watermark(partition)
        out = Output()
        if wm is not None:
            self._advance_tenant(part, tenant, ts, wm, out)
        self._schedule(part, tenant, ts)
        return out

    def _on_late_partial(self, part: _Part, partition: int, tenant: str, ts: _Tenant, partial: Partial) -> Output:
        """A partial for a window already final: a revision while the window takes late data, else too late."""
        start, end, source = partial.window_start_us, partial.window_end_us, partial.source_partition
        out = Output()
        entry = ts.closed.get(start)
        wm = self.watermark(partition)
        if entry is None and (wm is None or end + self.lateness_us > wm):
            entry = ts.closed[start] = _Closed(-1, {})  # a window with no events of the tenant until now
        if entry is None or entry.sealed:
            out.late_partials = 1
            out.too_late.append(partial)
            return out
        before = self._entry_record(tenant, start, entry) if entry.revision >= 0 else None
        parts = _parsed(entry.parts)
        if not _apply(parts, partial):
            return out  # a redelivery of what the window holds: nothing changed
        entry.parts[source] = _held(parts[source])
        k = (tenant, start, source)
        part.dirty_pending.add(k)
        part.deleted_pending.discard(k)
        entry.revision += 1
        record = self._merge(tenant, start, parts).to_record(final=True)
        record["revision"] = entry.revision
        entry.last = _held(record)
        out.metrics.append(record)
        out.revisions += 1
        out.alerts += self.rules.revision_alerts(before, record, entry.revision)
        for i, r in enumerate(ts.recent):  # the on-time hopping windows to come are built from these
            if r["window_start_us"] == start:
                ts.recent[i] = _kept(record)
                ts.recent_aggs = None
        if self.hop_us and ts.last_final_end is not None:
            for hop_end in range(end, min(end + self.hop_us - self.window_us, ts.last_final_end) + 1, self.window_us):
                hop = ts.hops.get(hop_end)
                if hop is None and hop_end != end:
                    continue  # no hopping window ends there (its last tumbling window had no events)
                if hop is None:
                    hop = ts.hops[hop_end] = _Hop(-1)
                hop.revision += 1
                hop_record = self._hop_record(tenant, ts, hop_end)
                hop_record["revision"] = hop.revision
                hop.last = _held(hop_record)
                out.metrics.append(hop_record)
                out.revisions += 1
        part.dirty_tenants.add(tenant)
        return out

    def on_marker(self, partition: int, marker: Marker) -> Output:
        part = self._part(partition)
        before = self.watermark(partition)
        source = marker.source_partition
        if marker.idle:
            if source not in part.idle:
                part.idle.add(source)
                part.dirty_watermarks = True
        else:
            if source in part.idle:
                part.idle.discard(source)
                part.dirty_watermarks = True
            old = part.watermarks.get(source)
            if marker.watermark_us is not None and (old is None or marker.watermark_us > old):
                part.watermarks[source] = marker.watermark_us
                part.dirty_watermarks = True
        after = self.watermark(partition)
        out = Output()
        if after is not None and (before is None or after > before):
            # only the tenants with work at this watermark, in name order as if every tenant were visited (a
            # tenant with nothing due is a no-op in _advance_tenant): a step costs per window, not per tenant
            heap, tenants = part.due, part.tenants
            work = set(part.alerting)
            while heap and heap[0][0] <= after:
                due, tenant = heapq.heappop(heap)
                ts = tenants[tenant]
                if ts.due == due:  # else a stale entry: the tenant's current one is in the heap too
                    ts.due = None
                    work.add(tenant)
            for tenant in sorted(work):
                ts = tenants[tenant]
                self._advance_tenant(part, tenant, ts, after, out)
                self._schedule(part, tenant, ts)
        return out

    def _schedule(self, part: _Part, tenant: str, ts: _Tenant) -> None:
        """Note the lowest watermark at which :meth:`_advance_tenant` has work for ``tenant`` (a pending window
        to finalize, a final or hopping window to seal, a sealed one to drop); tenants with open alerts have work at
        every step. An earlier entry only costs a no-op visit; a later one would delay a window, so this is exact."""
        if ts.open_alerts:
            part.alerting.add(tenant)
        else:
            part.alerting.discard(tenant)
        w, lateness = self.window_us, self.lateness_us
        keep = self.hop_us - w if self.hop_us else 0
        nxt: int | None = min(ts.pending) + w if ts.pending else None
        for start, entry in ts.closed.items():
            d = start + w + lateness + (keep if entry.sealed else 0)
            if nxt is None or d < nxt:
                nxt = d
        if ts.hops:
            d = min(ts.hops) + lateness
            if nxt is None or d < nxt:
                nxt = d
        if nxt is not None and (ts.due is None or nxt < ts.due):
            ts.due = nxt
            heapq.heappush(part.due, (nxt, tenant))

    # -- finalizing -------------------------------------------------------------------------------------------

    def _advance_tenant(self, part: _Part, tenant: str, ts: _Tenant, wm: int, out: Output) -> None:
        """Finalize every window of ``tenant`` ending at or before ``wm``, in order, filling gaps while alerts
        are open; then seal and drop what the allowed lateness no longer covers."""
        w = self.window_us
        ready = sorted(s for s in ts.pending if s + w <= wm)
        if ready or ts.open_alerts:
            cursor = ts.last_final_end
            for start in ready:
                if ts.open_alerts and cursor is not None:
                    self._empty_windows(ts, tenant, cursor, start, out)
                self._finalize(part, tenant, ts, start, wm, out)
                cursor = start + w
            if ts.open_alerts and cursor is not None:
                self._empty_windows(ts, tenant, cursor, wm - wm % w, out)
            part.dirty_tenants.add(tenant)
        if ts.closed or ts.hops:
            self._seal(part, tenant, ts, wm, out)

    def _empty_windows(self, ts: _Tenant, tenant: str, start: int, stop: int, out: Output) -> None:
        """Evaluate the windows in ``[start, stop)`` as empty, for the detectors with an open alert."""
        w = self.window_us
        n = 0
        while start + w <= stop and ts.open_alerts and n < MAX_EMPTY_WINDOWS:
            m = WindowMetrics(tenant=tenant, window_start_us=start, window_end_us=start + w)
            names = set(ts.open_alerts.values())
            alerts: list[Alert] = []
            if names - {self.spike.config.alertname}:
                alerts += self.rules.evaluate(m, backfill=self.backfill)
            if self.spike.config.alertname in names:
                alerts += self.spike.evaluate(m, backfill=self.backfill)
            self._track(ts, alerts, out)
            ts.last_final_end = start + w
            start += w
            n += 1

    def _finalize(self, part: _Part, tenant: str, ts: _Tenant, start: int, wm: int, out: Output) -> None:
        partials = ts.pending.pop(start)
        agg = self._merge(tenant, start, partials)
        record = agg.to_record(final=True)
        end = start + self.window_us
        sealed = end + self.lateness_us <= wm  # no source can change it any more: revision 0 is the last
        record["sealed"] = sealed
        out.metrics.append(record)
        out.finals += 1
        m = WindowMetrics.from_record(record)  # read once for both detectors
        alerts = self.rules.evaluate(m, backfill=self.backfill)
        alerts += self.spike.evaluate(m, backfill=self.backfill)
        self._track(ts, alerts, out)
        ts.last_final_end = end
        # kept for late data (and for the hopping windows over it); _seal drops it when neither needs it
        ts.closed[start] = _Closed(0, {source: _held(r) for source, r in partials.items()}, sealed,
                                   None if sealed else _held(record))
        if self.hop_us:
            aggs = ts.recent_aggs
            if aggs is None or len(aggs) != len(ts.recent):  # after a restore or a revision
                aggs = [TenantWindowAggregate.from_record(r) for r in ts.recent]
            keep = [i for i, r in enumerate(ts.recent) if r["window_start_us"] >= end - self.hop_us]
            # as if parsed back from the record (as after a restore), so a restart never changes a hopping result:
            # the merged aggregate is that already unless it folded label names (a record keeps only their count)
            parsed = agg if not any(agg.folded.values()) else TenantWindowAggregate.from_record(record)
            ts.recent = [ts.recent[i] for i in keep] + [_kept(record)]
            ts.recent_aggs = [aggs[i] for i in keep] + [parsed]
            hop_record = self._hopping(tenant, end, ts.recent[-1], ts.recent_aggs)
            hop_sealed = end + self.lateness_us <= wm
            hop_record["sealed"] = hop_sealed
            out.metrics.append(hop_record)
            if not hop_sealed:
                ts.hops[end] = _Hop(0, _held(hop_record))

    def _seal(self, part: _Part, tenant: str, ts: _Tenant, wm: int, out: Output) -> None:
        """Send the sealed record of every window the watermark moved past ``end + allowed lateness``, then drop
        the state nothing needs any more (a final window is kept until the last hopping window over it seals)."""
        w = self.window_us
        seal_limit = wm - self.lateness_us
        changed = False
        for start in sorted(ts.closed):
            if start + w > seal_limit:
                break
            entry = ts.closed[start]
            if not entry.sealed:
                record = self._entry_record(tenant, start, entry)
                record["sealed"] = True
                out.seals.append(record)
                entry.sealed = True
                entry.last = None
                changed = True
        for end in sorted(ts.hops):
            if end > seal_limit:
                break
            hop = ts.hops.pop(end)
            record = orjson.loads(hop.last) if hop.last is not None else self._hop_record(tenant, ts, end)
            record["revision"] = hop.revision
            record["sealed"] = True
            out.seals.append(record)
            changed = True
        drop_limit = seal_limit - (self.hop_us - w if self.hop_us else 0)
        for start in sorted(ts.closed):
            if start + w > drop_limit:
                break
            entry = ts.closed.pop(start)
            for source in entry.parts:
                k = (tenant, start, source)
                part.dirty_pending.discard(k)
                if k in part.stored_pending:
                    part.deleted_pending.add(k)
            changed = True
        if changed:
            part.dirty_tenants.add(tenant)

    def _merge(self, tenant: str, start: int, partials: dict[int, dict[str, Any]]) -> TenantWindowAggregate:
        """The window's partials merged in source-partition order (the result never depends on arrival order)."""
        agg: TenantWindowAggregate | None = None
        for source in sorted(partials):
            piece = TenantWindowAggregate.from_record(partials[source])
            if agg is None:
                agg = piece
            else:
                agg.merge(piece)
        if agg is None:
            raise ValueError(f"no partials for {tenant!r} window {start}")
        return agg

    def _entry_record(self, tenant: str, start: int, entry: _Closed) -> dict[str, Any]:
        """The record last emitted for a final window (rebuilt from its partials after a restore)."""
        if entry.last is not None:
            return orjson.loads(entry.last)
        record = self._merge(tenant, start, _parsed(entry.parts)).to_record(final=True)
        record["revision"] = entry.revision
        return record

    def _hop_record(self, tenant: str, ts: _Tenant, end: int) -> dict[str, Any]:
        """The hopping window ending at ``end``, from the final windows kept in it (revisions, restores)."""
        assert self.hop_us is not None
        records = [self._entry_record(tenant, start, ts.closed[start])
                   for start in range(end - self.hop_us, end, self.window_us)
                   if start in ts.closed and ts.closed[start].revision >= 0 and ts.closed[start].parts]
        return self._hopping(tenant, end, records[-1], [TenantWindowAggregate.from_record(r) for r in records])

    def _hopping(self, tenant: str, end: int, last: dict[str, Any], finals: list[TenantWindowAggregate],
                 ) -> dict[str, Any]:
        assert self.hop_us is not None
        hop = TenantWindowAggregate(tenant, end - self.hop_us, end, label_limit=int(last["label_limit"]),
                                    relative_accuracy=float(last["turn_duration"]["relative_accuracy"]))
        for agg in finals:
            hop.merge(agg, same_window=False)
        return hop.to_record(final=True)

    @staticmethod
    def _track(ts: _Tenant, alerts: list[Alert], out: Output) -> None:
        for alert in alerts:
            if alert.status == FIRING:
                ts.open_alerts[alert.fingerprint] = alert.alertname
            else:
                ts.open_alerts.pop(alert.fingerprint, None)
        out.alerts += alerts

    # -- state ------------------------------------------------------------------------------------------------

    def state_changes(self, partition: int) -> list[tuple[str, dict[str, Any] | None]]:
        """What to write to the table for ``partition``, in the crash-safe order (see the module docstring)."""
        part = self._parts.get(partition)
        if part is None:
            return []
        out: list[tuple[str, dict[str, Any] | None]] = []
        for tenant, start, source in sorted(part.dirty_pending):
            ts = part.tenants[tenant]
            held = ts.pending.get(start)
            record = held[source] if held is not None else orjson.loads(ts.closed[start].parts[source])
            out.append((pending_key(tenant, start, source), record))
        if part.dirty_watermarks:
            out.append((watermark_key(partition), {
                "watermarks": {str(p): t for p, t in sorted(part.watermarks.items())},
                "idle": sorted(part.idle)}))
        for tenant in sorted(part.dirty_tenants):
            ts = part.tenants[tenant]
            out.append((tenant_key(tenant), {
                "last_final_end": ts.last_final_end, "recent": list(ts.recent), "open_alerts": dict(ts.open_alerts),
                "closed": {str(start): [e.revision, e.sealed] for start, e in sorted(ts.closed.items())},
                "hops": {str(end): h.revision for end, h in sorted(ts.hops.items())},
                "rules": self.rules.snapshot_tenant(tenant), "spike": self.spike.snapshot_tenant(tenant)}))
        out += [(pending_key(*k), None) for k in sorted(part.deleted_pending)]
        part.stored_pending.update(part.dirty_pending)
        part.stored_pending.difference_update(part.deleted_pending)
        part.dirty_pending.clear()
        part.deleted_pending.clear()
        part.dirty_tenants.clear()
        part.dirty_watermarks = False
        return out
