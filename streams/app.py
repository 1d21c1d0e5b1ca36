"""The Faust application: two agents, one timer and two changelog-backed tables around the pure stages.

Stage 1 (:mod:`streams.ingest`) reads the events topic, stage 2 (:mod:`streams.merge`) the partials topic; this
module only moves records between Kafka and them, and keeps the at-least-once protocol:

1. Records are consumed with manual acks (``stream.noack()``). Every output a record causes (dead letter,
   partials, markers, metrics, alerts) is produced with ``send_soon`` and its delivery future kept.
2. A **flush** runs every ``flush_interval_s`` (stretched to ``FLUSH_BACKOFF`` times the last flush's duration when
   flushes get long, so writing state never takes more than about a quarter of the worker's time, however many
   keys are dirty) or ``flush_records`` records, and on the heartbeat: it waits until
   every kept delivery succeeded, *then* writes the stages' state changes to the tables (each pair of each
   partition while an event of that partition is current, as Faust's tables require), *then* acks the records
   handled since the last flush. Faust commits only acked offsets and flushes its producer before committing, so
   a committed offset always has its state in the changelog, and a changelog state never claims an output that
   is not in Kafka (a crash anywhere replays from the committed offset, and the stages' dedup and idempotent
   replacement absorb the replay; see their docstrings).
3. Table writes are coalesced: one write per changed key per flush, never one per event (each write costs a
   Kafka record, about as much as reading one: ``reference/performance-notes.md``). Values are stored as compact
   JSON bytes (raw value serializer), decoded only when a partition is restored: Faust's memory store keeps
   every value, and bytes take a fraction of the memory of the same state as nested dicts. The flush waits until
   its changelog records are delivered before it acks: Faust's own producer flush, which its offset commit relies
   on, gives up after 0.1 s without progress, so under load a commit could otherwise overtake the state it covers
   and a crash right then would lose that state (seen as lost counts in the SIGKILL test).
4. A partition's state is restored from its table lazily (first record or heartbeat after a rebalance
   completed) and dropped on revocation; the flush holds a lock the revocation handler also takes, so a flush
   never writes a partition this worker no longer owns. A record an agent took from its stream before a
   revocation but got the lock only after it is dropped unhandled and unacked (the generation changed while it
   waited): handling it would restore the partition from the last flushed state, fold it without the records
   handled since, and send a partial or final computed from that hole. The partition's owner reads it again
   from the committed offset. (A guard from reading Faust's revocation order; no test run showed it alone.)
5. Records of an events or partials partition must arrive in offset order without holes (both topics are
   written without transactions, so their offsets are contiguous). After some rebalances Faust's consumer drops
   records: it drains a fetch made before seeking to the committed offset, books the offsets in between as a gap
   and then discards them as already read (found with the restart tests, whose counts came out short by one
   record's events; and with the kill loop, where a dropped partials record left windows short by one source
   partition's share, finalized without it). Both agents check each record against the last offset handled (the
   committed offset for the first record of an assignment); on a hole they leave the record unhandled and
   unacked and seek back to the first missing offset (see ``_in_order``).
6. The heartbeat (``heartbeat_s``) lets stream time of a *caught-up* events partition follow the wall clock so
   its windows close without new records (:meth:`streams.windows.WindowEngine.advance_idle`), and declares a
   caught-up partition that never had data idle, so stage 2 does not wait for it. A partition with records still
   to process (e.g. the replay after a restart) is never treated as quiet.

Faust never declares topics (``topic_allow_declare=False``, no leader topic): the admin step
(``agentwatch topics create``) creates all of them, changelogs included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faust
import orjson
from faust.streams import _current_event  # the context variable behind faust.current_event()
from faust.types import TP, EventT

from schemas.codec import DEFAULT_MAX_RECORD_BYTES, SINGLE_OBJECT_MAGIC, AvroCodec
from schemas.codegen import EncodeError, UnsupportedSchema, compile_schema
from schemas.contract import strip_logical_types
from schemas.pricing import price_table
from streams import partials as partials_format
from streams.alerts import AlertCodec, link_template
from streams.ingest import DeadLetter, Ingest, Outcome, dead_letter_headers
from streams.merge import MergeStage, Output, metrics_key
from streams.metrics_codec import MetricsCodec, schema_json
from streams.options import TENANT_TABLE, WINDOW_TABLE, WorkerOptions
from streams.rules import RuleEngine, load_rules
from streams.spike import SpikeDetector, load_spike_config
from streams.telemetry import WorkerTelemetry
from workarounds.faust_seek import seek_on_consumer_thread
from workarounds.orjson_buffers import dumps_held

log = logging.getLogger(__name__)
MiB = 1024 * 1024
FLUSH_BACKOFF = 3.0  # the next flush waits at least this many times the last one's duration
SAY_EVERY_S = 60.0  # operator lines about late data, at most this often per partition
WAIT_SAY_AFTER_S = 5.0  # say that the worker waits for an assignment after this long without one ...
WAIT_SAY_EVERY_S = 10.0  # ... and again this often
PROGRESS_EVERY_S = 30.0  # a line of progress this often while the worker has work (an idle worker says nothing)
_PROGRESS_COUNTERS = {"records": "agentwatch_worker_records_total", "events": "agentwatch_worker_events_total",
                      "windows": "agentwatch_worker_windows_emitted_total",
                      "alerts": "agentwatch_worker_alerts_emitted_total",
                      "dead letters": "agentwatch_worker_dead_letters_total"}
MAX_SEEK_RESTARTS = 3  # refetches starting at the same offset past a hole before the hole is taken as empty


def encode_state(value: Any) -> bytes:
    """A table value as stored: compact JSON (orjson: about a tenth of the stdlib's cost for these nested
    aggregates; integer dict keys become strings, as with the stdlib). The table holds it until the key changes,
    so it is right-sized (:mod:`workarounds.orjson_buffers`)."""
    return dumps_held(value, orjson.OPT_NON_STR_KEYS)


def decoded_items(items: Iterable[tuple[Any, Any]], prefix: str = "") -> Iterator[tuple[Any, Any]]:
    """A table's ``(key, value)`` pairs with JSON values decoded (keys not starting with ``prefix`` skipped);
    values written as JSON objects by Faust's json serializer (before values were raw) decode the same."""
    for key, value in items:
        if prefix and not (isinstance(key, str) and key.startswith(prefix)):
            continue
        yield key, (orjson.loads(value) if isinstance(value, (bytes, str)) else value)


