"""Token-spike detection per tenant: this window against the median of the last K windows, 2x fires, <1.5x resolves.

Two measures, one alert: tokens per window (prompt + completion) and tokens per turn. Either one at
``>= fire_ratio`` breaches; the alert resolves when every measure that has a verdict is ``< resolve_ratio``.
One ``TokenSpike`` per tenant rather than one per measure because a model swap doubles both, and on-call should
get one page for one cause.

Choices, and why:

* **Baseline = median of the last K windows with data**, not an EWMA. The median ignores single outlier windows
  (one batch job does not move it), needs no warm-up priming trick, has no smoothing constant to tune, and its
  state is just the K values, which also serve the contributor analysis (per-model / per-skill averages over the
  same K windows). An EWMA reacts faster but absorbs a long anomaly as the new normal and is over-sensitive when
  variance is low (field notes 4.4).
* **Warm-up**: no verdict until K windows are in the baseline (for tokens per turn, windows with at least
  ``min_turns`` turns: a per-turn value from two turns is noise).
* **Volume guard**: no verdict below ``min_tokens`` in the current window (and, for tokens per turn, below
  ``min_turns`` turns), or when the baseline is 0.
* **"No usage" is not zero**: a window whose LLM calls all came back without usage (null, not 0) is no data: no
  verdict, and it never enters the baseline. A window without LLM calls is a real zero. A window where only some
  calls lacked usage uses what was reported (a lower bound) and says so in the annotations.
* **The spike does not teach the baseline**: a window that breaches, or that is evaluated while the alert is open,
  is kept out of the baseline, so a long anomaly keeps being compared with the normal before it.
  ``absorb_after_windows`` (default off) re-admits windows once the alert has been open that long, for operators
  who want a deliberate, permanent change to become the new normal and resolve by itself.
* **Largest contributor**: the model or skill whose tokens in this window rose most, in absolute tokens, above
  its average over the baseline windows; a model swap shows up as the new model.
* **Cost**: a firing alert also carries what the spike costs, in the trigger measure's unit: ``cost_usd`` and
  ``cost_usd_baseline`` (median over the same baseline windows), or ``cost_per_turn_usd`` and
  ``cost_per_turn_usd_baseline``, plus ``llm_calls_unpriced`` when calls of unpriced models are missing from it.
  Cost is reported, not detected on: a cheaper model's token spike is still a spike (the budget rule in
  :mod:`streams.rules` watches money).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.alerts import FIRING, RESOLVED, Alert, AlertState, Change, Verdict, step
from streams.rules import RESERVED_LABELS, RulesConfigError, WindowMetrics, read_config_documents

TOKENS = "tokens"
TOKENS_PER_TURN = "tokens_per_turn"
MEASURES = (TOKENS, TOKENS_PER_TURN)
_MEASURE_TEXT = {TOKENS: "tokens per window", TOKENS_PER_TURN: "tokens per turn"}


@dataclass(frozen=True)
class SpikeConfig:
    """Token-spike settings (the ``token_spike`` section of the rules file); defaults equal the packaged file's."""

    enabled: bool = True
    alertname: str = "TokenSpike"
    measures: tuple[str, ...] = MEASURES
    baseline_windows: int = 5
    fire_ratio: float = 2.0
    resolve_ratio: float = 1.5
    min_tokens: int = 50_000
    min_turns: int = 5
    for_windows: int = 1
    stale_windows: int | None = 5
    absorb_after_windows: int | None = None
    severity: str = "warning"
    runbook_url: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "token_spike") -> SpikeConfig:
        """Validated config; raises :class:`~streams.rules.RulesConfigError` naming the bad key."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise RulesConfigError(f"{where}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        d = {**cls().__dict__, **data}
        measures = d["measures"]
        if isinstance(measures, str) or not measures or any(m not in MEASURES for m in measures):
            raise RulesConfigError(f"{where}: measures must be a non-empty list of {list(MEASURES)}, got {measures!r}")
        labels = d["labels"] or {}
        if isinstance(labels, tuple):
            labels = dict(labels)
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise RulesConfigError(f"{where}: labels must map strings to strings, got {labels!r}")
        if RESERVED_LABELS & set(labels):
            raise RulesConfigError(f"{where}: labels {sorted(RESERVED_LABELS & set(labels))} are set by the engine")
        if not isinstance(d["enabled"], bool):
            raise RulesConfigError(f"{where}: enabled must be true or false, got {d['enabled']!r}")
        fire = _positive(d["fire_ratio"], where, "fire_ratio")
        resolve = _positive(d["resolve_ratio"], where, "resolve_ratio")
        if resolve > fire:
            raise RulesConfigError(f"{where}: resolve_ratio ({resolve}) must be <= fire_ratio ({fire})")
        return cls(
            enabled=d["enabled"], alertname=_name(d["alertname"], where, "alertname"), measures=tuple(measures),
            baseline_windows=_int(d["baseline_windows"], where, "baseline_windows", 1),
            fire_ratio=fire, resolve_ratio=resolve,
            min_tokens=_int(d["min_tokens"], where, "min_tokens", 0),
            min_turns=_int(d["min_turns"], where, "min_turns", 1),
            for_windows=_int(d["for_windows"], where, "for_windows", 1),
            stale_windows=None if d["stale_windows"] is None else _int(d["stale_windows"], where, "stale_windows", 1),
            absorb_after_windows=None if d["absorb_after_windows"] is None
            else _int(d["absorb_after_windows"], where, "absorb_after_windows", 1),
            severity=_name(d["severity"], where, "severity"),
            runbook_url=None if d["runbook_url"] is None else _name(d["runbook_url"], where, "runbook_url"),
            labels=tuple(sorted(labels.items())),
        )


def load_spike_config(path: str | Path | None = None) -> SpikeConfig:
    """The ``token_spike`` section: packaged defaults, keys overridden by the file at ``path`` when given."""
    base, user, source = read_config_documents(path)
    merged = dict(_spike_section(base, "packaged defaults"))
    if user is not None:
        merged.update(_spike_section(user, source))
    return SpikeConfig.from_mapping(merged, f"{source}: token_spike")


def _spike_section(doc: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    section = doc.get("token_spike") or {}
    if not isinstance(section, dict):
        raise RulesConfigError(f"{where}: token_spike must be a mapping, got {type(section).__name__}")
    return section


def _positive(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RulesConfigError(f"{where}: {key} must be a number > 0, got {value!r}")
    return float(value)


def _int(value: Any, where: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RulesConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _name(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise RulesConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


# -- observations -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Observation:
    """One window's value of one measure, with its per-model and per-skill tokens.

    The breakdowns hold raw tokens and are shared between the measures of a window (``per`` is the divisor that
    puts them in the measure's unit: 1 for tokens per window, the turn count for tokens per turn), which halves
    the baseline's memory.
    """

    value: float
    models: dict[str, int]
    skills: dict[str, int]
    per: float = 1.0
    cost_nusd: int = 0  # the window's cost (integer nano-USD), for the cost annotations of an alert

    def share(self, attr: str, name: str) -> float:
        """Tokens of one model or skill in the measure's unit."""
        return getattr(self, attr).get(name, 0) / self.per

    def to_list(self) -> list[Any]:
        return [self.value, self.models, self.skills, self.per, self.cost_nusd]

    @classmethod
    def from_list(cls, data: list[Any]) -> Observation:
        """Also reads the 4-item lists of state written before cost existed (cost 0 then)."""
        return cls(
            float(data[0]),
            {str(k): int(v) for k, v in data[1].items()},
            {str(k): int(v) for k, v in data[2].items()},
            float(data[3]),
            int(data[4]) if len(data) > 4 else 0,
        )

    @property
    def cost_usd(self) -> float:
        """The window's cost in the measure's unit (per window, or per turn), in USD."""
        return self.cost_nusd / self.per / 1e9


def observe(m: WindowMetrics) -> dict[str, Observation] | None:
    """The measures of one window; ``None`` when no LLM call reported usage (no data, not zero tokens).

    Tokens per turn is absent from a window without turns.
    """
    if m.llm_calls > 0 and m.llm_calls_with_usage == 0:
        return None
    models, skills = dict(m.tokens_by_model), dict(m.tokens_by_skill)  # copied once: the caller may reuse its dicts
    out = {TOKENS: Observation(float(m.total_tokens), models, skills, 1.0, m.cost_nusd)}
    if m.turns > 0:
        out[TOKENS_PER_TURN] = Observation(m.total_tokens / m.turns, models, skills, float(m.turns), m.cost_nusd)
    return out


@dataclass(slots=True)
class Reading:
    """One measure's verdict for a window (``baseline``/``ratio`` are None during warm-up or below the guards)."""

    measure: str
    current: Observation
    baseline: float | None
    ratio: float | None
    verdict: Verdict


@dataclass(frozen=True)
class Contributor:
    kind: str  # "model" | "skill"
    name: str
    baseline: float
    current: float

    @property
    def change(self) -> float:
        return self.current - self.baseline


def largest_contributor(current: Observation, history: list[Observation]) -> Contributor | None:
    """The model or skill with the largest absolute increase of tokens vs its average over ``history``."""
    best: Contributor | None = None
    n = len(history)
    for kind, attr in (("model", "models"), ("skill", "skills")):
        names = set(getattr(current, attr))
        for entry in history:
            names.update(getattr(entry, attr))
        for name in sorted(names):
            base = sum(e.share(attr, name) for e in history) / n if n else 0.0
            cand = Contributor(kind, name, base, current.share(attr, name))
            if best is None or cand.change > best.change:
                best = cand
    return best


# -- the detector -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _TenantSpike:
    last_window_end_us: int | None = None
    state: AlertState = field(default_factory=AlertState)
    history: dict[str, deque[Observation]] = field(default_factory=dict)


class SpikeDetector:
    """Per-tenant token-spike alerts over closed windows (in window order per tenant, like the rule engine)."""

    def __init__(self, config: SpikeConfig | None = None, generator_url: str | None = None) -> None:
        self.config = config if config is not None else load_spike_config()
        if generator_url is not None:
            generator_url.format(tenant="t", alertname="a", tool="")
        self.generator_url = generator_url
        self._tenants: dict[str, _TenantSpike] = {}

    def evaluate(self, metrics: WindowMetrics | Mapping[str, Any], *, backfill: bool = False) -> list[Alert]:
        """The TokenSpike transition caused by one tenant's closed window, if any (0 or 1 alerts)."""
        cfg = self.config
        if not cfg.enabled:
            return []
        m = metrics if isinstance(metrics, WindowMetrics) else WindowMetrics.from_record(metrics)
        ts = self._tenants.get(m.tenant)
        if ts is None:
            ts = self._tenants[m.tenant] = _TenantSpike()
        elif ts.last_window_end_us is not None and m.window_end_us <= ts.last_window_end_us:
            return []
        ts.last_window_end_us = m.window_end_us
        observations = observe(m)
        readings = [] if observations is None else [
            self._read(measure, observations[measure], m, ts) for measure in cfg.measures if measure in observations
        ]
        verdict = _combine(readings)
        starts_at = ts.state.firing_since_us
        change = step(ts.state, verdict, m.window_start_us, cfg.for_windows, cfg.stale_windows)
        out: list[Alert] = []
        if change is Change.FIRED:
            out.append(self._alert(m, FIRING, ts.state.firing_since_us, None, readings, ts, backfill))
        elif change in (Change.RESOLVED, Change.EXPIRED):
            out.append(self._alert(m, RESOLVED, starts_at, m.window_end_us, readings, ts, backfill))
        admit = verdict is not Verdict.BREACH and not ts.state.firing
        if ts.state.firing and cfg.absorb_after_windows is not None:
            admit = ts.state.firing_windows >= cfg.absorb_after_windows
        if admit and observations is not None:
            for measure in cfg.measures:
                obs = observations.get(measure)
                if obs is None or (measure == TOKENS_PER_TURN and m.turns < cfg.min_turns):
                    continue  # a per-turn value from a handful of turns is noise, not a baseline
                hist = ts.history.get(measure)
                if hist is None:
                    hist = ts.history[measure] = deque(maxlen=cfg.baseline_windows)
                hist.append(obs)
        return out

    def _read(self, measure: str, obs: Observation, m: WindowMetrics, ts: _TenantSpike) -> Reading:
        cfg = self.config
        hist = ts.history.get(measure, ())
        if len(hist) < cfg.baseline_windows:
            return Reading(measure, obs, None, None, Verdict.NO_DATA)  # warm-up
        baseline = statistics.median(e.value for e in hist)
        if (baseline <= 0 or m.total_tokens < cfg.min_tokens
                or (measure == TOKENS_PER_TURN and m.turns < cfg.min_turns)):
            return Reading(measure, obs, baseline, None, Verdict.NO_DATA)  # below the volume guards
        ratio = obs.value / baseline
        if ratio >= cfg.fire_ratio:
            verdict = Verdict.BREACH
        elif ratio < cfg.resolve_ratio:
            verdict = Verdict.CLEAR
        else:
            verdict = Verdict.HOLD
        return Reading(measure, obs, baseline, ratio, verdict)

    def _alert(self, m: WindowMetrics, status: str, starts_at: int | None, ends_at: int | None,
               readings: list[Reading], ts: _TenantSpike, backfill: bool) -> Alert:
        assert starts_at is not None
        cfg = self.config
        labels = {"alertname": cfg.alertname, "tenant": m.tenant, "severity": cfg.severity, **dict(cfg.labels)}
        rated = [r for r in readings if r.ratio is not None]
        trigger = max(rated, key=lambda r: r.ratio or 0.0) if rated else None
        annotations: dict[str, str] = {}
        for r in rated:
            annotations[r.measure] = _plain(r.current.value)
            annotations[f"{r.measure}_baseline"] = _plain(r.baseline or 0.0)
            annotations[f"{r.measure}_ratio"] = f"{r.ratio:.2f}"
        if m.llm_calls_without_usage:
            annotations["llm_calls_without_usage"] = str(m.llm_calls_without_usage)
        cost_text = ""
        if trigger is not None:
            # cost in the trigger measure's unit (per window or per turn): this window and its baseline windows'
            hist_cost = [e.cost_usd for e in ts.history.get(trigger.measure, ())]
            unit = "_per_turn" if trigger.measure == TOKENS_PER_TURN else ""
            annotations[f"cost{unit}_usd"] = f"{trigger.current.cost_usd:.6f}"
            cost_text = f"; cost ${trigger.current.cost_usd:,.4f}"
            if hist_cost:
                base_cost = statistics.median(hist_cost)
                annotations[f"cost{unit}_usd_baseline"] = f"{base_cost:.6f}"
                cost_text += f" vs baseline ${base_cost:,.4f}"
            cost_text += " per turn" if unit else " per window"
            if m.llm_calls_unpriced:
                annotations["llm_calls_unpriced"] = str(m.llm_calls_unpriced)
                cost_text += f" ({m.llm_calls_unpriced} calls of unpriced models not in it)"
        details = "; ".join(
            f"{_MEASURE_TEXT[r.measure]} {_num(r.current.value)} vs baseline {_num(r.baseline or 0.0)} "
            f"= {r.ratio:.2f}x" for r in rated)
        basis = f"baseline: median of the last {cfg.baseline_windows} windows with usage data"
        value: float | None = trigger.ratio if trigger is not None else None
        if status == FIRING:
            assert trigger is not None
            hist = list(ts.history.get(trigger.measure, ()))
            top = largest_contributor(trigger.current, hist)
            annotations.update(measure=trigger.measure, current=_plain(trigger.current.value),
                               baseline=_plain(trigger.baseline or 0.0), ratio=f"{trigger.ratio:.2f}")
            top_text = "no per-model or per-skill breakdown"
            if top is not None:
                top_text = f"{top.kind} {top.name} ({_num(top.baseline)} -> {_num(top.current)}, {top.change:+,.0f})"
                annotations.update(largest_contributor=f"{top.kind}:{top.name}",
                                   largest_contributor_baseline=_plain(top.baseline),
                                   largest_contributor_current=_plain(top.current),
                                   largest_contributor_change=f"{top.change:+.0f}")
            annotations["summary"] = (
                f"Token spike for tenant {m.tenant}: {_MEASURE_TEXT[trigger.measure]} {_num(trigger.current.value)} "
                f"= {trigger.ratio:.2f}x the baseline {_num(trigger.baseline or 0.0)} (fires at >= "
                f"{cfg.fire_ratio:g}x); largest contributor: {top_text}{cost_text}")
            annotations["description"] = (f"{details} ({basis}). A sudden 2x usually means a model swap or a skill "
                                          f"change; the largest contributor names the model or skill that grew most.")
            threshold: float | None = cfg.fire_ratio
        elif value is not None:
            annotations["summary"] = (f"Token use for tenant {m.tenant} back to {value:.2f}x the baseline "
                                      f"(resolves below {cfg.resolve_ratio:g}x)")
            annotations["description"] = f"{details} ({basis})."
            annotations["resolve_reason"] = "recovered"
            threshold = cfg.resolve_ratio
        else:
            annotations["summary"] = (f"{cfg.alertname} resolved for tenant {m.tenant}: no verdict for "
                                      f"{cfg.stale_windows} windows in a row (no usage data or below the volume guard)")
            annotations["resolve_reason"] = "no_data"
            threshold = None
        if cfg.runbook_url:
            annotations["runbook_url"] = cfg.runbook_url
        url = None
        if self.generator_url is not None:
            url = self.generator_url.format(tenant=m.tenant, alertname=cfg.alertname, tool="")
        return Alert(labels=labels, annotations=annotations, status=status,  # type: ignore[arg-type]
                     starts_at_us=starts_at, ends_at_us=ends_at, window_start_us=m.window_start_us,
                     window_end_us=m.window_end_us, value=value, threshold=threshold, backfill=backfill,
                     generator_url=url)

    # -- state ----------------------------------------------------------------------------------------------------

    def firing(self) -> list[str]:
        """Tenants whose TokenSpike is open, sorted."""
        return sorted(t for t, ts in self._tenants.items() if ts.state.firing)

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def snapshot_tenant(self, tenant: str) -> dict[str, Any] | None:
        """One tenant's state as JSON-able plain data; None if unknown."""
        ts = self._tenants.get(tenant)
        if ts is None:
            return None
        return {"last_window_end_us": ts.last_window_end_us, "state": ts.state.to_dict(),
                "history": {m: [o.to_list() for o in h] for m, h in sorted(ts.history.items())}}

    def restore_tenant(self, tenant: str, data: Mapping[str, Any] | None) -> None:
        """Replace one tenant's state with a :meth:`snapshot_tenant` value (None forgets the tenant).

        A history longer than the configured ``baseline_windows`` keeps its newest entries.
        """
        if data is None:
            self._tenants.pop(tenant, None)
            return
        k = self.config.baseline_windows
        self._tenants[tenant] = _TenantSpike(
            data.get("last_window_end_us"), AlertState.from_dict(data.get("state", {})),
            {m: deque((Observation.from_list(o) for o in h), maxlen=k) for m, h in data.get("history", {}).items()},
        )

    def snapshot(self) -> dict[str, Any]:
        return {"version": 1, "tenants": {t: self.snapshot_tenant(t) for t in sorted(self._tenants)}}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        if snapshot.get("version") != 1:
            raise ValueError(f"unsupported spike-detector snapshot version {snapshot.get('version')!r}")
        self._tenants.clear()
        for tenant, data in snapshot.get("tenants", {}).items():
            self.restore_tenant(tenant, data)


def _combine(readings: list[Reading]) -> Verdict:
    """BREACH if any measure breaches; CLEAR if every measure with a verdict clears; NO_DATA if none has one."""
    verdicts = [r.verdict for r in readings if r.verdict is not Verdict.NO_DATA]
    if not verdicts:
        return Verdict.NO_DATA
    if Verdict.BREACH in verdicts:
        return Verdict.BREACH
    if all(v is Verdict.CLEAR for v in verdicts):
        return Verdict.CLEAR
    return Verdict.HOLD


def _num(x: float) -> str:
    """For people: thousands separators, decimals only for small values."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}".rstrip("0").rstrip(".")


def _plain(x: float) -> str:
    """For machines (annotations are strings): no separators, integers without a fraction."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"
