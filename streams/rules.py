"""Threshold alert rules on closed windows: the seed's five rates, with volume guard, persistence and hysteresis.

Pure logic: the Faust shell hands :meth:`RuleEngine.evaluate` one :class:`WindowMetrics` per tenant per closed
window (emit-final results, never intermediate ones) and sends the returned :class:`~streams.alerts.Alert`
transitions to the alerts topic. Per (rule, tenant[, tool]) the engine keeps a small
:class:`~streams.alerts.AlertState`; :meth:`RuleEngine.snapshot_tenant` / :meth:`RuleEngine.restore_tenant` give it
as plain JSON-able data for a changelog-backed table keyed by tenant.

Semantics, per rule and key:

* ``value = numerator / denominator`` of the window; with ``op: ">"`` the window breaches when ``value > fire`` and
  clears when ``value < resolve`` (``op: "<"``, the cache rule, mirrors both). A value *exactly at* a threshold
  neither breaches nor clears (strict comparisons, as the seed's "> 10 %" reads and as PromQL ``>`` does). Values
  are float divisions of integer counts; IEEE division is correctly rounded, so an exact ratio such as 2/20 equals
  the literal 0.10 and does not fire.
* Minimum volume: below ``min_volume`` (of the denominator) the window gives no verdict and the state stays as it
  is: a pending run is neither advanced nor broken, an open alert stays open. After ``stale_windows`` such windows
  in a row an open alert resolves for lack of data (see :func:`streams.alerts.step`).
* Persistence: an alert fires after ``for_windows`` consecutive breaching windows (windows without a verdict are
  skipped, not counted). ``startsAt`` is the start of the first of them.
* Order: windows must arrive in window order per tenant. A window ending at or before the last evaluated one for
  that tenant is ignored, which makes re-delivery of a final window result (at-least-once) harmless.

Daily cost budget (``cost_budget`` in the rules file, :class:`BudgetSpec`): per tenant, the spend of the **UTC
calendar day** (the day of each window's start; not a rolling 24 h: it matches how providers bill and resets at a
known time) is the sum of the windows' ``cost_nusd`` (integer nano-USD, exact). The alert fires with the first
window that takes the day's spend strictly above the tenant's budget (``startsAt`` = that window) and resolves
with the tenant's first window of a later day (``endsAt`` = the end of the breached day): one page per tenant and
day. Late data that revises a window of the current day adds its extra cost to the day's spend (a crossing it
causes fires with the tenant's next window); calls of unpriced models are not money, and the alert says how many
there were. The day, its spend and the open alert are in the tenant's snapshot, so they survive restarts.

Per-user spend (``user_spend``, :class:`UserSpendSpec`): each window's ``top_spenders`` sketch (per ``user_id``,
bounded, with error bounds: :mod:`streams.heavy_hitters`) is kept for the rolling ``rolling_minutes``; a user whose
*certain* spend over it (the sum of the sketch's lower bounds, so the alert never names a user wrongly) goes above
``threshold_usd`` fires ``UserSpendHigh`` with a ``user`` label; it resolves when the user's possible spend (the
sum of upper bounds) is back at or below ``resolve_usd``. A user whose true rolling spend exceeds the threshold by
more than the sketches' error bounds (each window's total / capacity) is always caught. Revisions (late data) do not
change it. The kept windows and open alerts are in the tenant's snapshot.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streams.alerts import FIRING, RESOLVED, Alert, AlertState, Change, Verdict, rfc3339, step

DEFAULT_RULES_FILE = Path(__file__).resolve().with_name("default_rules.yaml")
CONFIG_VERSION = 1
TOP_LEVEL_KEYS = frozenset({"version", "defaults", "rules", "token_spike", "cost_budget", "user_spend"})
DAY_US = 86_400_000_000
NANO_PER_USD = 1_000_000_000
RESERVED_LABELS = frozenset({"alertname", "tenant", "tool", "severity"})


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RulesConfigError(ValueError):
    """A rules file that cannot be used; the message names the file, the rule and the key."""


# -- input ------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ToolCounts:
    calls: int = 0
    failures: int = 0


@dataclass(slots=True)
class WindowMetrics:
    """What the detectors read from one tenant's closed window (plain data; build with :meth:`from_record`).

    The LLM 5xx rate is per provider HTTP attempt: ``llm_5xx`` failed attempts with a 5xx status over
    ``llm_attempts`` (calls plus retries), since a 5xx that a retry hid is still the vendor failing.
    Token fields sum the calls that reported usage; ``llm_calls_without_usage`` counts the
    calls whose provider sent no usage at all (null, as opposed to 0). ``tokens_by_model`` / ``tokens_by_skill``
    hold prompt + completion tokens. Confirmation outcomes are counted when they resolve.
    """

    tenant: str
    window_start_us: int
    window_end_us: int
    tool_calls: int = 0
    tool_failures: int = 0
    tools: dict[str, ToolCounts] = field(default_factory=dict)
    llm_calls: int = 0
    llm_errors_5xx: int = 0
    llm_attempts: int = 0
    llm_5xx: int = 0
    llm_calls_without_usage: int = 0
    turns: int = 0
    max_iterations_hits: int = 0
    prompt_tokens: int = 0
    cache_read_tokens: int = 0
    completion_tokens: int = 0
    confirm_requests: int = 0
    confirm_allows: int = 0
    confirm_rejects: int = 0
    confirm_timeouts: int = 0
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    tokens_by_skill: dict[str, int] = field(default_factory=dict)
    cost_nusd: int = 0  # integer nano-USD (schemas/pricing.py); calls of unpriced models are not in it
    llm_calls_unpriced: int = 0
    top_spenders: list[tuple[str, int, int]] = field(default_factory=list)  # (user, cost, error), nano-USD

    @property
    def total_tokens(self) -> int:
        """Prompt + completion (cache reads are part of the prompt, never added)."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def llm_calls_with_usage(self) -> int:
        return max(0, self.llm_calls - self.llm_calls_without_usage)

    @property
    def confirm_resolved(self) -> int:
        """Confirmations that ended in the window (allow, reject or timeout): the timeout rate's denominator."""
        return self.confirm_allows + self.confirm_rejects + self.confirm_timeouts

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WindowMetrics:
        """From a window-result dict; missing or null counters are 0, unknown keys are ignored.

        ``tools`` may be ``{tool: {calls, failures}}`` or a list of ``{tool, calls, failures}`` (Avro map or array).
        The keys are those of ``streams.aggregate.TenantWindowAggregate.to_record`` (the ``WindowedMetrics``
        record); ``tokens_by_model`` / ``tokens_by_skill`` are ``{name: prompt + completion tokens}``.
        """
        try:
            tenant = record["tenant"]
            start = int(record["window_start_us"])
            end = int(record["window_end_us"])
        except KeyError as exc:
            raise ValueError(f"window record lacks {exc.args[0]!r}") from exc
        tools_raw = record.get("tools") or {}
        if isinstance(tools_raw, Mapping):
            items: Iterable[tuple[str, Any]] = tools_raw.items()
        else:
            items = ((t["tool"], t) for t in tools_raw)
        tools = {str(name): ToolCounts(_count(c, "calls"), _count(c, "failures")) for name, c in items}
        spenders = (record.get("top_spenders") or {}).get("users") or ()
        return cls(
            tenant=str(tenant), window_start_us=start, window_end_us=end, tools=tools,
            top_spenders=[(str(u["user"]), int(u["cost_nusd"]), int(u["error_nusd"])) for u in spenders],
            tokens_by_model={str(k): int(v or 0) for k, v in (record.get("tokens_by_model") or {}).items()},
            tokens_by_skill={str(k): int(v or 0) for k, v in (record.get("tokens_by_skill") or {}).items()},
            **{name: _count(record, name) for name in _COUNTER_FIELDS},
        )


