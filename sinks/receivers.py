"""Where alert notifications go: an Alertmanager webhook (v4), an Alertmanager's ``/api/v2/alerts``, a JSONL file,
the console.

HTTP receivers only *render* requests (:meth:`HttpReceiver.requests`); sending, retrying and counting is the
sink's job (:mod:`sinks.alert_sink`), so every HTTP receiver gets the same retry and ordering rules. Recording
receivers write directly; a write error (disk full) propagates, so the sink stops before committing the offsets.

Which notifications a receiver gets:

* ``backfill``: also the notifications of backfill alerts (never for paging receivers: webhook, Alertmanager);
* ``resends``: also the periodic re-sends of still-open alerts (Alertmanager needs them; a JSONL record of the
  transitions usually does not).
"""

from __future__ import annotations

import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sinks.alert_delivery import Notification, postable, utc_iso

USER_AGENT = "agentwatch-alerts/0.1"
REASON_HEADER = "X-Agentwatch-Reason"  # "transition" or "resend": lets a receiver (and the tests) tell them apart
API_V2_ALERTS = "/api/v2/alerts"


@dataclass(frozen=True)
class HttpRequest:
    """One POST to make; ``notifications`` counts the notifications it carries (for the counters)."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    notifications: int = 1
    label: str = ""  # what it is, for log lines


class Receiver(ABC):
    """A named destination; see the module docstring for ``backfill`` and ``resends``."""

    name: str
    backfill: bool = False
    resends: bool = True

    def close(self) -> None:  # noqa: B027 - most receivers hold nothing
        """Release what the receiver holds (files)."""


class HttpReceiver(Receiver):
    """A receiver reached over HTTP; the sink sends its requests in order, with retries."""

    @abstractmethod
    def requests(self, notifications: Sequence[Notification], now_s: float) -> list[HttpRequest]:
        """The POSTs that deliver ``notifications``, in the order they must arrive."""


class RecordingReceiver(Receiver):
    """A local record of notifications (no retries: a failed write stops the sink)."""

    @abstractmethod
    def write(self, notifications: Sequence[Notification], now_s: float) -> None:
        """Record ``notifications``; durable enough to commit the offsets when this returns."""


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _headers(reason: str, extra: Mapping[str, str]) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT, REASON_HEADER: reason, **extra}


class WebhookReceiver(HttpReceiver):
    """Posts each notification as an Alertmanager webhook payload, version 4, like a ``<webhook_config>``.

    ``max_alerts`` > 0 truncates a notification's alerts (``truncatedAlerts`` says how many were left out);
    ``headers`` adds e.g. an ``Authorization`` header.
    """

    def __init__(self, url: str, name: str = "webhook", *, external_url: str = "", max_alerts: int = 0,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.name = name
        self.external_url = external_url
        self.max_alerts = max_alerts
        self.extra_headers = dict(headers or {})

    def requests(self, notifications: Sequence[Notification], now_s: float) -> list[HttpRequest]:
        out = []
        for n in notifications:
            payload = n.webhook_payload(self.name, external_url=self.external_url, max_alerts=self.max_alerts)
            out.append(HttpRequest(self.url, _json_bytes(payload), _headers(n.reason, self.extra_headers), 1,
                                   f"{n.reason} {n.status} {n.group_key}"))
        return out

    def __repr__(self) -> str:
        return f"WebhookReceiver({self.name!r}, {self.url!r})"


class AlertmanagerReceiver(HttpReceiver):
    """Pushes alerts to an Alertmanager's ``POST /api/v2/alerts`` (a JSON array of postable alerts).

    Alertmanager does its own grouping, so the notifications are flattened into as few requests as keep each
    alert's transitions in order (an alert that fired and resolved in one batch goes out in two requests).
    Firing alerts carry ``endsAt = now + valid_for_s`` (set it to a few re-send intervals, as Prometheus sends
    4 x its resend delay), resolved ones their ``endsAt`` in the past: see :func:`sinks.alert_delivery.postable`.
    """

    def __init__(self, base_url: str, name: str = "alertmanager", *, valid_for_s: float = 240.0,
                 headers: Mapping[str, str] | None = None) -> None:
        base = base_url.rstrip("/")
        self.url = base if base.endswith(API_V2_ALERTS) else base + API_V2_ALERTS
        self.name = name
        self.valid_for_us = int(valid_for_s * 1_000_000)
        self.extra_headers = dict(headers or {})

    def requests(self, notifications: Sequence[Notification], now_s: float) -> list[HttpRequest]:
        now_us = int(now_s * 1_000_000)
        out: list[HttpRequest] = []
        chunk: dict[str, dict[str, Any]] = {}
        count = 0
        reasons: set[str] = set()

        def flush() -> None:
            nonlocal chunk, count, reasons
            if chunk:
                reason = "resend" if reasons == {"resend"} else "transition"
                out.append(HttpRequest(self.url, _json_bytes(list(chunk.values())),
                                       _headers(reason, self.extra_headers), count,
                                       f"{reason} {len(chunk)} alert(s)"))
            chunk, count, reasons = {}, 0, set()

        for n in notifications:
            items = {a.fingerprint: postable(a, now_us, self.valid_for_us) for a in n.alerts}
            if chunk.keys() & items.keys():
                flush()
            chunk.update(items)
            count += 1
            reasons.add(n.reason)
        flush()
        return out

    def __repr__(self) -> str:
        return f"AlertmanagerReceiver({self.name!r}, {self.url!r})"


class JsonlReceiver(RecordingReceiver):
    """Appends one JSON line per notification: the v4 webhook payload plus ``at`` (wall time), ``reason`` and
    ``backfill``; each alert also carries its ``backfill`` flag. Records backfill notifications by default.

    Each :meth:`write` is flushed and (``fsync``) synced before it returns, so a committed offset never points
    past a line that a crash could lose.
    """

    def __init__(self, path: Path | str, name: str = "jsonl", *, backfill: bool = True, resends: bool = False,
                 external_url: str = "", fsync: bool = True) -> None:
        self.path = Path(path)
        self.name = name
        self.backfill = backfill
        self.resends = resends
        self.external_url = external_url
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None

    def line(self, n: Notification, now_s: float) -> dict[str, Any]:
        payload = n.webhook_payload(self.name, external_url=self.external_url)
        for item, alert in zip(payload["alerts"], n.alerts, strict=True):
            item["backfill"] = alert.backfill
        return {"at": utc_iso(now_s), "reason": n.reason, "backfill": n.backfill, **payload}

    def write(self, notifications: Sequence[Notification], now_s: float) -> None:
        if not notifications:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # kept open across writes
        text = "".join(json.dumps(self.line(n, now_s), ensure_ascii=False) + "\n" for n in notifications)
        self._file.write(text)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ConsoleReceiver(RecordingReceiver):
    """One human line per notification, e.g.
    ``[FIRING] ToolFailureRateHigh tenant=acme: 2 alert(s): Tool failure rate 23.0% > 10%; ...``."""

    def __init__(self, stream: IO[str] | None = None, name: str = "console", *, backfill: bool = False,
                 resends: bool = False) -> None:
        self.stream = stream
        self.name = name
        self.backfill = backfill
        self.resends = resends

    @staticmethod
    def render(n: Notification, now_s: float) -> str:
        tags = [n.status.upper()] + (["BACKFILL"] if n.backfill else []) + (["resend"] if n.reason == "resend"
                                                                            else [])
        group = " ".join(f"{k}={v}" for k, v in n.group_labels.items())
        details = []
        for a in n.alerts:
            extra = " ".join(f"{k}={v}" for k, v in sorted(a.labels.items()) if k not in n.group_labels)
            summary = a.annotations.get("summary", "")
            text = f"{a.status}" + (f" {extra}" if extra else "") + (f" {summary}" if summary else "")
            details.append(text)
        return f"{utc_iso(now_s)} [{' '.join(tags)}] {group}: {len(n.alerts)} alert(s): " + "; ".join(details)

    def write(self, notifications: Sequence[Notification], now_s: float) -> None:
        stream = self.stream or sys.stdout
        for n in notifications:
            print(self.render(n, now_s), file=stream)
        stream.flush()
