"""AgentEvents -> Prometheus metrics, with a label-cardinality guard. Pure: no Kafka, no sockets, no clock.

:class:`ExporterState` folds decoded records into plain dicts (one lock per batch, not per increment: a
prometheus_client ``Counter`` takes a lock on every ``inc``) and a custom collector turns a snapshot of them into
metric families at scrape time. What counts as what follows the ground truth's definitions
(:mod:`producers.ground_truth`), so the exposed counters agree with it:

==========================================================  ===================================================
series                                                      counted from
==========================================================  ===================================================
``agent_turns_total{tenant}``                               ``turn_end``
``agent_turn_duration_seconds{tenant}`` (histogram)         ``turn_end.duration_ms`` / 1000; OTel's GenAI
                                                            duration buckets 0.01 .. 81.92 s, doubled on to
                                                            655.36 s (a turn can take minutes)
``agent_max_iterations_hits_total{tenant}``                 ``turn_end`` with ``incomplete_reason=max_iterations``
``agent_tool_calls_total{tenant,tool,status}``              ``tool_complete`` (status ok|error|cancelled)
``agent_tool_failures_total{tenant,tool}``                  ``tool_complete`` with ``status=error``
``agent_tool_duration_seconds{tenant,tool}`` (histogram)    ``tool_complete.duration_ms`` / 1000
``agent_llm_calls_total{tenant,model,status}``              ``llm_call_completed``
``agent_llm_calls_without_usage_total{tenant,model}``       ``llm_call_completed`` with null prompt and completion
``agent_llm_tokens_total{tenant,model,type}``               sums over ``llm_call_completed``; type prompt |
                                                            completion | cached | cache_creation | reasoning
                                                            (cached, cache_creation are parts of prompt, reasoning
                                                            of completion: never add them up)
``agent_llm_cost_usd_total{tenant,model}``                  cost of ``llm_call_completed`` with usage, priced by
                                                            :mod:`schemas.pricing` (genai-prices + overrides; the
                                                            worker's and the ground truth's price function),
                                                            summed as integer nano-USD, exposed in USD
``agent_llm_calls_unpriced_total{tenant,model}``            ``llm_call_completed`` with usage whose model has no
                                                            price (its tokens count, its cost cannot)
``agent_llm_errors_total{tenant,error_type}``               ``llm_call_completed`` with ``status=error``
``agent_llm_attempts_total{tenant}``                        provider HTTP attempts: ``llm_call_completed`` +
                                                            ``llm_retry``
``agent_llm_failed_attempts_total{tenant,error_type}``      ``llm_retry`` + failed ``llm_call_completed`` (the
                                                            LLM 5xx rate is ``error_type=~"5.."`` / attempts)
``agent_confirm_requests_total{tenant,outcome}``            request = ``tool_confirmation``; allow | reject |
                                                            timeout = ``confirm_resolved.confirm_outcome``
==========================================================  ===================================================

Counters start at 0: the first event of a tenant creates its ``agent_turns``, ``agent_max_iterations_hits``,
``agent_llm_attempts`` and ``agent_confirm_requests`` (every outcome) series; the first call of a (tenant, tool)
creates ``agent_tool_calls`` for every status and ``agent_tool_failures``; of a (tenant, model), ``agent_llm_calls``
for both statuses, ``agent_llm_cost_usd`` and ``agent_llm_calls_unpriced``. So ``rate()`` and ``increase()`` see
the first increment of each (a series born at 1 has no earlier sample to differ from). Label values that cannot
be known before they happen (``error_type``) start with their first event, and a token type starts with its first
reported count (a series at 0 would claim the provider reported zero where it reported nothing).

``error_type`` follows OpenTelemetry's ``error.type``: the provider's HTTP status (``"500"``, ``"429"``) when the
event carries one, else the exception class, else ``_OTHER``.

OpenTelemetry GenAI instruments (field notes §2.3), under the OTel -> Prometheus name mapping: dots become
underscores, a unit in braces (``{token}``) adds nothing, the unit ``s`` adds ``_seconds``; attribute names map
the same way (``gen_ai.token.type`` -> ``gen_ai_token_type``, ``error.type`` -> ``error_type``):

* ``gen_ai.client.token.usage`` -> ``gen_ai_client_token_usage`` (histogram, tokens per call; the advised buckets
  1, 4, ..., 67108864), labels ``gen_ai_operation_name`` (``chat``), ``gen_ai_provider_name`` (inferred from the
  model name, ``_OTHER`` when unknown), ``gen_ai_token_type`` (``input`` = prompt tokens, cached included, as
  OTel counts them; ``output`` = completion tokens), ``gen_ai_request_model``. Not recorded when the provider
  reported no count (OTel: MUST NOT).
* ``gen_ai.client.operation.duration`` -> ``gen_ai_client_operation_duration_seconds`` (histogram, the advised
  buckets 0.01 ... 81.92 s) from ``llm_call_completed.duration_ms``, same labels without the token type, plus
  ``error_type`` when the call failed (empty, i.e. absent in PromQL, when it succeeded).

They carry no ``tenant`` (the OTel attribute set, so dashboards built for OTel work); every ``agent_*`` series does.

Cardinality guard (:class:`CardinalityGuard`): per (tenant, label) at most N distinct values, **first come, first
kept**; further values are folded into ``other`` and each folded observation is counted in
``agentwatch_exporter_label_overflow_total{tenant,label}``. Tenants are capped globally the same way (folded into
tenant ``other``, label ``tenant``), and the tenant-less gen_ai series have their own cap (overflow counted with an
empty tenant). Why first-N and not top-N: a Prometheus counter series must stay monotonic and must not vanish;
top-N would move a value between its own series and ``other`` whenever the ranking changes, which reads as a counter
reset in one series and a jump in the other, so ``rate()`` lies. First-N never moves a value once admitted. Its cost:
junk that arrives early keeps its slot until the exporter restarts; values longer than ``max_value_length`` are
never admitted. Bounds hold per exporter instance (each instance admits its own first N).

Pipeline health (``agentwatch_exporter_*``): events by type (``rate()`` = events/s), records by outcome
(ok | duplicate | undecodable) and undecodable ones by reason, late events (event time more than ``lateness_s``
behind the highest event time seen on its partition), per-partition stream time and consumer lag (set by the
Kafka shell), commits, rebalances, and the dead-letter topic's size. Records that are AgentEventBatches are
deduplicated per partition by ``(producer_id, batch_seq)`` over a bounded window: the producer's spool re-sends a
frame with the same identity when it cannot know whether Kafka got it.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from schemas import contract
from schemas.codec import AvroCodec, DecodeError
from schemas.pricing import NANO_PER_USD, PriceTable, default_prices

OTHER = "other"  # folded label values (cardinality guard, unexpected enum values)
UNKNOWN = "unknown"  # a missing or empty value
OTEL_OTHER = "_OTHER"  # OTel's fallback for error.type / provider name

GENAI_TOKEN_BUCKETS: tuple[float, ...] = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                                          16777216, 67108864)
GENAI_DURATION_BUCKETS_S: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                                               20.48, 40.96, 81.92)
# Whole turns: the OTel GenAI operation-duration boundaries, doubled on to 655.36 s, so the longest turns (real
# Agentao turns took 37-164 s; a turn that loops to max_iterations, minutes) land in a bucket instead of reading as
# the top bound in every quantile.
TURN_BUCKETS_S: tuple[float, ...] = (*GENAI_DURATION_BUCKETS_S, 163.84, 327.68, 655.36)
# Tools run 4 ms (todo_write) to minutes (run_shell_command).
TOOL_BUCKETS_S: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 120.0)

TOKEN_TYPES: tuple[tuple[str, str], ...] = (
    ("prompt_tokens", "prompt"), ("completion_tokens", "completion"), ("cache_read_tokens", "cached"),
    ("cache_creation_tokens", "cache_creation"), ("reasoning_tokens", "reasoning"))
TOOL_STATUSES = frozenset({"ok", "error", "cancelled"})
LLM_STATUSES = frozenset({"ok", "error"})
CONFIRM_OUTCOMES = frozenset({"allow", "reject", "timeout"})

# Model-name prefix -> OTel gen_ai.provider.name (well-known values); anything else is _OTHER.
DEFAULT_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"), ("chatgpt", "openai"),
    ("text-embedding", "openai"), ("claude", "anthropic"), ("gemini", "gcp.gemini"), ("deepseek", "deepseek"),
    ("mistral", "mistral_ai"), ("mixtral", "mistral_ai"), ("codestral", "mistral_ai"), ("grok", "x_ai"),
    ("command", "cohere"), ("sonar", "perplexity"),
)


@dataclass(frozen=True)
class Family:
    """One metric family: its exposed name (``_total`` added for counters), help, label names, kind."""

    name: str
    help: str
    labels: tuple[str, ...]
    kind: str = "counter"  # counter | histogram
    buckets: tuple[float, ...] = ()
    unit: str = ""


_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name")
FAMILIES: tuple[Family, ...] = (
    Family("agent_turns", "Turns (turn_end events).", ("tenant",)),
    Family("agent_turn_duration_seconds", "Turn duration measured by the host (turn_end.duration_ms).",
           ("tenant",), "histogram", TURN_BUCKETS_S, "seconds"),
    Family("agent_max_iterations_hits", "Turns that hit max_iterations (turn_end incomplete_reason).", ("tenant",)),
    Family("agent_tool_calls", "Tool calls (tool_complete, sub-agents' included) by tool and status.",
           ("tenant", "tool", "status")),
    Family("agent_tool_failures", "Tool calls that raised (tool_complete status=error).", ("tenant", "tool")),
    Family("agent_tool_duration_seconds", "Tool latency (tool_complete.duration_ms).", ("tenant", "tool"),
           "histogram", TOOL_BUCKETS_S, "seconds"),
    Family("agent_llm_calls", "LLM calls (llm_call_completed) by model and status.", ("tenant", "model", "status")),
    Family("agent_llm_calls_without_usage", "LLM calls whose provider reported no token usage (not zero tokens).",
           ("tenant", "model")),
    Family("agent_llm_tokens", "Tokens over llm_call_completed; cached and cache_creation are parts of prompt, "
           "reasoning of completion.", ("tenant", "model", "type")),
    Family("agent_llm_cost_usd", "Cost in USD of LLM calls with usage, priced by genai-prices (or the prices "
           "file) per call; calls of unpriced models are not in it.", ("tenant", "model")),
    Family("agent_llm_calls_unpriced", "LLM calls with usage whose model has no price (not in the cost).",
           ("tenant", "model")),
    Family("agent_llm_errors", "Failed LLM calls (llm_call_completed status=error) by error_type (HTTP status or "
           "exception class).", ("tenant", "error_type")),
    Family("agent_llm_attempts", "Provider HTTP attempts: llm_call_completed + llm_retry.", ("tenant",)),
    Family("agent_llm_failed_attempts", "Failed provider attempts (llm_retry + failed llm_call_completed) by "
           "error_type.", ("tenant", "error_type")),
    Family("agent_confirm_requests", "Confirmations: request (tool_confirmation) and outcome allow / reject / "
           "timeout (confirm_resolved).", ("tenant", "outcome")),
    Family("gen_ai_client_token_usage", "OTel gen_ai.client.token.usage: tokens per LLM call ({token}).",
           (*_GENAI, "gen_ai_token_type", "gen_ai_request_model"), "histogram", GENAI_TOKEN_BUCKETS),
    Family("gen_ai_client_operation_duration_seconds", "OTel gen_ai.client.operation.duration of LLM calls.",
           (*_GENAI, "gen_ai_request_model", "error_type"), "histogram", GENAI_DURATION_BUCKETS_S, "seconds"),
    Family("agentwatch_exporter_events", "Events counted (duplicates excluded) by type; rate() is events/s.",
           ("type",)),
    Family("agentwatch_exporter_records", "Kafka records by decode outcome (ok, duplicate, undecodable).",
           ("outcome",)),
    Family("agentwatch_exporter_undecodable_records", "Records that did not decode, by DecodeError reason (the "
           "streams worker dead-letters them).", ("reason",)),
    Family("agentwatch_exporter_duplicate_events", "Events in records dropped as duplicates (same producer_id and "
           "batch_seq on the partition).", ()),
    Family("agentwatch_exporter_late_events", "Events whose event time is more than the lateness bound behind the "
           "highest event time seen on their partition (still counted in agent_*).", ("tenant",)),
    Family("agentwatch_exporter_label_overflow", "Observations whose label value was folded into 'other' by the "
           "cardinality guard (label=tenant: the tenant cap).", ("tenant", "label")),
    Family("agentwatch_exporter_commits", "Offset commits by result.", ("result",)),
    Family("agentwatch_exporter_rebalances", "Partitions assigned, revoked or lost in rebalances.", ("kind",)),
)
FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}


@dataclass(frozen=True)
class CardinalityLimits:
    """Caps of the guard. ``per_label`` overrides ``max_values`` for one label (``tool``, ``model``, ...).

    Worst case of the largest family: ``max_tenants x max_values(tool) x (len(TOOL_BUCKETS_S) + 3)`` series for
    ``agent_tool_duration_seconds``; size the defaults down for many tenants.
    """

    max_tenants: int = 1000
    max_values: int = 50
    per_label: Mapping[str, int] = field(default_factory=lambda: {"model": 20, "error_type": 20})
    global_max_values: int = 100  # tenant-less (gen_ai_*) series, per label
    max_value_length: int = 128

    def __post_init__(self) -> None:
        if self.max_tenants < 1 or self.max_values < 1 or self.global_max_values < 1 or self.max_value_length < 1:
            raise ValueError("cardinality limits must be >= 1")


def _text(value: Any) -> str:
    if value is None or value == "":
        return UNKNOWN
    return value if isinstance(value, str) else str(value)


class CardinalityGuard:
    """First-N admission of label values per (tenant, label); the rest become ``other`` and are counted."""

    GLOBAL = ""  # the scope of tenant-less series

    def __init__(self, limits: CardinalityLimits | None = None) -> None:
        self.limits = limits or CardinalityLimits()
        self._tenants: set[str] = set()
        self._values: dict[tuple[str, str], set[str]] = {}
        self.overflow: dict[tuple[str, str], int] = {}

    def tenant(self, value: Any) -> str:
        v = _text(value)
        if v in self._tenants:
            return v
        if len(v) <= self.limits.max_value_length and len(self._tenants) < self.limits.max_tenants:
            self._tenants.add(v)
            return v
        key = (OTHER, "tenant")
        self.overflow[key] = self.overflow.get(key, 0) + 1
        return OTHER

    def value(self, scope: str, label: str, value: Any) -> str:
        """``value`` as the label value to use for ``label`` within ``scope`` (a guarded tenant, or GLOBAL)."""
        v = _text(value)
        key = (scope, label)
        seen = self._values.get(key)
        if seen is None:
            seen = self._values[key] = set()
        elif v in seen:
            return v
        limit = self.limits.global_max_values if scope == self.GLOBAL else \
            self.limits.per_label.get(label, self.limits.max_values)
        if len(v) <= self.limits.max_value_length and len(seen) < limit:
            seen.add(v)
            return v
        self.overflow[key] = self.overflow.get(key, 0) + 1
        return OTHER

    @property
    def tenants(self) -> int:
        return len(self._tenants)


def provider_of(model: Any, table: tuple[tuple[str, str], ...] = DEFAULT_PROVIDERS) -> str:
    """OTel ``gen_ai.provider.name`` inferred from a model name (``openai/gpt-4o`` style prefixes too)."""
    if not isinstance(model, str) or not model:
        return OTEL_OTHER
    name = model.lower()
    if "/" in name:
        head, name = name.split("/", 1)
        for _, provider in table:
            if head == provider or head == provider.split(".")[-1]:
                return provider
    for prefix, provider in table:
        if name.startswith(prefix):
            return provider
    return OTEL_OTHER


def error_type_of(event: Mapping[str, Any]) -> str:
    """OTel ``error.type``: the HTTP status when known, else the exception class, else ``_OTHER``."""
    status = event.get("http_status")
    if status is not None:
        return str(status)
    return event.get("error_class") or OTEL_OTHER


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self, n_bounds: int) -> None:
        self.counts = [0] * (n_bounds + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0


def _observe(hists: dict[tuple[str, ...], _Histogram], key: tuple[str, ...], bounds: tuple[float, ...],
             value: float) -> None:
    h = hists.get(key)
    if h is None:
        h = hists[key] = _Histogram(len(bounds))
    h.counts[bisect_left(bounds, value)] += 1  # le: value <= bound
    h.total += value


def _inc(counter: dict[tuple[str, ...], float], key: tuple[str, ...], n: float = 1) -> None:
    counter[key] = counter.get(key, 0) + n


class EventMetrics:
    """The ``agent_*`` and ``gen_ai_*`` series of decoded events. Not thread-safe: :class:`ExporterState` locks."""

    def __init__(self, guard: CardinalityGuard, providers: tuple[tuple[str, str], ...] = DEFAULT_PROVIDERS,
                 prices: PriceTable | None = None) -> None:
        self.guard = guard
        self.providers = providers
        self.prices = prices if prices is not None else default_prices()
        self.counters: dict[str, dict[tuple[str, ...], float]] = {
            f.name: {} for f in FAMILIES if f.kind == "counter"}
        self.histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {
            f.name: {} for f in FAMILIES if f.kind == "histogram"}
        c, h = self.counters, self.histograms
        self._turns, self._max_iter = c["agent_turns"], c["agent_max_iterations_hits"]
        self._tool_calls, self._tool_failures = c["agent_tool_calls"], c["agent_tool_failures"]
        self._llm_calls, self._no_usage = c["agent_llm_calls"], c["agent_llm_calls_without_usage"]
        self._tokens, self._llm_errors = c["agent_llm_tokens"], c["agent_llm_errors"]
        self._cost, self._unpriced = c["agent_llm_cost_usd"], c["agent_llm_calls_unpriced"]  # cost: int nano-USD
        self._attempts, self._failed = c["agent_llm_attempts"], c["agent_llm_failed_attempts"]
        self._confirm, self._events = c["agent_confirm_requests"], c["agentwatch_exporter_events"]
        self._turn_dur, self._tool_dur = h["agent_turn_duration_seconds"], h["agent_tool_duration_seconds"]
        self._genai_tokens = h["gen_ai_client_token_usage"]
        self._genai_dur = h["gen_ai_client_operation_duration_seconds"]
        self._types = frozenset(contract.event_types())
        # label sets whose known series were created at 0 (bounded by the cardinality guard's caps)
        self._seen_tenants: set[str] = set()
        self._seen_tools: set[tuple[str, str]] = set()
        self._seen_models: set[tuple[str, str]] = set()
        self._handlers = {
            "turn_end": self._turn_end, "tool_complete": self._tool_complete,
            "llm_call_completed": self._llm_call_completed, "llm_retry": self._llm_retry,
            "tool_confirmation": self._tool_confirmation, "confirm_resolved": self._confirm_resolved,
        }

    def observe(self, event: Mapping[str, Any]) -> None:
        typ = event.get("type")
        key = (typ if typ in self._types else UNKNOWN,)
        self._events[key] = self._events.get(key, 0) + 1
        handler = self._handlers.get(key[0])
        if handler is not None:
            t = self.guard.tenant(event.get("tenant"))
            if t not in self._seen_tenants:
                self._zero_tenant(t)
            handler(event, t)

    def _zero_tenant(self, t: str) -> None:
        """The tenant's series at 0 (see the module docstring: rate() needs a sample before the first event)."""
        self._seen_tenants.add(t)
        for counter in (self._turns, self._max_iter, self._attempts):
            _inc(counter, (t,), 0)
        for outcome in ("request", *sorted(CONFIRM_OUTCOMES)):
            _inc(self._confirm, (t, outcome), 0)

    def _zero_tool(self, t: str, tool: str) -> None:
        self._seen_tools.add((t, tool))
        for status in sorted(TOOL_STATUSES):
            _inc(self._tool_calls, (t, tool, status), 0)
        _inc(self._tool_failures, (t, tool), 0)

    def _zero_model(self, t: str, model: str) -> None:
        self._seen_models.add((t, model))
        for status in sorted(LLM_STATUSES):
            _inc(self._llm_calls, (t, model, status), 0)
        _inc(self._cost, (t, model), 0)
        _inc(self._unpriced, (t, model), 0)

    def _turn_end(self, ev: Mapping[str, Any], t: str) -> None:
        key = (t,)
        _inc(self._turns, key)
        # Created at 0 with the tenant's first turn, so increase() sees the first hit.
        _inc(self._max_iter, key, 1 if ev.get("incomplete_reason") == "max_iterations" else 0)
        d = ev.get("duration_ms")
        if d is not None and d >= 0:
            _observe(self._turn_dur, key, TURN_BUCKETS_S, d / 1000)

    def _tool_complete(self, ev: Mapping[str, Any], t: str) -> None:
        tool = self.guard.value(t, "tool", ev.get("tool_name"))
        status = ev.get("status")
        status = status if status in TOOL_STATUSES else UNKNOWN if status is None else OTHER
        if (t, tool) not in self._seen_tools:
            self._zero_tool(t, tool)
        _inc(self._tool_calls, (t, tool, status))
        _inc(self._tool_failures, (t, tool), 1 if status == "error" else 0)
        d = ev.get("duration_ms")
        if d is not None and d >= 0:
            _observe(self._tool_dur, (t, tool), TOOL_BUCKETS_S, d / 1000)

    def _llm_call_completed(self, ev: Mapping[str, Any], t: str) -> None:
        raw_model = ev.get("model")
        model = self.guard.value(t, "model", raw_model)
        status = ev.get("status")
        status = status if status in LLM_STATUSES else UNKNOWN if status is None else OTHER
        if (t, model) not in self._seen_models:
            self._zero_model(t, model)
        _inc(self._llm_calls, (t, model, status))
        _inc(self._attempts, (t,))
        prompt, completion = ev.get("prompt_tokens"), ev.get("completion_tokens")
        if prompt is None and completion is None:
            _inc(self._no_usage, (t, model))
        else:
            for fname, ttype in TOKEN_TYPES:
                v = ev.get(fname)
                if v is not None and v >= 0:
                    _inc(self._tokens, (t, model, ttype), v)
            cost = self.prices.cost_nusd(raw_model, ev.get("event_time") or 0, prompt, completion,
                                         ev.get("cache_read_tokens"), ev.get("cache_creation_tokens"),
                                         ev.get("reasoning_tokens"))
            if cost is None:
                _inc(self._unpriced, (t, model))
            else:
                _inc(self._cost, (t, model), cost)
        failed = status == "error"
        error_type = ""
        if failed:
            raw_error = error_type_of(ev)
            et = self.guard.value(t, "error_type", raw_error)
            _inc(self._llm_errors, (t, et))
            _inc(self._failed, (t, et))
            error_type = self.guard.value(CardinalityGuard.GLOBAL, "error_type", raw_error)
        gmodel = self.guard.value(CardinalityGuard.GLOBAL, "gen_ai_request_model", raw_model)
        provider = provider_of(raw_model, self.providers)
        if prompt is not None and prompt >= 0:
            _observe(self._genai_tokens, ("chat", provider, "input", gmodel), GENAI_TOKEN_BUCKETS, prompt)
        if completion is not None and completion >= 0:
            _observe(self._genai_tokens, ("chat", provider, "output", gmodel), GENAI_TOKEN_BUCKETS, completion)
        d = ev.get("duration_ms")
        if d is not None and d >= 0:
            _observe(self._genai_dur, ("chat", provider, gmodel, error_type), GENAI_DURATION_BUCKETS_S, d / 1000)

    def _llm_retry(self, ev: Mapping[str, Any], t: str) -> None:
        _inc(self._attempts, (t,))
        _inc(self._failed, (t, self.guard.value(t, "error_type", error_type_of(ev))))

    def _tool_confirmation(self, ev: Mapping[str, Any], t: str) -> None:
        _inc(self._confirm, (t, "request"))

    def _confirm_resolved(self, ev: Mapping[str, Any], t: str) -> None:
        outcome = ev.get("confirm_outcome")
        _inc(self._confirm, (t, outcome if outcome in CONFIRM_OUTCOMES else UNKNOWN if outcome is None else OTHER))


