"""The log throttle (agentwatch.kafka_log): nothing is dropped silently, repeats are summarised, and librdkafka's
lines arrive as Python log records instead of raw stderr."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from agentwatch.kafka_log import LIBRDKAFKA_LOGGER, Throttle, ThrottleFilter, message_key, with_logger


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(min_value=0, max_value=30)), max_size=200),
       st.integers(min_value=1, max_value=5))
def test_every_occurrence_is_either_shown_or_counted_in_a_later_summary(events, burst):
    clock = FakeClock()
    throttle = Throttle(burst=burst, interval_s=60.0, clock=clock)
    shown: dict[str, int] = {}
    reported: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    for key, step in events:
        clock.now += step
        passes, held = throttle.admit(key)
        if passes:
            shown[key] = shown.get(key, 0) + 1
            reported[key] = reported.get(key, 0) + held
        else:
            suppressed[key] = suppressed.get(key, 0) + 1
    for key in "abc":
        offered = sum(1 for k, _ in events if k == key)
        assert shown.get(key, 0) + suppressed.get(key, 0) == offered
        # what a later shown line reported never exceeds what was held back
        assert reported.get(key, 0) <= suppressed.get(key, 0)


@given(st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=300))
def test_at_most_burst_per_interval(burst, n):
    clock = FakeClock()
    throttle = Throttle(burst=burst, interval_s=60.0, clock=clock)
    passed = sum(throttle.admit("k")[0] for _ in range(n))  # all at the same instant
    assert passed == min(n, burst)
    clock.now = 61.0
    passes, held = throttle.admit("k")
    assert passes and held == max(n - burst, 0)


def _record(name: str, msg: str, args: tuple | None = None, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_librdkafka_records_are_keyed_by_facility_and_text_without_numbers():
    a = _record(LIBRDKAFKA_LOGGER, "%s [%s] %s", ("FAIL", "rdkafka#consumer-1",
                                                  "127.0.0.1:1/bootstrap: Connect failed (after 0ms)"))
    b = _record(LIBRDKAFKA_LOGGER, "%s [%s] %s", ("FAIL", "rdkafka#consumer-2",
                                                  "127.0.0.1:1/bootstrap: Connect failed (after 13ms)"))
    c = _record(LIBRDKAFKA_LOGGER, "%s [%s] %s", ("REQTMOUT", "rdkafka#consumer-1", "timed out"))
    assert message_key(a) == message_key(b) != message_key(c)
    template = "consume error %s"
    assert message_key(_record("x", template, ("A",))) == message_key(_record("x", template, ("B",)))


def test_the_filter_holds_back_repeats_and_says_how_many_when_one_passes_again():
    clock = FakeClock()
    flt = ThrottleFilter(Throttle(burst=2, interval_s=60.0, clock=clock))
    out = [flt.filter(_record("sink", "consume error %s", (f"#{i}",))) for i in range(10)]
    assert out == [True, True] + [False] * 8 and flt.held_back == 8
    clock.now = 60.0
    rec = _record("sink", "consume error %s", ("#10",))
    assert flt.filter(rec)
    assert rec.getMessage() == "consume error #10 (8 similar messages held back)"
    assert flt.filter(_record("sink", "info line", level=logging.INFO))  # below WARNING: never throttled


def test_client_configs_get_the_python_logger():
    config = with_logger({"bootstrap.servers": "x:1"})
    assert config["logger"].name == LIBRDKAFKA_LOGGER and config["bootstrap.servers"] == "x:1"
