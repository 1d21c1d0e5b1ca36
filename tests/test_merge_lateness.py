"""Stage 2 with allowed lateness: revisions of final windows, sealing, hopping revisions, verdict changes, restore."""

from __future__ import annotations

import json
from typing import Any

from test_merge import T0, US, W, partial

from streams.merge import MergeStage
from streams.partials import Marker
from streams.rules import RuleEngine
from streams.spike import SpikeDetector

L = 600 * US  # allowed lateness used here


def stage(sources: int = 2, hop: int | None = None, lateness_s: float = 600) -> MergeStage:
    return MergeStage(60, sources, 1, RuleEngine(), SpikeDetector(), hop_size_s=hop, allowed_lateness_s=lateness_s)


def tumbling(out: Any) -> list[tuple[int, int, int, bool]]:
    return [((m["window_start_us"] - T0) // W, m["turns"], m["revision"], m["sealed"]) for m in out.metrics + out.seals
            if m["window_end_us"] - m["window_start_us"] == W]


def test_a_changed_partial_for_a_final_window_is_the_next_revision_and_a_resend_changes_nothing() -> None:
    s = stage()
    s.handle(0, partial(0, T0, n=2))
    s.handle(0, partial(1, T0, n=3))
    s.handle(0, Marker(0, T0 + W))
    assert tumbling(s.handle(0, Marker(1, T0 + W))) == [(0, 5, 0, False)]
    revised = partial(0, T0, n=4)  # source 0 folded 2 late events into the window and sent it again
    out = s.handle(0, revised)
    assert tumbling(out) == [(0, 7, 1, False)] and out.revisions == 1
    assert not s.handle(0, revised).metrics  # the same partial again: a redelivery
    assert tumbling(s.handle(0, partial(1, T0, n=4))) == [(0, 8, 2, False)]


def test_sealed_once_the_watermark_passes_end_plus_lateness_then_too_late() -> None:
    s = stage(sources=1)
    s.handle(0, partial(0, T0, n=2))
    s.handle(0, Marker(0, T0 + W))
    s.handle(0, partial(0, T0, n=3))  # revision 1
    assert not tumbling(s.handle(0, Marker(0, T0 + W + L - W)))
    sealed = tumbling(s.handle(0, Marker(0, T0 + W + L)))
    assert sealed == [(0, 3, 1, True)]
    late = s.handle(0, partial(0, T0, n=9))
    assert late.late_partials == 1 and [p.record["turns"] for p in late.too_late] == [9] and not late.metrics
    changes = dict(s.state_changes(0))
    assert not any(k.startswith("p|") and v is not None for k, v in changes.items())  # nothing kept for it
    assert changes["t|acme"]["closed"] == {}


def test_without_lateness_revision_zero_is_sealed_at_once() -> None:
    s = stage(sources=1, lateness_s=0)
    s.handle(0, partial(0, T0, n=2))
    assert tumbling(s.handle(0, Marker(0, T0 + W))) == [(0, 2, 0, True)]
    assert s.handle(0, partial(0, T0, n=3)).late_partials == 1


def test_late_data_for_a_window_the_tenant_had_no_events_in_emits_it_for_the_first_time() -> None:
    s = stage(sources=1)
    s.handle(0, partial(0, T0, n=1))
    s.handle(0, partial(0, T0 + 2 * W, n=1))
    s.handle(0, Marker(0, T0 + 3 * W))
    assert tumbling(s.handle(0, partial(0, T0 + W, n=5))) == [(1, 5, 0, False)]


def test_a_revision_revises_the_hopping_windows_over_it_and_the_next_on_time_hop_sees_it() -> None:
    s = stage(sources=1, hop=180)
    for k in range(3):
        s.handle(0, partial(0, T0 + k * W, n=1))
        s.handle(0, Marker(0, T0 + (k + 1) * W))
    out = s.handle(0, partial(0, T0, n=10))  # window 0: 1 -> 10 turns
    hops = sorted(((m["window_end_us"] - T0) // W, m["turns"], m["revision"]) for m in out.metrics
                  if m["window_end_us"] - m["window_start_us"] == 180 * US)
    assert hops == [(1, 10, 1), (2, 11, 1), (3, 12, 1)]
    s.handle(0, partial(0, T0 + 3 * W, n=1))
    nxt = s.handle(0, Marker(0, T0 + 4 * W))
    (hop,) = [m for m in nxt.metrics if m["window_end_us"] - m["window_start_us"] == 180 * US]
    assert hop["turns"] == 3 and hop["revision"] == 0  # windows 1..3: window 0 has left the hop


def test_a_revision_that_changes_a_verdict_raises_a_backfill_alert_and_never_steps_the_live_state() -> None:
    s = stage(sources=1)
    ok = tuple(("search", "ok") for _ in range(30))
    s.handle(0, partial(0, T0, tools=ok))
    assert not s.handle(0, Marker(0, T0 + W)).alerts
    failing = ok + tuple(("search", "error") for _ in range(30))
    out = s.handle(0, partial(0, T0, tools=failing))
    assert out.alerts and all(a.backfill and a.status == "resolved" and a.labels["revision"] == "1"
                              for a in out.alerts)
    assert {a.alertname for a in out.alerts} == {"ToolFailureRateHigh"}
    assert s.rules.firing() == []  # the live detector did not move


def test_revisions_after_a_restore_match_the_run_without_one() -> None:
    def feed(s: MergeStage) -> None:
        s.handle(0, partial(0, T0, n=2))
        s.handle(0, partial(1, T0, n=3))
        s.handle(0, Marker(0, T0 + W))
        s.handle(0, Marker(1, T0 + W))
        s.handle(0, partial(0, T0, n=4))

    a = stage(hop=120)
    feed(a)
    table = {k: json.loads(json.dumps(v)) for k, v in a.state_changes(0) if v is not None}
    b = stage(hop=120)
    b.restore(0, table.items())
    for s in (a, b):
        s.handle(0, partial(1, T0, n=6))
    def emitted(out: Any) -> list[dict[str, Any]]:
        return out.metrics + out.seals

    outs = [emitted(s.handle(0, partial(1, T0 + W, n=1))) + emitted(s.handle(0, Marker(0, T0 + 2 * W)))
            + emitted(s.handle(0, Marker(1, T0 + 2 * W))) + emitted(s.handle(0, Marker(0, T0 + 2 * W + L)))
            + emitted(s.handle(0, Marker(1, T0 + 2 * W + L))) for s in (a, b)]
    assert outs[0] == outs[1]
    sealed = [(m["window_start_us"], m["window_end_us"], m["turns"], m["revision"]) for m in outs[0] if m["sealed"]]
    assert (T0, T0 + W, 10, 2) in sealed


def delta(source: int, start: int, offset: int, n: int = 1) -> Any:
    p = partial(source, start, n=n)
    return type(p)(p.source_partition, p.record, delta=offset)


def test_a_delta_is_merged_once_into_a_final_window_and_into_a_pending_one() -> None:
    s = stage()
    s.handle(0, partial(0, T0, n=2))
    s.handle(0, delta(0, T0, offset=40, n=3))  # still pending: merged, no output yet
    s.handle(0, delta(0, T0, offset=40, n=3))  # the same delta again: nothing
    s.handle(0, partial(1, T0, n=1))
    s.handle(0, Marker(0, T0 + W))
    assert tumbling(s.handle(0, Marker(1, T0 + W))) == [(0, 6, 0, False)]
    assert tumbling(s.handle(0, delta(1, T0, offset=7, n=4))) == [(0, 10, 1, False)]
    assert not s.handle(0, delta(1, T0, offset=7, n=4)).metrics  # redelivered: applied once
    table = {k: json.loads(json.dumps(v)) for k, v in s.state_changes(0) if v is not None}
    restored = stage()
    restored.restore(0, table.items())
    assert not restored.handle(0, delta(1, T0, offset=7, n=4)).metrics  # the applied offsets survive a restore
    assert tumbling(restored.handle(0, delta(1, T0, offset=8, n=1))) == [(0, 11, 2, False)]
    assert tumbling(s.handle(0, delta(1, T0, offset=8, n=1))) == [(0, 11, 2, False)]