class BatchDedup:
    """Recently seen ``(producer_id, batch_seq)`` of one partition, at most ``window`` of them (oldest evicted)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def first_time(self, producer_id: str, batch_seq: int) -> bool:
        key = (producer_id, batch_seq)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.window:
            self._seen.popitem(last=False)
        return True


@dataclass
class _Partition:
    dedup: BatchDedup
    stream_time_us: int | None = None
    lag: int | None = None


class ExporterState:
    """Everything one exporter instance exposes, updated batch by batch from the consumer thread.

    ``process_batch`` takes ``(partition, record value)`` pairs; the Kafka shell sets lag and dead-letter figures
    and calls ``forget`` when a partition leaves this instance. ``register(registry)`` adds the collector.
    """

    def __init__(self, topic: str, *, limits: CardinalityLimits | None = None, lateness_s: float = 60.0,
                 dedup_window: int = 100_000, codec: AvroCodec | None = None,
                 providers: tuple[tuple[str, str], ...] = DEFAULT_PROVIDERS,
                 prices: PriceTable | None = None) -> None:
        if lateness_s < 0 or dedup_window < 1:
            raise ValueError("lateness_s must be >= 0 and dedup_window >= 1")
        self.topic = topic
        self.lock = threading.Lock()
        self.guard = CardinalityGuard(limits)
        self.events = EventMetrics(self.guard, providers, prices)
        self.codec = codec or AvroCodec()
        self.lateness_us = int(lateness_s * 1_000_000)
        self.dedup_window = dedup_window
        self._partitions: dict[int, _Partition] = {}
        c = self.events.counters
        self._records = c["agentwatch_exporter_records"]
        self._undecodable = c["agentwatch_exporter_undecodable_records"]
        self._dup_events, self._late = c["agentwatch_exporter_duplicate_events"], c["agentwatch_exporter_late_events"]
        self._commits, self._rebalances = c["agentwatch_exporter_commits"], c["agentwatch_exporter_rebalances"]
        self.dead_letter: tuple[str, int, int] | None = None  # (topic, retained records, sum of high watermarks)

    # -- updates (consumer thread) ---------------------------------------------------------------------------

    def process_batch(self, records: Iterable[tuple[int, bytes | None]]) -> int:
        """Decode, dedup and count records; returns the number of events counted."""
        counted = 0
        with self.lock:
            for partition, value in records:
                counted += self._process(partition, value)
        return counted

    def _process(self, partition: int, value: bytes | None) -> int:
        try:
            decoded = self.codec.decode(value)
        except DecodeError as exc:
            _inc(self._records, ("undecodable",))
            _inc(self._undecodable, (exc.reason,))
            return 0
        part = self._partition(partition)
        if decoded.is_batch and decoded.producer_id is not None and decoded.batch_seq is not None \
                and not part.dedup.first_time(decoded.producer_id, decoded.batch_seq):
            _inc(self._records, ("duplicate",))
            _inc(self._dup_events, (), len(decoded.events))
            return 0
        _inc(self._records, ("ok",))
        observe = self.events.observe
        for ev in decoded.events:
            t = ev.get("event_time")
            if isinstance(t, int):
                st = part.stream_time_us
                if st is None or t > st:
                    part.stream_time_us = t
                elif st - t > self.lateness_us:
                    _inc(self._late, (self.guard.tenant(ev.get("tenant")),))
            observe(ev)
        return len(decoded.events)

    def _partition(self, partition: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(BatchDedup(self.dedup_window))
        return part

    def own(self, partitions: Iterable[int]) -> None:
        """Partitions assigned to this instance (shown in ``agentwatch_exporter_assigned_partitions`` at once)."""
        with self.lock:
            for p in partitions:
                self._partition(p)

    def set_lag(self, partition: int, lag: int) -> None:
        with self.lock:
            self._partition(partition).lag = max(0, lag)

    def set_dead_letter(self, topic: str, retained: int, high_watermarks: int) -> None:
        with self.lock:
            self.dead_letter = (topic, retained, high_watermarks)

    def count_commit(self, ok: bool, n: int = 1) -> None:
        with self.lock:
            _inc(self._commits, ("ok" if ok else "failed",), n)

    def count_rebalance(self, kind: str, partitions: int) -> None:
        with self.lock:
            _inc(self._rebalances, (kind,), partitions)

    def forget(self, partitions: Iterable[int]) -> None:
        """A partition left this instance: drop its lag, stream time and dedup window (the new owner has its own)."""
        with self.lock:
            for p in partitions:
                self._partitions.pop(p, None)

    @property
    def partitions(self) -> list[int]:
        with self.lock:
            return sorted(self._partitions)

    # -- exposition (scrape thread) --------------------------------------------------------------------------

    def register(self, registry: CollectorRegistry) -> CollectorRegistry:
        registry.register(_StateCollector(self))
        return registry

    def snapshot(self) -> tuple[dict[str, dict[tuple[str, ...], float]],
                                dict[str, list[tuple[tuple[str, ...], list[int], float]]],
                                list[tuple[int, int | None, int | None]], int, tuple[str, int, int] | None]:
        """Copies taken under the lock, so a scrape never blocks the consumer for longer than a few dict copies."""
        with self.lock:
            counters = {name: dict(values) for name, values in self.events.counters.items()}
            counters["agentwatch_exporter_label_overflow"] = dict(self.guard.overflow)
            hists = {name: [(k, list(h.counts), h.total) for k, h in values.items()]
                     for name, values in self.events.histograms.items()}
            parts = [(p, s.stream_time_us, s.lag) for p, s in sorted(self._partitions.items())]
            return counters, hists, parts, self.guard.tenants, self.dead_letter


class _StateCollector(Collector):
    def __init__(self, state: ExporterState) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the data; no eager registry-time collection

    def collect(self) -> Iterator[Metric]:
        counters, hists, parts, tenants, dead_letter = self._state.snapshot()
        for fam in FAMILIES:
            if fam.kind == "counter":
                cf = CounterMetricFamily(fam.name, fam.help, labels=fam.labels)
                scale = NANO_PER_USD if fam.name == "agent_llm_cost_usd" else 1  # kept as exact integer nano-USD
                for key, value in sorted(counters[fam.name].items()):
                    cf.add_metric(key, value / scale if scale != 1 else value)
                yield cf
            else:
                hf = HistogramMetricFamily(fam.name, fam.help, labels=fam.labels, unit=fam.unit)
                les = [floatToGoString(b) for b in fam.buckets] + ["+Inf"]
                for key, counts, total in sorted(hists[fam.name], key=lambda x: x[0]):
                    cumulative, running = [], 0
                    for le, n in zip(les, counts, strict=True):
                        running += n
                        cumulative.append((le, running))
                    hf.add_metric(key, cumulative, total)
                yield hf
        topic = self._state.topic
        g = GaugeMetricFamily("agentwatch_exporter_consumer_lag", "Records behind on each partition this "
                              "instance owns: high watermark - committed offset.", labels=["topic", "partition"])
        st = GaugeMetricFamily("agentwatch_exporter_stream_time_seconds", "Highest event time seen on each "
                               "partition this instance owns (Unix seconds).", labels=["topic", "partition"])
        for p, stream_time, lag in parts:
            if lag is not None:
                g.add_metric([topic, str(p)], lag)
            if stream_time is not None:
                st.add_metric([topic, str(p)], stream_time / 1_000_000)
        yield g
        yield st
        yield GaugeMetricFamily("agentwatch_exporter_assigned_partitions", "Partitions this instance owns.",
                                value=len(parts))
        yield GaugeMetricFamily("agentwatch_exporter_tracked_tenants", "Distinct tenants admitted by the "
                                "cardinality guard.", value=tenants)
        dl = GaugeMetricFamily("agentwatch_dead_letter_records", "Records retained in the dead-letter topic "
                               "(every instance reports the same: use max()).", labels=["topic"])
        dlo = GaugeMetricFamily("agentwatch_dead_letter_offset", "Sum of the dead-letter topic's high watermarks: "
                                "grows by one per dead-lettered record (use increase()/delta on max()).",
                                labels=["topic"])
        if dead_letter is not None:
            dl.add_metric([dead_letter[0]], dead_letter[1])
            dlo.add_metric([dead_letter[0]], dead_letter[2])
        yield dl
        yield dlo
