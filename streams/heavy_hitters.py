"""The heaviest spenders of a tenant window in bounded memory: a weighted, mergeable Space-Saving sketch.

Space-Saving (Metwally, Agrawal, El Abbadi 2005) keeps at most ``capacity`` (k) counters. A monitored key's weight is
added to its counter; a new key, when all k counters are taken, replaces the key with the smallest counter and
inherits that count as its counter's *error*. Merging two sketches follows Cafaro, Pulimeno and Tempesta (2016,
"A parallel space saving algorithm for frequent items"): a key missing from a full sketch is taken at that sketch's
smallest counter (with that much error), counters and errors are added, and the k largest are kept.

Guarantees, for a stream (or any merge tree of streams) of total weight N = ``total`` (tested with hypothesis in
``tests/test_heavy_hitters.py``):

* a kept key's ``count`` overestimates its true weight by at most its ``error``, and ``error <= N / k``:
  ``count - error <= true <= count``;
* every key whose true weight is above N / k is kept (the heavy hitters are never missed);
* with at most k distinct keys overall the sketch is exact (every error 0) and independent of merge order.

Ties are broken by key, so the same input in the same order gives the same sketch. Weights are non-negative
integers (nano-USD here), so sums stay exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_CAPACITY = 20


class SpaceSaving:
    """At most ``capacity`` (key, count, error) counters over a weighted stream; see the module docstring."""

    __slots__ = ("capacity", "counts", "errors", "total")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.total = 0

    def add(self, key: str, weight: int) -> None:
        """Add ``weight`` (>= 0) for ``key``."""
        counts = self.counts
        self.total += weight
        n = counts.get(key)
        if n is not None:
            counts[key] = n + weight
        elif len(counts) < self.capacity:
            counts[key] = weight
            self.errors[key] = 0
        else:
            victim = min(counts, key=lambda k: (counts[k], k))
            floor = counts.pop(victim)
            del self.errors[victim]
            counts[key] = floor + weight
            self.errors[key] = floor

    def floor(self) -> int:
        """What a key not kept may have weighed at most: the smallest counter when full, else 0."""
        return min(self.counts.values()) if len(self.counts) >= self.capacity else 0

    def merge(self, other: SpaceSaving) -> None:
        """Fold ``other`` in (it is not changed); the capacity stays this sketch's."""
        if not other.counts and not other.total:
            return
        mine_floor, theirs_floor = self.floor(), other.floor()
        counts: dict[str, int] = {}
        errors: dict[str, int] = {}
        for key in self.counts.keys() | other.counts.keys():
            counts[key] = self.counts.get(key, mine_floor) + other.counts.get(key, theirs_floor)
            errors[key] = self.errors.get(key, mine_floor) + other.errors.get(key, theirs_floor)
        if len(counts) > self.capacity:
            kept = sorted(counts, key=lambda k: (-counts[k], k))[: self.capacity]
            counts = {k: counts[k] for k in kept}
            errors = {k: errors[k] for k in kept}
        self.counts, self.errors = counts, errors
        self.total += other.total

    def copy(self) -> SpaceSaving:
        dup = SpaceSaving(self.capacity)
        dup.counts, dup.errors, dup.total = dict(self.counts), dict(self.errors), self.total
        return dup

    def top(self, n: int | None = None) -> list[tuple[str, int, int]]:
        """``(key, count, error)``, heaviest first (ties by key)."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(k, c, self.errors[k]) for k, c in ranked[:n]]

    # -- plain data -----------------------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The ``SpendSketch`` of ``schemas/windowed_metrics.avsc``."""
        cap = 2**63 - 1  # an Avro long: saturate rather than fail the record (see streams/aggregate.py)
        return {"capacity": self.capacity, "total_nusd": min(self.total, cap),
                "users": [{"user": k, "cost_nusd": min(c, cap), "error_nusd": min(e, cap)} for k, c, e in self.top()]}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any] | None, capacity: int = DEFAULT_CAPACITY) -> SpaceSaving:
        if not rec or not rec.get("capacity"):
            return cls(capacity)  # a record from before the sketch existed: empty
        sketch = cls(int(rec["capacity"]))
        sketch.total = int(rec.get("total_nusd") or 0)
        for u in rec.get("users") or ():
            sketch.counts[str(u["user"])] = int(u["cost_nusd"])
            sketch.errors[str(u["user"])] = int(u["error_nusd"])
        return sketch

    def to_state(self) -> list[Any]:
        return [self.capacity, self.total, [[k, c, e] for k, c, e in self.top()]]

    @classmethod
    def from_state(cls, data: Iterable[Any] | None, capacity: int = DEFAULT_CAPACITY) -> SpaceSaving:
        if not data:
            return cls(capacity)
        cap, total, entries = data
        sketch = cls(int(cap))
        sketch.total = int(total)
        for k, c, e in entries:
            sketch.counts[str(k)] = int(c)
            sketch.errors[str(k)] = int(e)
        return sketch
