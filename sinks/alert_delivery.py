"""Alert delivery, the pure part: the active-alert set, grouping into Alertmanager notifications, retry schedule.

No I/O here: :mod:`sinks.alert_sink` feeds decoded :class:`~streams.alerts.Alert` transitions in and sends what
comes out through the receivers of :mod:`sinks.receivers`.

* :class:`ActiveAlerts` is the state: the open (firing) alerts keyed by fingerprint, plus every transition key
  seen, so a transition the detector produced twice (a window re-evaluated after a crash) is delivered once. It is
  rebuilt on start by re-reading the alerts topic from the beginning (the topic is small: one record per
  transition, 90 days), which is why it needs no store of its own.
* :class:`Grouper` turns transitions into notifications the way an Alertmanager route with
  ``group_by: [alertname, tenant]`` does: one notification per group, carrying every alert of the group that is
  still firing plus the ones that just resolved; ``status`` is ``firing`` while any alert of the group fires.
  Transitions of the same alert in one batch (fired and resolved between two polls) go out as consecutive
  notifications, in order, instead of collapsing.
* :class:`RetryPolicy` is the backoff schedule (exponential, jittered, ``Retry-After`` honoured, bounded in
  attempts and in total time) and :func:`classify_status` which HTTP answers deserve a retry.

Backfill alerts (computed while reading history) never page: they change the state like any other (the live
detector continues where the backfill left off) but go only to recording receivers, and the resolution of an
alert whose firing was never paged is not paged either.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, Literal

from streams.alerts import FIRING, RESOLVED, Alert, rfc3339

WEBHOOK_VERSION = "4"
DEFAULT_GROUP_BY: tuple[str, ...] = ("alertname", "tenant")
ROOT_ROUTE_KEY = "{}"  # Alertmanager's key of the root route; child routes append "/{matchers}"

Reason = Literal["transition", "resend"]


# -- the active set ---------------------------------------------------------------------------------------------


class Outcome(Enum):
    """What :meth:`ActiveAlerts.apply` made of one record."""

    NEW = "new"  # a transition not seen before: deliver it
    PROMOTED = "promoted"  # a live copy of a firing first seen as backfill, still open: page it now
    DUPLICATE = "duplicate"  # the same transition again (at-least-once upstream): drop
    STALE = "stale"  # older than what the state already holds (e.g. a resolved for a previous run): drop


@dataclass(slots=True)
class Applied:
    """The outcome for one record and whether paging receivers get it (``False`` for backfill)."""

    outcome: Outcome
    page: bool

    @property
    def deliver(self) -> bool:
        return self.outcome in (Outcome.NEW, Outcome.PROMOTED)


@dataclass(slots=True)
class ActiveEntry:
    """One open alert: its firing record, the partition it came from, and whether its firing paged."""

    alert: Alert
    partition: int | None
    paged: bool


class ActiveAlerts:
    """The open alerts by fingerprint, and the transition keys already seen (a dedup set).

    The dedup set holds every transition key read since start; it is bounded by the alerts topic (one record per
    transition, retention 90 days), which the sink re-reads on every start anyway.
    """

    def __init__(self) -> None:
        self._active: dict[str, ActiveEntry] = {}
        self._seen: dict[str, bool] = {}  # transition key -> whether that transition paged

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, fp: object) -> bool:
        return fp in self._active

    def get(self, fp: str) -> ActiveEntry | None:
        return self._active.get(fp)

    def entries(self) -> Iterator[ActiveEntry]:
        return iter(list(self._active.values()))

    def paged(self) -> list[Alert]:
        """The open alerts paging receivers know about (what periodic re-sends repeat)."""
        return [e.alert for e in self._active.values() if e.paged]

    def apply(self, alert: Alert, partition: int | None = None) -> Applied:
        """Fold one alerts-topic record into the state and say whether (and to whom) to deliver it."""
        key = alert.transition_key()
        live = not alert.backfill
        entry = self._active.get(alert.fingerprint)
        if key in self._seen:
            # The same transition again. One case is news: a firing first seen as backfill now arrives live
            # while still open (a detector re-announcing an alert that outlived the backfill): page it now.
            if (alert.status == FIRING and live and not self._seen[key] and entry is not None
                    and not entry.paged and entry.alert.starts_at_us == alert.starts_at_us):
                entry.paged = True
                entry.alert = alert
                self._seen[key] = True
                return Applied(Outcome.PROMOTED, True)
            return Applied(Outcome.DUPLICATE, False)
        if alert.status == FIRING:
            if entry is not None and alert.starts_at_us < entry.alert.starts_at_us:
                return Applied(Outcome.STALE, False)
            # A newer firing over an open one means the resolution was lost upstream: the new run replaces it.
            self._active[alert.fingerprint] = ActiveEntry(alert, partition, live)
            self._seen[key] = live
            return Applied(Outcome.NEW, live)
        if entry is not None and alert.starts_at_us < entry.alert.starts_at_us:
            return Applied(Outcome.STALE, False)
        # A resolution pages only if its firing paged; with no open entry (its firing is older than the topic's
        # retention) it pages, since an extra "resolved" is harmless and a missing one leaves an alert open.
        page = live and (entry is None or entry.paged)
        self._active.pop(alert.fingerprint, None)
        self._seen[key] = page
        return Applied(Outcome.NEW, page)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the open alerts read from partitions this instance no longer owns; returns how many."""
        gone = set(partitions)
        drop = [fp for fp, e in self._active.items() if e.partition in gone]
        for fp in drop:
            del self._active[fp]
        return len(drop)


