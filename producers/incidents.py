"""Scripted incidents for the fleet simulator, and the alert each one must raise.

An incident changes one tenant's traffic between ``start_s`` and ``end_s`` (seconds after the simulation start, by
event time) so that exactly one of the seed's alert rules crosses its threshold for that tenant, and none other:

=================  ======================  ===============================================================
incident kind      rule it must raise      what changes (default)
=================  ======================  ===============================================================
tool_failure       ToolFailureRateHigh     one tool (the tenant's most used) raises: tool_complete
                                           status=error for 80 % of its calls; tenant-wide and per-tool
llm_5xx            LLM5xxRateHigh          12 % of provider HTTP attempts answer 5xx (then retried)
model_swap         TokenSpike              every session switches model; each call reports 3x the tokens
confirm_timeout    ConfirmTimeoutRateHigh  30 % of confirmations time out in the host
max_iterations     MaxIterationsRateHigh   15 % of turns loop until the tenant's max_iterations
cache_churn        CacheHitRateLow         the system prompt churns: 5 % of calls hit the prompt cache
=================  ======================  ===============================================================

The defaults keep the side effects on other rules small: an LLM 5xx burst or confirm timeouts slow a tenant down
(fewer tokens, so its recovery must stay below 2x the depressed baseline), and stuck loops burn extra tokens
(about 1.3x, below the 2x spike). Signals counted at the end of something (a turn, a confirmation's timeout) lag
the incident by that long, so with short windows the first incident window may not cross; the truth lists the
windows that do.

The thresholds and minimum-volume guards the ground truth evaluates live in :data:`DEFAULT_RULES`; they are the
seed's thresholds (tool failure > 10 %, LLM 5xx > 2 %, max_iterations > 5 %, cache hit < 30 %, confirm timeout
> 10 %, tokens >= 2x a trailing baseline). A spec file (JSON or YAML) lists incidents as mappings with a ``kind``,
a ``tenant`` (a name, or an int index into the tenants ordered largest first) and ``start``/``end`` offsets
(seconds, or ``"90s"``, ``"2m"``, ``"1h"``), plus the kind's own knobs::

    incidents:
      - {kind: tool_failure, tenant: 0, tool: run_shell_command, start: 2m, end: 5m, failure_rate: 0.8}
      - {kind: llm_5xx, tenant: acme, start: 3m, end: 6m}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

# -- alert rules as the ground truth evaluates them -----------------------------------------------------------


@dataclass(frozen=True)
class RuleSpec:
    """One threshold rule: ``value op threshold`` on a tenant window whose ``volume`` reaches ``min_volume``.

    ``value`` and ``volume`` name keys of a window record's ``rates`` / ``volumes`` (see the simulator's truth).
    """

    name: str
    value: str
    op: str  # ">", "<" or ">="
    threshold: float
    volume: str
    min_volume: int
    per_tool: bool = False
    description: str = ""

    def crosses(self, value: float | None, volume: int) -> bool:
        if value is None or volume < self.min_volume:
            return False
        if self.op == ">":
            return value > self.threshold
        if self.op == "<":
            return value < self.threshold
        return value >= self.threshold


@dataclass(frozen=True)
class SpikeSpec:
    """The reference token-spike detector the truth uses: current window vs the median of the previous K windows.

    Windows without any reported usage are left out of the history ("no usage" is not zero tokens), and so are
    windows that crossed (a spike never becomes its own baseline). No verdict before ``warmup`` windows of
    history, nor when the current window has fewer than ``min_tokens`` (and, for tokens per turn, fewer than
    ``min_turns`` turns). The defaults are those of ``streams/default_rules.yaml``.
    """

    name: str = "TokenSpike"
    ratio: float = 2.0
    resolve_ratio: float = 1.5
    warmup: int = 5
    min_tokens: int = 50_000
    min_turns: int = 5
    description: str = ("tokens (prompt+completion) per tenant window, and tokens per turn, >= 2.0x the median of "
                        "the same measure over the previous 5 windows")


DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("ToolFailureRateHigh", "tool_failure_rate", ">", 0.10, "tool_calls", 20, per_tool=True,
             description="tool_complete status=error / all tool_complete, per tenant and per (tenant, tool)"),
    RuleSpec("LLM5xxRateHigh", "llm_5xx_rate", ">", 0.02, "llm_attempts", 100,
             description="provider HTTP attempts answered 5xx / all attempts (llm_call_completed + llm_retry)"),
    RuleSpec("MaxIterationsRateHigh", "max_iterations_rate", ">", 0.05, "turns", 20,
             description="turn_end incomplete_reason=max_iterations / all turn_end"),
    RuleSpec("CacheHitRateLow", "cache_hit_rate", "<", 0.30, "prompt_tokens", 50_000,
             description="sum cache_read_tokens / sum prompt_tokens over llm_call_completed"),
    RuleSpec("ConfirmTimeoutRateHigh", "confirm_timeout_rate", ">", 0.10, "confirm_resolved", 20,
             description="confirm_resolved outcome=timeout / all confirm_resolved"),
)
DEFAULT_SPIKE = SpikeSpec()


# -- incidents ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    """Base: one tenant, a half-open event-time interval ``[start_s, end_s)`` after the simulation start."""

    tenant: str | int
    start_s: float
    end_s: float

    kind: ClassVar[str] = ""
    rule: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not self.end_s > self.start_s >= 0:
            raise ValueError(f"{self.kind}: need 0 <= start < end, got [{self.start_s}, {self.end_s})")

    def active(self, offset_s: float) -> bool:
        return self.start_s <= offset_s < self.end_s

    def expected_labels(self) -> list[dict[str, str]]:
        """Label sets (besides alertname) of the alerts this incident must raise."""
        return [{"tenant": str(self.tenant)}]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class ToolFailure(Incident):
    tool: str | None = None  # None: the tenant's most used tool (resolved by the simulator)
    failure_rate: float = 0.8
    kind: ClassVar[str] = "tool_failure"
    rule: ClassVar[str] = "ToolFailureRateHigh"

    def expected_labels(self) -> list[dict[str, str]]:
        # Both the tenant-wide and the per-tool rule cross (the tool is one of the tenant's most used).
        return [{"tenant": str(self.tenant)}, {"tenant": str(self.tenant), "tool": str(self.tool)}]


@dataclass(frozen=True)
class Llm5xxBurst(Incident):
    error_rate: float = 0.12
    statuses: tuple[int, ...] = (503, 502, 500, 529)
    kind: ClassVar[str] = "llm_5xx"
    rule: ClassVar[str] = "LLM5xxRateHigh"


@dataclass(frozen=True)
class ModelSwap(Incident):
    """Every session of the tenant switches to ``model``, whose calls report ``token_factor`` x the tokens.

    The default triples them rather than doubles: a 2.0x detector must fire clearly above window-to-window noise.
    """

    model: str = "gpt-4.1-verbose"
    token_factor: float = 3.0
    kind: ClassVar[str] = "model_swap"
    rule: ClassVar[str] = "TokenSpike"


@dataclass(frozen=True)
class ConfirmTimeouts(Incident):
    timeout_rate: float = 0.3
    kind: ClassVar[str] = "confirm_timeout"
    rule: ClassVar[str] = "ConfirmTimeoutRateHigh"


@dataclass(frozen=True)
class MaxIterationLoops(Incident):
    loop_rate: float = 0.15
    kind: ClassVar[str] = "max_iterations"
    rule: ClassVar[str] = "MaxIterationsRateHigh"


@dataclass(frozen=True)
class CacheChurn(Incident):
    hit_rate: float = 0.05
    kind: ClassVar[str] = "cache_churn"
    rule: ClassVar[str] = "CacheHitRateLow"


INCIDENT_KINDS: dict[str, type[Incident]] = {
    c.kind: c for c in (ToolFailure, Llm5xxBurst, ModelSwap, ConfirmTimeouts, MaxIterationLoops, CacheChurn)
}

# Order the default script assigns tenants in (largest tenant first): the rules with the biggest volume guards
# get the biggest tenants; with 3-5 tenants, incidents sharing a tenant do not disturb each other's rule.
DEFAULT_ORDER: tuple[str, ...] = ("llm_5xx", "max_iterations", "confirm_timeout", "model_swap", "tool_failure",
                                  "cache_churn")
MIN_DEFAULT_TENANTS = 3  # below, the model swap would share a tenant with the max-iterations loops (tokens up 1.3x)
# (first window, number of windows) of each default incident, in windows after the first full window.
_DEFAULT_SCHEDULE: dict[str, tuple[int, int]] = {
    "tool_failure": (2, 3), "llm_5xx": (3, 3), "confirm_timeout": (4, 3), "cache_churn": (2, 3),
    "max_iterations": (5, 3), "model_swap": (6, 3),
}
MIN_DEFAULT_WINDOWS = 10


def default_incidents(tenants: Sequence[str], start_us: int, duration_s: float,
                      window_s: int = 60) -> list[Incident]:
    """One incident of each kind, each on its own tenant (largest first; reused when there are fewer than six),
    aligned to window boundaries by event time so whole windows are affected, three windows long.

    ``tenants`` must be ordered largest first. The model swap starts after six windows so a spike detector has
    its warm-up history.
    """
    if len(tenants) < MIN_DEFAULT_TENANTS:
        raise ValueError(f"default incidents need >= {MIN_DEFAULT_TENANTS} tenants, got {len(tenants)} "
                         "(or pass an incident file / none)")
    window_us = int(window_s * 1_000_000)
    first_boundary_us = -(-start_us // window_us) * window_us  # first window boundary at or after start
    lead_s = (first_boundary_us - start_us) / 1_000_000
    n_windows = int((duration_s - lead_s) // window_s)
    if n_windows < MIN_DEFAULT_WINDOWS:
        raise ValueError(f"default incidents need >= {MIN_DEFAULT_WINDOWS} whole windows of {window_s}s; "
                         f"the run has {n_windows} (lengthen --duration, shorten --window, or use --incidents none)")
    out: list[Incident] = []
    for i, kind in enumerate(DEFAULT_ORDER):
        first, length = _DEFAULT_SCHEDULE[kind]
        start = lead_s + first * window_s
        out.append(INCIDENT_KINDS[kind](tenant=tenants[i % len(tenants)], start_s=start,
                                        end_s=start + length * window_s))
    return out


# -- spec files -----------------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"2m"``, ``"1.5h"``, ``"500ms"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90, 90s, 2m, 1h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def incident_from_dict(spec: Mapping[str, Any]) -> Incident:
    """One incident from a spec mapping (``kind``, ``tenant``, ``start``, ``end`` and the kind's own fields)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    cls = INCIDENT_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown incident kind {kind!r}; known: {sorted(INCIDENT_KINDS)}")
    for short, full in (("start", "start_s"), ("end", "end_s")):
        if short in spec:
            spec[full] = spec.pop(short)
    for key in ("start_s", "end_s"):
        if key not in spec:
            raise ValueError(f"{kind}: missing {key[:-2]}")
        spec[key] = parse_duration(spec[key])
    known = {f.name for f in fields(cls)}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{kind}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if "statuses" in spec:
        spec["statuses"] = tuple(int(s) for s in spec["statuses"])
    return cls(**spec)


def load_incidents(path: str | Path) -> list[Incident]:
    """Incidents from a JSON or YAML file holding a list, or a mapping with an ``incidents`` list."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        doc = yaml.safe_load(text)
    else:
        doc = json.loads(text)
    items = doc.get("incidents", []) if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of incidents")
    return [incident_from_dict(item) for item in items]


def resolve_tenants(incidents: Iterable[Incident], tenants: Sequence[str],
                    top_tool: Mapping[str, str] | None = None) -> list[Incident]:
    """Replace int tenant indexes (into ``tenants``, largest first) by names, and a tool failure's missing tool by
    ``top_tool[tenant]``; reject names that do not exist."""
    out: list[Incident] = []
    for inc in incidents:
        tenant = inc.tenant
        if isinstance(tenant, int):
            if not 0 <= tenant < len(tenants):
                raise ValueError(f"{inc.kind}: tenant index {tenant} out of range (0..{len(tenants) - 1})")
            tenant = tenants[tenant]
        elif tenant not in tenants:
            raise ValueError(f"{inc.kind}: unknown tenant {tenant!r}; tenants: {list(tenants)}")
        changes: dict[str, Any] = {"tenant": tenant}
        if isinstance(inc, ToolFailure) and inc.tool is None:
            if not top_tool or tenant not in top_tool:
                raise ValueError(f"{inc.kind}: no tool given and no default tool known for {tenant!r}")
            changes["tool"] = top_tool[tenant]
        out.append(_replace(inc, **changes))
    return out


def _replace(inc: Incident, **changes: Any) -> Incident:
    values = {f.name: getattr(inc, f.name) for f in fields(inc)}
    values.update(changes)
    return type(inc)(**values)


@dataclass
class TenantEffects:
    """What the incidents of one tenant do at a given offset: the simulator's only view of them."""

    incidents: list[Incident] = field(default_factory=list)

    def _active(self, cls: type[Incident], offset_s: float) -> Incident | None:
        for inc in self.incidents:
            if isinstance(inc, cls) and inc.active(offset_s):
                return inc
        return None

    def tool_failure_rate(self, tool: str, offset_s: float) -> float | None:
        for inc in self.incidents:
            if isinstance(inc, ToolFailure) and inc.tool == tool and inc.active(offset_s):
                return inc.failure_rate
        return None

    def llm_5xx(self, offset_s: float) -> Llm5xxBurst | None:
        return self._active(Llm5xxBurst, offset_s)  # type: ignore[return-value]

    def model_swap(self, offset_s: float) -> ModelSwap | None:
        return self._active(ModelSwap, offset_s)  # type: ignore[return-value]

    def confirm_timeout_rate(self, offset_s: float) -> float | None:
        inc = self._active(ConfirmTimeouts, offset_s)
        return inc.timeout_rate if isinstance(inc, ConfirmTimeouts) else None

    def loop_rate(self, offset_s: float) -> float | None:
        inc = self._active(MaxIterationLoops, offset_s)
        return inc.loop_rate if isinstance(inc, MaxIterationLoops) else None

    def cache_hit_rate(self, offset_s: float) -> float | None:
        inc = self._active(CacheChurn, offset_s)
        return inc.hit_rate if isinstance(inc, CacheChurn) else None
