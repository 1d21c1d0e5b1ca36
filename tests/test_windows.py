"""The event-time window engine: boundaries, grace, late events, heartbeat, dedup, persistence and crash recovery."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from streams.aggregate import TenantWindowOps
from streams.windows import HoppingWindows, TumblingWindows, WindowEngine

S = 1_000_000  # microseconds per second
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z, a multiple of every window size used here


class ListOps:
    """Aggregates that are just the ids of the events folded in: membership can be asserted exactly."""

    def __init__(self) -> None:
        self.closed: list[Any] = []

    def new(self, key: str, start_us: int, end_us: int) -> list[str]:
        return []

    def adder(self, aggregate: list[str]) -> Callable[[dict[str, Any]], None]:
        return lambda ev: aggregate.append(ev["id"])

    def merge(self, into: list[str], other: list[str]) -> None:
        into.extend(other)

    def dump(self, aggregate: list[str]) -> list[str]:
        return list(aggregate)

    def load(self, key: str, start_us: int, end_us: int, state: list[str]) -> list[str]:
        return list(state)

    def on_close(self, aggregate: list[str]) -> None:
        self.closed.append(aggregate)


def ev(id_: str, t_s: float, key: str = "a") -> dict[str, Any]:
    return {"id": id_, "event_time": T0 + round(t_s * S), "tenant": key}


def engine(windows: Any = None, grace_s: float = 0.0, **kw: Any) -> WindowEngine[str, list[str]]:
    return WindowEngine(windows or TumblingWindows(60), ListOps(), grace_s=grace_s, **kw)


def results(closed: list[Any]) -> list[tuple[str, float, list[str]]]:
    return [(c.key, (c.start_us - T0) / S, c.aggregate) for c in closed]


# -- window assignment ------------------------------------------------------------------------------------------


def test_tumbling_boundary_event_belongs_to_the_window_starting_there() -> None:
    w = TumblingWindows(60)
    assert w.windows_for(T0 + 60 * S) == ((T0 + 60 * S, T0 + 120 * S),)
    assert w.windows_for(T0 + 60 * S - 1) == ((T0, T0 + 60 * S),)
    e = engine()
    e.process(0, [ev("before", 59.999999), ev("edge", 60), ev("flush", 200)])
    assert results(e.close_due(0)) == [("a", 0, ["before"]), ("a", 60, ["edge"])]
    # with no grace, the boundary event itself closes the previous window: one microsecond earlier is late
    e2 = engine()
    e2.process(0, [ev("edge", 60), ev("before", 59.999999)])
    assert e2.late_counts(0) == {"a": 1} and results(e2.close_due(0)) == []


def test_hopping_membership() -> None:
    w = HoppingWindows(300, 60)
    starts = [(s - T0) // S for s, _ in w.windows_for(T0 + 330 * S)]
    assert starts == [60, 120, 180, 240, 300]  # size/advance = 5 windows, each [start, start + 300)
    assert all(end - start == 300 * S for start, end in w.windows_for(T0 + 330 * S))
    # on a boundary: the window starting there is in, the one ending there is out
    starts = [(s - T0) // S for s, _ in w.windows_for(T0 + 300 * S)]
    assert starts == [60, 120, 180, 240, 300]
    with pytest.raises(ValueError):
        HoppingWindows(60, 120)  # gaps
    with pytest.raises(ValueError):
        HoppingWindows(90, 60)  # a window must be a whole number of panes


def test_hopping_engine_folds_each_event_into_every_window_containing_it() -> None:
    e = engine(HoppingWindows(180, 60))
    e.process(0, [ev("y", 10), ev("x", 130), ev("flush", 1000)])
    got = {start: ids for _k, start, ids in results(e.close_due(0))}
    assert got[0] == ["y", "x"] and got[60] == ["x"] and got[120] == ["x"]
    assert got[-120] == ["y"] and got[-60] == ["y"]
    assert sum(ids.count("x") for ids in got.values()) == 3


# -- stream time, grace, late ----------------------------------------------------------------------------------


def test_out_of_order_within_grace_is_folded() -> None:
    e = engine(grace_s=15)
    e.process(0, [ev("a10", 10), ev("a70", 70), ev("a50", 50)])  # stream time 70 < 60 + 15
    assert e.close_due(0) == []
    e.process(0, [ev("a74", 74.999999)])
    assert e.close_due(0) == []  # still open one microsecond before end + grace
    e.process(0, [ev("a75", 75)])  # stream time == end + grace: closed
    assert results(e.close_due(0)) == [("a", 0, ["a10", "a50"])]
    assert e.late_counts(0) == {}


def test_late_beyond_grace_is_counted_not_folded() -> None:
    e = engine(grace_s=15)
    e.process(0, [ev("a10", 10), ev("b10", 10, "b"), ev("a80", 80)])
    closed = results(e.close_due(0))
    assert closed == [("a", 0, ["a10"]), ("b", 0, ["b10"])]
    e.process(0, [ev("late-a", 59), ev("late-b1", 1, "b"), ev("late-b2", 30, "b"), ev("ok", 61)])
    assert e.late_counts(0) == {"a": 1, "b": 2}
    assert e.counters(0)["late"] == 3
    assert e.close_due(0) == []  # the closed window is never emitted again
    e.process(0, [ev("flush", 500)])
    assert results(e.close_due(0)) == [("a", 60, ["a80", "ok"])]


def test_late_is_judged_by_stream_time_not_by_when_close_due_runs() -> None:
    """Windows due but not yet collected still refuse late events: results do not depend on call timing."""
    e = engine(grace_s=0)
    e.process(0, [ev("x", 5), ev("y", 61), ev("late", 6)])
    assert results(e.close_due(0)) == [("a", 0, ["x"])]
    assert e.late_counts(0) == {"a": 1}


def test_hopping_window_excludes_an_event_late_for_it_even_when_collected_later() -> None:
    e = engine(HoppingWindows(120, 60), grace_s=0)
    e.process(0, [ev("x", 70), ev("y", 125)])  # stream time 125: [0,120) is closed, not yet collected
    e.process(0, [ev("late-for-one", 65)])  # in [0,120) (closed) and [60,180) (open)
    assert e.late_counts(0) == {"a": 1}
    e.process(0, [ev("flush", 1000)])
    got = {start: sorted(ids) for _k, start, ids in results(e.close_due(0))}
    assert got[0] == ["x"] and got[60] == ["late-for-one", "x", "y"] and got[120] == ["y"]


def test_hopping_late_counts_each_closed_window() -> None:
    e = engine(HoppingWindows(180, 60), grace_s=0)
    e.process(0, [ev("far", 400)])  # stream time 400: windows ending at or before 400 are closed
    e.process(0, [ev("old", 130)])  # in [0,180) and [60,240) (closed) and [120,300) (closed)
    assert e.late_counts(0) == {"a": 3}
    e.process(0, [ev("mixed", 230)])  # [60,240) closed, [120,300) closed, [180,360) closed
    assert e.late_counts(0) == {"a": 6}
    e.process(0, [ev("partly", 280)])  # [120,300), [180,360) closed; [240,420) open
    assert e.late_counts(0) == {"a": 8}
    e.process(0, [ev("flush", 10_000)])
    got = {start: ids for _k, start, ids in results(e.close_due(0))}
    assert sorted(got[240]) == ["far", "partly"] and "old" not in sum(got.values(), [])


def test_stream_time_is_per_partition() -> None:
    e = engine()
    e.process(0, [ev("p0", 10)])
    e.process(1, [ev("p1", 500)])
    assert e.close_due(0) == [] and e.stream_time(0) == T0 + 10 * S
    assert results(e.close_due(1)) == []
    e.process(0, [ev("p0-late-ish", 20)])
    assert e.late_counts(0) == {}


def test_future_events_do_not_advance_stream_time() -> None:
    e = engine(max_future_s=60)
    now = T0 + 100 * S
    e.process(0, [ev("x", 90), ev("skewed", 3600)], now_us=now)
    assert e.stream_time(0) == T0 + 90 * S and e.counters(0)["future_events"] == 1
    e.process(0, [ev("y", 95)], now_us=now)
    assert e.late_counts(0) == {}
    e.process(0, [ev("flush", 4000)], now_us=T0 + 5000 * S)
    got = {start: ids for _k, start, ids in results(e.close_due(0))}
    assert got[60] == ["x", "y"] and got[3600] == ["skewed"]


# -- heartbeat -------------------------------------------------------------------------------------------------


def test_idle_partition_is_closed_by_the_heartbeat() -> None:
    e = engine(grace_s=10)
    arrival = T0 + 32 * S  # consumed 2 s after the event time: lag 2 s
    e.process(0, [ev("only", 30)], now_us=arrival)
    assert e.advance_idle(0, arrival + 20 * S) is True
    assert e.stream_time(0) == T0 + 50 * S and e.close_due(0) == []
    e.advance_idle(0, T0 + 71 * S)  # stream time 69 < 60 + 10
    assert e.close_due(0) == []
    e.advance_idle(0, T0 + 72 * S)  # stream time 70: closed
    assert results(e.close_due(0)) == [("a", 0, ["only"])]


def test_heartbeat_does_not_close_a_backfill_early() -> None:
    e = engine(grace_s=10)
    wall = T0 + 86_400 * S  # replaying data one day old
    e.process(0, [ev("old", 30)], now_us=wall)
    e.advance_idle(0, wall + 5 * S)  # five seconds of quiet move stream time five seconds, not to "now"
    assert e.stream_time(0) == T0 + 35 * S and e.close_due(0) == []
    e.process(0, [ev("more", 50)], now_us=wall + 6 * S)
    assert e.late_counts(0) == {}


def test_heartbeat_without_observed_lag_is_a_no_op() -> None:
    e = engine()
    assert e.advance_idle(0, T0) is False  # unknown partition
    e.process(0, [ev("x", 1)])  # no now_us: lag unknown
    assert e.advance_idle(0, T0 + 10_000 * S) is False
    assert e.stream_time(0) == T0 + 1 * S


# -- dedup -----------------------------------------------------------------------------------------------------


def test_redelivered_batch_is_not_counted_twice() -> None:
    e = engine(grace_s=5)
    b1 = [ev("1a", 1), ev("1b", 2, "b")]
    b2 = [ev("2a", 3)]
    e.process(0, b1, "prod-1", 1)
    e.process(0, b2, "prod-1", 2)
    e.process(0, b1, "prod-1", 1)  # redelivered after a crash
    e.process(0, b2, "prod-1", 2)
    e.process(0, [ev("other-producer", 4)], "prod-2", 1)  # another producer's seq 1 is new
    e.process(0, [ev("flush", 100)], "prod-1", 3)
    assert results(e.close_due(0)) == [("a", 0, ["1a", "2a", "other-producer"]), ("b", 0, ["1b"])]
    assert e.counters(0)["duplicate_batches"] == 2 and e.counters(0)["duplicate_events"] == 3


def test_slot_level_dedup_when_slots_are_newer_than_the_meta() -> None:
    """A crash after the slots were written but before the meta: the slot already holds the replayed batch."""
    e = engine()
    e.process(0, [ev("1", 1)], "p", 1)
    first = e.export_changes(0)
    e.process(0, [ev("2", 2)], "p", 2)
    second = e.export_changes(0)
    restored = engine()
    restored.restore_parts(0, first.meta, [s for _k, _st, s in second.upserts])  # meta of batch 1, slot of batch 2
    restored.process(0, [ev("2", 2)], "p", 2)  # redelivered: skipped by the slot, not by the meta
    restored.process(0, [ev("3", 3), ev("flush", 100)], "p", 3)
    assert results(restored.close_due(0)) == [("a", 0, ["1", "2", "3"])]
    assert restored.counters(0)["duplicate_events"] == 1


def test_producers_are_forgotten_after_the_ttl() -> None:
    e = engine(producer_ttl_s=600)
    e.process(0, [ev("x", 1)], "old", 1)
    e.process(0, [ev("y", 2000)], "new", 1)
    e.close_due(0)
    assert set(e.snapshot(0)["meta"]["applied"]) == {"new"}


# -- persistence -----------------------------------------------------------------------------------------------


def random_stream(seed: int, n_batches: int = 60, per_batch: int = 40) -> list[tuple[int, str, int, list[dict]]]:
    """(partition, producer, seq, events) with disorder, late events and several producers and partitions."""
    rng = random.Random(seed)
    clock = {0: 0.0, 1: 0.0}
    seqs = {"p1": 0, "p2": 0, "p3": 0}
    out = []
    n = 0
    for _ in range(n_batches):
        part = rng.choice((0, 1))
        producer = rng.choice(("p1", "p2", "p3"))
        seqs[producer] += 1
        events = []
        for _ in range(per_batch):
            clock[part] += rng.uniform(0, 3)
            t = clock[part] - (rng.uniform(0, 120) if rng.random() < 0.1 else rng.uniform(0, 5))
            n += 1
            events.append(ev(f"e{n}", t, rng.choice(("a", "b", "c"))))
        out.append((part, producer, seqs[producer], events))
    return out


def run(stream: list[Any], e: WindowEngine[str, list[str]], emitted: dict[Any, Any]) -> None:
    for part, producer, seq, events in stream:
        e.process(part, events, producer, seq)
        for c in e.close_due(part):
            key = (c.partition, c.key, c.start_us)
            assert key not in emitted, "emitted twice"
            emitted[key] = c.aggregate


def finish(e: WindowEngine[str, list[str]], emitted: dict[Any, Any], allow_repeat: bool = False) -> dict[Any, Any]:
    for part in (0, 1):
        e.add(part, "flush", T0 + 10**6 * S, lambda agg: None)
        for c in e.close_due(part):
            key = (c.partition, c.key, c.start_us)
            if key in emitted and not allow_repeat:
                raise AssertionError("emitted twice")
            emitted[key] = c.aggregate
    return emitted


@pytest.mark.parametrize("windows", [TumblingWindows(60), HoppingWindows(120, 60)], ids=["tumbling", "hopping"])
def test_snapshot_restore_mid_stream_gives_identical_results(windows: Any) -> None:
    stream = random_stream(11)
    reference = engine(windows, grace_s=20)
    expected = finish(reference, _run(stream, reference))

    first = engine(windows, grace_s=20)
    emitted: dict[Any, Any] = {}
    run(stream[:25], first, emitted)
    snap = json.loads(json.dumps({p: first.snapshot(p) for p in (0, 1)}))
    second = engine(windows, grace_s=20)
    for p in (0, 1):
        second.restore(p, snap[str(p)])
    run(stream[25:], second, emitted)
    assert finish(second, emitted) == expected
    assert [second.late_counts(p) for p in (0, 1)] == [reference.late_counts(p) for p in (0, 1)]
    assert sum(reference.counters(p)["late"] for p in (0, 1)) > 0  # the stream does exercise late events


def apply_writes(table: dict[Any, Any], writes: list[tuple[Any, Any]]) -> None:
    """Write ``(key, value)`` pairs to a changelog-backed ``table`` as read back after a restart (JSON round trip;
    ``None`` deletes)."""
    for key, value in writes:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = json.loads(json.dumps(value))


def _run(stream: list[Any], e: WindowEngine[str, list[str]]) -> dict[Any, Any]:
    emitted: dict[Any, Any] = {}
    run(stream, e, emitted)
    return emitted


@pytest.mark.parametrize("windows", [TumblingWindows(60), HoppingWindows(120, 60)], ids=["tumbling", "hopping"])
@pytest.mark.parametrize("seed", range(8))
def test_crash_at_any_point_of_a_changelog_write_recovers_the_same_results(seed: int, windows: Any) -> None:
    """Simulate a worker persisting with export_changes (upserts, meta, deletes, then the offset commit) and dying
    anywhere: the restarted worker replays from the committed offsets and ends with the same final windows."""
    rng = random.Random(seed)
    stream = random_stream(100 + seed)
    reference = engine(windows, grace_s=20)
    expected = finish(reference, _run(stream, reference))

    table: dict[Any, Any] = {}  # the changelog-backed table: (partition, "meta") / (partition, key, start)
    committed = {0: 0, 1: 0}  # per partition: index in the stream after the last committed batch
    live = engine(windows, grace_s=20)
    emitted: dict[Any, Any] = {}
    crash_at = rng.randrange(10, len(stream) - 5)
    crash_writes = None
    for i, (part, producer, seq, events) in enumerate(stream):
        live.process(part, events, producer, seq)
        for c in live.close_due(part):
            emitted[(c.partition, c.key, c.start_us)] = c.aggregate
        if i % 3 == 2 or i == crash_at:  # commit interval: every three batches
            writes = []
            for p in (0, 1):
                ch = live.export_changes(p)
                writes += [((p, k, st), s) for k, st, s in ch.upserts]
                writes.append(((p, "meta"), ch.meta))
                writes += [((p, k, st), None) for k, st in ch.deletes]
            if i == crash_at:
                crash_writes = rng.randrange(0, len(writes) + 1)
                writes = writes[:crash_writes]
            apply_writes(table, writes)
            if i == crash_at:
                break
            committed = {p: i + 1 for p in (0, 1)}
    assert crash_writes is not None

    restarted = engine(windows, grace_s=20)
    for p in (0, 1):
        slots = [v for k, v in table.items() if k[0] == p and k[1] != "meta"]
        restarted.restore_parts(p, table.get((p, "meta")), slots)
    for part, producer, seq, events in stream[min(committed.values()) :]:
        restarted.process(part, events, producer, seq)
        for c in restarted.close_due(part):
            key = (c.partition, c.key, c.start_us)
            if key in emitted:
                assert emitted[key] == c.aggregate, "a window emitted again must carry the same result"
            emitted[key] = c.aggregate
    assert finish(restarted, emitted, allow_repeat=True) == expected
    assert [restarted.late_counts(p) for p in (0, 1)] == [reference.late_counts(p) for p in (0, 1)]


def test_export_changes_reports_upserts_once_and_deletes_closed_windows() -> None:
    e = engine()
    e.process(0, [ev("x", 1), ev("y", 2, "b")], "p", 1)
    ch = e.export_changes(0)
    assert sorted((k, (st - T0) // S) for k, st, _s in ch.upserts) == [("a", 0), ("b", 0)] and ch.deletes == []
    assert e.export_changes(0).upserts == []
    e.process(0, [ev("z", 70)], "p", 2)
    e.close_due(0)
    ch = e.export_changes(0)
    assert [(k, (st - T0) // S) for k, st, _s in ch.upserts] == [("a", 60)]
    assert sorted((k, (st - T0) // S) for k, st in ch.deletes) == [("a", 0), ("b", 0)]
    assert ch.meta["stream_time"] == T0 + 70 * S and ch.meta["applied"]["p"][0] == 2


def test_engine_with_tenant_aggregates_round_trips_through_json() -> None:
    rng = random.Random(9)
    events = [
        {
            "type": rng.choice(("tool_complete", "turn_end", "llm_call_completed")),
            "tenant": rng.choice(("t1", "t2")),
            "event_time": T0 + rng.randrange(0, 200 * S),
            "tool_name": rng.choice(("read", "write")),
            "status": rng.choice(("ok", "error")),
            "duration_ms": rng.randint(0, 5000),
            "model": "m",
            "prompt_tokens": rng.choice((None, 100)),
            "completion_tokens": 7,
        }
        for _ in range(400)
    ]
    events.sort(key=lambda e: e["event_time"])

    def make() -> WindowEngine[Any, Any]:
        return WindowEngine(TumblingWindows(60), TenantWindowOps(), grace_s=5)

    ref = make()
    ref.process(0, events)
    ref.add(0, "t1", T0 + 10**4 * S, lambda agg: None)
    expected = [(c.key, c.start_us, c.aggregate.to_record()) for c in ref.close_due(0)]

    a = make()
    a.process(0, events[:150])
    b = make()
    b.restore(0, json.loads(json.dumps(a.snapshot(0))))
    b.process(0, events[150:])
    b.add(0, "t1", T0 + 10**4 * S, lambda agg: None)
    got = [(c.key, c.start_us, c.aggregate.to_record()) for c in b.close_due(0)]
    assert got == expected and len(expected) >= 6


def test_open_windows_show_live_content_of_windows_not_yet_closed() -> None:
    e = engine(HoppingWindows(120, 60), grace_s=0)
    e.process(0, [ev("x", 10), ev("y", 70), ev("z", 130)])  # stream time 130: [0,120) is closed
    live = {(w.start_us - T0) // S: sorted(w.aggregate) for w in e.open_windows(0)}
    assert live == {60: ["y", "z"], 120: ["z"]}
    assert results(e.close_due(0)) == [("a", -60, ["x"]), ("a", 0, ["x", "y"])]
    assert {(w.start_us - T0) // S for w in e.open_windows(0)} == {60, 120}
