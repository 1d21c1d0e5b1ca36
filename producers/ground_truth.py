"""The ground truth of a stream of AgentEvents: what a correct pipeline must count, and the alerts it must raise.

Why: the stream processors, the exporter and the archive are checked against known answers. The truth is counted
from the events themselves (:class:`TruthCounter` while they are published, :func:`truth_from_events` afterwards),
so it can never disagree with what was sent; :func:`expected_alerts` says which crossings each scripted incident
(:mod:`producers.incidents`) explains. The traffic itself comes from :mod:`producers.simulator`.

Metric definitions (the truth's, per tenant and per tumbling event-time window ``[k*W, (k+1)*W)`` aligned to the
epoch, an event belonging to the window of its own ``event_time``):

- **turns**: ``turn_end`` events; turn duration = ``turn_end.duration_ms``; **max-iterations hits**: ``turn_end``
  with ``incomplete_reason="max_iterations"``; max-iterations rate = hits / turns.
- **tool calls**: ``tool_complete`` events, the parent's and sub-agents' forwarded ones, by ``tool_name``;
  **tool failures**: those with ``status="error"`` (a raised exception; a tool returning an ``"Error: ..."``
  string is ``ok`` in Agentao); ``status="cancelled"`` (rejected, timed out, denied) counts as a call, not a
  failure. Tool failure rate = failures / calls. Tool duration = ``tool_complete.duration_ms``.
- **LLM calls**: ``llm_call_completed`` events; **LLM errors**: those with ``status="error"``, by
  ``error_class``. **LLM attempts** = LLM calls + ``llm_retry`` events (each retry is one failed HTTP attempt
  followed by another). **LLM 5xx** = attempts answered 5xx: ``llm_retry`` plus ``llm_call_completed`` with
  ``status="error"``, whose ``http_status`` is 500..599. LLM 5xx rate = 5xx / attempts.
- **tokens**: sums over ``llm_call_completed`` of ``prompt_tokens``, ``completion_tokens``, ``cache_read_tokens``
  (= "cached"), ``cache_creation_tokens``, ``reasoning_tokens`` (the last three are parts of the first two, never
  added); **total** = prompt + completion. Calls with null usage are counted apart ("no usage" is not zero).
  Cache hit rate = cache_read / prompt. Tokens per turn = total / turns of the same window.
- **cost**: each ``llm_call_completed`` with usage priced by :mod:`schemas.pricing` (the one price function the
  worker and the exporter use too), in integer nano-USD rounded once per call; ``cost_nusd`` is their sum (and per
  model in ``cost_by_model``); a call with usage whose model has no price counts in ``llm_calls_unpriced`` instead.
  Cost per turn = cost / turns of the same window.
- **confirm requests by outcome**: request = ``tool_confirmation`` events; allow / reject / timeout =
  ``confirm_resolved`` events by ``confirm_outcome``; confirm timeout rate = timeout / (allow + reject + timeout).
- **events per type**: every event.

Quantiles (p50/p95/p99) are nearest-rank over the exact values. Threshold crossings use the rules of
:data:`producers.incidents.DEFAULT_RULES` (minimum-volume guards included) and the reference spike detector
:class:`producers.incidents.SpikeSpec`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producers.incidents import DEFAULT_RULES, DEFAULT_SPIKE, Incident, RuleSpec, SpikeSpec
from schemas.pricing import NANO_PER_USD, PriceTable, default_prices

US = 1_000_000  # event times are int microseconds since the epoch
TRUTH_FORMAT = "agentwatch-ground-truth/1"


class _Window:
    __slots__ = ("events", "by_type", "turns", "turn_status", "incomplete", "max_iter", "turn_ms", "tool_calls",
                 "tool_failures", "tool_cancelled", "tools", "llm_calls", "llm_errors", "llm_error_types",
                 "llm_retries", "llm_5xx", "failed_attempts", "no_usage", "tokens", "by_model", "confirm", "cost",
                 "unpriced", "cost_by_model", "cost_by_user")

    def __init__(self) -> None:
        self.events = 0
        self.by_type: Counter[str] = Counter()
        self.turns = self.max_iter = self.tool_calls = self.tool_failures = self.tool_cancelled = 0
        self.turn_status: Counter[str] = Counter()
        self.incomplete: Counter[str] = Counter()
        self.turn_ms: list[int] = []
        self.tools: dict[str, list[Any]] = {}  # tool -> [calls, failures, cancelled, durations]
        self.llm_calls = self.llm_errors = self.llm_retries = self.llm_5xx = self.no_usage = 0
        self.llm_error_types: Counter[str] = Counter()
        self.failed_attempts: Counter[str] = Counter()
        self.tokens = [0, 0, 0, 0, 0]  # prompt, completion, cache_read, cache_creation, reasoning
        self.by_model: Counter[str] = Counter()
        self.confirm: Counter[str] = Counter()
        self.cost = self.unpriced = 0  # nano-USD; calls with usage but no price
        self.cost_by_model: Counter[str] = Counter()
        self.cost_by_user: Counter[str] = Counter()  # exact; the worker keeps a bounded sketch of it


_TOKEN_KEYS = ("prompt", "completion", "cache_read", "cache_creation", "reasoning")


class TruthCounter:
    """Streaming form of :func:`truth_from_events`: ``add`` events one by one (e.g. while publishing them)."""

    def __init__(self, window_s: int = 60, rules: Sequence[RuleSpec] = DEFAULT_RULES,
                 spike: SpikeSpec = DEFAULT_SPIKE, prices: PriceTable | None = None) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = int(window_s)
        self.window_us = self.window_s * US
        self.rules, self.spike = tuple(rules), spike
        self.prices = prices if prices is not None else default_prices()
        self._windows: dict[tuple[str, int], _Window] = {}
        self.first_us: int | None = None
        self.last_us: int | None = None

    def add_all(self, events: Iterable[dict[str, Any]]) -> TruthCounter:
        for ev in events:
            self.add(ev)
        return self

    def add(self, ev: dict[str, Any]) -> None:
        t = ev["event_time"]
        if self.first_us is None or t < self.first_us:
            self.first_us = t
        if self.last_us is None or t > self.last_us:
            self.last_us = t
        key = (ev["tenant"], t - t % self.window_us)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        typ = ev["type"]
        w.events += 1
        w.by_type[typ] += 1
        if typ == "tool_complete":
            tool = ev["tool_name"] or "unknown"
            entry = w.tools.get(tool)
            if entry is None:
                entry = w.tools[tool] = [0, 0, 0, []]
            w.tool_calls += 1
            entry[0] += 1
            status = ev["status"]
            if status == "error":
                w.tool_failures += 1
                entry[1] += 1
            elif status == "cancelled":
                w.tool_cancelled += 1
                entry[2] += 1
            if ev["duration_ms"] is not None:
                entry[3].append(ev["duration_ms"])
        elif typ == "llm_call_completed":
            w.llm_calls += 1
            if ev["status"] == "error":
                w.llm_errors += 1
                w.llm_error_types[ev["error_class"] or "unknown"] += 1
                self._failed_attempt(w, ev)
            if ev["prompt_tokens"] is None and ev["completion_tokens"] is None:
                w.no_usage += 1
            else:
                tok = w.tokens
                for i, f in enumerate(("prompt_tokens", "completion_tokens", "cache_read_tokens",
                                       "cache_creation_tokens", "reasoning_tokens")):
                    v = ev[f]
                    if v is not None:
                        tok[i] += v
                w.by_model[ev["model"] or "unknown"] += (ev["prompt_tokens"] or 0) + (ev["completion_tokens"] or 0)
                cost = self.prices.cost_nusd(ev["model"], t, ev["prompt_tokens"], ev["completion_tokens"],
                                             ev["cache_read_tokens"], ev["cache_creation_tokens"],
                                             ev["reasoning_tokens"])
                if cost is None:
                    w.unpriced += 1
                else:
                    w.cost += cost
                    w.cost_by_model[ev["model"] or "unknown"] += cost
                    if ev.get("user_id"):
                        w.cost_by_user[ev["user_id"]] += cost
        elif typ == "llm_retry":
            w.llm_retries += 1
            self._failed_attempt(w, ev)
        elif typ == "turn_end":
            w.turns += 1
            w.turn_status[ev["status"] or "unknown"] += 1
            reason = ev["incomplete_reason"]
            if reason is not None:
                w.incomplete[reason] += 1
                if reason == "max_iterations":
                    w.max_iter += 1
            if ev["duration_ms"] is not None:
                w.turn_ms.append(ev["duration_ms"])
        elif typ == "tool_confirmation":
            w.confirm["request"] += 1
        elif typ == "confirm_resolved":
            w.confirm[ev["confirm_outcome"] or "unknown"] += 1

    @staticmethod
    def _failed_attempt(w: _Window, ev: dict[str, Any]) -> None:
        code = ev["http_status"]
        if code is not None and 500 <= code <= 599:
            w.llm_5xx += 1
        w.failed_attempts[str(code) if code is not None else (ev["error_class"] or "unknown")] += 1

    def result(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict: ``windows`` (tenant x window), ``tenants`` and ``totals``, plus every
        threshold ``crossings`` of the rules."""
        records = []
        per_tenant: dict[str, _Window] = {}
        fleet = _Window()
        for (tenant, start), w in sorted(self._windows.items()):
            rec = _record(w)
            rec.update(tenant=tenant, window_start_us=start, window_end_us=start + self.window_us,
                       window_start=iso(start))
            records.append(rec)
            _merge(per_tenant.setdefault(tenant, _Window()), w)
            _merge(fleet, w)
        return {
            "format": TRUTH_FORMAT,
            "window_s": self.window_s,
            "first_event_us": self.first_us,
            "last_event_us": self.last_us,
            "definitions": DEFINITIONS,
            "rules": [_rule_dict(r) for r in self.rules] + [{"kind": "spike", **vars(self.spike)}],
            "totals": _record(fleet),
            "tenants": {t: _record(w) for t, w in sorted(per_tenant.items())},
            "windows": records,
            "crossings": threshold_crossings(records, self.rules, self.spike),
        }


