"""Alert delivery, the I/O part: HTTP sending with retries, the dispatcher, and the Kafka consumer shell.

* :class:`UrllibSender` POSTs one :class:`~sinks.receivers.HttpRequest` (stdlib ``urllib``; no proxy unless one
  is passed, because lower layers never read the environment).
* :class:`AlertDispatcher` is everything but Kafka: the :class:`~sinks.alert_delivery.ActiveAlerts` state, the
  grouping, delivery to every receiver (receivers in parallel; one receiver's requests in order, each retried
  on transport errors, 408, 429 and 5xx with :class:`~sinks.alert_delivery.RetryPolicy`, ``Retry-After``
  honoured; other answers are rejections: logged, counted, not retried), and the periodic re-send of open alerts.
  Once a request to a receiver gives up, the rest of that delivery to it is skipped (and counted): a dead
  receiver costs one retry budget per batch, not one per notification.
* :class:`AlertSink` consumes the alerts topic in its own group. On every partition assignment it rewinds to the
  beginning and re-reads the records *before* the group's committed offset into the state without sending them
  (the delivered past), then delivers the records after it (the undelivered present). With no committed offset
  (a new group) the whole topic as of assignment counts as the past, so a new sink does not page 90 days of
  history (``new_group_start="earliest"`` delivers it instead). Offsets are committed synchronously after a
  batch was delivered to every receiver, or a receiver gave up or rejected it: at-least-once. A crash between
  the send and the commit re-sends that batch after the restart (a receiver sees the same firing twice, which
  Alertmanager and any receiver keyed by fingerprint absorb like a re-send); a transition the detector wrote
  twice is sent once (:meth:`~streams.alerts.Alert.transition_key` dedup, state rebuilt from the topic).
  After the rebuild, open alerts are re-sent at once (``resend_on_start``): an Alertmanager may have expired them
  while the sink was down.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from schemas.codec import DecodeError
from sinks.alert_delivery import (
    ActiveAlerts,
    Batcher,
    Grouper,
    Notification,
    Outcome,
    Plan,
    RetryPolicy,
    Verdict,
    classify_status,
    parse_retry_after,
)
from sinks.consumer_config import sink_consumer_config
from sinks.receivers import HttpReceiver, HttpRequest, Receiver, RecordingReceiver
from sinks.topic_end import end_offsets
from streams.alerts import Alert, AlertCodec

log = logging.getLogger(__name__)


# -- HTTP -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResult:
    """One attempt: ``status`` is ``None`` for a transport error (``error`` says which)."""

    status: int | None
    retry_after: str | None = None
    error: str = ""
    body: str = ""  # the first bytes of the answer, for the log


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a 301/302/303 to a POST with a body-less GET and report the GET's 200: a lost alert
    that looks delivered. A redirect is a configuration error, answered as a (non-retried) 3xx instead."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


class UrllibSender:
    """POSTs with ``urllib``; ``timeout_s`` bounds connect and each read (a slow receiver is a retryable error)."""

    def __init__(self, timeout_s: float = 10.0, proxies: dict[str, str] | None = None) -> None:
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies or {}), _NoRedirects())

    def __call__(self, request: HttpRequest) -> HttpResult:
        req = urllib.request.Request(request.url, data=request.body, headers=dict(request.headers), method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                return HttpResult(resp.status, resp.headers.get("Retry-After"), body=_excerpt(resp.read(4096)))
        except urllib.error.HTTPError as exc:  # a non-2xx answer
            try:
                body = _excerpt(exc.read(4096))
            except Exception:
                body = ""
            finally:
                exc.close()
            return HttpResult(exc.code, exc.headers.get("Retry-After") if exc.headers else None, body=body)
        except urllib.error.URLError as exc:  # refused, DNS, ...
            return HttpResult(None, error=f"{type(exc.reason).__name__}: {exc.reason}")
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, a malformed answer
            return HttpResult(None, error=f"{type(exc).__name__}: {exc}")


def _excerpt(data: bytes, limit: int = 300) -> str:
    return data[:limit].decode("utf-8", "replace")


Sender = Callable[[HttpRequest], HttpResult]


# -- counters ---------------------------------------------------------------------------------------------------


@dataclass
class ReceiverStats:
    """Per receiver, in notifications (an /api/v2 request can carry several) and in HTTP attempts."""

    delivered: int = 0
    resends: int = 0  # of ``delivered``, periodic re-sends
    attempts: int = 0
    retries: int = 0
    gave_up: int = 0  # retries exhausted (attempts or time)
    rejected: int = 0  # a 4xx other than 408/429: not retried
    skipped: int = 0  # not tried because an earlier request of the same delivery gave up
    last_error: str = ""


@dataclass
class DispatchStats:
    """What the dispatcher saw: alerts-topic records and what became of them."""

    replayed: int = 0  # read to rebuild the state (delivered before)
    records: int = 0  # read to deliver
    transitions: int = 0  # new transitions (paged or backfill)
    promoted: int = 0
    duplicates: int = 0
    stale: int = 0
    backfill: int = 0  # transitions kept from paging receivers
    notifications: int = 0  # planned for paging receivers (transitions, not re-sends)
    resend_rounds: int = 0
    undecodable: Counter[str] = field(default_factory=Counter)
    receivers: dict[str, ReceiverStats] = field(default_factory=dict)

    def line(self) -> str:
        gave_up = sum(r.gave_up + r.skipped for r in self.receivers.values())
        rejected = sum(r.rejected for r in self.receivers.values())
        return (f"{self.records:,} records ({self.replayed:,} replayed): {self.transitions:,} transitions, "
                f"{self.duplicates:,} duplicates, {self.backfill:,} backfill not paged, "
                f"{self.notifications:,} notifications, {self.resend_rounds:,} re-send rounds, "
                f"{gave_up:,} given up, {rejected:,} rejected")


class Delivery(Enum):
    DONE = "done"  # every request delivered, given up or rejected: the offsets may be committed
    INTERRUPTED = "interrupted"  # stop was set while waiting to retry: do not commit


# -- the dispatcher ---------------------------------------------------------------------------------------------


class AlertDispatcher:
    """State, grouping, delivery and re-sends; no Kafka (the sink feeds it, tests can too).

    ``clock`` is wall time in seconds (``endsAt`` for /api/v2 and the re-send schedule); ``rng`` drives the
    backoff jitter. Not thread-safe: one caller at a time.
    """

    def __init__(self, receivers: Sequence[Receiver], *, grouper: Grouper | None = None,
                 retry: RetryPolicy | None = None, resend_interval_s: float | None = 60.0,
                 sender: Sender | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        if not receivers:
            raise ValueError("at least one receiver is needed")
        names = [r.name for r in receivers]
        if len(set(names)) != len(names):
            raise ValueError(f"receiver names must be unique: {names}")
        self.receivers = list(receivers)
        self.state = ActiveAlerts()
        self.grouper = grouper or Grouper()
        self.batcher = Batcher(self.state, self.grouper)
        self.retry = retry or RetryPolicy()
        self.resend_interval_s = resend_interval_s
        self.sender: Sender = sender or UrllibSender()
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = DispatchStats(receivers={r.name: ReceiverStats() for r in receivers})
        self.next_resend_s: float | None = None
        http = [r for r in receivers if isinstance(r, HttpReceiver)]
        self._pool = ThreadPoolExecutor(max_workers=len(http), thread_name_prefix="alert-send") if len(http) > 1 \
            else None

    # -- state --------------------------------------------------------------------------------------------------

    def replay(self, alerts: Iterable[tuple[Alert, int | None]]) -> None:
        """Fold already-delivered records into the state without sending anything."""
        for alert, partition in alerts:
            self.state.apply(alert, partition)
            self.stats.replayed += 1

    def ingest(self, alerts: Iterable[tuple[Alert, int | None]]) -> Plan:
        """Fold new records into the state; returns the notifications to deliver."""
        outcomes: list[Any] = []
        plan = self.batcher.plan(alerts, outcomes)
        for applied in outcomes:
            self.stats.records += 1
            if applied.outcome is Outcome.DUPLICATE:
                self.stats.duplicates += 1
            elif applied.outcome is Outcome.STALE:
                self.stats.stale += 1
            else:
                self.stats.transitions += 1
                self.stats.promoted += applied.outcome is Outcome.PROMOTED
                self.stats.backfill += not applied.page
        self.stats.notifications += len(plan.paging)
        return plan

    # -- delivery -----------------------------------------------------------------------------------------------

    def deliver(self, plan: Plan, stop: threading.Event | None = None) -> Delivery:
        """Send ``plan`` to every receiver that takes it; returns once each is delivered, gave up or rejected."""
        work = []
        for r in self.receivers:
            notifications = list(plan.notifications) if r.backfill else plan.paging
            if notifications:
                work.append((r, notifications))
        return self._run(work, stop or threading.Event())

    def resend_due(self) -> bool:
        return self.next_resend_s is not None and self.clock() >= self.next_resend_s

    def schedule_resends(self, first_in_s: float | None = None) -> None:
        """Start the re-send cycle: the first one ``first_in_s`` from now (default: one interval)."""
        if self.resend_interval_s is None:
            return
        self.next_resend_s = self.clock() + (self.resend_interval_s if first_in_s is None else first_in_s)

    def resend(self, stop: threading.Event | None = None) -> Delivery:
        """Re-send every open paged alert, grouped, to the receivers that take re-sends."""
        if self.resend_interval_s is not None:
            self.next_resend_s = self.clock() + self.resend_interval_s
        notifications = self.grouper.resend(self.state.paged())
        if not notifications:
            return Delivery.DONE
        self.stats.resend_rounds += 1
        work = [(r, notifications) for r in self.receivers if r.resends]
        return self._run(work, stop or threading.Event())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for r in self.receivers:
            r.close()

    def _run(self, work: list[tuple[Receiver, list[Notification]]], stop: threading.Event) -> Delivery:
        now = self.clock()
        for r, notifications in work:  # local records first: their errors must stop the sink before any commit
            if isinstance(r, RecordingReceiver):
                r.write(notifications, now)
                self._count_delivered(r.name, notifications)
        http = [(r, n) for r, n in work if isinstance(r, HttpReceiver)]
        if self._pool is not None and len(http) > 1:
            results = list(self._pool.map(lambda item: self._send_all(item[0], item[1], stop), http))
        else:
            results = [self._send_all(r, n, stop) for r, n in http]
        return Delivery.INTERRUPTED if Delivery.INTERRUPTED in results else Delivery.DONE

    def _count_delivered(self, name: str, notifications: Sequence[Notification]) -> None:
        rs = self.stats.receivers[name]
        rs.delivered += len(notifications)
        rs.resends += sum(n.reason == "resend" for n in notifications)

    def _send_all(self, receiver: HttpReceiver, notifications: list[Notification],
                  stop: threading.Event) -> Delivery:
        """One receiver's requests in order; the retry time budget covers the whole delivery."""
        rs = self.stats.receivers[receiver.name]
        requests = receiver.requests(notifications, self.clock())
        resend = all(n.reason == "resend" for n in notifications)
        started = time.monotonic()
        for i, request in enumerate(requests):
            outcome = self._send_one(receiver.name, request, rs, started, stop)
            if outcome is None:
                return Delivery.INTERRUPTED
            if outcome is Verdict.OK:
                rs.delivered += request.notifications
                rs.resends += request.notifications if resend else 0
            elif outcome is Verdict.REJECTED:
                rs.rejected += request.notifications
            else:
                rs.gave_up += request.notifications
                rest = requests[i + 1:]
                if rest:
                    skipped = sum(r.notifications for r in rest)
                    rs.skipped += skipped
                    log.error("alert receiver %s: skipping %d more notification(s) of this delivery after giving up",
                              receiver.name, skipped)
                break
        return Delivery.DONE

    def _send_one(self, name: str, request: HttpRequest, rs: ReceiverStats, started: float,
                  stop: threading.Event) -> Verdict | None:
        """OK, REJECTED, RETRY (= gave up), or ``None`` when ``stop`` interrupted a wait."""
        attempts = 0
        while True:
            result = self.sender(request)
            attempts += 1
            rs.attempts += 1
            verdict = classify_status(result.status)
            if verdict is Verdict.OK:
                return verdict
            what = f"HTTP {result.status}" if result.status is not None else result.error
            rs.last_error = what
            if verdict is Verdict.REJECTED:
                log.error("alert receiver %s rejected %s with %s (not retried): %s", name, request.label, what,
                          result.body)
                return verdict
            delay = self.retry.next_delay(attempts, time.monotonic() - started,
                                          parse_retry_after(result.retry_after, self.clock()), self.rng)
            if delay is None:
                log.error("alert receiver %s: giving up on %s after %d attempt(s), last: %s", name, request.label,
                          attempts, what)
                return verdict
            rs.retries += 1
            log.warning("alert receiver %s: %s on %s; retry %d in %.2fs", name, what, request.label, attempts, delay)
            if stop.wait(delay):
                return None