# -- notifications ----------------------------------------------------------------------------------------------


def go_quote(text: str) -> str:
    """``text`` as Go's ``strconv.Quote`` writes it: how Alertmanager quotes label values inside a groupKey."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def label_set_string(labels: Mapping[str, str]) -> str:
    """Prometheus' ``LabelSet.String()``: ``{a="1", b="2"}``, sorted by name."""
    return "{" + ", ".join(f"{name}={go_quote(labels[name])}" for name in sorted(labels)) + "}"


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every map has with the same value (Alertmanager's commonLabels / commonAnnotations)."""
    if not maps:
        return {}
    first, rest = maps[0], maps[1:]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


@dataclass(frozen=True, slots=True)
class Notification:
    """One group's notification, receiver-agnostic; :meth:`webhook_payload` renders it for one receiver.

    ``reason`` says why it is sent: a ``transition`` (something fired or resolved) or a periodic ``resend`` of
    what is still open. ``backfill`` notifications carry only backfill alerts and go only to recording receivers.
    """

    group_key: str
    group_labels: dict[str, str]
    alerts: tuple[Alert, ...]
    reason: Reason = "transition"
    backfill: bool = False

    @property
    def status(self) -> str:
        return FIRING if any(a.status == FIRING for a in self.alerts) else RESOLVED

    def webhook_payload(self, receiver: str, *, external_url: str = "", max_alerts: int = 0) -> dict[str, Any]:
        """The Alertmanager webhook body, version 4; ``max_alerts`` > 0 truncates ``alerts`` like Alertmanager's
        ``max_alerts`` (the common labels are computed over all alerts, as Alertmanager does)."""
        alerts = list(self.alerts)
        shown = alerts[:max_alerts] if max_alerts > 0 else alerts
        return {
            "version": WEBHOOK_VERSION,
            "groupKey": self.group_key,
            "truncatedAlerts": len(alerts) - len(shown),
            "status": self.status,
            "receiver": receiver,
            "groupLabels": dict(self.group_labels),
            "commonLabels": _common([a.labels for a in alerts]),
            "commonAnnotations": _common([a.annotations for a in alerts]),
            "externalURL": external_url,
            "alerts": [a.as_webhook() for a in shown],
        }


def _order(alert: Alert) -> tuple[int, int, str]:
    return (0 if alert.status == FIRING else 1, alert.starts_at_us, alert.fingerprint)


class Grouper:
    """Alertmanager's grouping for one route: ``group_by`` labels, ``groupKey`` = route key + group labels."""

    def __init__(self, group_by: Sequence[str] = DEFAULT_GROUP_BY, route_key: str = ROOT_ROUTE_KEY) -> None:
        self.group_by = tuple(group_by)
        self.route_key = route_key

    def group_labels(self, alert: Alert) -> dict[str, str]:
        return {name: alert.labels[name] for name in self.group_by if name in alert.labels}

    def group_key(self, alert: Alert) -> str:
        return f"{self.route_key}:{label_set_string(self.group_labels(alert))}"

    def resend(self, alerts: Iterable[Alert]) -> list[Notification]:
        """One ``resend`` notification per group of still-firing alerts."""
        groups: dict[str, list[Alert]] = {}
        for alert in alerts:
            groups.setdefault(self.group_key(alert), []).append(alert)
        return [Notification(key, self.group_labels(members[0]), tuple(sorted(members, key=_order)), "resend")
                for key, members in sorted(groups.items())]


@dataclass
class Plan:
    """What one batch of alerts-topic records asks to send, in topic order: paging notifications go to every
    receiver, backfill ones (``Notification.backfill``) only to recording receivers."""

    notifications: list[Notification] = field(default_factory=list)

    @property
    def paging(self) -> list[Notification]:
        return [n for n in self.notifications if not n.backfill]

    @property
    def backfill(self) -> list[Notification]:
        return [n for n in self.notifications if n.backfill]

    def __bool__(self) -> bool:
        return bool(self.notifications)


class _Round:
    """Transitions of one round: at most one per alert, so grouping them cannot reorder an alert's history."""

    def __init__(self) -> None:
        self.fingerprints: set[str] = set()
        self.groups: dict[tuple[str, bool], list[Alert]] = {}  # (group key, backfill) -> transitions, in order


class Batcher:
    """Applies a batch of records to :class:`ActiveAlerts` and groups what is new into notifications."""

    def __init__(self, state: ActiveAlerts, grouper: Grouper) -> None:
        self.state = state
        self.grouper = grouper

    def plan(self, records: Iterable[tuple[Alert, int | None]], outcomes: list[Applied] | None = None) -> Plan:
        """``records`` are (alert, partition) in topic order; ``outcomes`` (optional) receives one
        :class:`Applied` per record for the caller's counters."""
        plan = Plan()
        current = _Round()
        for alert, partition in records:
            if alert.fingerprint in current.fingerprints:
                self._flush(current, plan)
                current = _Round()
            applied = self.state.apply(alert, partition)
            if outcomes is not None:
                outcomes.append(applied)
            if not applied.deliver:
                continue
            current.fingerprints.add(alert.fingerprint)
            current.groups.setdefault((self.grouper.group_key(alert), not applied.page), []).append(alert)
        self._flush(current, plan)
        return plan

    def _flush(self, rnd: _Round, plan: Plan) -> None:
        paging_keys = {key for key, backfill in rnd.groups if not backfill}
        open_by_group: dict[str, list[Alert]] = {}
        if paging_keys:
            for alert in self.state.paged():
                key = self.grouper.group_key(alert)
                if key in paging_keys:
                    open_by_group.setdefault(key, []).append(alert)
        for (key, backfill), changed in rnd.groups.items():
            if backfill:
                alerts = tuple(sorted(changed, key=_order))
            else:
                members = {a.fingerprint: a for a in open_by_group.get(key, [])}
                for alert in changed:  # the resolved ones are no longer open; a promoted firing is already there
                    members.setdefault(alert.fingerprint, alert)
                alerts = tuple(sorted(members.values(), key=_order))
            plan.notifications.append(Notification(key, self.grouper.group_labels(changed[0]), alerts,
                                                   backfill=backfill))


# -- /api/v2/alerts ---------------------------------------------------------------------------------------------


def postable(alert: Alert, now_us: int, valid_for_us: int) -> dict[str, Any]:
    """The ``POST /api/v2/alerts`` item for ``alert`` as of ``now_us``.

    A firing alert gets ``endsAt = now + valid_for`` (Prometheus sends ``now + 4 x resend interval``):
    Alertmanager resolves an alert whose ``endsAt`` passes, so the continuous re-sends keep it open and a sink
    that dies lets it resolve instead of firing forever. A resolved alert keeps its own ``endsAt`` (event time of
    the resolving window) but never one later than now, which would keep it firing in Alertmanager.
    """
    body = alert.as_postable()
    if alert.status == FIRING:
        body["endsAt"] = rfc3339(now_us + valid_for_us)
    else:
        ends = alert.ends_at_us if alert.ends_at_us is not None else now_us
        body["endsAt"] = rfc3339(min(ends, now_us))
    return body


# -- retries ----------------------------------------------------------------------------------------------------


class Verdict(Enum):
    """What to do after one HTTP attempt."""

    OK = "ok"
    RETRY = "retry"  # connection error, timeout, 408, 429, 5xx
    REJECTED = "rejected"  # any other answer: the receiver will not take it, retrying cannot help


def classify_status(status: int | None) -> Verdict:
    """``None`` is a transport error (refused, reset, timed out)."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 429) or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.REJECTED


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by total time.

    The n-th retry waits ``min(max_backoff, base * factor**(n-1))`` scaled by a random factor in
    ``[1 - jitter, 1]`` (jitter spreads the retries of many sinks hitting one recovering receiver). A
    ``Retry-After`` from the receiver replaces the computed wait, capped at ``max_retry_after_s``. The sink polls
    Kafka between batches only, so ``max_elapsed_s`` must stay well under the consumer's ``max.poll.interval.ms``.
    """

    max_attempts: int = 8
    base_s: float = 0.5
    factor: float = 2.0
    max_backoff_s: float = 30.0
    jitter: float = 0.5
    max_retry_after_s: float = 60.0
    max_elapsed_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 = the first retry), without a ``Retry-After``."""
        raw = min(self.max_backoff_s, self.base_s * self.factor ** (retry - 1))
        u = (rng or random).random()
        return raw * (1.0 - self.jitter * u)

    def next_delay(self, attempts: int, elapsed_s: float, retry_after_s: float | None = None,
                   rng: random.Random | None = None) -> float | None:
        """The wait before the next attempt after ``attempts`` failed ones, or ``None``: give up."""
        if attempts >= self.max_attempts:
            return None
        if retry_after_s is not None:
            delay = min(max(retry_after_s, 0.0), self.max_retry_after_s)
        else:
            delay = self.backoff(attempts, rng)
        if elapsed_s + delay > self.max_elapsed_s:
            return None
        return delay


# -- helpers for the receivers ----------------------------------------------------------------------------------


def utc_iso(now_s: float) -> str:
    """Wall time as RFC 3339 UTC (milliseconds), for local records."""
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
