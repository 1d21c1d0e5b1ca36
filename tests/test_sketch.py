"""The duration sketch: relative accuracy against exact quantiles, exact mergeability, deterministic serialisation."""

from __future__ import annotations

import json
import math
import random

import pytest

from streams.sketch import DurationSketch

QS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact(values: list[float], q: float) -> float:
    """The nearest-rank quantile (the ceil(q * n)-th smallest value), as the simulator's ground truth computes it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def sketch_of(values: list[float], alpha: float = 0.01) -> DurationSketch:
    s = DurationSketch(alpha)
    for v in values:
        s.add(v)
    return s


def datasets() -> list[tuple[str, list[float]]]:
    rng = random.Random(20260101)
    return [
        ("lognormal ms ints", [int(rng.lognormvariate(6, 1.5)) for _ in range(20_000)]),
        ("uniform ints beyond the key table", [rng.randint(1, 3_600_000) for _ in range(10_000)]),
        ("floats", [rng.expovariate(1 / 250.0) for _ in range(10_000)]),
        ("with zeros", [0] * 300 + [rng.randint(1, 50) for _ in range(700)]),
        ("bimodal", [rng.gauss(20, 2) for _ in range(5_000)] + [rng.gauss(30_000, 500) for _ in range(500)]),
        ("tiny", [7.0]),
    ]


@pytest.mark.parametrize("alpha", [0.01, 0.02])
@pytest.mark.parametrize(("name", "values"), datasets(), ids=[n for n, _ in datasets()])
def test_quantiles_within_relative_error(name: str, values: list[float], alpha: float) -> None:
    s = sketch_of(values, alpha)
    estimates = s.quantiles(QS)
    for q, est in zip(QS, estimates, strict=True):
        true = max(exact(values, q), 0)
        assert est is not None
        assert abs(est - true) <= alpha * true + 1e-9, (name, q, est, true)
        assert s.quantile(q) == est
    assert s.count == len(values)
    assert s.sum == pytest.approx(sum(max(v, 0) for v in values))
    assert s.min == max(min(values), 0) and s.max == max(values)


def test_empty_sketch() -> None:
    s = DurationSketch()
    assert s.quantile(0.5) is None and s.quantiles([0.5, 0.99]) == [None, None]
    assert s.min is None and s.max is None and s.count == 0
    assert DurationSketch.from_dict(s.to_dict()) == s


def test_negative_values_count_as_zero() -> None:
    s = sketch_of([-5, 0, 10])
    assert s.zero_count == 2 and s.min == 0 and s.quantile(0.0) == 0.0 and s.sum == 10


def test_quantile_argument_checked() -> None:
    with pytest.raises(ValueError):
        sketch_of([1]).quantile(1.5)
    with pytest.raises(ValueError):
        DurationSketch(0.0)


def test_merge_equals_sketch_of_union() -> None:
    rng = random.Random(3)
    parts = [[int(rng.lognormvariate(5 + i, 1)) for _ in range(rng.randint(0, 3000))] for i in range(4)]
    union = sketch_of([v for p in parts for v in p])
    merged = DurationSketch()
    for p in parts:
        merged.merge(sketch_of(p))
    assert merged == union
    assert merged.quantiles(QS) == union.quantiles(QS)


def test_merge_is_associative_and_commutative() -> None:
    rng = random.Random(4)
    a, b, c = (sketch_of([rng.randint(0, 10**6) for _ in range(500)]) for _ in range(3))

    def merged(*sketches: DurationSketch) -> DurationSketch:
        out = DurationSketch()
        for s in sketches:
            out.merge(s)
        return out

    left = merged(merged(a, b), c)
    right = merged(a, merged(b, c))
    assert left == right == merged(c, b, a) == merged(b, a, c)


def test_merge_leaves_the_argument_unchanged_and_checks_accuracy() -> None:
    a, b = sketch_of([1, 2, 3]), sketch_of([40, 50])
    before = b.to_dict()
    a.merge(b)
    assert b.to_dict() == before and a.count == 5
    with pytest.raises(ValueError):
        a.merge(DurationSketch(0.02))


def test_serialisation_is_compact_deterministic_and_round_trips() -> None:
    rng = random.Random(5)
    values = [rng.randint(1, 100_000) for _ in range(2000)]
    s1 = sketch_of(values)
    s2 = sketch_of(list(reversed(values)))
    d1 = s1.to_dict()
    assert json.dumps(d1) == json.dumps(s2.to_dict())  # insertion order does not leak
    assert d1["bucket_keys"] == sorted(d1["bucket_keys"])
    assert len(d1["bucket_keys"]) < 600  # 1 .. 1e5 at 1 %: ~580 buckets at most, whatever the count
    back = DurationSketch.from_dict(json.loads(json.dumps(d1)))
    assert back == s1 and back.quantiles(QS) == s1.quantiles(QS)
    back.add(7)
    assert back.count == s1.count + 1


def test_from_dict_rejects_inconsistent_counts() -> None:
    d = sketch_of([1, 2, 3]).to_dict()
    d["count"] = 4
    with pytest.raises(ValueError):
        DurationSketch.from_dict(d)


def test_from_dict_rejects_duplicate_keys_and_drops_empty_buckets() -> None:
    d = sketch_of([1, 2, 3]).to_dict()
    dup = dict(d, bucket_keys=[d["bucket_keys"][0]] * 3)
    with pytest.raises(ValueError, match="duplicate"):
        DurationSketch.from_dict(dup)
    padded = dict(d, bucket_keys=[*d["bucket_keys"], 999], bucket_counts=[*d["bucket_counts"], 0])
    back = DurationSketch.from_dict(padded)
    assert back == sketch_of([1, 2, 3]) and 999 not in back.bins
