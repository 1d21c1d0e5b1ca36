"""EventPublisher: hand AgentEvents to Kafka without ever slowing down or breaking the agent that emits them.

Agentao calls ``on_event`` inline on the agent's thread and concurrently from tool worker threads, and a slow
callback delays the turn by exactly its duration. So the design splits the work:

* ``publish(event)`` (any thread) appends the dict to a ``collections.deque`` and returns. That is the whole hot
  path: one ``len()``, one compare, one ``append`` (~0.15 µs; ``deque.append`` and ``len`` are single C calls,
  atomic under the GIL; ``queue.SimpleQueue.put`` + ``qsize`` measured the same, and the deque also lets the
  sender pop without a lock). No counter is touched: "enqueued" is derived as popped + depth. It never raises:
  anything unexpected is counted as dropped (reason ``internal``) and ``False`` is returned. It also takes a
  :meth:`producers.stamp.Stamper.capture` (a tuple) instead of a dict: the sender then finishes the stamp (event
  id, the dict, the traceparent text), so the agent's thread only captures time, order and context.
* One daemon sender thread does everything else: validation and coercion (:mod:`producers.normalize`), the
  :class:`~producers.scrub.Scrubber` (default on), encoding each event's Avro body right after (while the dict is
  still in the CPU cache; an event the encoder refuses is dropped alone as ``invalid``), grouping the bodies per
  Kafka *partition* in arrival order (:mod:`producers.sharding`: a session's shard decides its partition, the
  record carries the partition's representative shard key; per shard until the partition count is known),
  framing each group as one ``AgentEventBatch`` sized exactly (``producer_id``, ``batch_seq`` strictly increasing
  in the order records are handed to Kafka), and producing with a confluent-kafka idempotent producer
  (``enable.idempotence``, ``acks=all``, lz4, a short ``linger.ms`` since batching already happened here).
  Delivery callbacks run on the same thread (it calls ``poll``), so the counters each have a single writer. The
  W3C ``traceparent`` travels in each event's own field, not in record headers: a batch mixes spans.
* Order: one session -> one partition; a partition receives its events in hand-over order (so history sent in
  bulk stays in event-time order per partition), and the idempotent producer keeps it across retries.

With a spool (``spool_dir``), a disk buffer like Vector's (:class:`~producers.spool.Spool`):

* Every record is appended to the spool (written to the OS: a process crash loses nothing appended) *before* it
  is handed to librdkafka, sent from there in file order (``spool_window`` records in flight), and removed once
  Kafka acknowledged it. So a SIGKILL while Kafka is away loses none of the records librdkafka held; the next
  publisher on the directory re-sends them. It takes the directory's ``producer_id`` (unless one is given) and
  starts its ``batch_seq`` above every sequence the directory handed out (reserved on disk in blocks), so a
  re-sent record is recognised downstream by its ``(producer_id, batch_seq)`` and never confused with new
  content. The producer never times a record out (``message.timeout.ms=0``): it retries until Kafka takes it.
* What a SIGKILL can still lose: events in the in-memory buffer the sender had not yet written (the last few
  milliseconds of hand-overs, ``linger_ms`` at most while the sender keeps up).
* Buffer full (``buffer_max_events``): the event is written to the spool by the calling thread (it pays for
  validation, scrubbing and encoding of that one event: back-pressure instead of loss while the sender is
  behind), as a one-event batch record, into an *overflow* segment placed after everything the sender still
  holds; its sequences lie between the sender's (a gap of 2^32), so order and identity are kept. Without a spool
  the event is dropped (``buffer_full``).
* Spool at ``spool_max_bytes``, or its file system full: the record is dropped and counted (``spool_full``;
  other write errors ``spool_error``), logged once per 10 s per reason with the count since the last line; what
  is on disk stays. A spool directory that cannot be opened (read-only, not a directory) does not stop the
  constructor: the publisher runs without a disk buffer, logs it and exports ``spool_degraded`` = 1.
* Permanent Kafka rejections (record too large, invalid record) are dropped (``rejected``).

Without a spool, records live in memory until acknowledged; delivery errors are dropped (``delivery_failed``).

``flush(timeout)`` returns True once everything handed in before the call is acknowledged by Kafka or counted as
dropped (with a spool, also what an earlier run left there); False while events wait in the spool. ``close()``
flushes, keeps sending until the timeout, then stops; it returns False and logs how many events remain in the
spool and where when anything is undelivered. An unclosed publisher is closed at interpreter exit (atexit holds
only a weak reference); its sender thread keeps it alive until then.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import CollectorRegistry

from producers.metrics import PublisherCollector, register
from producers.normalize import COERCED, EventNormalizer
from producers.scrub import Scrubber
from producers.sharding import partition_keys, shard_key
from producers.spool import Spool, SpoolEntry, SpoolLockedError
from schemas.codec import AvroCodec

log = logging.getLogger(__name__)


class _KafkaClientLog:
    """librdkafka's log sink: the same facility at most once per ``interval`` s (a down broker logs every retry)."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}

    def log(self, level: int, fmt: str, *args: Any) -> None:
        facility = str(args[0]) if args else fmt
        now = time.monotonic()
        if now - self._last.get(facility, -self._interval) < self._interval:
            return
        self._last[facility] = now
        self._logger.log(min(level, logging.WARNING), fmt, *args)


