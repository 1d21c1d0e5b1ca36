"""librdkafka's log through Python logging, and every repeated log line throttled and summarised.

Without a ``logger`` in its configuration, librdkafka writes each of its lines straight to stderr: a client that
cannot reach its broker prints a ``FAIL ... Connection refused`` line per broker per reconnect attempt (about 37 a
second from one command in the field), with nothing at agentwatch's level to say what is wrong. Every Kafka consumer
agentwatch's commands create gets :func:`client_logger` instead (``with_logger(config)``), so those lines become
ordinary records of the logger ``agentwatch.librdkafka``; their AdminClients log nothing (:func:`quiet_admin`).

The CLI puts a :class:`ThrottleFilter` on its log handler: per kind of message (logger name plus the message with
its numbers blanked, for librdkafka its facility and text) the first ``burst`` records of each ``interval_s`` pass,
the rest are counted, and the next one that passes says how many were held back. A command cut off from Kafka thus
logs a handful of lines a minute, each stating how many like it it stands for; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Hashable
from typing import Any

LIBRDKAFKA_LOGGER = "agentwatch.librdkafka"

_NUMBERS = re.compile(r"\d+")


class Throttle:
    """Per key, at most ``burst`` admissions per ``interval_s``; the rest are counted against the key.

    Pure logic (the clock is injected), so the counting is property-tested: admitted + suppressed = offered.
    """

    def __init__(self, burst: int = 3, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        if burst < 1 or interval_s <= 0:
            raise ValueError("burst must be >= 1 and interval_s > 0")
        self.burst = burst
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._state: dict[Hashable, list[float]] = {}  # key -> [interval start, admitted in it, suppressed since]

    def admit(self, key: Hashable) -> tuple[bool, int]:
        """``(passes, held_back)``: whether this occurrence passes, and (when it does) how many occurrences of the
        key were held back since the last one that passed, for the caller to report."""
        now = self.clock()
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= self.max_keys:  # unbounded distinct messages: forget the oldest interval
                self._state.pop(next(iter(self._state)))
            state = self._state[key] = [now, 0, 0]
        if now - state[0] >= self.interval_s:
            state[0], state[1] = now, 0
        if state[1] < self.burst:
            state[1] += 1
            held, state[2] = int(state[2]), 0
            return True, held
        state[2] += 1
        return False, 0


def message_key(record: logging.LogRecord) -> Hashable:
    """What makes two records "the same message": the logger, and the text with its numbers blanked (offsets, ports,
    milliseconds differ between repeats); for librdkafka records, the facility and the text after the client name."""
    if record.name == LIBRDKAFKA_LOGGER and isinstance(record.args, tuple) and len(record.args) == 3:
        facility, _client, text = record.args
        return record.name, str(facility), _NUMBERS.sub("#", str(text))
    if record.args:
        return record.name, str(record.msg)
    return record.name, _NUMBERS.sub("#", str(record.msg))


class ThrottleFilter(logging.Filter):
    """A handler filter applying a :class:`Throttle` keyed by :func:`message_key` to WARNING and above (DEBUG and
    INFO are rare and wanted when asked for with ``-v``); a record that passes after others were held back carries
    ``(N similar messages held back)``."""

    def __init__(self, throttle: Throttle | None = None, min_level: int = logging.WARNING) -> None:
        super().__init__()
        self.throttle = throttle or Throttle()
        self.min_level = min_level
        self.held_back = 0  # total, for tests and a final summary

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        passes, held = self.throttle.admit(message_key(record))
        if not passes:
            self.held_back += 1
            return False
        if held:
            record.msg = f"{record.getMessage()} ({held} similar message{'s' if held != 1 else ''} held back)"
            record.args = ()  # not None: Faust's (mode's) formatter makes None (None,), and formatting then fails
        return True


def client_logger() -> logging.Logger:
    """The logger librdkafka's lines go to (pass it as the client configuration's ``logger``)."""
    return logging.getLogger(LIBRDKAFKA_LOGGER)


def with_logger(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config`` plus ``logger``: a Kafka client configured with it logs through Python logging, not to stderr."""
    return {**(config or {}), "logger": client_logger()}


def quiet_admin(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AdminClient configuration that logs nothing (``log_level`` 0): the callers report its failures
    themselves (raised errors, ``agentwatch_kafka_connected``). AdminClients do not get ``logger``: their log lines
    are only delivered on ``poll()``, which nothing calls, and with it the self-monitoring probe's AdminClient
    crashed the process in librdkafka's main thread (SIGSEGV, 3 times in ~7 runs of tests/test_kafka_outage.py)."""
    return {**(config or {}), "log_level": 0}


def install(verbose: bool = False) -> ThrottleFilter:
    """Throttle the root logger's plain stream handlers, the one ``logging.basicConfig`` makes (the CLI calls it
    after that; handlers of embedding code or of a test harness are left alone), once. librdkafka's INFO lines
    (connection chatter) are shown only with ``-v``."""
    client_logger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # noqa: E721 (subclasses belong to someone else)
            existing = [f for f in handler.filters if isinstance(f, ThrottleFilter)]
            if existing:
                return existing[0]
            flt = ThrottleFilter()
            handler.addFilter(flt)
            return flt
    return ThrottleFilter()