def _now_us() -> int:
    return time.time_ns() // 1000


@contextlib.contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event: table writes then go to (and are stored for) its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def metrics_encoder(codec: MetricsCodec) -> Callable[[dict[str, Any]], bytes]:
    """``codec.encode``, by code generated from the schema when it compiles (:mod:`schemas.codegen`: the same
    bytes as fastavro for about half the CPU; encoding finals is a tenth of stage 2's time). A record the stricter
    generated encoder refuses goes through fastavro, so the output never depends on which one ran."""
    try:
        compiled = compile_schema(strip_logical_types(schema_json()))
    except UnsupportedSchema:
        return codec.encode
    encode, prefix = compiled.encode, SINGLE_OBJECT_MAGIC + codec.fingerprint

    def encode_record(record: dict[str, Any]) -> bytes:
        try:
            return encode(record, prefix)
        except EncodeError:
            return codec.encode(record)

    return encode_record


class ChangelogTable(faust.Table):  # type: ignore[misc]
    """A Faust table that keeps the futures of the changelog records it sends, so a flush can wait for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.sent.append(fut)
        return fut

    def take_sent(self) -> list[asyncio.Future[Any]]:
        sent, self.sent = self.sent, []
        return sent


def _table(app: faust.App, name: str, partitions: int, description: str) -> ChangelogTable:
    """A :class:`ChangelogTable` registered on ``app``: keys JSON strings, values raw bytes (compact JSON)."""
    table = ChangelogTable(app, name=name, default=None, value_type=bytes, beacon=app.tables.beacon,
                           partitions=partitions, help=description)
    app.tables.add(table)
    return table


def broker_urls(bootstrap_servers: str) -> str:
    """Faust's broker setting from a Kafka bootstrap list (``h1:9092,h2:9092``)."""
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap_servers.split(",") if hp.strip())


