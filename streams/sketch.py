"""A mergeable quantile sketch for durations (DDSketch's log-scale buckets, relative error ``alpha``).

Why our own and not the ``ddsketch`` package: the hot path adds one duration per event, and a dict of
bucket -> count (integer milliseconds take their bucket from a table, others one ``log``) is ~2.7x cheaper than
``ddsketch.DDSketch.add`` (``bench/bench_aggregate.py`` measures both when ddsketch is importable); the serialised
form is a plain, deterministic dict that maps one to one onto the ``Duration`` record of
``schemas/windowed_metrics.avsc``. Quantiles are nearest-rank (the ``ceil(q*n)``-th smallest value, as the
simulator's ground truth computes them), within ``alpha`` relative error.

Bucket ``k`` holds the values in ``(gamma**(k-1), gamma**k]`` with ``gamma = (1+alpha)/(1-alpha)`` and reports them
as ``2*gamma**k/(gamma+1)``, which is within ``alpha`` of every value in the bucket. Buckets depend on ``alpha`` only,
so merging two sketches adds counts bucket by bucket: the quantiles of a merge are exactly the quantiles of a sketch
of the union, and merging is associative and commutative. Values <= 0 (a cancelled tool has duration 0) go to a zero
bucket and report 0; negative durations (a clock step) are counted as 0. For millisecond durations up to ~11 days the
sketch never holds more than ~1,100 buckets at alpha = 1 %, so no bucket collapsing is needed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from schemas.codegen import _ZZ, PreEncoded, _enc_int, _enc_long, _uvarint

DEFAULT_RELATIVE_ACCURACY = 0.01

_log = math.log
_ceil = math.ceil
_TABLE_SIZE = 1 << 16  # integer values below this (milliseconds: ~65 s) take their bucket from a table


@cache
def _key_table(relative_accuracy: float) -> list[int]:
    """Bucket keys of the integers 0 .. 2**16-1 (index 0 unused): a list index is cheaper than log + ceil."""
    mult = 1.0 / _log((1.0 + relative_accuracy) / (1.0 - relative_accuracy))
    interned: dict[int, int] = {}
    return [0] + [interned.setdefault(k, k) for k in (_ceil(_log(v) * mult) for v in range(1, _TABLE_SIZE))]


@cache
def _constants(relative_accuracy: float) -> tuple[float, float, float, list[int]]:
    """(the accuracy, gamma, 1 / log(gamma), the integer key table) of a relative accuracy, checked once: one tuple
    shared by every sketch of that accuracy."""
    if not 0.0 < relative_accuracy < 1.0:
        raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
    gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
    return relative_accuracy, gamma, 1.0 / _log(gamma), _key_table(relative_accuracy)


_Plan = tuple[tuple[float, ...], list[int], tuple[str, ...]]
DURATION_QUANTILES = (0.5, 0.95, 0.99)  # the p50, p95, p99 of the Duration record
DURATION_RECORD = "io.agentwatch.Duration"
_DOUBLES = struct.Struct("<dBdBdBdBdBdd").pack  # sum; min, max, p50, p95, p99 (union branch 1 = zig-zag 2); alpha
_pack_d = struct.Struct("<d").pack
_NULLS5 = b"\x00" * 5
_LONG_END = 1 << 63


@cache
def _plan(qs: tuple[float, ...]) -> _Plan:
    """Quantiles checked once: the values, the order to walk them in, their record names (0.95 -> ``p95``)."""
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
    return qs, sorted(range(len(qs)), key=qs.__getitem__), tuple(f"p{q * 100:g}" for q in qs)


_DURATION_PLAN = _plan(DURATION_QUANTILES)


class DurationSketch:
    """Quantiles within ``relative_accuracy`` of the exact nearest-rank value: the ``ceil(q * count)``-th smallest.

    Compact because a worker holds one per tenant, window and tool (goal 2 of issue 13: 10,000 tenants x 50 tools):
    the accuracy's constants are one shared tuple, and ``bins`` stays ``None`` while the sketch holds at most one
    positive value, which is then ``max`` itself (its bucket is computed when needed): a tool called once in a window
    costs no dict. The second positive value creates the dict. Both forms give the same merges, quantiles and records.
    """

    __slots__ = ("_c", "bins", "zero_count", "count", "sum", "_lo", "_hi")

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        # a window holds dozens of sketches and stage 2 rebuilds them for every window: constants come cached
        self._c = _constants(relative_accuracy)
        self.bins: dict[int, int] | None = None  # None: at most one positive value, held as _hi (see the class)
        self.zero_count = 0
        self.count = 0
        self.sum: float = 0
        self._lo: float = math.inf  # min and max seen (inf/-inf while empty)
        self._hi: float = -math.inf

    @property
    def relative_accuracy(self) -> float:
        return self._c[0]

    def _key(self, value: float) -> int:
        """The bucket of a positive value (as :meth:`add` computes it)."""
        if value < _TABLE_SIZE:
            try:
                return self._c[3][value]
            except TypeError:  # a float
                pass
        return _ceil(_log(value) * self._c[2])

    def add(self, value: float) -> None:
        """Record one value (hot path: one table look-up or log, one dict update; the first positive value none)."""
        if value > 0:
            bins = self.bins
            if bins is None:
                if self.count != self.zero_count:  # a second positive value: the dict starts with the first
                    bins = self.bins = {self._key(self._hi): 1}
                    k = self._key(value)
                    bins[k] = bins.get(k, 0) + 1
            else:
                if value < _TABLE_SIZE:
                    try:
                        k = self._c[3][value]
                    except TypeError:  # a float
                        k = _ceil(_log(value) * self._c[2])
                else:
                    k = _ceil(_log(value) * self._c[2])
                bins[k] = bins.get(k, 0) + 1
        else:
            value = 0
            self.zero_count += 1
        self.count += 1
        self.sum += value
        if value < self._lo:
            self._lo = value
        if value > self._hi:
            self._hi = value

    def buckets(self) -> dict[int, int]:
        """Bucket key -> count of the positive values (a fresh dict for the compact form; do not mutate)."""
        bins = self.bins
        if bins is not None:
            return bins
        return {self._key(self._hi): 1} if self.count != self.zero_count else {}

    @property
    def min(self) -> float | None:
        return self._lo if self.count else None

    @property
    def max(self) -> float | None:
        return self._hi if self.count else None

    def merge(self, other: DurationSketch) -> None:
        """Fold ``other`` into this sketch (same relative accuracy required: buckets must line up)."""
        if other._c is not self._c and other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge sketches of relative accuracy {other.relative_accuracy} and {self.relative_accuracy}"
            )
        if not other.count:
            return
        if other.count != other.zero_count:  # other has positive values
            bins = self.bins
            if self.count == self.zero_count and not bins:  # none here: take other's form
                if other.bins is not None:
                    self.bins = dict(other.bins)  # a fresh sketch (a window built from panes): copy at C speed
                else:
                    self.bins = None  # other's single value becomes our max below
            else:
                if bins is None:
                    bins = self.bins = {self._key(self._hi): 1}
                theirs = other.bins
                if theirs is None:
                    k = other._key(other._hi)
                    bins[k] = bins.get(k, 0) + 1
                else:
                    for k, c in theirs.items():
                        bins[k] = bins.get(k, 0) + c
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        if other._lo < self._lo:
            self._lo = other._lo
        if other._hi > self._hi:
            self._hi = other._hi

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), or None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Several quantiles in one walk over the sorted buckets (None for each when empty)."""
        bins = self.buckets()
        keys = sorted(bins)
        return self._quantiles(_plan(tuple(qs)), keys, [bins[k] for k in keys])

    def _quantiles(self, plan: _Plan, keys: list[int], counts: list[int]) -> list[float | None]:
        qs, order, _names = plan
        if not self.count:
            return [None] * len(qs)
        lo, hi, gamma = self._lo, self._hi, self._c[1]
        out: list[float | None] = [None] * len(qs)
        n = len(keys)
        i = 0  # buckets walked so far; the value sits in bucket i - 1 (or the zero bucket while i == 0)
        seen = self.zero_count
        count = self.count
        for j in order:
            rank = max(0, _ceil(qs[j] * count) - 1)  # nearest rank, 0-based
            while seen <= rank and i < n:
                seen += counts[i]
                i += 1
            if seen <= rank:  # counts inconsistent with count: report the maximum
                value = hi
            elif i == 0:
                value = 0.0
            else:
                value = 2.0 * gamma ** keys[i - 1] / (gamma + 1.0)
                # the exact value lies in [min, max]; clamping only brings the estimate closer to it
                if value < lo:
                    value = lo
                elif value > hi:
                    value = hi
            out[j] = float(value)
        return out

    def copy(self) -> DurationSketch:
        dup = DurationSketch.__new__(DurationSketch)
        dup._c = self._c
        dup.bins = None if self.bins is None else dict(self.bins)
        dup.zero_count, dup.count, dup.sum, dup._lo, dup._hi = self.zero_count, self.count, self.sum, self._lo, self._hi
        return dup

    def to_dict(self, quantiles: tuple[float, ...] = ()) -> dict[str, Any]:
        """Compact, deterministic form (keys ascending): the fields of the ``Duration`` Avro record.

        With ``quantiles``, also ``p<100 q>`` for each (``p50``, ``p95``, ``p99`` for 0.5, 0.95, 0.99), from the
        same sort of the buckets.
        """
        bins = self.buckets()
        keys = sorted(bins)
        counts = list(map(bins.__getitem__, keys))  # at C speed: to_dict runs for every sketch of every window
        out = {
            "relative_accuracy": self.relative_accuracy,
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "zero_count": self.zero_count,
            "bucket_keys": keys,
            "bucket_counts": counts,
        }
        if quantiles:
            plan = _plan(tuple(quantiles))
            for name, value in zip(plan[2], self._quantiles(plan, keys, counts), strict=True):
                out[name] = value
        return out

    def duration_record(self) -> dict[str, Any]:
        """``to_dict(DURATION_QUANTILES)`` carrying its ``Duration`` Avro body (:class:`schemas.codegen.PreEncoded`).

        Why: stage 2 writes one Duration per tool, per window, per emission, and the generated encoder's field by
        field work was the largest item of its encoding; here the seven doubles are one ``struct`` call and the
        bucket arrays are joined from the varint table. The bytes are the generated encoder's (a property test
        compares them with fastavro's); a value this cannot write (a number no double holds) gives a plain dict,
        left to the generated encoder.
        """
        bins = self.buckets()
        keys = sorted(bins)
        counts = list(map(bins.__getitem__, keys))
        count, zero, total, alpha = self.count, self.zero_count, self.sum, self.relative_accuracy
        p50, p95, p99 = self._quantiles(_DURATION_PLAN, keys, counts)
        lo, hi = (self._lo, self._hi) if count else (None, None)
        out = PreEncoded(relative_accuracy=alpha, count=count, sum=total, min=lo, max=hi, zero_count=zero,
                         bucket_keys=keys, bucket_counts=counts, p50=p50, p95=p95, p99=p99)
        return _with_body(out, count, zero, total, alpha, lo, hi, p50, p95, p99, keys, counts)

    def to_state(self) -> Any:
        """Compact JSON-able form for a changelog table (the accuracy is the owner's): the value alone for a sketch
        of one positive value (a tool called once in a window, the common case with many tenants), else
        ``[count, zero_count, sum, min, max, bucket_keys, bucket_counts]``. Read back by :meth:`from_state`, which
        also reads :meth:`to_dict`'s form (state written before)."""
        if self.count == 1 and not self.zero_count:
            return self._hi
        bins = self.buckets()
        keys = sorted(bins)
        return [self.count, self.zero_count, self.sum, self.min, self.max, keys, list(map(bins.__getitem__, keys))]

    @classmethod
    def from_state(cls, relative_accuracy: float, data: Any) -> DurationSketch:
        """Inverse of :meth:`to_state` (or :meth:`to_dict`); raises ValueError on anything else."""
        if isinstance(data, Mapping):
            return cls.from_dict(data)
        if isinstance(data, list):
            if len(data) != 7:
                raise ValueError(f"sketch state has {len(data)} values, expected 7")
            count, zero, total, lo, hi, keys, counts = data
            return cls.from_dict({"relative_accuracy": relative_accuracy, "count": count, "zero_count": zero,
                                  "sum": total, "min": lo, "max": hi, "bucket_keys": keys, "bucket_counts": counts})
        if isinstance(data, (int, float)) and not isinstance(data, bool) and data > 0:
            sketch = cls(relative_accuracy)
            sketch.add(_number(data))
            return sketch
        raise ValueError(f"not a sketch state: {data!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DurationSketch:
        """Inverse of :meth:`to_dict` (extra keys such as p50 are ignored)."""
        sketch = cls(data["relative_accuracy"])
        keys, counts = data["bucket_keys"], data["bucket_counts"]
        if len(keys) != len(counts):
            raise ValueError(f"sketch has {len(keys)} bucket keys but {len(counts)} counts")
        bins = dict(zip(map(int, keys), map(int, counts), strict=True))
        if len(bins) != len(keys):
            raise ValueError("sketch has duplicate bucket keys")
        if 0 in bins.values():
            bins = {k: c for k, c in bins.items() if c}
        sketch.bins = bins
        sketch.zero_count = int(data["zero_count"])
        sketch.count = int(data["count"])
        if sketch.count != sketch.zero_count + sum(bins.values()):
            raise ValueError("sketch count does not equal the sum of its buckets")
        total = data["sum"]
        sketch.sum = int(total) if isinstance(total, float) and total.is_integer() else total
        if sketch.count:
            sketch._lo = _number(data["min"])
            sketch._hi = _number(data["max"])
            if len(bins) == 1 and 1 in bins.values():  # one positive value: the compact form, if max is in its bucket
                hi = sketch._hi
                if isinstance(hi, (int, float)) and hi > 0 and sketch._key(hi) in bins:
                    sketch.bins = None
        elif not bins:
            sketch.bins = None
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DurationSketch):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"DurationSketch(count={self.count}, buckets={len(self.buckets())}, alpha={self.relative_accuracy})"