_COUNTER_FIELDS = (
    "tool_calls", "tool_failures", "llm_calls", "llm_errors_5xx", "llm_attempts", "llm_5xx", "llm_calls_without_usage",
    "turns",
    "max_iterations_hits", "prompt_tokens", "cache_read_tokens", "completion_tokens", "confirm_requests",
    "confirm_allows", "confirm_rejects", "confirm_timeouts", "cost_nusd", "llm_calls_unpriced",
)


def _count(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    return 0 if value is None else int(value)


# -- metrics the rules can watch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateMetric:
    """A ratio of two window counters; ``unit`` names the denominator in summaries."""

    numerator: str
    denominator: str
    unit: str
    per_tool: bool = False


METRICS: dict[str, RateMetric] = {
    "tool_failure_rate": RateMetric("tool_failures", "tool_calls", "tool calls", per_tool=True),
    "llm_5xx_rate": RateMetric("llm_5xx", "llm_attempts", "LLM attempts"),
    "max_iterations_rate": RateMetric("max_iterations_hits", "turns", "turns"),
    "cache_hit_rate": RateMetric("cache_read_tokens", "prompt_tokens", "prompt tokens"),
    "confirm_timeout_rate": RateMetric("confirm_timeouts", "confirm_resolved", "resolved confirmations"),
}


# -- rule specs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSpec:
    """One validated rule. ``name`` identifies the rule; ``alertname`` (default: ``name``) is the alert label, so
    the tenant-wide and the per-tool failure rules can raise the same alertname with different label sets."""

    name: str
    alertname: str
    metric: str
    per: str  # "tenant" | "tool"
    op: str  # ">" | "<"
    fire: float
    resolve: float
    min_volume: int
    for_windows: int
    stale_windows: int | None
    severity: str
    summary: str
    resolved_summary: str
    description: str = ""
    runbook_url: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def verdict(self, value: float) -> Verdict:
        if self.op == ">":
            if value > self.fire:
                return Verdict.BREACH
            return Verdict.CLEAR if value < self.resolve else Verdict.HOLD
        if value < self.fire:
            return Verdict.BREACH
        return Verdict.CLEAR if value > self.resolve else Verdict.HOLD


@dataclass(frozen=True)
class BudgetSpec:
    """The per-tenant daily cost budget: ``daily_usd`` for every tenant, ``tenants`` overriding it per tenant
    (a ``None`` budget: no budget for that tenant)."""

    alertname: str = "DailyCostBudgetExceeded"
    daily_usd: float | None = None
    tenants: tuple[tuple[str, float | None], ...] = ()
    severity: str = "warning"
    runbook_url: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def budget_nusd(self, tenant: str) -> int | None:
        """The tenant's budget in integer nano-USD, or None without one."""
        usd = dict(self.tenants).get(tenant, self.daily_usd) if self.tenants else self.daily_usd
        return None if usd is None else round(usd * NANO_PER_USD)

    @property
    def active(self) -> bool:
        return self.daily_usd is not None or any(v is not None for _t, v in self.tenants)


_BUDGET_KEYS = frozenset({"enabled", "alertname", "daily_usd", "tenants", "severity", "runbook_url", "labels"})


def _usd(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e12:
        raise RulesConfigError(f"{where} must be a number of USD >= 0 (or null for no budget), got {value!r}")
    return float(value)


def _build_budget(entry: Mapping[str, Any], where: str) -> BudgetSpec | None:
    _check_keys(entry, _BUDGET_KEYS, where)
    if entry.get("enabled", True) is False:
        return None
    tenants = entry.get("tenants") or {}
    if not isinstance(tenants, dict) or not all(isinstance(t, str) and t for t in tenants):
        raise RulesConfigError(f"{where}: tenants must map tenant names to daily budgets in USD, got {tenants!r}")
    labels = _labels(entry.get("labels"), where)
    runbook = entry.get("runbook_url")
    spec = BudgetSpec(
        alertname=_text(entry.get("alertname", BudgetSpec.alertname), where, "alertname"),
        daily_usd=_usd(entry.get("daily_usd"), f"{where}: daily_usd"),
        tenants=tuple(sorted((t, _usd(v, f"{where}: tenants.{t}")) for t, v in tenants.items())),
        severity=_text(entry.get("severity", BudgetSpec.severity), where, "severity"),
        runbook_url=None if runbook is None else _text(runbook, where, "runbook_url"),
        labels=tuple(sorted(labels.items())),
    )
    return spec if spec.active else None


def load_budget(path: str | Path | None = None) -> BudgetSpec | None:
    """The daily cost budget: the packaged ``cost_budget`` (no budget set) with the user's keys over it; None when
    disabled or when no tenant has a budget. Raises :class:`RulesConfigError`."""
    base, user, source = read_config_documents(path)
    entry = dict(_section(base, "cost_budget", str(DEFAULT_RULES_FILE)))
    if user is not None:
        entry.update(_section(user, "cost_budget", source))
    return _build_budget(entry, f"{source}: cost_budget")


@dataclass(frozen=True)
class UserSpendSpec:
    """A user's spend over the rolling ``rolling_minutes`` above ``threshold_usd`` fires, naming the user."""

    threshold_usd: float
    resolve_usd: float
    rolling_minutes: int = 60
    alertname: str = "UserSpendHigh"
    severity: str = "warning"
    runbook_url: str | None = None
    labels: tuple[tuple[str, str], ...] = ()


_USER_SPEND_KEYS = frozenset({"enabled", "alertname", "threshold_usd", "resolve_usd", "rolling_minutes", "severity",
                              "runbook_url", "labels"})


def load_user_spend(path: str | Path | None = None) -> UserSpendSpec | None:
    """The per-user spend rule: the packaged ``user_spend`` (off: no threshold) with the user's keys over it."""
    base, user, source = read_config_documents(path)
    entry = dict(_section(base, "user_spend", str(DEFAULT_RULES_FILE)))
    if user is not None:
        entry.update(_section(user, "user_spend", source))
    where = f"{source}: user_spend"
    _check_keys(entry, _USER_SPEND_KEYS, where)
    threshold = _usd(entry.get("threshold_usd"), f"{where}: threshold_usd")
    if entry.get("enabled", True) is False or threshold is None:
        return None
    resolve = _usd(entry.get("resolve_usd"), f"{where}: resolve_usd")
    resolve = threshold if resolve is None else resolve
    if resolve > threshold:
        raise RulesConfigError(f"{where}: resolve_usd ({resolve}) must be <= threshold_usd ({threshold})")
    labels = _labels(entry.get("labels"), where, reserved=RESERVED_LABELS | {"user"})
    runbook = entry.get("runbook_url")
    return UserSpendSpec(
        threshold_usd=threshold, resolve_usd=resolve,
        rolling_minutes=_int(entry.get("rolling_minutes", 60), where, "rolling_minutes", 1),
        alertname=_text(entry.get("alertname", UserSpendSpec.alertname), where, "alertname"),
        severity=_text(entry.get("severity", UserSpendSpec.severity), where, "severity"),
        runbook_url=None if runbook is None else _text(runbook, where, "runbook_url"),
        labels=tuple(sorted(labels.items())),
    )


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[RuleSpec, ...]
    source: str = "defaults"
    budget: BudgetSpec | None = None
    user_spend: UserSpendSpec | None = None

    def by_name(self, name: str) -> RuleSpec:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


_RULE_KEYS = frozenset({
    "name", "alertname", "metric", "per", "op", "fire", "resolve", "min_volume", "for_windows", "stale_windows",
    "severity", "summary", "resolved_summary", "description", "runbook_url", "labels", "enabled",
})
_DEFAULT_KEYS = frozenset({"for_windows", "stale_windows", "severity", "resolved_summary", "labels"})
_TEMPLATE_FIELDS = frozenset({
    "alertname", "rule", "tenant", "tool", "subject", "metric", "op", "resolve_op", "value", "value_pct", "fire",
    "fire_pct", "resolve", "resolve_pct", "numerator", "denominator", "volume_unit", "min_volume", "for_windows",
    "severity", "window_start", "window_end",
})


def read_config_documents(path: str | Path | None) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """The packaged defaults and the user's file (``None`` when no path), both checked at the top level.

    Shared with :mod:`streams.spike`, whose settings live in the same file under ``token_spike``.
    """
    base = _read_yaml(DEFAULT_RULES_FILE)
    if path is None:
        return base, None, str(DEFAULT_RULES_FILE)
    return base, _read_yaml(Path(path)), str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesConfigError(f"{path}: cannot read rules file: {exc.strerror or exc}") from exc
    try:
        doc = yaml.load(text, Loader=_SAFE_LOADER)  # safe loader (the C one when built)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesConfigError(f"{path}: not valid YAML{where}: {problem}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise RulesConfigError(f"{path}: the top level must be a mapping (version, defaults, rules, token_spike), "
                               f"got {type(doc).__name__}")
    unknown = set(doc) - TOP_LEVEL_KEYS
    if unknown:
        raise RulesConfigError(f"{path}: unknown top-level keys {sorted(map(str, unknown))}; "
                               f"known: {sorted(TOP_LEVEL_KEYS)}")
    version = doc.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise RulesConfigError(f"{path}: version {version!r} is not supported (expected {CONFIG_VERSION})")
    return doc


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The threshold rules: the packaged defaults (the seed's thresholds), overridden by ``path`` when given.

    Override semantics: ``defaults`` keys replace the packaged defaults; a rule whose ``name`` exists replaces only
    the keys it sets (``{name: ToolFailureRateHigh, fire: 0.2}`` is enough); a new name adds a rule (all its
    required keys then); ``enabled: false`` removes one. Raises :class:`RulesConfigError` with a clear message.
    """
    base, user, source = read_config_documents(path)
    base_path = str(DEFAULT_RULES_FILE)
    defaults = _section(base, "defaults", base_path)
    _check_keys(defaults, _DEFAULT_KEYS, f"{base_path}: defaults")
    entries = _rule_entries(base, base_path)
    if user is not None:
        user_defaults = _section(user, "defaults", source)
        _check_keys(user_defaults, _DEFAULT_KEYS, f"{source}: defaults")
        defaults = {**defaults, **user_defaults}
        for where, entry in _rule_entries(user, source):
            name = entry["name"]
            for i, (_, existing) in enumerate(entries):
                if existing["name"] == name:
                    entries[i] = (where, {**existing, **entry})
                    break
            else:
                entries.append((where, entry))
    rules = []
    for where, entry in entries:
        if entry.get("enabled", True) is False:
            continue
        rules.append(_build_rule(where, entry, defaults))
    return RuleSet(tuple(rules), source, load_budget(path), load_user_spend(path))


def _section(doc: Mapping[str, Any], name: str, path: str) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RulesConfigError(f"{path}: {name} must be a mapping, got {type(value).__name__}")
    return value


def _rule_entries(doc: Mapping[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    rules = doc.get("rules")
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise RulesConfigError(f"{path}: rules must be a list of mappings, got {type(rules).__name__}")
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, entry in enumerate(rules):
        where = f"{path}: rules[{i}]"
        if not isinstance(entry, dict):
            raise RulesConfigError(f"{where}: each rule must be a mapping, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not _is_identifier(name):
            raise RulesConfigError(f"{where}: name must be an identifier such as ToolFailureRateHigh, got {name!r}")
        if name in seen:
            raise RulesConfigError(f"{where}: rule name {name!r} appears twice")
        seen.add(name)
        _check_keys(entry, _RULE_KEYS, f"{where} ({name})")
        out.append((f"{where} ({name})", entry))
    return out


def _check_keys(entry: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(entry) - known
    if unknown:
        raise RulesConfigError(f"{where}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")


def _is_identifier(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(c.isalnum() or c == "_" for c in name)


def _build_rule(where: str, entry: Mapping[str, Any], defaults: Mapping[str, Any]) -> RuleSpec:
    merged = {**defaults, **entry}
    if "labels" in defaults and "labels" in entry:
        merged["labels"] = {**(defaults["labels"] or {}), **(entry["labels"] or {})}
    for key in ("metric", "op", "fire", "resolve", "min_volume", "severity", "summary"):
        if merged.get(key) is None:
            raise RulesConfigError(f"{where}: missing required key {key!r}")
    metric = merged["metric"]
    if metric not in METRICS:
        raise RulesConfigError(f"{where}: metric {metric!r} is unknown; known: {sorted(METRICS)}")
    per = merged.get("per", "tenant")
    if per not in ("tenant", "tool"):
        raise RulesConfigError(f"{where}: per must be 'tenant' or 'tool', got {per!r}")
    if per == "tool" and not METRICS[metric].per_tool:
        raise RulesConfigError(f"{where}: metric {metric!r} has no per-tool breakdown (per: tool)")
    op = merged["op"]
    if op not in (">", "<"):
        raise RulesConfigError(f"{where}: op must be '>' or '<' (strict, see streams/rules.py), got {op!r}")
    fire = _rate(merged["fire"], where, "fire")
    resolve = _rate(merged["resolve"], where, "resolve")
    if op == ">" and resolve > fire:
        raise RulesConfigError(f"{where}: with op '>' resolve ({resolve}) must be <= fire ({fire})")
    if op == "<" and resolve < fire:
        raise RulesConfigError(f"{where}: with op '<' resolve ({resolve}) must be >= fire ({fire})")
    min_volume = _int(merged["min_volume"], where, "min_volume", 1)
    for_windows = _int(merged.get("for_windows", 1), where, "for_windows", 1)
    stale = merged.get("stale_windows")
    stale_windows = None if stale is None else _int(stale, where, "stale_windows", 1)
    severity = _text(merged["severity"], where, "severity")
    alertname = _text(merged.get("alertname", entry["name"]), where, "alertname")
    labels = _labels(merged.get("labels"), where)
    runbook = merged.get("runbook_url")
    rule = RuleSpec(
        name=entry["name"], alertname=alertname, metric=metric, per=per, op=op, fire=fire, resolve=resolve,
        min_volume=min_volume, for_windows=for_windows, stale_windows=stale_windows, severity=severity,
        summary=_text(merged["summary"], where, "summary"),
        resolved_summary=_text(merged.get("resolved_summary") or _FALLBACK_RESOLVED, where, "resolved_summary"),
        description=_text(merged.get("description") or "", where, "description", allow_empty=True),
        runbook_url=None if runbook is None else _text(runbook, where, "runbook_url"),
        labels=tuple(sorted(labels.items())),
    )
    sample = _context(rule, "acme", "search" if per == "tool" else None, 0.5, 5, 10, 0, 60_000_000)
    for key in ("summary", "resolved_summary", "description"):
        _check_template(getattr(rule, key), sample, where, key)
    return rule


_FALLBACK_RESOLVED = "{alertname} resolved for {subject}: {value_pct:.1f}% {resolve_op} {resolve_pct:g}%"


def _rate(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RulesConfigError(f"{where}: {key} must be a number between 0 and 1 (a fraction, 0.10 = 10 %), "
                               f"got {value!r}")
    return float(value)


def _int(value: Any, where: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RulesConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value



def _labels(value: Any, where: str, reserved: frozenset[str] | set[str] = RESERVED_LABELS) -> dict[str, str]:
    """A rule's extra ``labels``: strings to strings, none of those the engine sets itself."""
    labels = value or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise RulesConfigError(f"{where}: labels must map strings to strings, got {labels!r}")
    taken = reserved & set(labels)
    if taken:
        raise RulesConfigError(f"{where}: labels {sorted(taken)} are set by the engine and cannot be overridden")
    return labels

def _text(value: Any, where: str, key: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise RulesConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _check_template(template: str, sample: Mapping[str, Any], where: str, key: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise RulesConfigError(f"{where}: {key} is not a valid template: {exc}") from exc
    unknown = {n for n in names if n.split(".")[0].split("[")[0] not in _TEMPLATE_FIELDS}
    if unknown:
        raise RulesConfigError(f"{where}: {key} uses unknown placeholders {sorted(unknown)}; "
                               f"known: {sorted(_TEMPLATE_FIELDS)}")
    try:
        template.format(**sample)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise RulesConfigError(f"{where}: {key} cannot be rendered: {exc}") from exc


def _context(rule: RuleSpec, tenant: str, tool: str | None, value: float, numerator: int, denominator: int,
             window_start_us: int, window_end_us: int) -> dict[str, Any]:
    subject = f"tenant {tenant}" if tool is None else f"tenant {tenant}, tool {tool}"
    return {
        "alertname": rule.alertname, "rule": rule.name, "tenant": tenant, "tool": tool or "", "subject": subject,
        "metric": rule.metric, "op": rule.op, "resolve_op": "<" if rule.op == ">" else ">",
        "value": value, "value_pct": value * 100, "fire": rule.fire, "fire_pct": rule.fire * 100,
        "resolve": rule.resolve, "resolve_pct": rule.resolve * 100, "numerator": numerator,
        "denominator": denominator, "volume_unit": METRICS[rule.metric].unit, "min_volume": rule.min_volume,
        "for_windows": rule.for_windows, "severity": rule.severity,
        "window_start": rfc3339(window_start_us), "window_end": rfc3339(window_end_us),
    }


# -- the engine -------------------------------------------------------------------------------------------------

_Key = tuple[str, str | None]  # (rule name, tool or None)


@dataclass(slots=True)
class _TenantState:
    last_window_end_us: int | None = None
    keys: dict[_Key, AlertState] = field(default_factory=dict)
    budget_day: int | None = None  # UTC day number (epoch days) whose spend is counted
    spend_nusd: int = 0  # that day's spend so far, integer nano-USD
    budget_since_us: int | None = None  # start of the window that crossed the budget (the alert is open)
    unpriced: int = 0  # calls of unpriced models that day
    # per-user spend: the rolling windows' sketches (start, end, [(user, cost, error)]) and open alerts (user: since)
    spend_windows: list[tuple[int, int, list[tuple[str, int, int]]]] = field(default_factory=list)
    spend_open: dict[str, int] = field(default_factory=dict)


class RuleEngine:
    """Evaluates every rule on each closed window of a tenant and returns the alert transitions it causes.

    One engine per window series (e.g. the 1-minute tumbling windows): windows must come in order per tenant.
    ``generator_url`` is an optional template (``{tenant}``, ``{alertname}``, ``{tool}``) for the alerts'
    ``generatorURL``, e.g. a dashboard link.
    """

    def __init__(self, rules: RuleSet | Sequence[RuleSpec] | None = None, generator_url: str | None = None,
                 budget: BudgetSpec | None = None, user_spend: UserSpendSpec | None = None) -> None:
        ruleset = load_rules() if rules is None else rules
        self.rules: tuple[RuleSpec, ...] = tuple(ruleset.rules if isinstance(ruleset, RuleSet) else ruleset)
        self.budget = budget if budget is not None or not isinstance(ruleset, RuleSet) else ruleset.budget
        self.user_spend = (user_spend if user_spend is not None or not isinstance(ruleset, RuleSet)
                           else ruleset.user_spend)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise RulesConfigError(f"rule names must be unique, got {names}")
        self._by_name = {r.name: r for r in self.rules}
        if generator_url is not None:
            generator_url.format(tenant="t", alertname="a", tool="")  # fail at construction, not at first alert
        self.generator_url = generator_url
        self._tenants: dict[str, _TenantState] = {}

    def evaluate(self, metrics: WindowMetrics | Mapping[str, Any], *, backfill: bool = False) -> list[Alert]:
        """The transitions caused by one tenant's closed window (usually none).

        ``backfill=True`` marks the resulting alerts as computed from history (recorded, never paged); the state
        advances the same way, so live evaluation continues where the backfill left off.
        """
        m = metrics if isinstance(metrics, WindowMetrics) else WindowMetrics.from_record(metrics)
        tenant = self._tenants.get(m.tenant)
        if tenant is None:
            tenant = self._tenants[m.tenant] = _TenantState()
        elif tenant.last_window_end_us is not None and m.window_end_us <= tenant.last_window_end_us:
            return []
        tenant.last_window_end_us = m.window_end_us
        out: list[Alert] = []
        if self.budget is not None:
            self._evaluate_budget(self.budget, tenant, m, backfill, out)
        if self.user_spend is not None:
            self._evaluate_user_spend(self.user_spend, tenant, m, backfill, out)
        for rule in self.rules:
            metric = METRICS[rule.metric]
            if rule.per == "tenant":
                num, den = getattr(m, metric.numerator), getattr(m, metric.denominator)
                self._evaluate_key(rule, tenant, m, None, num, den, backfill, out)
                continue
            # Only tools that breach now or have state can transition; skip the rest cheaply (50 tools x
            # 10,000 tenants per window is the sizing case).
            keys, name, fire, min_volume = tenant.keys, rule.name, rule.fire, rule.min_volume
            if rule.op == ">":
                tools = [
                    t
                    for t, c in m.tools.items()
                    if (c.calls >= min_volume and c.failures / c.calls > fire) or (name, t) in keys
                ]
            else:
                tools = [
                    t
                    for t, c in m.tools.items()
                    if (c.calls >= min_volume and c.failures / c.calls < fire) or (name, t) in keys
                ]
            tools += [t for (n, t) in keys if n == name and t is not None and t not in m.tools]
            for tool in sorted(tools):
                counts = m.tools.get(tool)
                num, den = (counts.failures, counts.calls) if counts is not None else (0, 0)
                self._evaluate_key(rule, tenant, m, tool, num, den, backfill, out)
        return out

    def _evaluate_budget(self, spec: BudgetSpec, ts: _TenantState, m: WindowMetrics, backfill: bool,
                         out: list[Alert]) -> None:
        day = m.window_start_us // DAY_US
        if ts.budget_day != day:
            if ts.budget_since_us is not None and ts.budget_day is not None:
                out.append(self._budget_alert(spec, ts, m, RESOLVED, backfill))
            ts.budget_day, ts.spend_nusd, ts.budget_since_us, ts.unpriced = day, 0, None, 0
        ts.spend_nusd += m.cost_nusd
        ts.unpriced += m.llm_calls_unpriced
        if ts.budget_since_us is not None:
            return
        limit = spec.budget_nusd(m.tenant)
        if limit is not None and ts.spend_nusd > limit:
            ts.budget_since_us = m.window_start_us
            out.append(self._budget_alert(spec, ts, m, FIRING, backfill))

    def _evaluate_user_spend(self, spec: UserSpendSpec, ts: _TenantState, m: WindowMetrics, backfill: bool,
                             out: list[Alert]) -> None:
        horizon = m.window_end_us - spec.rolling_minutes * 60_000_000
        kept = [w for w in ts.spend_windows if w[1] > horizon]
        if m.top_spenders:
            kept.append((m.window_start_us, m.window_end_us, list(m.top_spenders)))
        ts.spend_windows = kept
        low: dict[str, int] = {}
        high: dict[str, int] = {}
        for _s, _e, users in kept:
            for user, cost, err in users:
                low[user] = low.get(user, 0) + cost - err
                high[user] = high.get(user, 0) + cost
        fire, resolve = round(spec.threshold_usd * NANO_PER_USD), round(spec.resolve_usd * NANO_PER_USD)
        for user in sorted(ts.spend_open):
            if high.get(user, 0) <= resolve:
                since = ts.spend_open.pop(user)
                out.append(self._user_alert(spec, m, user, RESOLVED, since, low.get(user, 0), high.get(user, 0),
                                            backfill))
        for user in sorted(u for u, v in low.items() if v > fire and u not in ts.spend_open):
            ts.spend_open[user] = m.window_start_us
            out.append(self._user_alert(spec, m, user, FIRING, m.window_start_us, low[user], high[user], backfill))

    def _user_alert(self, spec: UserSpendSpec, m: WindowMetrics, user: str, status: str, since: int, low: int,
                    high: int, backfill: bool) -> Alert:
        labels = {"alertname": spec.alertname, "tenant": m.tenant, "user": user, "severity": spec.severity,
                  **dict(spec.labels)}
        lo, hi = low / NANO_PER_USD, high / NANO_PER_USD
        annotations = {"spend_usd": f"{lo:.6f}", "spend_usd_upper": f"{hi:.6f}",
                       "threshold_usd": f"{spec.threshold_usd:.6f}", "rolling_minutes": str(spec.rolling_minutes)}
        bound = "" if lo == hi else f" (at most ${hi:,.2f})"
        if status == FIRING:
            annotations["summary"] = (f"User {user} of tenant {m.tenant} spent at least ${lo:,.2f}{bound} on LLM "
                                      f"calls in the last {spec.rolling_minutes} min, over ${spec.threshold_usd:,.2f}")
            ends_at, threshold = None, spec.threshold_usd
        else:
            annotations["summary"] = (f"{spec.alertname} resolved for user {user} of tenant {m.tenant}: at most "
                                      f"${hi:,.2f} in the last {spec.rolling_minutes} min")
            annotations["resolve_reason"] = "recovered"
            ends_at, threshold = m.window_end_us, spec.resolve_usd
        if spec.runbook_url:
            annotations["runbook_url"] = spec.runbook_url
        url = None
        if self.generator_url is not None:
            url = self.generator_url.format(tenant=m.tenant, alertname=spec.alertname, tool="")
        return Alert(labels=labels, annotations=annotations, status=status,  # type: ignore[arg-type]
                     starts_at_us=since, ends_at_us=ends_at, window_start_us=m.window_start_us,
                     window_end_us=m.window_end_us, value=lo if status == FIRING else hi, threshold=threshold,
                     backfill=backfill, generator_url=url)

    def _budget_alert(self, spec: BudgetSpec, ts: _TenantState, m: WindowMetrics, status: str,
                      backfill: bool) -> Alert:
        assert ts.budget_day is not None and ts.budget_since_us is not None
        labels = {"alertname": spec.alertname, "tenant": m.tenant, "severity": spec.severity, **dict(spec.labels)}
        limit = spec.budget_nusd(m.tenant)
        day_start = ts.budget_day * DAY_US
        spend, budget = ts.spend_nusd / NANO_PER_USD, (limit or 0) / NANO_PER_USD
        day = rfc3339(day_start)[:10]
        annotations = {"spend_usd": f"{spend:.6f}", "budget_usd": f"{budget:.6f}", "day": day}
        unpriced = ""
        if ts.unpriced:
            annotations["llm_calls_unpriced"] = str(ts.unpriced)
            unpriced = f" ({ts.unpriced} calls of unpriced models not counted)"
        if status == FIRING:
            annotations["summary"] = (f"Tenant {m.tenant} spent ${spend:,.2f} on LLM calls on {day} (UTC), over its "
                                      f"daily budget of ${budget:,.2f}{unpriced}")
            ends_at = None
        else:
            annotations["summary"] = (f"{spec.alertname} resolved for tenant {m.tenant}: the UTC day {day} is over "
                                      f"(spent ${spend:,.2f} of ${budget:,.2f}){unpriced}")
            annotations["resolve_reason"] = "day_over"
            ends_at = day_start + DAY_US
        if spec.runbook_url:
            annotations["runbook_url"] = spec.runbook_url
        url = None
        if self.generator_url is not None:
            url = self.generator_url.format(tenant=m.tenant, alertname=spec.alertname, tool="")
        return Alert(labels=labels, annotations=annotations, status=status,  # type: ignore[arg-type]
                     starts_at_us=ts.budget_since_us, ends_at_us=ends_at, window_start_us=m.window_start_us,
                     window_end_us=m.window_end_us, value=spend, threshold=budget, backfill=backfill,
                     generator_url=url)

    def _evaluate_key(self, rule: RuleSpec, tenant: _TenantState, m: WindowMetrics, tool: str | None, num: int,
                      den: int, backfill: bool, out: list[Alert]) -> None:
        key = (rule.name, tool)
        value: float | None = None
        if den >= rule.min_volume and den > 0:
            value = num / den
            verdict = rule.verdict(value)
        else:
            verdict = Verdict.NO_DATA
        state = tenant.keys.get(key)
        if state is None:
            if verdict is not Verdict.BREACH:
                return  # nothing pending, nothing open: no state to keep
            state = tenant.keys[key] = AlertState()
        starts_at = state.firing_since_us
        change = step(state, verdict, m.window_start_us, rule.for_windows, rule.stale_windows)
        if change is Change.FIRED:
            out.append(self._alert(rule, m, tool, FIRING, state.firing_since_us, None, value, num, den, backfill))
        elif change is Change.RESOLVED:
            out.append(self._alert(rule, m, tool, RESOLVED, starts_at, m.window_end_us, value, num, den, backfill))
        elif change is Change.EXPIRED:
            out.append(self._alert(rule, m, tool, RESOLVED, starts_at, m.window_end_us, None, num, den, backfill))
        if state.is_blank():
            del tenant.keys[key]

    def _alert(self, rule: RuleSpec, m: WindowMetrics, tool: str | None, status: str, starts_at: int | None,
               ends_at: int | None, value: float | None, num: int, den: int, backfill: bool) -> Alert:
        assert starts_at is not None
        labels = {"alertname": rule.alertname, "tenant": m.tenant, "severity": rule.severity, **dict(rule.labels)}
        if tool is not None:
            labels["tool"] = tool
        ctx = _context(rule, m.tenant, tool, value if value is not None else 0.0, num, den, m.window_start_us,
                       m.window_end_us)
        if status == FIRING:
            summary, threshold = rule.summary.format(**ctx), rule.fire
        elif value is not None:
            summary, threshold = rule.resolved_summary.format(**ctx), rule.resolve
        else:
            summary = (f"{rule.alertname} resolved for {ctx['subject']}: no verdict for {rule.stale_windows} "
                       f"windows in a row (fewer than {rule.min_volume} {ctx['volume_unit']})")
            threshold = None
        annotations = {"summary": summary}
        if rule.description:
            annotations["description"] = rule.description.format(**ctx)
        if rule.runbook_url:
            annotations["runbook_url"] = rule.runbook_url
        if status == RESOLVED:
            annotations["resolve_reason"] = "recovered" if value is not None else "no_data"
        url = None
        if self.generator_url is not None:
            url = self.generator_url.format(tenant=m.tenant, alertname=rule.alertname, tool=tool or "")
        return Alert(labels=labels, annotations=annotations, status=status,  # type: ignore[arg-type]
                     starts_at_us=starts_at, ends_at_us=ends_at, window_start_us=m.window_start_us,
                     window_end_us=m.window_end_us, value=value, threshold=threshold, backfill=backfill,
                     generator_url=url)

    def revision_alerts(self, before: WindowMetrics | Mapping[str, Any] | None,
                        after: WindowMetrics | Mapping[str, Any], revision: int) -> list[Alert]:
        """Backfill-marked alerts for the verdicts a late revision of a window changed; never pages, never steps.

        The live state (persistence, hysteresis, open alerts) has moved past the window, and replaying history
        into it would page twice for one problem. So a revision is judged on its own: for each rule (and tool),
        does the window breach the fire threshold, before and after the late data? Where the answer changed, the
        result is one ``resolved`` alert spanning the window, ``backfill=True`` (recorded, never paged), labelled
        ``revision`` (so it never shares a fingerprint with a live alert) and saying which way the verdict went.
        ``before`` is ``None`` for a window emitted for the first time by late data.
        """
        new = after if isinstance(after, WindowMetrics) else WindowMetrics.from_record(after)
        old = None if before is None else (
            before if isinstance(before, WindowMetrics) else WindowMetrics.from_record(before))
        ts = self._tenants.get(new.tenant)
        if self.budget is not None and ts is not None and ts.budget_day == new.window_start_us // DAY_US:
            # late cost of today counts toward today's spend (checked against the budget with the next window)
            ts.spend_nusd += new.cost_nusd - (old.cost_nusd if old is not None else 0)
            ts.unpriced += new.llm_calls_unpriced - (old.llm_calls_unpriced if old is not None else 0)
        out: list[Alert] = []
        for rule in self.rules:
            metric = METRICS[rule.metric]
            if rule.per == "tenant":
                subjects: list[str | None] = [None]
            else:
                subjects = sorted(set(new.tools) | (set(old.tools) if old is not None else set()))
            for tool in subjects:
                was = old is not None and _breaches(rule, metric, old, tool)
                now = _breaches(rule, metric, new, tool)
                if was != now:
                    out.append(self._revision_alert(rule, new, tool, now, revision))
        return out

    def _revision_alert(self, rule: RuleSpec, m: WindowMetrics, tool: str | None, breaches: bool,
                        revision: int) -> Alert:
        num, den = _counts(METRICS[rule.metric], m, tool)
        value = num / den if den else None
        labels = {"alertname": rule.alertname, "tenant": m.tenant, "severity": rule.severity, **dict(rule.labels),
                  "revision": str(revision)}
        if tool is not None:
            labels["tool"] = tool
        subject = m.tenant if tool is None else f"{m.tenant}/{tool}"
        way = "breaches" if breaches else "no longer breaches"
        summary = (f"late data: {rule.alertname} for {subject} {way} its threshold in the window "
                   f"{rfc3339(m.window_start_us)}..{rfc3339(m.window_end_us)} (revision {revision}; recorded, "
                   "not paged)")
        return Alert(labels=labels, annotations={"summary": summary, "resolve_reason": "revision"},
                     status=RESOLVED, starts_at_us=m.window_start_us, ends_at_us=m.window_end_us,
                     window_start_us=m.window_start_us, window_end_us=m.window_end_us, value=value,
                     threshold=rule.fire, backfill=True)

    # -- state ----------------------------------------------------------------------------------------------------

    def firing(self) -> list[tuple[str, str, str | None]]:
        """The open alerts as (rule name, tenant, tool), sorted."""
        return sorted((name, tenant, tool) for tenant, ts in self._tenants.items()
                      for (name, tool), st in ts.keys.items() if st.firing)

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def snapshot_tenant(self, tenant: str) -> dict[str, Any] | None:
        """One tenant's state as JSON-able plain data (the value of a table keyed by tenant); None if unknown."""
        ts = self._tenants.get(tenant)
        if ts is None:
            return None
        snap: dict[str, Any] = {
            "last_window_end_us": ts.last_window_end_us,
            "keys": [{"rule": name, "tool": tool, **st.to_dict()} for (name, tool), st in sorted(
                ts.keys.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))],
        }
        if ts.budget_day is not None:
            snap["budget"] = [ts.budget_day, ts.spend_nusd, ts.budget_since_us, ts.unpriced]
        if ts.spend_windows or ts.spend_open:
            snap["user_spend"] = {"windows": [[s, e, [list(u) for u in users]] for s, e, users in ts.spend_windows],
                                  "open": dict(sorted(ts.spend_open.items()))}
        return snap

    def restore_tenant(self, tenant: str, data: Mapping[str, Any] | None) -> None:
        """Replace one tenant's state with a :meth:`snapshot_tenant` value (None forgets the tenant).

        Keys of rules that no longer exist are dropped (their open alerts are not resolved: the delivery sink
        lets Alertmanager time them out).
        """
        if data is None:
            self._tenants.pop(tenant, None)
            return
        ts = _TenantState(data.get("last_window_end_us"))
        budget = data.get("budget")
        if budget is not None:
            day, spend, since, unpriced = budget
            ts.budget_day, ts.spend_nusd, ts.unpriced = int(day), int(spend), int(unpriced)
            ts.budget_since_us = None if since is None else int(since)
        spend = data.get("user_spend")
        if spend is not None:
            ts.spend_windows = [(int(s), int(e), [(str(u), int(c), int(x)) for u, c, x in users])
                                for s, e, users in spend.get("windows", ())]
            ts.spend_open = {str(u): int(v) for u, v in spend.get("open", {}).items()}
        for entry in data.get("keys", ()):
            if entry["rule"] in self._by_name:
                ts.keys[(entry["rule"], entry.get("tool"))] = AlertState.from_dict(entry)
        self._tenants[tenant] = ts

    def snapshot(self) -> dict[str, Any]:
        """Everything, as ``{"version": 1, "tenants": {tenant: snapshot_tenant(tenant)}}``."""
        return {"version": 1, "tenants": {t: self.snapshot_tenant(t) for t in sorted(self._tenants)}}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        if snapshot.get("version") != 1:
            raise ValueError(f"unsupported rule-engine snapshot version {snapshot.get('version')!r}")
        self._tenants.clear()
        for tenant, data in snapshot.get("tenants", {}).items():
            self.restore_tenant(tenant, data)


def _counts(metric: RateMetric, m: WindowMetrics, tool: str | None) -> tuple[int, int]:
    if tool is None:
        return getattr(m, metric.numerator), getattr(m, metric.denominator)
    counts = m.tools.get(tool)
    return (counts.failures, counts.calls) if counts is not None else (0, 0)


def _breaches(rule: RuleSpec, metric: RateMetric, m: WindowMetrics, tool: str | None) -> bool:
    """Whether one window alone crosses the rule's fire threshold (with enough volume)."""
    num, den = _counts(metric, m, tool)
    return den >= rule.min_volume and den > 0 and rule.verdict(num / den) is Verdict.BREACH