class WorkerShell:
    """The glue between Faust and the two stages; one instance per worker process."""

    def __init__(self, app: faust.App, options: WorkerOptions, telemetry: WorkerTelemetry) -> None:
        self.app = app
        self.options = options
        self.telemetry = telemetry
        codec = self.codec = AvroCodec(max_record_bytes=options.max_record_bytes or DEFAULT_MAX_RECORD_BYTES)
        self.ingest = Ingest(codec, options.window_s, options.grace_s, options.max_future_s, options.label_limit,
                             allowed_lateness_s=options.allowed_lateness_s, max_age_s=options.max_event_age_s,
                             prices=price_table(options.prices_file))
        rules = load_rules(options.rules_file)
        self.merge = MergeStage(options.window_s, options.events_partitions, options.partials_partitions,
                                RuleEngine(rules, generator_url=link_template(options.generator_url)),
                                SpikeDetector(load_spike_config(options.rules_file),
                                              generator_url=link_template(options.generator_url)),
                                hop_size_s=options.hop_size_s, backfill=options.backfill,
                                allowed_lateness_s=options.allowed_lateness_s)
        self.metrics_codec = MetricsCodec()
        self.encode_metrics = metrics_encoder(self.metrics_codec)
        self.alert_codec = AlertCodec()
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.events_topic = app.topic(options.events_topic, **raw)
        self.partials_topic = app.topic(options.partials_topic, **raw)
        self.dead_letter_topic = app.topic(options.dead_letter_topic, **raw)
        self.late_topic = app.topic(options.late_topic, **raw)
        self.metrics_topic = app.topic(options.metrics_topic, **raw)
        self.alerts_topic = app.topic(options.alerts_topic, **raw)
        self.window_table = _table(app, WINDOW_TABLE, options.events_partitions,
                                   "stage 1: window slots and partition meta")
        self.tenant_table = _table(app, TENANT_TABLE, options.partials_partitions,
                                   "stage 2: pending partials, watermarks, detector state")
        self.lock = asyncio.Lock()
        self._futures: list[asyncio.Future[Any]] = []
        self._pending: list[EventT] = []  # handled, not yet acked
        self._last_event: dict[tuple[str, int], EventT] = {}  # (stage, partition) -> an event of it
        self._last_offset: dict[TP, int] = {}  # events or partials partition -> last offset handled
        self._said: dict[tuple[str, int], float] = {}  # what _say_now_and_then said last, and when
        # events partition -> (offset sought back to, newest offset skipped, restarts at restart_at, restart_at)
        self._seeking: dict[int, tuple[int, int, int, int]] = {}
        self._caught_up_since: dict[int, float] = {}
        self._last_flush = time.monotonic()
        self._flush_spacing = options.flush_interval_s
        self._generation = 0
        self._ready = False
        self._waiting_since: float | None = time.monotonic()  # no assignment since then (None: assigned)
        self.worker_name = f"{options.app_id}@{id(self):x}"

    # -- wiring -----------------------------------------------------------------------------------------------

    def install(self) -> None:
        """Register the agents, the timer and the rebalance handlers on the app."""
        app = self.app
        app.agent(self.events_topic, name="ingest")(self._ingest_agent)
        app.agent(self.partials_topic, name="merge")(self._merge_agent)
        app.timer(self.options.heartbeat_s, name="heartbeat")(self._heartbeat)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        threading.Thread(target=self._report_waiting, name="agentwatch-waiting", daemon=True).start()

    def _report_waiting(self) -> None:
        """Say, every few seconds, that the worker waits for the group (a silent worker looks hung).

        A plain thread, so it speaks even while Faust's event loop is busy recovering tables.
        """
        said_at = 0.0
        progress_at, counts = time.monotonic(), progress_counts(self.telemetry.registry)
        while True:
            time.sleep(1.0)
            since = self._waiting_since
            if since is None:
                said_at = 0.0
                if time.monotonic() - progress_at >= PROGRESS_EVERY_S:
                    now = progress_counts(self.telemetry.registry)
                    line = progress_line(now, counts, time.monotonic() - progress_at)
                    if line:
                        _say(line)
                    progress_at, counts = time.monotonic(), now
                continue
            waited = time.monotonic() - since
            if waited >= WAIT_SAY_AFTER_S and time.monotonic() - said_at >= WAIT_SAY_EVERY_S:
                said_at = time.monotonic()
                _say(f"waiting {waited:.0f}s for the consumer group {self.options.app_id} to assign partitions and "
                     "for table recovery (a worker that crashed keeps its partitions until its session times out "
                     f"after {self.options.session_timeout_s:g}s; then the group rebalances)")

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        async with self.lock:
            self._ready = False
            self._generation += 1
            self._pending.clear()
            self._futures.clear()
            self.window_table.take_sent()  # that flush is void: the next owner replays its records
            self.tenant_table.take_sent()
            for tp in revoked:
                if tp.topic == self.options.events_topic:
                    self.ingest.drop(tp.partition)
                    self._last_event.pop(("ingest", tp.partition), None)
                    self._caught_up_since.pop(tp.partition, None)
                elif tp.topic == self.options.partials_topic:
                    self.merge.drop(tp.partition)
                    self._last_event.pop(("merge", tp.partition), None)
                self._last_offset.pop(tp, None)
                self._seeking.pop(tp, None)

    async def _on_rebalance_complete(self, sender: Any, **_: Any) -> None:
        self._ready = True
        waited = None if self._waiting_since is None else time.monotonic() - self._waiting_since
        self._waiting_since = None
        owned = self.app.consumer.assignment()
        events = sorted(tp.partition for tp in owned if tp.topic == self.options.events_topic)
        partials = sorted(tp.partition for tp in owned if tp.topic == self.options.partials_topic)
        self.telemetry.partitions.labels("events").set(len(events))
        self.telemetry.partitions.labels("partials").set(len(partials))
        _say(f"assigned: events partitions {events}, partials partitions {partials}"
             + (f" (after waiting {waited:.1f}s)" if waited is not None else ""))

    # -- stage 1 ----------------------------------------------------------------------------------------------

    async def _ingest_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            generation = self._generation
            async with self.lock:
                if generation != self._generation:
                    continue  # taken before a revocation (module docstring, point 4)
                if not await self._in_order(event):
                    continue
                self._handle_event_record(event)
                if self._should_flush():
                    await self._flush()

    def _restore_events_partition(self, partition: int) -> None:
        if not self.ingest.is_restored(partition):
            slots = self.ingest.restore(partition, decoded_items(self.window_table.items(), f"{partition}|"))
            _say(f"events partition {partition} restored from the table ({slots} open slots, stream time "
                 f"{self.ingest.stream_time(partition)})")

    async def _in_order(self, event: EventT) -> bool:
        """Whether ``event`` is the next record of its partition; otherwise seek back and skip it.

        The events and partials topics have contiguous offsets (no transactions, no compaction), so an offset past
        the last one
        handled plus one is a hole: records never delivered. Faust's consumer does this after some rebalances: it
        drains a fetch made before its seek to the committed offset, books the offsets in between as a gap (acked)
        and then discards them as already read; each lost record would be missing from its windows (seen as short
        counts in the restart tests). On a hole the record is left unhandled and unacked and the consumer sought
        back to the first missing offset; records fetched before that seek still come first, with ever higher
        offsets, and are skipped too, until the sequence starts again: at the missing offset (the hole is filled),
        or past it, when Faust dropped the refetch as well (seek again), or when those offsets hold no records (a
        transactional topic's control records: the refetch starts at the same place ``MAX_SEEK_RESTARTS`` times;
        taken as such, and counted). The first record of an assignment is compared with the committed offset; it may
        legitimately start past it when retention deleted what lay before, and a refetch that keeps restarting
        past it is taken as such.
        """
        msg = event.message
        tp, offset = msg.tp, msg.offset
        where = f"{msg.topic}[{msg.partition}]"
        seeking = self._seeking.get(tp)
        if seeking is not None:
            target, newest, restarts, restart_at = seeking
            if offset <= target:  # the refetch (or an older redelivery, which dedup absorbs)
                if offset == target:
                    del self._seeking[tp]
                return True
            if offset <= newest:
                # The sequence started again, but past the target. Either Faust dropped the refetch too (records
                # of its stale fetch kept coming after our seek and moved its read offset up again): seek again;
                # or nothing lives at target..offset-1 (a transactional topic's control records): the same
                # restart point several times over means that.
                if offset == restart_at and restarts >= MAX_SEEK_RESTARTS:
                    del self._seeking[tp]
                    self.telemetry.skipped_offsets.inc(offset - target)
                    _say(f"{where}: offsets {target}..{offset - 1} hold no records; going on at {offset}")
                    return True
                self._seeking[tp] = (target, offset, restarts + 1 if offset == restart_at else 1, offset)
                await self._seek(tp, target)
                return False
            self._seeking[tp] = (target, offset, restarts, restart_at)  # fetched before the seek: skip
            return False
        last = self._last_offset.get(tp)
        if last is None:
            # The first record of an assignment must be the committed offset: Faust's consumer can drop the
            # records in between exactly as above (a stale fetch drained after the seek). Retention may have
            # deleted what lay before it; then the refetch restarts past the committed offset every time, which
            # the restart count below takes as "no records there" after MAX_SEEK_RESTARTS.
            committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp)
            if committed is None:
                return True
            last = committed - 1
        if offset <= last + 1:
            return True
        self._seeking[tp] = (last + 1, offset, 0, -1)
        self.telemetry.gap_recoveries.inc()
        _say(f"{where}: offset {offset} arrived but {last + 1}..{offset - 1} never did; seeking back to {last + 1}")
        await self._seek(tp, last + 1)
        return False

    def _handle_event_record(self, event: EventT) -> None:
        msg = event.message
        p = msg.partition
        self._restore_events_partition(p)
        out = self.ingest.handle(p, msg.offset, msg.value, _now_us())
        t = self.telemetry
        t.records.inc()
        where = f"{msg.topic}[{p}]@{msg.offset}"
        if out.dead_letter is not None:
            dead = out.dead_letter
            headers = dead_letter_headers(dead, msg.topic, p, msg.offset, _timestamp_ms(msg),
                                          _headers(msg.headers), self.worker_name)
            self._send(self.dead_letter_topic, msg.key, msg.value, None, headers)
            t.dead_letters.labels(dead.reason).inc()
            if dead.reason == "processing_error":
                t.processing_errors.labels("ingest").inc()
                log.error("%s (tenant %s): processing error, record sent to %s: %s", where, out.tenant,
                          self.options.dead_letter_topic, dead.detail)
            else:
                self._say_now_and_then(("dead letter", dead.reason), f"{where} (tenant {out.tenant}): record sent "
                                       f"to the dead-letter topic: {dead.reason}: {dead.detail[:200]}")
        else:
            t.events.inc(out.events)
            t.events_folded.inc(out.folded)
            if out.rejected:
                self._reject_events(msg, out)
            if out.late:
                t.late_events.inc(out.late)
            if out.too_late:
                self._send_too_late(msg, out)
            if out.revised:
                t.revised_events.inc(out.revised)
            if out.duplicate:
                t.duplicate_records.inc()
        self._route_stage1(p, out)
        self._pending.append(event)
        self._last_event[("ingest", p)] = event
        self._last_offset[msg.tp] = msg.offset

    def _reject_events(self, msg: Any, out: Outcome) -> None:
        """Each event outside its valid range to the dead-letter topic, alone, with its reason and whereabouts."""
        base = _headers(msg.headers)
        for ev, rejection in out.rejected:
            dead = DeadLetter(rejection.reason, rejection.detail)
            headers = dead_letter_headers(dead, msg.topic, msg.partition, msg.offset, _timestamp_ms(msg), base,
                                          self.worker_name)
            headers += [("dlq.event_index", str(rejection.index).encode()),
                        ("dlq.event_id", str(ev.get("event_id", "")).encode()),
                        ("dlq.tenant", str(ev.get("tenant", ""))[:256].encode("utf-8", "replace"))]
            self._send(self.dead_letter_topic, msg.key, self._single_event(ev, msg.value), None, headers)
            self.telemetry.dead_letters.labels(rejection.reason).inc()
            self._say_now_and_then(("rejected", rejection.reason), f"{msg.topic}[{msg.partition}]@{msg.offset} "
                                   f"event {rejection.index} (tenant {str(ev.get('tenant'))[:80]!r}) rejected: "
                                   f"{rejection.reason}: {rejection.detail}")

    def _send_too_late(self, msg: Any, out: Outcome) -> None:
        """Events later than the allowed lateness to the late side topic (one record each), never dropped."""
        p = msg.partition
        st = self.ingest.stream_time(p)
        for ev in out.too_late:
            headers = [("late.reason", b"beyond_allowed_lateness"), ("late.source.topic", msg.topic.encode()),
                       ("late.source.partition", str(p).encode()), ("late.source.offset", str(msg.offset).encode()),
                       ("late.stream_time_us", str(st).encode()), ("late.worker", self.worker_name.encode())]
            self._send(self.late_topic, msg.key, self._single_event(ev, msg.value), None, headers)
        self.telemetry.late_side_records.labels("event").inc(len(out.too_late))
        self._say_now_and_then(("late", p), f"{msg.topic}[{p}]@{msg.offset} (tenant {out.tenant}): "
                               f"{len(out.too_late)} events later than the allowed lateness "
                               f"({self.options.allowed_lateness_s:g} s after the grace; stream time {st}) sent to "
                               f"{self.options.late_topic}")

    def _single_event(self, ev: dict[str, Any], record: bytes) -> bytes:
        """One event as a single-event record (what the dead-letter and late topics hold per event); the whole
        source record if it cannot be encoded alone (its headers then say which event is meant)."""
        try:
            return self.codec.encode_event(ev)
        except Exception:
            return record

    async def _seek(self, tp: TP, offset: int) -> None:
        """Seek the events consumer, on the consumer's own thread (:mod:`workarounds.faust_seek`)."""
        await seek_on_consumer_thread(self.app.consumer, tp, offset)

    def _say_now_and_then(self, topic: tuple[str, int], text: str) -> None:
        """``_say`` at most once a minute per topic (late data can come steadily; the counters have every one)."""
        now = time.monotonic()
        if now - self._said.get(topic, -SAY_EVERY_S) >= SAY_EVERY_S:
            self._said[topic] = now
            _say(text + " (said at most once a minute; see the worker's counters)")

    def _route_stage1(self, source: int, out: Outcome) -> None:
        """One partials record per partials partition with anything to say: its tenants' partials, then the
        markers (which every partition gets)."""
        if not out.partials and not out.markers:
            return
        n = self.options.partials_partitions
        per_partition: list[list[partials_format.Partial | partials_format.Marker]] = [[] for _ in range(n)]
        for partial in out.partials:
            per_partition[partials_format.tenant_partition(partial.tenant, n)].append(partial)
        for q, items in enumerate(per_partition):
            items += out.markers
            if items:
                key, value = partials_format.encode_items(source, items)
                self._send(self.partials_topic, key, value, q)
        self.telemetry.partials.inc(len(out.partials))

    # -- stage 2 ----------------------------------------------------------------------------------------------

    async def _merge_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            generation = self._generation
            async with self.lock:
                if generation != self._generation:
                    continue  # taken before a revocation (module docstring, point 4)
                if not await self._in_order(event):
                    continue
                self._handle_partials_record(event)
                if self._should_flush():
                    await self._flush()

    def _restore_partials_partition(self, partition: int) -> None:
        if not self.merge.is_restored(partition):
            self.merge.restore(partition, decoded_items(self.tenant_table.items()))
            _say(f"partials partition {partition} restored from the table (watermark "
                 f"{self.merge.watermark(partition)})")

    def _handle_partials_record(self, event: EventT) -> None:
        msg = event.message
        q = msg.partition
        self._restore_partials_partition(q)
        try:
            items = partials_format.decode_items(msg.value)
        except partials_format.PartialsFormatError as exc:
            log.error("partials %s[%d]@%d skipped: %s", msg.topic, q, msg.offset, exc)
        else:
            for item in items:
                try:
                    out = self.merge.handle(q, item)
                except Exception as exc:  # a bug: this item goes aside, the worker goes on
                    self._merge_failed(msg, item, exc)
                    continue
                if out.late_partials and isinstance(item, partials_format.Partial):
                    self._say_now_and_then(
                        ("late partial", q), f"partials partition {q} offset {msg.offset}: partial of "
                        f"{item.tenant} window {item.window_start_us} from events partition {item.source_partition} "
                        f"arrived after the window was sealed (a source that was idle woke up with old data); sent "
                        f"to {self.options.late_topic}")
                self._route_stage2(out, msg)
        self._pending.append(event)
        self._last_event[("merge", q)] = event
        self._last_offset[msg.tp] = msg.offset

    def _merge_failed(self, msg: Any, item: partials_format.Partial | partials_format.Marker, exc: Exception) -> None:
        tenant = item.tenant if isinstance(item, partials_format.Partial) else None
        detail = f"{type(exc).__name__}: {exc}"
        log.error("%s[%d]@%d (tenant %s, source partition %d): processing error, item sent to %s: %s", msg.topic,
                  msg.partition, msg.offset, tenant, item.source_partition, self.options.dead_letter_topic, detail)
        key, value = partials_format.encode_items(item.source_partition, [item])
        headers = dead_letter_headers(DeadLetter("processing_error", detail), msg.topic, msg.partition, msg.offset,
                                      _timestamp_ms(msg), [("dlq.exception", detail[:1000].encode())],
                                      self.worker_name)
        self._send(self.dead_letter_topic, key, value, None, headers)
        self.telemetry.dead_letters.labels("processing_error").inc()
        self.telemetry.processing_errors.labels("merge").inc()

    def _route_stage2(self, out: Output, msg: Any = None) -> None:
        t = self.telemetry
        for record in out.metrics + out.seals:
            try:
                value = self.encode_metrics(record)
            except Exception as exc:  # cannot happen with checked inputs (streams/validation.py); never fatal
                log.error("metrics record of tenant %s window %s..%s not encodable, dropped: %s", record.get("tenant"),
                          record.get("window_start_us"), record.get("window_end_us"), exc)
                t.processing_errors.labels("encode").inc()
                continue
            self._send(self.metrics_topic, metrics_key(record), value, None)
        for record in out.metrics:
            if record["revision"] == 0:  # first emissions; revisions and seals have their own counters
                tumbling = record["window_end_us"] - record["window_start_us"] == self._window_us
                t.windows.labels("tumbling" if tumbling else "hopping").inc()
        if out.seals:
            t.seals.inc(len(out.seals))
        for alert in out.alerts:
            self._send(self.alerts_topic, alert.key(), self.alert_codec.encode(alert), None)
            t.alerts.labels(alert.status).inc()
        if out.late_partials:
            t.late_partials.inc(out.late_partials)
        if out.revisions:
            t.revisions.inc(out.revisions)
        for partial in out.too_late:
            key, value = partials_format.encode_items(partial.source_partition, [partial])
            headers = [("late.reason", b"window_sealed"), ("late.kind", b"partial"),
                       ("late.tenant", partial.tenant.encode("utf-8", "replace"))]
            if msg is not None:
                headers += [("late.source.topic", msg.topic.encode()), ("late.source.partition",
                                                                         str(msg.partition).encode()),
                            ("late.source.offset", str(msg.offset).encode())]
            self._send(self.late_topic, key, value, None, headers)
            t.late_side_records.labels("partial").inc()

    @property
    def _window_us(self) -> int:
        return self.options.window_s * 1_000_000

    # -- output and flushing ----------------------------------------------------------------------------------

    def _send(self, topic: faust.TopicT, key: bytes | None, value: bytes | None, partition: int | None,
              headers: list[tuple[str, bytes]] | None = None) -> None:
        self._futures.append(topic.send_soon(key=key, value=value, partition=partition, headers=headers))

    def _should_flush(self) -> bool:
        return len(self._pending) >= self.options.flush_records or self._flush_due()

    def _flush_due(self) -> bool:
        return time.monotonic() - self._last_flush >= self._flush_spacing

    async def _flush(self) -> None:
        """Outputs delivered, then state written, then records acked (the caller holds the lock)."""
        started = time.monotonic()
        try:
            await self._flush_now()
        finally:
            self._last_flush = time.monotonic()
            self._flush_spacing = max(self.options.flush_interval_s, FLUSH_BACKOFF * (self._last_flush - started))

    async def _flush_now(self) -> None:
        generation = self._generation
        futures, self._futures = self._futures, []
        if futures:
            await asyncio.gather(*futures)  # a failed delivery raises: crash rather than ack what is not out
        if generation != self._generation:  # revoked meanwhile: the next owner replays these records
            return
        writes = 0
        for (stage, partition), event in list(self._last_event.items()):
            if stage == "ingest":
                if not self.ingest.is_restored(partition):
                    continue
                changes, table = self.ingest.state_changes(partition), self.window_table
            else:
                if not self.merge.is_restored(partition):
                    continue
                changes, table = self.merge.state_changes(partition), self.tenant_table
            if not changes:
                continue
            with event_context(event):
                for key, value in changes:
                    if value is not None:
                        table[key] = encode_state(value)
                    elif key in table:
                        del table[key]
            writes += len(changes)
            self.telemetry.state_writes.labels(stage).inc(len(changes))
        changelog = self.window_table.take_sent() + self.tenant_table.take_sent()
        if changelog:
            await asyncio.gather(*changelog)  # the state is in Kafka before the records it covers are acked
        if generation != self._generation:
            return
        pending, self._pending = self._pending, []
        for event in pending:
            event.ack()
        self.telemetry.flushes.inc()
        if writes:
            log.debug("flush: %d outputs, %d state writes, %d records acked", len(futures), writes, len(pending))

    # -- heartbeat --------------------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        if self._ready:
            await self._advance_quiet_partitions()
        async with self.lock:
            if (self._pending or self._futures or self._ready) and self._flush_due():
                await self._flush()

    async def _advance_quiet_partitions(self) -> None:
        consumer = self.app.consumer
        owned = [tp for tp in consumer.assignment() if tp.topic == self.options.events_topic]
        if not owned:
            return
        generation = self._generation
        try:
            highwaters = await consumer.highwaters(*owned)
        except Exception as exc:  # a broker hiccup: try again at the next beat
            log.warning("heartbeat: cannot read high watermarks: %s", exc)
            return
        now = time.monotonic()
        async with self.lock:
            if not self._ready or generation != self._generation:  # ``owned`` is from before a rebalance
                return
            wall = _now_us()
            for tp in owned:
                p = tp.partition
                if not self._caught_up(tp, highwaters.get(tp)):
                    self._caught_up_since.pop(p, None)
                    continue
                since = self._caught_up_since.setdefault(p, now)
                self._restore_events_partition(p)
                out = self.ingest.heartbeat(p, wall)
                if now - since >= self.options.idle_partition_s:
                    marker = self.ingest.idle_marker(p)
                    if marker is not None:
                        out.markers.append(marker)
                self._route_stage1(p, out)
                st = self.ingest.stream_time(p)
                if st is not None:
                    self.telemetry.stream_time.labels(str(p)).set(st / 1e6)
            for tp in consumer.assignment():
                if tp.topic == self.options.partials_topic:
                    self._restore_partials_partition(tp.partition)

    def _caught_up(self, tp: TP, highwater: int | None) -> bool:
        """Every record of the partition up to its high watermark handled (nothing waiting to be replayed)."""
        if highwater is None:
            return False
        if highwater == 0:
            return True
        last = self._last_offset.get(tp)
        if last is not None:
            return last + 1 >= highwater
        committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp)
        return committed is not None and committed >= highwater


