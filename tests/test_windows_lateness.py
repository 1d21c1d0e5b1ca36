"""Allowed lateness (deltas of closed windows, expiry, late events handed back) and event-id dedup in the engine.

The property test is the contract in one sentence: whatever the arrival order, as long as every event arrives
within the allowed lateness, the first emission of every (key, window) plus its deltas hold exactly the events of
that window, each once, even when records are delivered twice; and nothing is kept for a closed window but the
ids of its single events, until it expires.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_windows import T0, ListOps, S, ev, results

from streams.windows import HoppingWindows, TumblingWindows, WindowEngine


def engine(windows: Any = None, grace_s: float = 0.0, lateness_s: float = 0.0, **kw: Any) -> WindowEngine[str, Any]:
    return WindowEngine(windows or TumblingWindows(60), ListOps(), grace_s=grace_s, allowed_lateness_s=lateness_s,
                        **kw)


def deltas(closed: list[Any]) -> list[tuple[str, float, list[str], bool]]:
    return [(c.key, (c.start_us - T0) / S, c.aggregate, c.delta) for c in closed]


def test_a_late_event_within_the_lateness_comes_out_as_a_delta_of_the_closed_window() -> None:
    e = engine(grace_s=5, lateness_s=600)
    e.process(0, [ev("a1", 10), ev("a2", 70)])
    e.process(0, [ev("b1", 130)])  # closes [0, 60) and [60, 120)
    assert results(e.close_due(0)) == [("a", 0, ["a1"]), ("a", 60, ["a2"])]
    assert e.process(0, [ev("late", 20), ev("late2", 25)]) == 2  # beyond grace, within lateness
    assert deltas(e.close_due(0)) == [("a", 0, ["late", "late2"], True)]  # only what came late
    assert e.counters(0)["revised"] == 2 and e.counters(0)["late"] == 0
    assert results(e.close_due(0)) == []  # each delta once


def test_a_key_without_events_in_a_closed_window_gets_a_delta_too() -> None:
    e = engine(lateness_s=600)
    e.process(0, [ev("a1", 10, "a"), ev("a2", 130, "a")])
    assert results(e.close_due(0)) == [("a", 0, ["a1"])]
    e.process(0, [ev("b-late", 30, "b")])
    assert deltas(e.close_due(0)) == [("b", 0, ["b-late"], True)]


def test_events_beyond_the_lateness_are_counted_and_handed_back() -> None:
    e = engine(grace_s=5, lateness_s=60)
    e.process(0, [ev("a1", 10), ev("x", 200)])
    e.close_due(0)
    too_late: list[dict[str, Any]] = []
    assert e.process(0, [ev("old", 20), ev("ok", 150)], too_late=too_late) == 1
    assert [x["id"] for x in too_late] == ["old"]
    assert e.late_counts(0) == {"a": 1} and e.counters(0)["late"] == 1


def test_a_closed_window_keeps_nothing_but_its_single_event_ids_until_it_expires() -> None:
    e = engine(grace_s=0, lateness_s=120)
    one = {"id": "x", "event_id": "e1", "event_time": T0 + 10 * S, "tenant": "a"}
    e.process(0, [one], "@offset", 1, event_ids=True)
    e.process(0, [ev("b", 70)])
    e.close_due(0)
    assert e.counters(0)["open_panes"] == 1  # [0, 60) closed: its pane is gone
    assert e.process(0, [one], "@offset", 2, event_ids=True) == 0  # a late copy of the single event: a duplicate
    assert e.close_due(0) == []
    assert e.snapshot(0)["meta"]["closed_ids"] == [["a", T0, ["e1"]]]
    e.process(0, [ev("d", 181)])  # 181 >= 60 + 120: [0, 60) expired
    e.close_due(0)
    assert e.snapshot(0)["meta"]["closed_ids"] == []


def test_hopping_windows_with_lateness_get_deltas_only_for_the_windows_not_expired() -> None:
    e = engine(HoppingWindows(120, 60), grace_s=0, lateness_s=60)
    e.process(0, [ev("a", 70), ev("b", 200)])  # stream time 200: [0,120) expired, [60,180) closed not expired
    first = results(e.close_due(0))
    assert ("a", 60, ["a"]) in first
    e.process(0, [ev("late", 100)])  # in [0,120) (expired) and [60,180) (closed, within lateness)
    assert deltas(e.close_due(0)) == [("a", 60, ["late"], True)]
    assert e.late_counts(0) == {"a": 1}


def test_single_events_are_deduplicated_by_event_id_and_the_ids_survive_a_restore() -> None:
    e = engine(lateness_s=600)
    one = {"id": "x", "event_id": "e1", "event_time": T0 + 10 * S, "tenant": "a"}
    assert e.process(0, [one], "@offset", 5, event_ids=True) == 1
    assert e.process(0, [one], "@offset", 9, event_ids=True) == 0  # the same event re-sent at another offset
    assert e.counters(0)["duplicate_events"] == 1
    snap = json.loads(json.dumps(e.snapshot(0)))
    e2 = engine(lateness_s=600)
    e2.restore(0, snap)
    assert e2.process(0, [one], "@offset", 12, event_ids=True) == 0
    e2.process(0, [dict(one, event_id="e2", id="y")], "@offset", 13, event_ids=True)
    e2.process(0, [ev("flush", 100)])
    assert results(e2.close_due(0)) == [("a", 0, ["x", "y"])]


# -- the property -------------------------------------------------------------------------------------------------

_events = st.lists(st.tuples(st.integers(0, 599), st.sampled_from("abc")), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(_events, st.randoms(use_true_random=False), st.integers(1, 8), st.sampled_from([0, 5, 30]),
       st.sampled_from([(60, 60), (120, 60), (180, 60)]), st.booleans())
def test_first_emission_plus_deltas_equals_the_truth_whatever_the_order(
        times: list[tuple[int, str]], rnd: Any, batch: int, grace_s: int, shape: tuple[int, int],
        redeliver: bool) -> None:
    size, advance = shape
    windows = TumblingWindows(size) if size == advance else HoppingWindows(size, advance)
    lateness = 10_000  # every event is within it, whatever the shuffle
    e = engine(windows, grace_s=grace_s, lateness_s=lateness)
    events = [ev(f"e{i}", t, k) for i, (t, k) in enumerate(times)]
    rnd.shuffle(events)
    latest: dict[tuple[str, int], list[str]] = {}

    def collect() -> None:
        for c in e.close_due(0):
            k = (c.key, c.start_us)
            assert c.delta or k not in latest  # a window's result once; then (or only, if it had none) deltas
            latest[k] = sorted(latest.get(k, []) + list(c.aggregate))

    batches = [events[i:i + batch] for i in range(0, len(events), batch)]
    seq = 0
    for b in batches:
        seq += 1
        for _ in range(2 if redeliver else 1):
            e.process(0, b, "p", seq)
            collect()
    e.process(0, [ev("end", 700 + size + grace_s, "zz")], "p", seq + 1)
    collect()
    truth: dict[tuple[str, int], list[str]] = {}
    for x in events:
        for start, _end in windows.windows_for(x["event_time"]):
            truth.setdefault((x["tenant"], start), []).append(x["id"])
    assert {k: v for k, v in latest.items() if k[0] != "zz"} == {k: sorted(v) for k, v in truth.items()}
    assert e.late_counts(0) == {}


@settings(max_examples=100, deadline=None)
@given(_events, st.integers(0, 120))
def test_state_stays_bounded_by_the_lateness(times: list[tuple[int, str]], lateness: int) -> None:
    e = engine(TumblingWindows(60), grace_s=0, lateness_s=lateness)
    for i, (t, k) in enumerate(sorted(times)):
        e.process(0, [{"id": f"e{i}", "event_id": f"e{i}", "event_time": T0 + t * S, "tenant": k}], "@offset", i,
                  event_ids=True)
        e.close_due(0)
        st_s = (e.stream_time(0) - T0) / S
        snap = e.snapshot(0)
        assert all((s["pane"] - T0) / S + 60 > st_s for s in snap["slots"])  # only open windows have slots
        # single-event ids of closed windows are kept only until those expire
        assert all((p - T0) / S + 60 + lateness > st_s for _k, p, _ids in snap["meta"]["closed_ids"])


@pytest.mark.xfail(strict=True, reason="known limit (README): single-event ids of closed windows live in the "
                   "partition's one meta value, which grows with them up to the changelog's 8 MiB record limit")
def test_the_meta_value_does_not_grow_with_the_single_events_held_for_late_copies() -> None:
    """The meta is rewritten at every flush and must fit one changelog record: what grows with the events kept for
    the allowed lateness belongs in per-pane keys. Fails today (strict xfail: it starts passing when that is fixed)."""
    def meta_bytes(singles: int) -> int:
        e = engine(grace_s=0, lateness_s=3600)
        for i in range(singles):
            one = {"id": f"x{i}", "event_id": f"{i:032x}", "event_time": T0 + (i % 60) * S, "tenant": "a"}
            e.process(0, [one], "@offset", i + 1, event_ids=True)
        e.process(0, [ev("b", 61)])
        e.close_due(0)
        return len(json.dumps(e.export_changes(0).meta))

    assert meta_bytes(2_000) < meta_bytes(10) + 1_000
