"""Stage 2 visits only the tenants with work at a watermark step: the same output as visiting every tenant.

The reference below is the former behaviour (every tenant of the partition advanced, in name order, at every
watermark step); :class:`streams.merge.MergeStage` keeps a heap of the watermark at which each tenant next has work.
Random partials (on time, late, deltas, redeliveries, failing tools that open and resolve alerts), markers of two
sources, and restores from the changelog pairs: every output and every state change must be equal.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.aggregate import TenantWindowAggregate
from streams.merge import MergeStage, _Part, _Tenant
from streams.partials import Marker, Partial
from streams.rules import RuleEngine
from streams.spike import SpikeDetector

US = 1_000_000
W = 60 * US
T0 = 1_767_225_600 * US
TENANTS = ("acme", "beta", "gamma", "delta")


class EveryTenant(MergeStage):
    """The reference: every tenant is visited at every watermark step (as if each had open alerts)."""

    def _schedule(self, part: _Part, tenant: str, ts: _Tenant) -> None:
        part.alerting.add(tenant)


def make(cls: type[MergeStage], hop: bool, lateness_windows: int) -> MergeStage:
    return cls(60, 2, 1, RuleEngine(), SpikeDetector(), hop_size_s=180 if hop else None,
               allowed_lateness_s=60 * lateness_windows)


def partial(source: int, tenant: str, k: int, turns: int, ok: int, failed: int, delta: int | None) -> Partial:
    start = T0 + k * W
    agg = TenantWindowAggregate(tenant, start, start + W)
    for i in range(turns):
        agg.add_event({"event_time": start + i, "tenant": tenant, "type": "turn_end", "status": "ok",
                       "duration_ms": 10 + i})
    for i in range(ok + failed):
        agg.add_event({"event_time": start + i, "tenant": tenant, "type": "tool_complete", "tool_name": f"t{i % 3}",
                       "status": "ok" if i < ok else "error", "duration_ms": 5 + i})
    return Partial(source, agg.to_record(final=False), delta)


PARTIAL = st.tuples(st.just("partial"), st.integers(0, 1), st.sampled_from(TENANTS), st.integers(0, 16),
                    st.integers(0, 3), st.integers(0, 25), st.integers(0, 6), st.one_of(st.none(), st.integers(0, 50)))
MARKER = st.tuples(st.just("marker"), st.integers(0, 1), st.integers(0, 2))  # a step of 0-2 windows
# partials and markers ~9 in 10 ops, idle markers and restarts (from the changelog pairs) the rest
ops = st.lists(st.one_of(PARTIAL, MARKER, PARTIAL, MARKER, PARTIAL, MARKER, PARTIAL, MARKER,
                         st.tuples(st.just("idle"), st.integers(0, 1)), st.tuples(st.just("restart"),)),
               min_size=10, max_size=80)


def emitted(out: Any) -> tuple[Any, ...]:
    return (out.metrics, out.seals, out.alerts, out.late_partials, out.finals, out.revisions,
            [(p.source_partition, p.record, p.delta) for p in out.too_late])


def flush(s: MergeStage, table: dict[str, Any]) -> list[tuple[str, Any]]:
    changes = s.state_changes(0)
    for key, value in changes:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = json.loads(json.dumps(value))
    return changes


@settings(max_examples=150, deadline=None)
@given(ops, st.booleans(), st.integers(0, 4))
def test_visiting_only_the_tenants_due_equals_visiting_every_tenant(script: list[Any], hop: bool, late: int) -> None:
    kinds = (MergeStage, EveryTenant)
    stages = [make(cls, hop, late) for cls in kinds]
    tables: list[dict[str, Any]] = [{}, {}]
    marks = [0, 0]  # each source's watermark, in windows after T0
    for op in script:
        if op[0] == "restart":  # a fresh stage restored from the table's pairs (as after a crash)
            stages = [make(cls, hop, late) for cls in kinds]
            for s, table in zip(stages, tables, strict=True):
                s.restore(0, list(table.items()))
            continue
        if op[0] == "partial":
            _, source, tenant, k, turns, ok, failed, delta = op
            item: Partial | Marker = partial(source, tenant, k, max(turns, 1), ok, failed, delta)
        elif op[0] == "marker":
            marks[op[1]] += op[2]
            item = Marker(op[1], T0 + marks[op[1]] * W)
        else:
            item = Marker(op[1], None, idle=True)
        outs = [emitted(s.handle(0, item)) for s in stages]
        assert outs[0] == outs[1]
        assert flush(stages[0], tables[0]) == flush(stages[1], tables[1])