def progress_counts(registry: Any) -> dict[str, float]:
    """The worker's progress counters (summed over their labels) from its metrics registry."""
    wanted = {sample: name for name, sample in _PROGRESS_COUNTERS.items()}
    out = dict.fromkeys(_PROGRESS_COUNTERS, 0.0)
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


def progress_line(now: dict[str, float], before: dict[str, float], seconds: float) -> str | None:
    """What the worker did since the last line, or None when it read nothing (an idle worker stays quiet)."""
    read = now.get("records", 0) - before.get("records", 0)
    if read <= 0:
        return None
    delta = ", ".join(f"{now.get(k, 0) - before.get(k, 0):,.0f} {k}" for k in _PROGRESS_COUNTERS)
    return (f"progress: {delta} in the last {seconds:.0f}s ({read / max(seconds, 1e-9):,.0f} records/s); "
            f"{now.get('events', 0):,.0f} events, {now.get('windows', 0):,.0f} windows since start")


def _say(text: str) -> None:
    """Operator-facing lines (assignment, restores) on stdout, whatever Faust's log level."""
    print(f"agentwatch worker: {text}", flush=True)


def _timestamp_ms(msg: Any) -> int | None:
    ts = getattr(msg, "timestamp", None)
    return None if ts is None else int(ts * 1000)


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items]


def create_app(options: WorkerOptions, telemetry: WorkerTelemetry | None = None) -> tuple[faust.App, WorkerShell]:
    """The configured Faust app and its shell (agents, timer and handlers installed)."""
    options.datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        options.app_id,
        broker=broker_urls(options.bootstrap_servers),
        store=options.store,
        datadir=str(options.datadir),
        autodiscover=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        broker_commit_interval=options.commit_interval_s,
        broker_session_timeout=options.session_timeout_s,
        broker_heartbeat_interval=max(0.5, options.session_timeout_s / 4),
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        stream_wait_empty=False,
        producer_max_request_size=(options.max_record_bytes or DEFAULT_MAX_RECORD_BYTES) + MiB,
        producer_acks=-1,
        web_enabled=options.web_port is not None,
        web_port=options.web_port or 6066,
        web_bind=options.listen_addr,
        web_in_thread=False,
    )
    shell = WorkerShell(app, options, telemetry or WorkerTelemetry())
    shell.install()
    return app, shell