def _with_body(out: PreEncoded, count: int, zero: int, total: float, alpha: float, lo: float | None,
               hi: float | None, p50: float | None, p95: float | None, p99: float | None, keys: list[int],
               counts: list[int]) -> dict[str, Any]:
    """``out`` given its ``Duration`` Avro body (``keys`` sorted ascending), or a plain dict of it when a value is
    one this does not write (left to the generated encoder, which writes or diagnoses it)."""
    try:
        if total.__class__ is bool or alpha.__class__ is bool or not (-8192 <= zero < _LONG_END
                                                                      and -8192 <= count < _LONG_END):
            raise TypeError
        if count:
            doubles = _DOUBLES(total, 2, lo, 2, hi, 2, p50, 2, p95, 2, p99, alpha)
        else:
            doubles = _pack_d(total) + _NULLS5 + _pack_d(alpha)
        if not keys:
            arrays = b"\x00\x00"
        elif -8192 <= keys[0] and keys[-1] < 8192:  # sorted: the ends are the min and the max
            n = _uvarint(2 * len(keys))
            zz = _ZZ.__getitem__
            if max(counts) < 8192 and min(counts) >= -8192:  # (counts are >= 1 unless hostile)
                arrays = b"".join((n, *map(zz, keys), b"\x00", n, *map(zz, counts), b"\x00"))
            else:
                arrays = b"".join((n, *map(zz, keys), b"\x00", n, *map(_enc_long, counts), b"\x00"))  # may raise
        else:  # keys of values below ~1e-35 or above ~1e35 ms: rare, item by item
            n = _uvarint(2 * len(keys))
            arrays = b"".join((n, *map(_enc_int, keys), b"\x00", n, *map(_enc_long, counts), b"\x00"))
        out.avro = b"".join(((_ZZ[count] if count < 8192 else _enc_long(count)), doubles,
                             (_ZZ[zero] if zero < 8192 else _enc_long(zero)), arrays))
    except Exception:  # noqa: BLE001 - whatever this cannot write, the generated encoder writes or diagnoses
        return dict(out)
    out.record = DURATION_RECORD
    return out


def _number(value: Any) -> float | None:
    """Floats that are whole numbers come back as ints, so a round trip through Avro doubles compares equal."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
