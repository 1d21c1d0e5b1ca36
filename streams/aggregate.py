"""Per-tenant, per-window metrics folded from decoded AgentEvents; mergeable for two-stage aggregation.

What counts (the same definitions as the ground truth of ``producers/ground_truth.py``; quantiles are nearest-rank there
and within the sketch's relative error here):

* turn: ``turn_end`` (duration = its ``duration_ms``; counted by ``status`` and by ``incomplete_reason``); a
  max-iterations hit is a ``turn_end`` with ``incomplete_reason=max_iterations``.
* tool call: ``tool_complete`` by ``tool_name`` (``status`` ok|error|cancelled; failure = ``error``; duration =
  ``duration_ms``).
* LLM call: ``llm_call_completed`` by ``model``; LLM error = ``status=error``, by ``error_class``. Provider
  attempts = LLM calls + ``llm_retry`` events (each a failed HTTP attempt that was retried); a failed attempt
  (``llm_retry`` or a failed call) is labelled by its ``http_status``, else its ``error_class``; ``llm_5xx`` counts
  failed attempts with ``http_status`` 500..599 (the LLM 5xx rate is ``llm_5xx / llm_attempts``).
* tokens: prompt, completion, cached (= ``cache_read_tokens``), cache_creation, reasoning, summed over
  ``llm_call_completed`` (cache and reasoning are parts of prompt and completion, never added; total = prompt +
  completion). A call with both ``prompt_tokens`` and ``completion_tokens`` null reported no usage: it counts in
  ``llm_calls_without_usage`` (failed calls never carry usage, so they count there too; ``llm_calls -
  llm_calls_without_usage`` is the number of calls whose tokens are in the sums), never as 0 tokens. A per-skill
  breakdown uses the ``skill`` key of the event's JSON ``payload`` when present.
* cost: each ``llm_call_completed`` with usage is priced by :mod:`schemas.pricing` (model, event time, the five token
  counts) in integer nano-USD rounded once per call; ``cost_nusd`` sums them (per window, model and skill), so it is
  exact and the same in any merge order. A call with usage whose model has no price counts in
  ``llm_calls_unpriced`` and adds nothing to the cost (never priced as 0 silently). Cost per turn = cost / turns.
  Cost per ``user_id`` goes into a bounded Space-Saving sketch (``top_spenders``, :mod:`streams.heavy_hitters`):
  the heaviest spenders with stated error bounds, never a label.
* confirmation: ``tool_confirmation`` is a request; ``confirm_resolved.confirm_outcome`` allow|reject|timeout.

Label cardinality: per tenant and dimension (tool, model, skill, error_type = error class, attempt_status) a window
keeps at most ``label_limit`` named values. :class:`LabelGuard` remembers the counts seen in the tenant's closed
windows; its top ``label_limit`` names are always admitted, other names take the remaining places first come, and
the rest are folded into ``OTHER`` (their distinct number is reported per dimension). A merge whose union exceeds
the limit folds the smallest labels into ``OTHER``, so with folding a merge is associative in totals but not
necessarily in the split.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from schemas.pricing import NANO_PER_USD, PriceTable, default_prices
from streams.heavy_hitters import DEFAULT_CAPACITY, SpaceSaving
from streams.sketch import DEFAULT_RELATIVE_ACCURACY, DURATION_QUANTILES, DurationSketch

OTHER = "__other__"
UNKNOWN = "unknown"
DIMENSIONS = ("tool", "model", "skill", "error_type", "attempt_status")
DEFAULT_LABEL_LIMIT = 50
QUANTILES = DURATION_QUANTILES  # p50, p95, p99: the quantile fields of the Duration record
_COUNTED_TYPES = frozenset(
    {"tool_complete", "llm_call_completed", "llm_retry", "turn_end", "tool_confirmation", "confirm_resolved"}
)
STATE_VERSION = 1
# What the fold reads of an event, in the order of a row (:meth:`TenantWindowAggregate.add_row`): the window key
# and time first, then the fold's fields, then what only the range checks (seq) and single-event dedup (event_id)
# read. The worker decodes exactly these fields (``schemas.codec.Projector``) and builds no dict per event.
FOLD_FIELDS = (
    "tenant", "event_time", "type", "tool_name", "status", "duration_ms", "model", "http_status", "error_class",
    "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens", "reasoning_tokens",
    "user_id", "payload", "incomplete_reason", "confirm_outcome", "seq", "event_id",
)


def attempt_status(http_status: int | None, error_class: str | None) -> str:
    """How a failed provider attempt is labelled: its HTTP status code, else its exception class, else ``unknown``."""
    if http_status is not None:
        return str(http_status)
    return error_class or UNKNOWN


_SKILL_SIMPLE = re.compile(r'"skill"\s*:\s*"([^"\\]*)"')
_SKILL_KEY = re.compile(r'"skill"\s*:\s*')
_json_value = json.JSONDecoder().raw_decode


def skill_of(payload: str) -> str | None:
    """The ``skill`` of a JSON payload text without parsing all of it (payloads of LLM calls can be large).

    Takes the first ``"skill":`` key in the text (an escaped quote inside a string value cannot match); a payload
    nesting another object with a ``skill`` key before the top-level one would be misread, which our producers
    never write.
    """
    m = _SKILL_SIMPLE.search(payload)
    if m is not None:
        return m.group(1) or None
    m = _SKILL_KEY.search(payload)  # a value with escapes, or not a string
    if m is None:
        return None
    try:
        value, _end = _json_value(payload, m.end())
    except ValueError:
        return None
    return value if isinstance(value, str) and value else None


# -- per-label counters -------------------------------------------------------------------------------------------


class ToolStats:
    __slots__ = ("calls", "failures", "cancelled", "duration")

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        self.calls = 0
        self.failures = 0
        self.cancelled = 0
        self.duration = DurationSketch(relative_accuracy)

    def merge(self, other: ToolStats) -> None:
        self.calls += other.calls
        self.failures += other.failures
        self.cancelled += other.cancelled
        self.duration.merge(other.duration)

    def copy(self) -> ToolStats:
        dup = ToolStats.__new__(ToolStats)
        dup.calls, dup.failures, dup.cancelled = self.calls, self.failures, self.cancelled
        dup.duration = self.duration.copy()
        return dup

    @property
    def weight(self) -> int:
        return self.calls


_USAGE_FIELDS = (
    "llm_calls",
    "llm_errors",
    "llm_errors_5xx",
    "llm_calls_without_usage",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "cost_nusd",
    "llm_calls_unpriced",
)


class UsageStats:
    """LLM calls and tokens of one model or skill."""

    __slots__ = _USAGE_FIELDS

    def __init__(self, _accuracy: float = 0.0) -> None:
        self.llm_calls = 0
        self.llm_errors = 0
        self.llm_errors_5xx = 0
        self.llm_calls_without_usage = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_read_tokens = 0
        self.cache_creation_tokens = 0
        self.reasoning_tokens = 0
        self.cost_nusd = 0  # integer nano-USD: sums of per-call costs (schemas/pricing.py), exact in any order
        self.llm_calls_unpriced = 0  # calls with usage whose model has no price: not in cost_nusd

    def merge(self, other: UsageStats) -> None:
        self.llm_calls += other.llm_calls
        self.llm_errors += other.llm_errors
        self.llm_errors_5xx += other.llm_errors_5xx
        self.llm_calls_without_usage += other.llm_calls_without_usage
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_creation_tokens += other.cache_creation_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_nusd += other.cost_nusd
        self.llm_calls_unpriced += other.llm_calls_unpriced

    def copy(self) -> UsageStats:
        dup = UsageStats()
        dup.merge(self)
        return dup

    def as_list(self) -> list[int]:
        return [getattr(self, name) for name in _USAGE_FIELDS]

    @classmethod
    def from_list(cls, values: Iterable[int]) -> UsageStats:
        """Also reads the shorter lists of state written before cost existed (their cost reads as 0)."""
        stats = cls()
        values = list(values)
        if not len(_USAGE_FIELDS) - 2 <= len(values) <= len(_USAGE_FIELDS):
            raise ValueError(f"usage state has {len(values)} values, expected {len(_USAGE_FIELDS)}")
        for name, value in zip(_USAGE_FIELDS, values, strict=False):
            setattr(stats, name, int(value))
        return stats

    @property
    def weight(self) -> int:
        return self.llm_calls

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _Count:
    """An int counter in a label dict (error types), with the same interface as the stats classes."""

    __slots__ = ("n",)

    def __init__(self, _accuracy: float = 0.0) -> None:
        self.n = 0

    def merge(self, other: _Count) -> None:
        self.n += other.n

    def copy(self) -> _Count:
        dup = _Count()
        dup.n = self.n
        return dup

    @property
    def weight(self) -> int:
        return self.n


# -- cardinality guard --------------------------------------------------------------------------------------------


_NO_NAMES: frozenset[str] = frozenset()


class LabelGuard:
    """One tenant's history of one label dimension: counts seen in closed windows, and the top ``limit`` names.

    Bounded: at most ``4 * limit`` names are remembered (the smallest counts are forgotten first).
    """

    __slots__ = ("limit", "counts", "preferred")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("label limit must be >= 1")
        self.limit = limit
        self.counts: dict[str, int] = {}
        self.preferred: frozenset[str] = _NO_NAMES  # shared: an empty frozenset() is 216 bytes, five per tenant

    def observe(self, counts: Mapping[str, int]) -> None:
        """Add one closed window's per-name counts (``OTHER`` excluded) and recompute the preferred names."""
        mine = self.counts
        for name, n in counts.items():
            if n and name != OTHER:
                mine[name] = mine.get(name, 0) + n
        if len(mine) <= self.limit:
            self.preferred = frozenset(mine)
            return
        ranked = sorted(mine.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(ranked) > 4 * self.limit:
            self.counts = dict(ranked[: 4 * self.limit])
        self.preferred = frozenset(name for name, _n in ranked[: self.limit])

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @classmethod
    def from_dict(cls, limit: int, counts: Mapping[str, int]) -> LabelGuard:
        guard = cls(limit)
        guard.observe(counts)
        return guard


class TenantGuards:
    """The label guards of one tenant, one per dimension."""

    __slots__ = DIMENSIONS

    def __init__(self, limit: int) -> None:
        self.tool = LabelGuard(limit)
        self.model = LabelGuard(limit)
        self.skill = LabelGuard(limit)
        self.error_type = LabelGuard(limit)
        self.attempt_status = LabelGuard(limit)

    def observe(self, agg: TenantWindowAggregate) -> None:
        for dim, tracked in agg.label_dicts().items():
            counts = {name: stats.weight for name, stats in tracked.items()}
            for name, n in agg.folded[dim].items():
                counts[name] = counts.get(name, 0) + n
            getattr(self, dim).observe(counts)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {dim: getattr(self, dim).to_dict() for dim in DIMENSIONS}

    @classmethod
    def from_dict(cls, limit: int, data: Mapping[str, Mapping[str, int]]) -> TenantGuards:
        guards = cls(limit)
        for dim in DIMENSIONS:
            setattr(guards, dim, LabelGuard.from_dict(limit, data.get(dim, {})))
        return guards


# -- the aggregate ------------------------------------------------------------------------------------------------


class TenantWindowAggregate:
    """All metrics of one tenant in one window; :meth:`add_event` is the hot path (one call per event)."""

    __slots__ = (
        "tenant",
        "window_start",
        "window_end",
        "label_limit",
        "relative_accuracy",
        "guards",
        "prices",
        "events",
        "by_type",
        "turns",
        "turns_by_status",
        "incomplete_reasons",
        "max_iterations_hits",
        "turn_duration",
        "tools",
        "llm_duration",
        "models",
        "skills",
        "llm_error_types",
        "llm_retries",
        "llm_retries_5xx",
        "failed_attempts",
        "confirm_requests",
        "confirm_allows",
        "confirm_rejects",
        "confirm_timeouts",
        "folded",
        "folded_extra",
        "spenders",
    )

    def __init__(
        self,
        tenant: str,
        window_start: int,
        window_end: int,
        *,
        label_limit: int = DEFAULT_LABEL_LIMIT,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        guards: TenantGuards | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.tenant = tenant
        self.window_start = window_start
        self.window_end = window_end
        self.label_limit = label_limit
        self.relative_accuracy = relative_accuracy
        self.guards = guards
        self.prices = prices if prices is not None else default_prices()
        self.events = 0
        self.by_type: dict[str, int] = {}
        self.turns = 0
        self.turns_by_status: dict[str, int] = {}
        self.incomplete_reasons: dict[str, int] = {}
        self.max_iterations_hits = 0
        self.turn_duration = DurationSketch(relative_accuracy)
        self.tools: dict[str, ToolStats] = {}
        self.llm_duration = DurationSketch(relative_accuracy)
        self.models: dict[str, UsageStats] = {}
        self.skills: dict[str, UsageStats] = {}
        self.llm_error_types: dict[str, _Count] = {}  # failed llm_call_completed by error_class
        self.llm_retries = 0
        self.llm_retries_5xx = 0
        self.failed_attempts: dict[str, _Count] = {}  # failed provider attempts by attempt_status()
        self.confirm_requests = 0
        self.confirm_allows = 0
        self.confirm_rejects = 0
        self.confirm_timeouts = 0
        # per dimension: names folded into OTHER with their counts (bounded), and distinct folds known only as a number
        self.folded: dict[str, dict[str, int]] = {dim: {} for dim in DIMENSIONS}
        self.folded_extra: dict[str, int] = dict.fromkeys(DIMENSIONS, 0)
        self.spenders = SpaceSaving(DEFAULT_CAPACITY)  # cost per user_id, the heaviest kept (bounded)

    # -- hot path -----------------------------------------------------------------------------------------------

    def add_event(self, ev: Mapping[str, Any]) -> None:
        """Fold one decoded AgentEvent (a dict with the contract's fields; absent optional fields read as null)."""
        ev["type"]  # a dict without a type is not an event: KeyError, as ever
        self.add_row(tuple([ev.get(f) for f in FOLD_FIELDS]))

    def add_row(self, row: tuple[Any, ...]) -> None:
        """Fold one event given as the tuple of its :data:`FOLD_FIELDS` (the worker's decoder builds these)."""
        t = row[2]
        self.events += 1
        by_type = self.by_type
        by_type[t] = by_type.get(t, 0) + 1
        if t not in _COUNTED_TYPES:
            return
        (_tenant, event_time, t, tool_name, status, d, model, code, error_class, p, c, cr, cc, rs, user, payload,
         reason, outcome) = row[:18]
        if t == "tool_complete":
            name = tool_name or UNKNOWN
            stats = self.tools.get(name)
            if stats is None:
                stats = self._label(self.tools, "tool", name, ToolStats)
            stats.calls += 1
            if status == "error":
                stats.failures += 1
            elif status == "cancelled":
                stats.cancelled += 1
            if d is not None:
                stats.duration.add(d)
        elif t == "llm_call_completed":
            name = model or UNKNOWN
            stats = self.models.get(name)
            if stats is None:
                stats = self._label(self.models, "model", name, UsageStats)
            stats.llm_calls += 1
            failed = status == "error"
            is_5xx = False
            if failed:
                is_5xx = code is not None and 500 <= code <= 599
                stats.llm_errors += 1
                stats.llm_errors_5xx += is_5xx
                self._count_error(error_class)
                self._count_failed_attempt(code, error_class)
            if p is None and c is None:
                stats.llm_calls_without_usage += 1
                cr = cc = rs = None
                cost: int | None = 0
            else:
                if p:
                    stats.prompt_tokens += p
                if c:
                    stats.completion_tokens += c
                if cr:
                    stats.cache_read_tokens += cr
                if cc:
                    stats.cache_creation_tokens += cc
                if rs:
                    stats.reasoning_tokens += rs
                cost = self.prices.cost_nusd(model, event_time or self.window_start, p, c, cr, cc, rs)
                if cost is None:
                    stats.llm_calls_unpriced += 1
                else:
                    stats.cost_nusd += cost
                    if user:
                        self.spenders.add(user, cost)
            if payload and '"skill"' in payload:
                skill = skill_of(payload)
                if skill is not None:
                    self._fold_skill(skill, failed, is_5xx, p, c, cr, cc, rs, cost)
            if d is not None:
                self.llm_duration.add(d)
        elif t == "turn_end":
            self.turns += 1
            status = status or UNKNOWN
            self.turns_by_status[status] = self.turns_by_status.get(status, 0) + 1
            if reason is not None:
                self.incomplete_reasons[reason] = self.incomplete_reasons.get(reason, 0) + 1
                if reason == "max_iterations":
                    self.max_iterations_hits += 1
            if d is not None:
                self.turn_duration.add(d)
        elif t == "tool_confirmation":
            self.confirm_requests += 1
        elif t == "llm_retry":
            self.llm_retries += 1
            if code is not None and 500 <= code <= 599:
                self.llm_retries_5xx += 1
            self._count_failed_attempt(code, error_class)
        else:  # confirm_resolved
            if outcome == "allow":
                self.confirm_allows += 1
            elif outcome == "reject":
                self.confirm_rejects += 1
            elif outcome == "timeout":
                self.confirm_timeouts += 1

    def _count_error(self, error_class: str | None) -> None:
        kind = error_class or UNKNOWN
        count = self.llm_error_types.get(kind)
        if count is None:
            count = self._label(self.llm_error_types, "error_type", kind, _Count)
        count.n += 1

    def _count_failed_attempt(self, http_status: int | None, error_class: str | None) -> None:
        kind = attempt_status(http_status, error_class)
        count = self.failed_attempts.get(kind)
        if count is None:
            count = self._label(self.failed_attempts, "attempt_status", kind, _Count)
        count.n += 1

    def _fold_skill(
        self,
        skill: str,
        failed: bool,
        is_5xx: bool,
        p: int | None,
        c: int | None,
        cr: int | None,
        cc: int | None,
        rs: int | None,
        cost: int | None,
    ) -> None:
        stats = self.skills.get(skill)
        if stats is None:
            stats = self._label(self.skills, "skill", skill, UsageStats)
        stats.llm_calls += 1
        if failed:
            stats.llm_errors += 1
            stats.llm_errors_5xx += is_5xx
        if p is None and c is None:
            stats.llm_calls_without_usage += 1
            return
        stats.prompt_tokens += p or 0
        stats.completion_tokens += c or 0
        stats.cache_read_tokens += cr or 0
        stats.cache_creation_tokens += cc or 0
        stats.reasoning_tokens += rs or 0
        if cost is None:
            stats.llm_calls_unpriced += 1
        else:
            stats.cost_nusd += cost

    # -- labels ---------------------------------------------------------------------------------------------------

    def _label(self, tracked: dict[str, Any], dim: str, name: str, factory: Callable[[float], Any]) -> Any:
        """Slow path for a name not (yet) tracked in this window: admit it, or return the ``OTHER`` entry."""
        folded = self.folded[dim]
        n = folded.get(name)
        if n is not None:
            folded[name] = n + 1
        elif self._admits(tracked, dim, name):
            # interned: the decoder makes a new string per event, and every tenant window kept its own copy of the
            # same tool and model names (~56 B per tenant and tool); the label limit bounds what one window adds
            stats = tracked[sys.intern(name)] = factory(self.relative_accuracy)
            return stats
        elif len(folded) < 4 * self.label_limit:
            folded[name] = 1
        other = tracked.get(OTHER)
        if other is None:
            other = tracked[OTHER] = factory(self.relative_accuracy)
        return other

    def _admits(self, tracked: Mapping[str, Any], dim: str, name: str) -> bool:
        limit = self.label_limit
        named = len(tracked) - (OTHER in tracked)
        if named >= limit:
            return False
        preferred = getattr(self.guards, dim).preferred if self.guards is not None else frozenset()
        if not preferred or name in preferred:
            return True
        # keep a place for every preferred name that has not shown up in this window yet
        missing = sum(1 for p in preferred if p not in tracked)
        return named + missing < limit

    def label_dicts(self) -> dict[str, dict[str, Any]]:
        """The tracked labels per dimension (values have ``weight`` and ``merge``)."""
        return {
            "tool": self.tools,
            "model": self.models,
            "skill": self.skills,
            "error_type": self.llm_error_types,
            "attempt_status": self.failed_attempts,
        }

    def _cap(self, dim: str, tracked: dict[str, Any], factory: Callable[[float], Any]) -> None:
        """Fold the smallest labels into ``OTHER`` until at most ``label_limit`` named ones remain."""
        named = [(stats.weight, name) for name, stats in tracked.items() if name != OTHER]
        if len(named) <= self.label_limit:
            return
        named.sort(key=lambda wn: (-wn[0], wn[1]))
        other = tracked.get(OTHER)
        if other is None:
            other = tracked[OTHER] = factory(self.relative_accuracy)
        folded = self.folded[dim]
        for weight, name in named[self.label_limit :]:
            other.merge(tracked.pop(name))
            if name in folded or len(folded) < 4 * self.label_limit:
                folded[name] = folded.get(name, 0) + weight
            else:
                self.folded_extra[dim] += 1

    # -- merging --------------------------------------------------------------------------------------------------

    def merge(self, other: TenantWindowAggregate, *, same_window: bool = True) -> None:
        """Fold another partial aggregate of the same tenant into this one (``other`` is not changed).

        ``same_window=False`` allows a part of this window, e.g. a pane of a hopping window.
        """
        if other.tenant != self.tenant or (
            same_window and (other.window_start, other.window_end) != (self.window_start, self.window_end)
        ):
            raise ValueError(
                f"cannot merge {other.tenant!r} [{other.window_start}, {other.window_end}) into "
                f"{self.tenant!r} [{self.window_start}, {self.window_end})"
            )
        self.events += other.events
        _add_counts(self.by_type, other.by_type)
        self.turns += other.turns
        _add_counts(self.turns_by_status, other.turns_by_status)
        _add_counts(self.incomplete_reasons, other.incomplete_reasons)
        self.llm_retries += other.llm_retries
        self.llm_retries_5xx += other.llm_retries_5xx
        self.max_iterations_hits += other.max_iterations_hits
        self.turn_duration.merge(other.turn_duration)
        self.llm_duration.merge(other.llm_duration)
        self.confirm_requests += other.confirm_requests
        self.confirm_allows += other.confirm_allows
        self.confirm_rejects += other.confirm_rejects
        self.confirm_timeouts += other.confirm_timeouts
        self.spenders.merge(other.spenders)
        theirs_by_dim = other.label_dicts()
        for dim, mine in self.label_dicts().items():
            for name, stats in theirs_by_dim[dim].items():
                target = mine.get(name)
                if target is None:
                    mine[name] = stats.copy()
                else:
                    target.merge(stats)
            theirs_folded = other.folded[dim]
            if theirs_folded:
                folded = self.folded[dim]
                for name, n in theirs_folded.items():
                    if name in folded or len(folded) < 4 * self.label_limit:
                        folded[name] = folded.get(name, 0) + n
                    else:
                        self.folded_extra[dim] += 1
            self.folded_extra[dim] += other.folded_extra[dim]
            if len(mine) > self.label_limit:
                self._cap(dim, mine, _FACTORIES[dim])

    # -- derived totals -------------------------------------------------------------------------------------------

    def usage_totals(self) -> UsageStats:
        """LLM calls and tokens over all models (every call is counted under exactly one model label)."""
        total = UsageStats()
        for stats in self.models.values():
            total.merge(stats)
        return total

    def tool_totals(self) -> ToolStats:
        total = ToolStats(self.relative_accuracy)
        for stats in self.tools.values():
            total.merge(stats)
        return total

    # -- records --------------------------------------------------------------------------------------------------

    def to_record(self, final: bool = True, quantiles: bool = True) -> dict[str, Any]:
        """A ``WindowedMetrics`` dict (schemas/windowed_metrics.avsc); deterministic: maps and arrays sorted.

        ``quantiles=False`` leaves the ``p50``/``p95``/``p99`` of every duration out (then the dict is not a valid
        Avro record): for partials, which stage 2 merges and computes the quantiles of once.
        """
        usage = self.usage_totals()
        tool = self.tool_totals()
        total_tokens = usage.total_tokens
        return {
            "schema_version": STATE_VERSION,
            "tenant": self.tenant,
            "window_start_us": self.window_start,
            "window_end_us": self.window_end,
            "final": final,
            "label_limit": self.label_limit,
            "events": self.events,
            "events_by_type": dict(sorted(self.by_type.items())),
            "turns": self.turns,
            "turns_by_status": dict(sorted(self.turns_by_status.items())),
            "incomplete_reasons": dict(sorted(self.incomplete_reasons.items())),
            "max_iterations_hits": self.max_iterations_hits,
            "tokens_per_turn": total_tokens / self.turns if self.turns else None,
            "cost_per_turn_usd": usage.cost_nusd / self.turns / NANO_PER_USD if self.turns else None,
            "turn_duration": _duration_record(self.turn_duration, quantiles),
            "tool_calls": tool.calls,
            "tool_failures": tool.failures,
            "tool_cancelled": tool.cancelled,
            "tool_duration": _duration_record(tool.duration, quantiles),
            "tools": [
                {
                    "tool": name,
                    "calls": s.calls,
                    "failures": s.failures,
                    "cancelled": s.cancelled,
                    "duration": _duration_record(s.duration, quantiles),
                }
                for name, s in sorted(self.tools.items())
            ],
            **{name: _sat(getattr(usage, name)) for name in _USAGE_FIELDS},
            "total_tokens": total_tokens,
            "llm_errors_by_type": {k: c.n for k, c in sorted(self.llm_error_types.items())},
            "llm_retries": self.llm_retries,
            "llm_attempts": usage.llm_calls + self.llm_retries,
            "llm_5xx": usage.llm_errors_5xx + self.llm_retries_5xx,
            "llm_failed_attempts_by_status": {k: c.n for k, c in sorted(self.failed_attempts.items())},
            "llm_duration": _duration_record(self.llm_duration, quantiles),
            "tokens_by_model": {name: s.total_tokens for name, s in sorted(self.models.items())},
            "tokens_by_skill": {name: s.total_tokens for name, s in sorted(self.skills.items())},
            "cost_by_model": {name: _sat(s.cost_nusd) for name, s in sorted(self.models.items())},
            "cost_by_skill": {name: _sat(s.cost_nusd) for name, s in sorted(self.skills.items())},
            "top_spenders": self.spenders.to_record(),
            "models": [_usage_record(name, s) for name, s in sorted(self.models.items())],
            "skills": [_usage_record(name, s) for name, s in sorted(self.skills.items())],
            "confirm_requests": self.confirm_requests,
            "confirm_allows": self.confirm_allows,
            "confirm_rejects": self.confirm_rejects,
            "confirm_timeouts": self.confirm_timeouts,
            "folded_label_values": {dim: len(self.folded[dim]) + self.folded_extra[dim] for dim in DIMENSIONS},
            "revision": 0,
            "sealed": False,
        }

    @classmethod
    def from_record(
        cls, rec: Mapping[str, Any], guards: TenantGuards | None = None, prices: PriceTable | None = None
    ) -> TenantWindowAggregate:
        """Rebuild a (mergeable) aggregate from a ``WindowedMetrics`` record, e.g. in a second merge stage."""
        agg = cls(
            rec["tenant"],
            int(rec["window_start_us"]),
            int(rec["window_end_us"]),
            label_limit=int(rec["label_limit"]),
            relative_accuracy=float(rec["turn_duration"]["relative_accuracy"]),
            guards=guards,
            prices=prices,
        )
        agg.events = int(rec["events"])
        agg.by_type = {k: int(v) for k, v in rec["events_by_type"].items()}
        agg.turns = int(rec["turns"])
        agg.turns_by_status = {k: int(v) for k, v in rec["turns_by_status"].items()}
        agg.incomplete_reasons = {k: int(v) for k, v in rec["incomplete_reasons"].items()}
        agg.llm_retries = int(rec["llm_retries"])
        agg.llm_retries_5xx = int(rec["llm_5xx"]) - int(rec["llm_errors_5xx"])
        agg.failed_attempts = {k: _count_of(v) for k, v in rec["llm_failed_attempts_by_status"].items()}
        agg.max_iterations_hits = int(rec["max_iterations_hits"])
        agg.turn_duration = DurationSketch.from_dict(rec["turn_duration"])
        agg.llm_duration = DurationSketch.from_dict(rec["llm_duration"])
        for t in rec["tools"]:
            stats = agg.tools[t["tool"]] = ToolStats(agg.relative_accuracy)
            stats.calls, stats.failures, stats.cancelled = int(t["calls"]), int(t["failures"]), int(t["cancelled"])
            stats.duration = DurationSketch.from_dict(t["duration"])
        agg.models = {m["label"]: UsageStats.from_list(m.get(f, 0) for f in _USAGE_FIELDS) for m in rec["models"]}
        agg.skills = {m["label"]: UsageStats.from_list(m.get(f, 0) for f in _USAGE_FIELDS) for m in rec["skills"]}
        agg.llm_error_types = {k: _count_of(v) for k, v in rec["llm_errors_by_type"].items()}
        agg.confirm_requests = int(rec["confirm_requests"])
        agg.confirm_allows = int(rec["confirm_allows"])
        agg.confirm_rejects = int(rec["confirm_rejects"])
        agg.confirm_timeouts = int(rec["confirm_timeouts"])
        agg.folded_extra = {dim: int(rec["folded_label_values"].get(dim, 0)) for dim in DIMENSIONS}
        agg.spenders = SpaceSaving.from_record(rec.get("top_spenders"))
        return agg

    def to_state(self) -> dict[str, Any]:
        """Compact JSON-able state for a changelog table (no quantiles computed; folded names kept)."""
        return {
            "v": STATE_VERSION,
            "tenant": self.tenant,
            "start": self.window_start,
            "end": self.window_end,
            "limit": self.label_limit,
            "alpha": self.relative_accuracy,
            "events": self.events,
            "by_type": dict(self.by_type),
            "turn": [self.turns, self.max_iterations_hits],
            "turns_by_status": dict(self.turns_by_status),
            "incomplete_reasons": dict(self.incomplete_reasons),
            "retries": [self.llm_retries, self.llm_retries_5xx],
            "attempts": {n: c.n for n, c in self.failed_attempts.items()},
            "turn_duration": self.turn_duration.to_dict(),
            "llm_duration": self.llm_duration.to_dict(),
            # compact sketches (DurationSketch.to_state): a window holds one per tool and tenant
            "tools": {n: [s.calls, s.failures, s.cancelled, s.duration.to_state()] for n, s in self.tools.items()},
            "models": {n: s.as_list() for n, s in self.models.items()},
            "skills": {n: s.as_list() for n, s in self.skills.items()},
            "errors": {n: c.n for n, c in self.llm_error_types.items()},
            "confirm": [self.confirm_requests, self.confirm_allows, self.confirm_rejects, self.confirm_timeouts],
            "folded": {dim: dict(names) for dim, names in self.folded.items()},
            "folded_extra": dict(self.folded_extra),
            "spenders": self.spenders.to_state(),
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], guards: TenantGuards | None = None, prices: PriceTable | None = None
    ) -> TenantWindowAggregate:
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported aggregate state version {state.get('v')!r}")
        agg = cls(
            state["tenant"],
            int(state["start"]),
            int(state["end"]),
            label_limit=int(state["limit"]),
            relative_accuracy=float(state["alpha"]),
            guards=guards,
            prices=prices,
        )
        agg.events = int(state["events"])
        agg.by_type = {k: int(v) for k, v in state["by_type"].items()}
        agg.turns, agg.max_iterations_hits = (int(v) for v in state["turn"])
        agg.turns_by_status = {k: int(v) for k, v in state["turns_by_status"].items()}
        agg.incomplete_reasons = {k: int(v) for k, v in state["incomplete_reasons"].items()}
        agg.llm_retries, agg.llm_retries_5xx = (int(v) for v in state["retries"])
        agg.failed_attempts = {n: _count_of(v) for n, v in state["attempts"].items()}
        agg.turn_duration = DurationSketch.from_dict(state["turn_duration"])
        agg.llm_duration = DurationSketch.from_dict(state["llm_duration"])
        for name, (calls, failures, cancelled, sketch) in state["tools"].items():
            stats = agg.tools[name] = ToolStats(agg.relative_accuracy)
            stats.calls, stats.failures, stats.cancelled = int(calls), int(failures), int(cancelled)
            stats.duration = DurationSketch.from_state(agg.relative_accuracy, sketch)  # or to_dict's form (older)
        agg.models = {n: UsageStats.from_list(v) for n, v in state["models"].items()}
        agg.skills = {n: UsageStats.from_list(v) for n, v in state["skills"].items()}
        agg.llm_error_types = {n: _count_of(v) for n, v in state["errors"].items()}
        agg.confirm_requests, agg.confirm_allows, agg.confirm_rejects, agg.confirm_timeouts = (
            int(v) for v in state["confirm"]
        )
        agg.folded = {dim: {n: int(c) for n, c in state["folded"].get(dim, {}).items()} for dim in DIMENSIONS}
        agg.folded_extra = {dim: int(state["folded_extra"].get(dim, 0)) for dim in DIMENSIONS}
        agg.spenders = SpaceSaving.from_state(state.get("spenders"))
        return agg

    def __repr__(self) -> str:
        return f"TenantWindowAggregate({self.tenant!r}, [{self.window_start}, {self.window_end}), events={self.events})"


def _duration_record(sketch: DurationSketch, quantiles: bool = True) -> dict[str, Any]:
    """The ``Duration`` record; a complete one (with quantiles) carries its Avro body (see the sketch's method)."""
    return sketch.duration_record() if quantiles else sketch.to_dict()


def _usage_record(label: str, stats: UsageStats) -> dict[str, Any]:
    return {"label": label, **{name: _sat(getattr(stats, name)) for name in _USAGE_FIELDS}}


LONG_MAX = 2**63 - 1


def _sat(n: int) -> int:
    """An Avro long: sums saturate at 2^63 - 1 (cost: 9.2 billion USD in nano-USD, reachable only by a hostile
    flood of maximal counts on the dearest model) instead of failing the window's record."""
    return n if n <= LONG_MAX else LONG_MAX


def _add_counts(into: dict[str, int], other: Mapping[str, int]) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


def _count_of(n: Any) -> _Count:
    count = _Count()
    count.n = int(n)
    return count


_FACTORIES: dict[str, Callable[[float], Any]] = {
    "tool": ToolStats,
    "model": UsageStats,
    "skill": UsageStats,
    "error_type": _Count,
    "attempt_status": _Count,
}


# -- the engine's view ----------------------------------------------------------------------------------------------


class TenantWindowOps:
    """:class:`~streams.windows.AggregateOps` for :class:`TenantWindowAggregate`, holding each tenant's label guards.

    The guards learn from closed windows (``on_close``); persist them with :meth:`snapshot_guards` /
    :meth:`restore_guards` (they only decide which labels get a name, never a total).
    """

    def __init__(
        self,
        label_limit: int = DEFAULT_LABEL_LIMIT,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        prices: PriceTable | None = None,
    ) -> None:
        if label_limit < 1:
            raise ValueError("label_limit must be >= 1")
        self.label_limit = label_limit
        self.relative_accuracy = relative_accuracy
        self.prices = prices if prices is not None else default_prices()
        self.guards: dict[str, TenantGuards] = {}

    def guards_for(self, tenant: str) -> TenantGuards:
        guards = self.guards.get(tenant)
        if guards is None:
            guards = self.guards[tenant] = TenantGuards(self.label_limit)
        return guards

    def new(self, key: str, start_us: int, end_us: int) -> TenantWindowAggregate:
        return TenantWindowAggregate(
            key,
            start_us,
            end_us,
            label_limit=self.label_limit,
            relative_accuracy=self.relative_accuracy,
            guards=self.guards_for(key),
            prices=self.prices,
        )

    def adder(self, aggregate: TenantWindowAggregate) -> Callable[[Mapping[str, Any]], None]:
        return aggregate.add_event

    def row_adder(self, aggregate: TenantWindowAggregate) -> Callable[[tuple[Any, ...]], None]:
        """The fold of events given as :data:`FOLD_FIELDS` tuples."""
        return aggregate.add_row

    def merge(self, into: TenantWindowAggregate, other: TenantWindowAggregate) -> None:
        into.merge(other, same_window=False)

    def dump(self, aggregate: TenantWindowAggregate) -> dict[str, Any]:
        return aggregate.to_state()

    def load(self, key: str, start_us: int, end_us: int, state: Mapping[str, Any]) -> TenantWindowAggregate:
        return TenantWindowAggregate.from_state(state, guards=self.guards_for(key), prices=self.prices)

    def on_close(self, aggregate: TenantWindowAggregate) -> None:
        self.guards_for(aggregate.tenant).observe(aggregate)

    def snapshot_guards(self) -> dict[str, Any]:
        return {tenant: guards.to_dict() for tenant, guards in sorted(self.guards.items())}

    def restore_guards(self, data: Mapping[str, Any]) -> None:
        self.guards = {tenant: TenantGuards.from_dict(self.label_limit, d) for tenant, d in data.items()}