def truth_from_events(events: Iterable[dict[str, Any]], window_s: int = 60, rules: Sequence[RuleSpec] = DEFAULT_RULES,
                      spike: SpikeSpec = DEFAULT_SPIKE, prices: PriceTable | None = None) -> dict[str, Any]:
    """Count ``events`` per tenant and tumbling event-time window (see the module docstring for what counts)."""
    return TruthCounter(window_s, rules, spike, prices).add_all(events).result()


DEFINITIONS: dict[str, str] = {
    "turns": "turn_end events",
    "turn_duration_ms": "turn_end.duration_ms (nearest-rank quantiles)",
    "max_iterations_hits": "turn_end with incomplete_reason=max_iterations",
    "tool_calls": "tool_complete events (parent and sub-agent), by tool_name",
    "tool_failures": "tool_complete with status=error",
    "tool_cancelled": "tool_complete with status=cancelled (a call, not a failure)",
    "llm_calls": "llm_call_completed events",
    "llm_errors": "llm_call_completed with status=error, by error_class",
    "llm_retries": "llm_retry events",
    "llm_attempts": "llm_calls + llm_retries (provider HTTP attempts)",
    "llm_5xx": "llm_retry or llm_call_completed(status=error) with http_status 500..599",
    "tokens": "sums over llm_call_completed; total = prompt + completion; cache_read/cache_creation are parts of "
              "prompt, reasoning of completion",
    "llm_calls_without_usage": "llm_call_completed with null prompt and completion tokens",
    "tokens_by_model": "prompt + completion per llm_call_completed.model",
    "cost_nusd": "sum over llm_call_completed with usage of schemas.pricing cost (integer nano-USD, rounded per call)",
    "llm_calls_unpriced": "llm_call_completed with usage whose model has no price",
    "cost_by_model": "cost_nusd per llm_call_completed.model",
    "cost_by_user": "cost_nusd per llm_call_completed.user_id (exact; the worker's top_spenders bound it)",
    "cost_per_turn_usd": "cost_nusd / 1e9 / turns (same window)",
    "confirm.request": "tool_confirmation events",
    "confirm.allow/reject/timeout": "confirm_resolved by confirm_outcome",
    "rates.tool_failure_rate": "tool_failures / tool_calls",
    "rates.llm_5xx_rate": "llm_5xx / llm_attempts",
    "rates.max_iterations_rate": "max_iterations_hits / turns",
    "rates.cache_hit_rate": "tokens.cache_read / tokens.prompt",
    "rates.confirm_timeout_rate": "confirm.timeout / (confirm.allow + confirm.reject + confirm.timeout)",
    "tokens_per_turn": "tokens.total / turns (same window)",
    "window": "tumbling, by event_time, [k*window_s, (k+1)*window_s) since the epoch",
}