_kafka_log = logging.getLogger(__name__ + ".librdkafka")

MiB = 1024 * 1024
_PERMANENT = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
                        KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG})
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_OVERFLOW_SEQ_GAP = 1 << 32
_sleep = time.sleep


_raw_warned = False


def _complete(captured: tuple) -> Any:
    """The event of a :meth:`producers.stamp.Stamper.capture` (its first item is the stamper); whatever it cannot
    complete is returned as is, for the normalizer to refuse and count (``invalid``)."""
    try:
        return captured[0].complete(captured)
    except Exception:
        return captured


def _warn_raw_once() -> None:
    """Opting out of scrubbing is legitimate (a private bus, a test) but must never go unnoticed: one warning."""
    global _raw_warned
    if not _raw_warned:
        _raw_warned = True
        logging.getLogger(__name__).warning(
            "publishing RAW events (publish_raw=True / AGENTWATCH_PUBLISH_RAW): secrets, full LLM I/O and full tool "
            "results go to Kafka and the spool unscrubbed; everyone who can read the topic can read them")


def _close_at_exit(ref: weakref.ReferenceType[EventPublisher], timeout: float) -> None:
    publisher = ref()
    if publisher is not None:
        publisher.close(timeout)


class EventPublisher:
    """Thread-safe, never-blocking, never-raising publisher of AgentEvent dicts (see the module docstring)."""

    #: ``publish`` also takes a capture (a tuple whose first item has ``complete``) and completes it on the sender
    #: thread; the Agentao bridge defers its mapping when this is True.
    completes_captures = True

    def __init__(self, bootstrap_servers: str, topic: str, *, codec: AvroCodec | None = None,
                 spool_dir: Path | None = None, shards: int = 64, batch_max_events: int = 500,
                 linger_ms: float = 50, buffer_max_events: int = 100_000, spool_max_bytes: int = 256 * MiB,
                 scrubber: Scrubber | None = None, publish_raw: bool = False,
                 producer_config: dict[str, Any] | None = None,
                 registry: CollectorRegistry | None = None, producer_id: str | None = None,
                 max_record_bytes: int = 900_000, stall_timeout_s: float = 2.0, spool_window: int = 256,
                 fsync_interval_s: float = 1.0, atexit_timeout_s: float = 5.0, gil_slice_events: int = 0) -> None:
        """``gil_slice_events``: the sender releases the GIL (``time.sleep(0)``) after every so many events it
        drains (0, the default: never; only Python's switch interval forces it, every 5 ms by default). An agent
        thread that wakes up (an LLM reply, a tool's result) while the sender drains waits for the GIL until then;
        slices bound that wait to one slice (~0.5 ms for 32 events). Off by default: on a loaded machine each
        ``sleep(0)`` may hand the CPU to another process for a whole time slice, and with 32 the publisher's
        throughput fell to 0.5x-0.95x in bench_publish.py (bench/README.md, "The agent's thread")."""
        self.topic = topic
        new_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._spool: Spool | None = None
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.spool_degraded: str | None = None  # why the spool could not be opened (None: fine or not asked for)
        first_seq = 1
        if self.spool_dir is not None:
            try:
                self._spool = Spool(self.spool_dir, max_bytes=spool_max_bytes, fsync_interval_s=fsync_interval_s)
                producer_id, first_seq = self._spool.identity(producer_id, new_id)
            except SpoolLockedError:
                raise
            except OSError as exc:  # read-only, full, missing permissions: start without it and say so
                self._spool = None
                self.spool_degraded = f"{exc.strerror or exc} ({exc.filename or self.spool_dir})"
                log.error("publisher: spool %s unavailable: %s; running DEGRADED without a disk buffer (events live "
                          "only in memory until Kafka acknowledges them)", self.spool_dir, self.spool_degraded)
        self.producer_id = producer_id or new_id
        self._codec = codec or AvroCodec()
        if publish_raw and scrubber is not None:
            raise ValueError("publish_raw=True and a scrubber contradict each other: pass one or the other")
        if publish_raw:
            _warn_raw_once()
        self._normalizer = EventNormalizer(scrubber=None if publish_raw else (scrubber or Scrubber()))
        self._shards = shards
        self._batch_max = max(1, batch_max_events)
        self._linger_s = max(0.0, linger_ms / 1000.0)
        self._buffer_max = buffer_max_events
        self._max_record_bytes = max_record_bytes
        # what a record's events' bodies may add up to: the framing takes the rest (largest batch_seq and count)
        framing = len(self._codec.encode_batch(self.producer_id, 1 << 62, 1 << 62, [])) + 10
        self._body_budget = max_record_bytes - framing
        self._stall_timeout_s = stall_timeout_s
        self._spool_window = spool_window
        self._max_drain = max(20_000, 4 * self._batch_max)
        self._gil_slice = max(0, gil_slice_events)
        self.spool_recovery = self._spool.recovery if self._spool is not None else None

        # hot path state
        self._buf: deque[Any] = deque()
        self._limit = buffer_max_events  # 0 while an overflow episode runs or after close: publish goes slow path
        self._wake = threading.Event()
        self._wake_at = max(1, buffer_max_events // 2)

        # counters; each has one writer (the sender thread) unless noted
        self._popped = 0
        self._settled = 0          # popped events now delivered, spooled or dropped
        self._delivered = 0
        self._failed = 0
        self._spooled = 0
        self._resent = 0
        self._coerced = 0
        self._batches = 0
        self._counters: dict[str, int] = {"redactions": 0, "truncated": 0}
        self._dropped: dict[str, int] = {}          # written under _count_lock (several threads)
        self._count_lock = threading.Lock()
        self._ovf_lock = threading.Lock()
        self._overflow = False
        self._ovf_events = 0                         # written under _ovf_lock
        self._ovf_coerced = 0
        self._drop_logged: dict[str, float] = {}
        self._drop_unlogged: dict[str, int] = {}      # per reason, dropped since the last log line

        # Kafka state (sender thread only)
        self._batch_seq = first_seq - 1
        self._seq_reserved = first_seq  # up to here the spool has reserved sequences on disk
        self._ovf_seq = 0                # overflow records' sequences (callers, under _ovf_lock)
        self._direct_out = 0       # direct records outstanding in the client
        self._last_progress = time.monotonic()
        self._stalled = False
        self._spool_retry_at = 0.0
        self._spool_backoff = 0.5
        self._fatal: KafkaError | None = None
        self._brokers_down = False
        self._key_cache: dict[str, bytes] = {}      # session id -> record key
        self._rekey: dict[bytes, bytes] = {}         # shard key -> its partition's representative key (see sharding)
        self._partitions: int | None = None
        self._meta_at = 0.0
        self._producer_conf = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            "message.timeout.ms": 0,   # never: the publisher decides when to spool (stall_timeout_s)
            "message.max.bytes": max(1_000_000, max_record_bytes + 64 * 1024),
            "queue.buffering.max.messages": 100_000,
            "queue.buffering.max.kbytes": 256 * 1024,
            "partitioner": "murmur2_random",  # the Java client's partitioner: same key -> same partition
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "client.id": f"agentwatch-{self.producer_id}",
            "error_cb": self._on_error,
            "logger": _KafkaClientLog(_kafka_log),
            **(producer_config or {}),
        }
        self._producer = Producer(self._producer_conf)

        # flush / close coordination
        self._cond = threading.Condition()
        self._flush_req = 0
        self._flush_served = 0
        self._flush_targets: dict[int, int] = {}
        self._close_lock = threading.Lock()
        self._close_started = False
        self._closed = False
        self._stopping = False
        self._stop_deadline = 0.0

        ref = weakref.ref(self)  # the registry may outlive the publisher: do not keep it alive
        self.registry = register(registry, PublisherCollector(
            self.producer_id,
            lambda: p.stats if (p := ref()) is not None else {},
            lambda: p.dropped_by_reason() if (p := ref()) is not None else {}))
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self), atexit_timeout_s)
        atexit.register(self._atexit)
        self._thread = threading.Thread(target=self._run, name=f"agentwatch-publisher-{self.producer_id}",
                                        daemon=True)
        self._thread.start()

    # -- the agent's side ---------------------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> bool:
        """Hand over a complete event dict; O(1), never blocks, never raises.

        The dict is not modified (the sender works on a shallow copy), but nested values must not be mutated
        afterwards: a ``payload`` dict is serialised later, on the sender thread.

        Returns False when the event had to be dropped (counted by reason).
        """
        try:
            buf = self._buf
            n = len(buf)
            if n < self._limit:
                buf.append(event)
                if n == self._wake_at:
                    self._wake.set()
                return True
            return self._publish_slow(event)
        except Exception:  # pragma: no cover - defensive: nothing may reach the agent
            self._drop("internal", 1)
            return False

    def _publish_slow(self, event: Any) -> bool:
        """Closed, or the buffer is full: spool the event from this thread (keeping order), or drop it."""
        if self._closed:
            self._drop("closed", 1)
            return False
        spool = self._spool
        if spool is None:
            if len(self._buf) < self._buffer_max:
                self._buf.append(event)
                return True
            self._drop("buffer_full", 1)
            return False
        counters: dict[str, int] = {}
        if event.__class__ is tuple:
            event = _complete(event)
        clean, status = self._normalizer.normalize(event, counters)
        if clean is None:
            self._drop("invalid", 1)
            return False
        try:
            clean["producer_time"] = now_us = time.time_ns() // 1000
            body = self._codec.encode_event_body(clean)
        except Exception:
            self._drop("invalid", 1)
            return False
        key = shard_key(clean["session_id"], self._shards)
        key = self._rekey.get(key, key)
        with self._ovf_lock:
            if self._closed:
                self._drop("closed", 1)
                return False
            if not self._overflow:
                if len(self._buf) < self._buffer_max:  # room again since we looked
                    self._buf.append(event)
                    return True
                spool.begin_overflow()
                self._overflow = True
                self._limit = 0
                # overflow records sit between the sender's current tail and its next one in the spool, so their
                # sequences lie between: far above what the sender can reach during the episode, below its next
                self._ovf_seq = self._batch_seq + _OVERFLOW_SEQ_GAP
                log.warning("publisher %s: buffer full (%d events); callers write to the spool until the sender "
                            "catches up", self.producer_id, self._buffer_max)
            seq = self._ovf_seq + 1
            spool.reserve(seq)
            try:
                value = self._codec.encode_batch_bodies(self.producer_id, seq, now_us, [body])
            except Exception:  # not expected: the header is the publisher's own
                self._drop("internal", 1)
                return False
            if not spool.append_overflow(key, value, 1):
                self._drop(self._spool_refusal(), 1)
                return False
            self._ovf_seq = seq
            self._ovf_events += 1
            if status is COERCED:
                self._ovf_coerced += 1
            return True

    # -- flush / close -----------------------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed in so far is acknowledged by Kafka or counted as dropped (with a spool:
        also what an earlier run left in it); False when ``timeout`` passed first, e.g. while Kafka is away and
        events wait in the spool (they are safe on disk, but not delivered)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_req += 1
            req = self._flush_req
        self._wake.set()
        with self._cond:
            while True:
                target = self._flush_targets.get(req)
                if target is not None and self._settled_total() >= target and not self._recovered_left():
                    self._flush_targets.pop(req, None)
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    self._flush_targets.pop(req, None)
                    return False
                self._cond.wait(min(remaining, 0.05))

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, wait for in-flight records until ``timeout``, keep the rest in the spool (or count it as dropped
        without one), stop. Returns True when nothing accepted is left undelivered; otherwise logs how many events
        remain spooled and where (the next publisher on that directory sends them)."""
        with self._close_lock:
            if self._close_started:
                return self.undelivered == 0
            self._close_started = True
        deadline = time.monotonic() + timeout
        self.flush(max(0.0, timeout * 0.8))
        with self._ovf_lock:
            self._closed = True
            self._limit = 0
        self._stop_deadline = deadline
        self._stopping = True
        self._wake.set()
        self._thread.join(max(0.1, deadline - time.monotonic()) + 5.0)
        if self._thread.is_alive():
            log.error("publisher %s: sender thread did not stop", self.producer_id)
        atexit.unregister(self._atexit)
        left = self.undelivered
        if left and self._spool is not None:
            log.warning("publisher %s: closed with %d event(s) not delivered, kept in the spool %s (%d bytes); the "
                        "next publisher on that directory sends them", self.producer_id, left, self._spool.directory,
                        self._spool.pending_bytes)
        elif left:
            log.warning("publisher %s: closed with %d event(s) not delivered", self.producer_id, left)
        return left == 0

    @property
    def undelivered(self) -> int:
        """Events accepted (by this or, via the spool, an earlier publisher) and neither delivered nor dropped."""
        if self._spool is not None:
            return self._spool.pending_events + len(self._buf)
        return max(0, self._popped + len(self._buf) - self._settled)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stats ---------------------------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters in events (``batches``/``inflight_batches`` in records, ``spool_bytes`` in bytes)."""
        depth = len(self._buf)
        spool = self._spool
        recovery = self.spool_recovery
        return {
            "enqueued": self._popped + depth + self._ovf_events,
            "delivered": self._delivered,
            "failed": self._failed,
            "spooled": self._spooled + self._ovf_events,
            "resent": self._resent,
            "dropped": sum(self._dropped.values()),
            "buffer_depth": depth,
            "spool_bytes": spool.pending_bytes if spool is not None else 0,
            "spool_events": spool.pending_events if spool is not None else 0,
            "spool_write_errors": spool.write_errors if spool is not None else 0,
            "spool_degraded": int(self.spool_degraded is not None),
            "coerced": self._coerced + self._ovf_coerced,
            "redactions": self._counters.get("redactions", 0),
            "truncated": self._counters.get("truncated", 0),
            "batches": self._batches,
            "inflight_batches": self._direct_out + (spool.inflight if spool is not None else 0),
            "undelivered": self.undelivered,
            "spool_corrupt_regions": recovery.corrupt_regions if recovery else 0,
            "spool_torn_tails": recovery.torn_tails if recovery else 0,
            "spool_recovered_events": recovery.events if recovery else 0,
        }

    def dropped_by_reason(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self._dropped)

    def _recovered_left(self) -> bool:
        """An earlier run's records are still in the spool, not acknowledged."""
        return self._spool is not None and self._spool.holds_recovered

    def _settled_total(self) -> int:
        """Events of this publisher delivered or dropped (spooled ones count once Kafka acknowledged them)."""
        return self._settled

    def _drop(self, reason: str, n: int) -> None:
        """Count ``n`` dropped events; one log line per reason per 10 s with the count since the last line."""
        now = time.monotonic()
        with self._count_lock:
            total = self._dropped[reason] = self._dropped.get(reason, 0) + n
            since = self._drop_unlogged[reason] = self._drop_unlogged.get(reason, 0) + n
            if now - self._drop_logged.get(f"drop:{reason}", -10.0) < 10.0:
                return
            self._drop_logged[f"drop:{reason}"] = now
            self._drop_unlogged[reason] = 0
        where = f" (spool {self._spool.directory})" if reason == "spool_full" and self._spool is not None else ""
        log.warning("publisher %s: dropped %d event(s), reason %s%s, since the last such line; %d in all (logged at "
                    "most every 10 s)", self.producer_id, since, reason, where, total)

    def _spool_refusal(self) -> str:
        """The drop reason for an append the spool refused: a full disk or the size cap is ``spool_full``."""
        spool = self._spool
        if spool is not None and spool.last_error is not None and not spool.disk_full:
            return "spool_error"
        return "spool_full"

    def _warn(self, topic: str, msg: str, *args: Any) -> None:
        """A warning at most every 10 s per ``topic``: an outage must not flood the host's log."""
        now = time.monotonic()
        if now - self._drop_logged.get(topic, -10.0) >= 10.0:
            self._drop_logged[topic] = now
            log.warning(msg, *args)

    # -- the sender thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._cycle()
            except Exception:  # a bug must not stop delivery: log, breathe, go on
                log.exception("publisher %s: sender cycle failed", self.producer_id)
                time.sleep(0.1)
            if self._stopping and not self._buf:
                break
            if len(self._buf) < self._batch_max and not self._flush_pending():
                self._wake.wait(self._linger_s)
                self._wake.clear()
        try:
            self._shutdown()
        except Exception:
            log.exception("publisher %s: shutdown failed", self.producer_id)
        finally:
            with self._cond:
                self._cond.notify_all()

    def _flush_pending(self) -> bool:
        return self._flush_req > self._flush_served and not self._stopping

    def _cycle(self) -> None:
        flush_req = self._flush_req
        target = None
        if flush_req > self._flush_served:
            target = self._popped + len(self._buf) + self._ovf_events
        self._producer.poll(0)
        if self._fatal is not None:
            self._recreate_producer()
        if time.monotonic() >= self._meta_at:
            self._refresh_partitions()
        self._drain()
        self._producer.poll(0)
        if self._overflow and not self._buf:
            self._end_overflow()
        now = time.monotonic()
        self._check_stall(now)
        spool = self._spool
        if spool is not None:
            if spool.front_open and self._direct_out == 0:
                spool.seal_front()
            self._pump_spool(now)
            spool.sync(force=target is not None)
        if target is not None:
            with self._cond:
                for req in range(self._flush_served + 1, flush_req + 1):
                    self._flush_targets[req] = target
                self._flush_served = flush_req
                self._cond.notify_all()
        elif self._flush_targets:
            with self._cond:
                self._cond.notify_all()

    def _refresh_partitions(self) -> None:
        """Learn the topic's partition count, so that records are batched per partition (see
        :mod:`producers.sharding`); until it is known (Kafka away, topic missing) records are per shard."""
        try:
            md = self._producer.list_topics(self.topic, timeout=0.25).topics.get(self.topic)
            n = len(md.partitions) if md is not None and md.error is None else 0
        except KafkaException:
            n = 0
        self._meta_at = time.monotonic() + (60.0 if n else 5.0)
        if n and n != self._partitions:
            if self._partitions is not None:
                log.warning("publisher %s: topic %s now has %d partitions (was %d)", self.producer_id, self.topic, n,
                            self._partitions)
            self._partitions = n
            self._rekey = partition_keys(self._shards, n)
            self._key_cache.clear()

    def _drain(self) -> None:
        """Validate and encode up to ``_max_drain`` buffered events, group them by record key (one per partition
        once the partition count is known), send the groups.

        Each event is encoded as soon as it is validated (its Avro body, while the dict is still in the CPU
        cache), so an event the encoder refuses is found alone and the groups hold compact bytes, not dicts.
        """
        buf = self._buf
        n = min(len(buf), self._max_drain)
        if n == 0:
            return
        popleft = buf.popleft
        normalize = self._normalizer.normalize
        encode = self._codec.event_body_encoder
        counters = self._counters
        keys = self._key_cache
        shards = self._shards
        now_us = time.time_ns() // 1000  # producer_time of every event of this drain, created_at of its records
        groups: dict[bytes, list[bytes]] = {}
        invalid = 0
        step = self._gil_slice or n
        for i in range(n):
            if i % step == 0 and i:
                _sleep(0)  # let a waiting agent thread take the GIL (see gil_slice_events)
            event = popleft()
            self._popped += 1  # per event, so "enqueued" (popped + depth) stays exact while a drain runs
            if event.__class__ is tuple:  # a Stamper.capture: the stamp is finished here, off the agent's thread
                event = _complete(event)
            clean, status = normalize(event, counters)
            if clean is None:
                invalid += 1
                continue
            if status is COERCED:
                self._coerced += 1
            clean["producer_time"] = now_us
            try:
                body = encode(clean)
            except Exception:
                log.debug("publisher %s: unencodable event dropped: %r", self.producer_id, clean, exc_info=True)
                invalid += 1
                continue
            sid = clean["session_id"]
            key = keys.get(sid)
            if key is None:
                if len(keys) >= 100_000:
                    keys.clear()
                key = shard_key(sid, shards)
                key = keys[sid] = self._rekey.get(key, key)
            group = groups.get(key)
            if group is None:
                groups[key] = [body]
            else:
                group.append(body)
        if invalid:
            self._drop("invalid", invalid)
            self._settled += invalid
        for key, bodies in groups.items():
            self._send(key, bodies, now_us)
            if self._gil_slice and len(bodies) > self._gil_slice:
                _sleep(0)

    def _send(self, key: bytes, bodies: list[bytes], now_us: int) -> None:
        """Frame one key's event bodies, in order, as records of at most ``batch_max_events`` events and
        ``max_record_bytes`` bytes; an event too large for a record of its own is dropped (``too_large``)."""
        budget = self._body_budget
        batch_max = self._batch_max
        if len(bodies) <= batch_max and sum(map(len, bodies)) <= budget:  # the usual case: one record
            self._frame(key, bodies, now_us)
            return
        chunk: list[bytes] = []
        size = 0
        for body in bodies:
            n = len(body)
            if n > budget:
                self._drop("too_large", 1)
                self._settled += 1
                continue
            if chunk and (len(chunk) >= batch_max or size + n > budget):
                self._frame(key, chunk, now_us)
                chunk, size = [], 0
            chunk.append(body)
            size += n
        if chunk:
            self._frame(key, chunk, now_us)

    def _frame(self, key: bytes, bodies: list[bytes], now_us: int) -> None:
        self._batch_seq += 1
        if self._batch_seq > self._seq_reserved and self._spool is not None:
            self._seq_reserved = self._spool.reserve(self._batch_seq)
        try:
            value = self._codec.encode_batch_bodies(self.producer_id, self._batch_seq, now_us, bodies)
        except Exception:  # not expected: the header is the publisher's own
            log.exception("publisher %s: batch framing failed", self.producer_id)
            self._drop("internal", len(bodies))
            self._settled += len(bodies)
            return
        self._route(key, value, len(bodies))

    def _route(self, key: bytes, value: bytes, n: int) -> None:
        if self._spool is not None:  # the disk buffer: on disk first, sent from there, deleted when acknowledged
            self._to_spool(key, value, n)
            return
        try:
            self._producer.produce(self.topic, value, key, on_delivery=functools.partial(self._on_direct, n))
        except BufferError:
            self._to_spool_or_drop(key, value, n, "queue_full")
            return
        except KafkaException as exc:
            self._warn("produce", "publisher %s: produce failed: %s", self.producer_id, exc)
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.code() in _PERMANENT:
                self._drop("rejected", n)
                self._settled += n
            else:
                self._to_spool_or_drop(key, value, n, "delivery_failed")
            return
        if self._direct_out == 0:
            self._last_progress = time.monotonic()
        self._direct_out += 1
        self._batches += 1

    def _to_spool(self, key: bytes, value: bytes, n: int) -> None:
        """Write a record to the spool; it settles when Kafka acknowledges it (:meth:`_on_spool`)."""
        assert self._spool is not None
        if self._spool.append(key, value, n):
            self._spooled += n
        else:
            self._drop(self._spool_refusal(), n)
            self._settled += n

    def _to_spool_or_drop(self, key: bytes, value: bytes, n: int, reason: str) -> None:
        if self._spool is not None:
            self._to_spool(key, value, n)
        else:
            self._drop(reason, n)
            self._settled += n

    def _on_direct(self, n: int, err: KafkaError | None, msg: Any) -> None:
        self._direct_out -= 1
        if err is None:
            self._delivered += n
            self._settled += n
            self._last_progress = time.monotonic()
            self._stalled = self._brokers_down = False
            return
        code = err.code()
        if code not in _PURGED:
            self._failed += n
            self._warn("delivery", "publisher %s: delivery of %d event(s) failed: %s", self.producer_id, n, err)
        if code in _PERMANENT:
            self._drop("rejected", n)
            self._settled += n
            return
        spool = self._spool
        if spool is None:
            self._drop("delivery_failed", n)
        elif spool.append_front(msg.key(), msg.value(), n):
            self._spooled += n
        else:
            self._drop("spool_full", n)
        self._settled += n
        if self._direct_out == 0:
            self._stalled = False

    def _check_stall(self, now: float) -> None:
        """Say once per stall that Kafka acknowledges nothing (events keep going to the spool, or memory)."""
        spool = self._spool
        outstanding = self._direct_out + (spool.inflight if spool is not None else 0)
        if outstanding == 0:
            self._last_progress = now
            return
        if not self._stalled and now - self._last_progress > self._stall_timeout_s:
            self._stalled = True
            log.warning("publisher %s: Kafka acknowledged nothing for %.1f s (%d records outstanding)%s",
                        self.producer_id, now - self._last_progress, outstanding,
                        f"; events wait in the spool {spool.directory}" if spool is not None else "")

    def _pump_spool(self, now: float) -> None:
        spool = self._spool
        assert spool is not None
        if self._direct_out > 0 or spool.front_open or now < self._spool_retry_at:
            return
        while spool.inflight < self._spool_window:
            entry = spool.next_frame()
            if entry is None:
                return
            try:
                self._producer.produce(self.topic, entry.value, entry.key,
                                       on_delivery=functools.partial(self._on_spool, entry))
            except (BufferError, KafkaException) as exc:
                spool.unread(entry)
                if isinstance(exc, KafkaException):
                    self._warn("resend", "publisher %s: re-sending from the spool failed: %s", self.producer_id, exc)
                    self._spool_retry_at = now + self._spool_backoff
                    self._spool_backoff = min(30.0, self._spool_backoff * 2)
                return
            self._batches += 1

    def _on_spool(self, entry: SpoolEntry, err: KafkaError | None, msg: Any) -> None:
        spool = self._spool
        assert spool is not None
        recovered = entry.seg_id <= spool.recovered_until
        if err is None:
            spool.ack(entry)
            self._delivered += entry.n_events
            self._spool_backoff = 0.5
            self._last_progress = time.monotonic()
            self._stalled = False
            if recovered:
                self._resent += entry.n_events
            else:
                self._settled += entry.n_events
            return
        code = err.code()
        if code in _PERMANENT:
            log.error("publisher %s: Kafka rejected a spooled record for good (%s); dropping %d event(s)",
                      self.producer_id, err, entry.n_events)
            self._failed += entry.n_events
            self._drop("rejected", entry.n_events)
            spool.ack(entry)
            if not recovered:
                self._settled += entry.n_events
            return
        spool.fail(entry)
        if code not in _PURGED:
            self._failed += entry.n_events
            now = time.monotonic()
            if now >= self._spool_retry_at:  # first failure of this round: back off (doubling), log once
                self._warn("resend", "publisher %s: re-sending from the spool failed (%s); retrying in %.1f s",
                           self.producer_id, err, self._spool_backoff)
                self._spool_retry_at = now + self._spool_backoff
                self._spool_backoff = min(30.0, self._spool_backoff * 2)

    def _end_overflow(self) -> None:
        assert self._spool is not None
        with self._ovf_lock:
            if self._buf:
                return
            self._spool.seal_overflow()
            self._overflow = False
            self._batch_seq = max(self._batch_seq, self._ovf_seq)
            if not self._closed:
                self._limit = self._buffer_max
        log.info("publisher %s: buffer drained; overflow episode over", self.producer_id)

    def _on_error(self, err: KafkaError) -> None:
        code = err.code()
        if err.fatal():
            log.error("publisher %s: fatal Kafka client error: %s", self.producer_id, err)
            self._fatal = err
        elif code == KafkaError._ALL_BROKERS_DOWN:
            if not self._brokers_down:
                log.warning("publisher %s: all Kafka brokers are down", self.producer_id)
            self._brokers_down = True
        else:
            log.debug("publisher %s: Kafka client error: %s", self.producer_id, err)

    def _recreate_producer(self) -> None:
        """A fatal client error (e.g. the idempotent producer was fenced): spool what it held, start a new one."""
        self._fatal = None
        self._producer.purge(in_queue=True, in_flight=True, blocking=True)
        self._producer.poll(0)
        self._producer = Producer(self._producer_conf)

    def _shutdown(self) -> None:
        """Drain what is left, wait for acknowledgements until the deadline, then purge into the spool."""
        while self._buf:
            self._drain()
        if self._overflow:
            self._end_overflow()
        spool = self._spool
        while time.monotonic() < self._stop_deadline:
            self._producer.poll(0.05)
            now = time.monotonic()
            self._check_stall(now)
            if spool is not None:
                if spool.front_open and self._direct_out == 0:
                    spool.seal_front()
                self._pump_spool(now)
            if self._direct_out == 0 and (spool is None or spool.pending_events == 0):
                break
        if self._direct_out > 0 or (spool is not None and spool.inflight > 0):
            self._producer.purge(in_queue=True, in_flight=True, blocking=True)
            self._producer.poll(0)
            self._producer.flush(1.0)
        if spool is not None:
            spool.close()
        with self._cond:
            self._cond.notify_all()
