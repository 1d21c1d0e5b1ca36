"""Allowed lateness (deltas of closed windows, expiry, late events handed back) and event-id dedup in the engine.

The property test is the contract in one sentence: whatever the arrival order, as long as every event arrives
within the allowed lateness, the first emission of every (key, window) plus its deltas hold exactly the events of
that window, each once, even when records are delivered twice; and nothing is kept for a closed window but the
ids of its single events, until it expires.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_windows import T0, ListOps, S, apply_writes, ev, results

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
    assert e.snapshot(0)["closed_ids"] == [{"key": "a", "pane": T0, "ids": ["e1"]}]
    e.process(0, [ev("d", 181)])  # 181 >= 60 + 120: [0, 60) expired
    e.close_due(0)
    assert e.snapshot(0)["closed_ids"] == []


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
        assert all((c["pane"] - T0) / S + 60 + lateness > st_s for c in snap["closed_ids"])


def test_the_meta_value_does_not_grow_with_the_single_events_held_for_late_copies() -> None:
    """The meta is rewritten at every flush and must fit one changelog record: the ids kept for the allowed lateness
    go to one record per retired pane (before, 2,000 ids made a 72 KB meta, 36 B per id: past ~60 single-event
    records/s on a partition for an hour it would outgrow the changelog's 8 MiB records)."""
    def meta_bytes(singles: int) -> int:
        e = engine(grace_s=0, lateness_s=3600)
        for i in range(singles):
            one = {"id": f"x{i}", "event_id": f"{i:032x}", "event_time": T0 + (i % 60) * S, "tenant": "a"}
            e.process(0, [one], "@offset", i + 1, event_ids=True)
        e.process(0, [ev("b", 61)])
        e.close_due(0)
        return len(json.dumps(e.export_changes(0).meta))

    assert meta_bytes(2_000) < meta_bytes(10) + 1_000


def _single_event_stream(rng: random.Random, n: int = 220) -> list[dict[str, Any]]:
    """Single-event records: disorder, events up to 100 s late (the lateness is 120 s), and copies of recent events
    re-sent as new records (the same event id at a later offset)."""
    clock, out, recent = 0.0, [], []
    for i in range(n):
        if recent and rng.random() < 0.2:
            out.append(dict(rng.choice(recent)))
            continue
        clock += rng.uniform(0, 3)
        t = clock - (rng.uniform(0, 100) if rng.random() < 0.15 else rng.uniform(0, 2))
        one = {"id": f"e{i}", "event_id": f"e{i}", "event_time": T0 + round(t * S), "tenant": rng.choice("abc")}
        out.append(one)
        recent = (recent + [one])[-20:]
    return out


def _fold_one(e: WindowEngine[str, Any], offset: int, event: dict[str, Any], out: dict[Any, list[str]]) -> None:
    e.process(0, [event], "@offset", offset, event_ids=True)
    for c in e.close_due(0):
        k = (c.key, c.start_us, offset if c.delta else None)  # a delta is named by the record that brought it
        if k in out:
            assert out[k] == c.aggregate, "emitted again after the crash with other content"
        out[k] = list(c.aggregate)


@pytest.mark.parametrize("seed", range(16))
def test_a_crash_at_any_point_of_a_write_keeps_single_event_dedup_exact(seed: int) -> None:
    """Single events persisted with export_changes in its order (slot upserts, id upserts, meta, slot deletes, id
    deletes; a table write every three records) and a crash after any prefix of one write: after the restart and
    the replay from the committed offset, every event is in its window exactly once, counting the first emission
    and its deltas, though copies of events keep arriving (in open, closed and expiring windows)."""
    rng = random.Random(seed)
    stream = _single_event_stream(rng)
    truth: dict[tuple[str, int], set[str]] = {}
    for one in stream:
        truth.setdefault((one["tenant"], one["event_time"] - (one["event_time"] - T0) % (60 * S)), set()).add(one["id"])

    table: dict[str, Any] = {}
    live, out, committed = engine(grace_s=0, lateness_s=120), {}, 0
    crash_at = rng.randrange(30, len(stream) - 10)
    for i, one in enumerate(stream):
        _fold_one(live, i, one, out)
        if i % 3 == 2 or i == crash_at:
            ch = live.export_changes(0)
            writes = [(f"s|{k}|{p}", v) for k, p, v in ch.upserts] + [(f"i|{k}|{p}", v) for k, p, v in ch.id_upserts]
            writes += [("m", ch.meta)] + [(f"s|{k}|{p}", None) for k, p in ch.deletes]
            writes += [(f"i|{k}|{p}", None) for k, p in ch.id_deletes]
            if i == crash_at:
                writes = writes[: rng.randrange(0, len(writes) + 1)]
            apply_writes(table, writes)
            if i == crash_at:
                break
            committed = i + 1

    restarted = engine(grace_s=0, lateness_s=120)
    restarted.restore_parts(0, table.get("m"), [v for k, v in table.items() if k.startswith("s|")],
                            [v for k, v in table.items() if k.startswith("i|")])
    for i in range(committed, len(stream)):
        _fold_one(restarted, i, stream[i], out)
    restarted.add(0, "flush", T0 + 10**6 * S, lambda agg: None)
    for c in restarted.close_due(0):
        out[(c.key, c.start_us, None)] = list(c.aggregate)
    ch = restarted.export_changes(0)
    for k, p in ch.id_deletes:
        table.pop(f"i|{k}|{p}", None)
    assert ch.id_upserts == [] and not [k for k in table if k.startswith("i|")]  # every id record expired, deleted

    folded: dict[tuple[str, int], list[str]] = {}
    for (key, start, _delta), ids in out.items():
        if key != "flush":
            folded.setdefault((key, start), []).extend(ids)
    assert {k: sorted(v) for k, v in folded.items()} == {k: sorted(v) for k, v in truth.items()}
    assert sum(len(v) for v in folded.values()) == len({one["id"] for one in stream}) < len(stream)


def test_ids_a_crash_left_behind_for_expired_panes_are_dropped_at_restore_and_deleted() -> None:
    """A crash between the meta and the id deletes leaves id records of panes the meta has expired: the restore
    does not load them and the next export deletes them."""
    e = engine(grace_s=0, lateness_s=120)
    one = {"id": "x", "event_id": "e1", "event_time": T0 + 10 * S, "tenant": "a"}
    e.process(0, [one], "@offset", 1, event_ids=True)
    e.process(0, [ev("b", 70)])
    e.close_due(0)
    (stale,) = [v for _k, _p, v in e.export_changes(0).id_upserts]
    e.process(0, [ev("d", 200)])
    e.close_due(0)
    meta = e.export_changes(0).meta  # [0, 60) expired: its ids would be deleted after this meta
    restarted = engine(grace_s=0, lateness_s=120)
    restarted.restore_parts(0, json.loads(json.dumps(meta)), [], [stale])
    assert restarted.snapshot(0)["closed_ids"] == []
    assert restarted.export_changes(0).id_deletes == [("a", T0)]


def test_a_meta_of_the_previous_version_gives_its_ids_their_own_records() -> None:
    """Versions before 2026-12-08 kept the ids in the meta: restored from such a meta, the ids are written as id
    records at the next export and the meta no longer carries them."""
    e = engine(grace_s=0, lateness_s=120)
    e.process(0, [ev("b", 70)])
    e.close_due(0)  # [0, 60) closed
    meta = dict(e.export_changes(0).meta, closed_ids=[["a", T0, ["e1", "e2"]]])
    restarted = engine(grace_s=0, lateness_s=120)
    restarted.restore_parts(0, json.loads(json.dumps(meta)), [])
    ch = restarted.export_changes(0)
    assert ch.id_upserts == [("a", T0, {"key": "a", "pane": T0, "ids": ["e1", "e2"]})]
    assert "closed_ids" not in ch.meta
    late_copy = {"id": "y", "event_id": "e2", "event_time": T0 + 10 * S, "tenant": "a"}
    assert restarted.process(0, [late_copy], "@offset", 9, event_ids=True) == 0  # still recognised
    new_late = dict(late_copy, event_id="e3")
    assert restarted.process(0, [new_late], "@offset", 10, event_ids=True) == 1  # a new one goes into a delta