def _quantiles(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    s = sorted(values)
    n = len(s)

    def rank(q: float) -> int:
        return s[max(0, math.ceil(q * n) - 1)]

    return {"count": n, "sum": sum(s), "min": s[0], "max": s[-1], "p50": rank(0.5), "p95": rank(0.95),
            "p99": rank(0.99)}


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def _record(w: _Window) -> dict[str, Any]:
    tokens = dict(zip(_TOKEN_KEYS, w.tokens, strict=True))
    tokens["total"] = tokens["prompt"] + tokens["completion"]
    resolved = w.confirm["allow"] + w.confirm["reject"] + w.confirm["timeout"]
    attempts = w.llm_calls + w.llm_retries
    confirm = {k: w.confirm[k] for k in ("request", "allow", "reject", "timeout")}
    return {
        "events": w.events,
        "events_by_type": dict(sorted(w.by_type.items())),
        "turns": w.turns,
        "turns_by_status": dict(sorted(w.turn_status.items())),
        "incomplete_reasons": dict(sorted(w.incomplete.items())),
        "max_iterations_hits": w.max_iter,
        "turn_duration_ms": _quantiles(w.turn_ms),
        "tool_calls": w.tool_calls,
        "tool_failures": w.tool_failures,
        "tool_cancelled": w.tool_cancelled,
        "tools": {tool: {"calls": e[0], "failures": e[1], "cancelled": e[2], "failure_rate": _ratio(e[1], e[0]),
                         "duration_ms": _quantiles(e[3])} for tool, e in sorted(w.tools.items())},
        "llm_calls": w.llm_calls,
        "llm_attempts": attempts,
        "llm_retries": w.llm_retries,
        "llm_errors": w.llm_errors,
        "llm_errors_by_type": dict(sorted(w.llm_error_types.items())),
        "llm_5xx": w.llm_5xx,
        "llm_failed_attempts_by_status": dict(sorted(w.failed_attempts.items())),
        "llm_calls_without_usage": w.no_usage,
        "tokens": tokens,
        "tokens_by_model": dict(sorted(w.by_model.items())),
        "tokens_per_turn": _ratio(tokens["total"], w.turns),
        "cost_nusd": w.cost,
        "llm_calls_unpriced": w.unpriced,
        "cost_by_model": dict(sorted(w.cost_by_model.items())),
        "cost_by_user": dict(sorted(w.cost_by_user.items())),
        "cost_per_turn_usd": _ratio(w.cost / NANO_PER_USD, w.turns),
        "confirm": confirm,
        "rates": {
            "tool_failure_rate": _ratio(w.tool_failures, w.tool_calls),
            "llm_5xx_rate": _ratio(w.llm_5xx, attempts),
            "max_iterations_rate": _ratio(w.max_iter, w.turns),
            "cache_hit_rate": _ratio(tokens["cache_read"], tokens["prompt"]),
            "confirm_timeout_rate": _ratio(w.confirm["timeout"], resolved),
        },
        "volumes": {"tool_calls": w.tool_calls, "llm_attempts": attempts, "turns": w.turns,
                    "prompt_tokens": tokens["prompt"], "confirm_resolved": resolved},
    }


def _merge(into: _Window, w: _Window) -> None:
    into.events += w.events
    into.by_type.update(w.by_type)
    into.turns += w.turns
    into.max_iter += w.max_iter
    into.turn_status.update(w.turn_status)
    into.incomplete.update(w.incomplete)
    into.turn_ms.extend(w.turn_ms)
    into.tool_calls += w.tool_calls
    into.tool_failures += w.tool_failures
    into.tool_cancelled += w.tool_cancelled
    for tool, e in w.tools.items():
        mine = into.tools.setdefault(tool, [0, 0, 0, []])
        for i in range(3):
            mine[i] += e[i]
        mine[3].extend(e[3])
    into.llm_calls += w.llm_calls
    into.llm_errors += w.llm_errors
    into.llm_retries += w.llm_retries
    into.llm_5xx += w.llm_5xx
    into.no_usage += w.no_usage
    into.llm_error_types.update(w.llm_error_types)
    into.failed_attempts.update(w.failed_attempts)
    into.tokens = [a + b for a, b in zip(into.tokens, w.tokens, strict=True)]
    into.by_model.update(w.by_model)
    into.cost += w.cost
    into.unpriced += w.unpriced
    into.cost_by_model.update(w.cost_by_model)
    into.cost_by_user.update(w.cost_by_user)
    into.confirm.update(w.confirm)


def _rule_dict(rule: RuleSpec) -> dict[str, Any]:
    return {"kind": "threshold", "name": rule.name, "value": rule.value, "op": rule.op,
            "threshold": rule.threshold, "volume": rule.volume, "min_volume": rule.min_volume,
            "per_tool": rule.per_tool, "description": rule.description}


def threshold_crossings(records: Sequence[dict[str, Any]], rules: Sequence[RuleSpec] = DEFAULT_RULES,
                        spike: SpikeSpec = DEFAULT_SPIKE) -> list[dict[str, Any]]:
    """Every (rule, labels, window) whose counted value crosses the rule, guards applied; sorted.

    ``records`` are the truth's window records. The spike detector walks each tenant's windows in time order.
    """
    out: list[dict[str, Any]] = []
    for rec in records:
        tenant, start = rec["tenant"], rec["window_start_us"]
        for rule in rules:
            value, volume = rec["rates"][rule.value], rec["volumes"][rule.volume]
            if rule.crosses(value, volume):
                out.append({"rule": rule.name, "labels": {"tenant": tenant}, "window_start_us": start,
                            "value": value, "volume": volume})
            if rule.per_tool and rule.value == "tool_failure_rate":
                for tool, e in rec["tools"].items():
                    if rule.crosses(e["failure_rate"], e["calls"]):
                        out.append({"rule": rule.name, "labels": {"tenant": tenant, "tool": tool},
                                    "window_start_us": start, "value": e["failure_rate"], "volume": e["calls"]})
    # Spike detector, on two measures: tokens per window and tokens per turn.
    history: dict[tuple[str, str], list[float]] = {}
    for rec in sorted(records, key=lambda r: (r["tenant"], r["window_start_us"])):
        if rec["llm_calls"] - rec["llm_calls_without_usage"] <= 0:
            continue  # no usage reported: neither a verdict nor history
        total = rec["tokens"]["total"]
        measures = [("tokens", total, total >= spike.min_tokens)]
        if rec["turns"]:
            measures.append(("tokens_per_turn", total / rec["turns"],
                             total >= spike.min_tokens and rec["turns"] >= spike.min_turns))
        for measure, value, enough in measures:
            past = history.setdefault((rec["tenant"], measure), [])
            if len(past) >= spike.warmup and enough:
                baseline = _median(past[-spike.warmup:])
                if baseline > 0 and value / baseline >= spike.ratio:
                    out.append({"rule": spike.name, "labels": {"tenant": rec["tenant"]}, "measure": measure,
                                "window_start_us": rec["window_start_us"], "value": round(value / baseline, 6),
                                "volume": total, "baseline": round(baseline, 3)})
                    continue  # a spike never enters its own baseline
            past.append(value)
    out.sort(key=lambda c: (c["rule"], sorted(c["labels"].items()), c["window_start_us"], c.get("measure", "")))
    return out


def _median(values: Sequence[int]) -> float:
    s = sorted(values)
    n = len(s)
    return float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def expected_alerts(incidents: Sequence[Incident], start_us: int, truth: dict[str, Any]) -> dict[str, Any]:
    """Per incident, the alerts (rule + labels) it must raise, its event-time span and the windows whose counts
    cross; plus every crossing no incident explains (should be empty: baseline traffic stays below thresholds).

    A crossing is explained by an incident with the same rule and labels when its window overlaps
    ``[start, end + window)``: turns, retries and confirmations that began inside the incident may end one window
    later.
    """
    window_us = truth["window_s"] * US
    crossings = truth["crossings"]
    expected, explained = [], set()
    for idx, inc in enumerate(incidents):
        s_us, e_us = start_us + int(inc.start_s * US), start_us + int(inc.end_s * US)
        for labels in inc.expected_labels():
            hits = []
            for i, c in enumerate(crossings):
                if (c["rule"] == inc.rule and c["labels"] == labels
                        and c["window_start_us"] + window_us > s_us and c["window_start_us"] < e_us + window_us):
                    hits.append(c["window_start_us"])
                    explained.add(i)
            full = [w for w in range(s_us - s_us % window_us, e_us, window_us)
                    if w >= s_us and w + window_us <= e_us]
            expected.append({
                "incident": idx, "kind": inc.kind, "alertname": inc.rule, "labels": labels,
                "start_us": s_us, "end_us": e_us, "start": iso(s_us), "end": iso(e_us), "params": inc.to_dict(),
                "full_windows_us": full, "crossing_windows_us": hits,
            })
    return {"expected": expected,
            "unexpected_crossings": [c for i, c in enumerate(crossings) if i not in explained]}


# -- output ----------------------------------------------------------------------------------------------------


def iso(t_us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC with microseconds (the truth document's human times)."""
    return datetime.fromtimestamp(t_us / US, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """Canonical JSON (sorted keys: same truth, same bytes), written atomically (temporary file, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(p)