# -- the Kafka shell --------------------------------------------------------------------------------------------


@dataclass
class _Held:
    """Records read after the replay boundary, waiting for the state to be complete before delivery."""

    alerts: list[tuple[Alert, int | None]] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.alerts.clear()
        self.offsets.clear()


class AlertSink:
    """Consumes ``topic`` in group ``group_id`` into ``dispatcher``. Single-threaded; call :meth:`run`."""

    def __init__(self, bootstrap_servers: str, topic: str, dispatcher: AlertDispatcher, *,
                 group_id: str = "agentwatch-alert-delivery", codec: AlertCodec | None = None,
                 new_group_start: str = "latest", resend_on_start: bool = True, batch_size: int = 500,
                 poll_timeout_s: float = 0.2, consumer_config: dict[str, Any] | None = None) -> None:
        if new_group_start not in ("latest", "earliest"):
            raise ValueError("new_group_start is 'latest' or 'earliest'")
        self.topic = topic
        self.dispatcher = dispatcher
        self.codec = codec or AlertCodec()
        self.new_group_start = new_group_start
        self.resend_on_start = resend_on_start
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.commits = 0
        self.commit_failures = 0
        # deliveries block the poll loop for at most the retry budget (RetryPolicy.max_elapsed_s) per batch
        self._config = sink_consumer_config(bootstrap_servers, group_id, max_poll_interval_ms=600_000,
                                            extra=consumer_config)
        self._replay_until: dict[int, int] = {}
        self._replaying: set[int] = set()
        self._assigned: set[int] = set()
        self._ready = False
        self._held = _Held()
        self._closing = False
        self._uncommitted: set[int] = set()  # assigned partitions the group has no offset for yet

    @property
    def ready(self) -> bool:
        """True once the state is rebuilt for every assigned partition."""
        return self._ready

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=10)
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=10)
            if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                until = tp.offset
            else:
                until = high if self.new_group_start == "latest" else low
                self._uncommitted.add(tp.partition)
            self._replay_until[tp.partition] = until
            self._assigned.add(tp.partition)
            if until > low:
                self._replaying.add(tp.partition)
            log.info("alert sink: partition %d: rebuilding state from offsets %d..%d, delivering from %d",
                     tp.partition, low, until, until)
        consumer.assign([TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
        self._ready = False

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [tp.partition for tp in partitions]
        dropped = 0 if self._closing else self.dispatcher.state.drop_partitions(gone)
        self._held.alerts[:] = [(a, p) for a, p in self._held.alerts if p not in gone]
        for p in gone:
            self._held.offsets.pop(p, None)
            self._replay_until.pop(p, None)
            self._replaying.discard(p)
            self._assigned.discard(p)
            self._uncommitted.discard(p)
        if dropped:
            log.info("alert sink: partitions %s revoked; forgot %d open alert(s)", gone, dropped)

    def run(self, *, stop: threading.Event | None = None, until_end: bool = False,
            idle_timeout_s: float | None = None, on_progress: Callable[[DispatchStats], None] | None = None,
            before_commit: Callable[[list[TopicPartition]], None] | None = None) -> DispatchStats:
        """Consume until ``stop`` is set, or (``until_end``) everything present at start is delivered, or
        nothing arrives for ``idle_timeout_s``. ``before_commit`` is a test hook between delivery and commit.
        Receivers are not closed (the caller owns the dispatcher)."""
        stop = stop or threading.Event()
        consumer = Consumer(self._config)
        held = self._held
        held.clear()
        self._replay_until.clear()
        self._replaying.clear()
        self._assigned.clear()
        self._uncommitted.clear()
        self._ready = False
        try:
            consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            ends = ({p: high for p, (_low, high) in end_offsets(consumer, self.topic).items()}
                    if until_end else None)
            last_data = last_progress = time.monotonic()
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, timeout=self.poll_timeout_s)
                replay: list[tuple[Alert, int | None]] = []
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("alert sink: consume error %s", err)
                        continue
                    last_data = time.monotonic()
                    p, offset = msg.partition(), msg.offset()
                    live = offset >= self._replay_until.get(p, 0)
                    if live:
                        held.offsets[p] = offset + 1
                    try:
                        alert = self.codec.decode(msg.value())
                    except DecodeError as exc:
                        if live:
                            self.dispatcher.stats.undecodable[exc.reason] += 1
                            log.warning("alert sink: undecodable record at %s[%d]@%d: %s", self.topic, p, offset,
                                        exc)
                        continue
                    (held.alerts if live else replay).append((alert, p))
                if replay:
                    self.dispatcher.replay(replay)
                if not self._ready and self._check_replayed(consumer):
                    if self._uncommitted:
                        # a new group: pin where delivery starts, or a crash before the first commit would make
                        # the next start treat the records delivered meanwhile as history (and skip them)
                        self._commit(consumer, [TopicPartition(self.topic, p, self._replay_until[p])
                                                for p in sorted(self._uncommitted)])
                        self._uncommitted.clear()
                    # the rebuilt open set first (an Alertmanager may have expired it while the sink was down),
                    # then the re-send cycle, then what arrived since the last commit
                    if self.resend_on_start and self.dispatcher.resend(stop) is Delivery.INTERRUPTED:
                        break
                    if self.dispatcher.next_resend_s is None:
                        self.dispatcher.schedule_resends()
                if self._ready and held.offsets:
                    plan = self.dispatcher.ingest(held.alerts)
                    if plan and self.dispatcher.deliver(plan, stop) is Delivery.INTERRUPTED:
                        break  # not delivered: not committed, re-read after a restart
                    commit = [TopicPartition(self.topic, p, o) for p, o in sorted(held.offsets.items())]
                    if before_commit is not None:
                        before_commit(commit)
                    self._commit(consumer, commit)
                    held.clear()
                if self._ready and self.dispatcher.resend_due():
                    if self.dispatcher.resend(stop) is Delivery.INTERRUPTED:
                        break
                if on_progress is not None and time.monotonic() - last_progress >= 1.0:
                    last_progress = time.monotonic()
                    on_progress(self.dispatcher.stats)
                if ends is not None and self._ready and not held.offsets and self._reached(consumer, ends):
                    break
                if idle_timeout_s is not None and time.monotonic() - last_data >= idle_timeout_s:
                    break
        finally:
            self._closing = True  # the revoke that close() triggers keeps the state (inspectable after run())
            try:
                consumer.close()
            finally:
                self._closing = False
        return self.dispatcher.stats

    def _check_replayed(self, consumer: Consumer) -> bool:
        """Mark the state ready once every assigned partition is read up to its replay boundary; True if it
        just became ready."""
        if not self._assigned:
            return False
        if self._replaying:
            positions = consumer.position([TopicPartition(self.topic, p) for p in self._replaying])
            for tp in positions:
                if tp.offset >= 0 and tp.offset >= self._replay_until.get(tp.partition, 0):
                    self._replaying.discard(tp.partition)
        if self._replaying:
            return False
        self._ready = True
        log.info("alert sink: state rebuilt, %d open alert(s)", len(self.dispatcher.state))
        return True

    def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            self.commits += 1
        except KafkaException as exc:
            # The partitions moved to another instance, which re-reads from the last commit: at worst a re-send.
            self.commit_failures += 1
            log.warning("alert sink: offset commit failed (%s); the batch may be delivered again", exc)

    def _reached(self, consumer: Consumer, ends: dict[int, int]) -> bool:
        if not self._assigned:
            return False
        positions = consumer.position([TopicPartition(self.topic, p) for p in self._assigned])
        pos = {tp.partition: tp.offset for tp in positions}
        return all(pos.get(p, -1) >= end or end == 0 for p, end in ends.items() if p in self._assigned)
