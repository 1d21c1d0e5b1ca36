"""The demo's HTML report: what the pipeline produced, drawn next to the simulator's ground truth.

Pure: :func:`build_report_data` turns what the demo collected (WindowedMetrics records, the truth JSON, the alert
receiver's notifications, the replay files, the demo's checks) into a :class:`ReportData`, and
:func:`render_report` turns that into one self-contained HTML page (inline CSS and SVG, no script, no network), so
it opens anywhere, from a file, years later. No I/O here: the demo command reads Kafka and the disk.

Semantics: a window's value is the newest revision of the tenant's 1-minute ``WindowedMetrics`` record (late data
sends a window again with a higher revision; the newest is the answer, as compaction keeps it). Rates are per window:
tool failures / tool calls and 5xx answers / provider attempts, drawn against the thresholds of the rules the truth
was computed with. Cost is WindowedMetrics v3's ``cost_nusd`` (integer nano-USD, priced by ``schemas.pricing``)
drawn against the truth's ``cost_nusd`` of the same window; records of an older schema (no cost field) leave it out.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

NANO_USD = 1e-9
RATE_RULES = {"tool_failure_rate": "ToolFailureRateHigh", "llm_5xx_rate": "LLM5xxRateHigh"}
_PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030", "#319795", "#97266d")


@dataclass(frozen=True)
class WindowPoint:
    """One tenant's 1-minute window: what the pipeline said (None: no record) and what the truth says."""

    start_us: int
    tokens: float | None
    true_tokens: float | None
    cost_usd: float | None = None
    true_cost_usd: float | None = None
    tool_calls: int = 0
    tool_failures: int = 0
    llm_attempts: int = 0
    llm_5xx: int = 0

    @property
    def tool_failure_rate(self) -> float | None:
        return self.tool_failures / self.tool_calls if self.tool_calls else None

    @property
    def llm_5xx_rate(self) -> float | None:
        return self.llm_5xx / self.llm_attempts if self.llm_attempts else None


@dataclass(frozen=True)
class AlertSpan:
    """One alert (alertname + labels) from its first firing to its resolution (None: still firing)."""

    alertname: str
    labels: Mapping[str, str]
    starts_us: int
    ends_us: int | None
    expected: bool
    summary: str = ""

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={self.labels[k]}" for k in sorted(self.labels) if k not in ("alertname", "severity"))
        return f"{self.alertname}{{{extra}}}"

    @property
    def tenant(self) -> str | None:
        return self.labels.get("tenant")


@dataclass(frozen=True)
class ReplayLink:
    """One archived session instance; ``href`` is relative to the report (or absolute)."""

    tenant: str
    session_id: str
    href: str
    events: int | None = None


@dataclass(frozen=True)
class Check:
    """One line of the verdict: a part of the pipeline against the ground truth."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ReportData:
    title: str
    generated_at: str
    window_s: int
    tenants: Mapping[str, Sequence[WindowPoint]]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    alerts: Sequence[AlertSpan] = ()
    replays: Sequence[ReplayLink] = ()
    checks: Sequence[Check] = ()
    notes: Sequence[str] = ()

    @property
    def has_cost(self) -> bool:
        return any(p.cost_usd is not None for pts in self.tenants.values() for p in pts)


# -- building the data ------------------------------------------------------------------------------------------------


def record_cost(rec: Mapping[str, Any]) -> float | None:
    """The record's (or truth window's) cost in USD from ``cost_nusd``; None when its schema has no cost field."""
    value = rec.get("cost_nusd")
    if isinstance(value, int) and not isinstance(value, bool):
        return value * NANO_USD
    return None


def newest_windows(records: Iterable[Mapping[str, Any]], window_s: int) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The newest revision of each (tenant, window start) among the tumbling ``window_s`` records."""
    newest: dict[tuple[str, int], Mapping[str, Any]] = {}
    for rec in records:
        if rec["window_end_us"] - rec["window_start_us"] != window_s * 1_000_000:
            continue  # hopping windows share the topic
        key = (rec["tenant"], rec["window_start_us"])
        if key not in newest or rec.get("revision", 0) >= newest[key].get("revision", 0):
            newest[key] = rec
    return newest


def parse_rfc3339_us(text: str) -> int | None:
    """Microseconds since the epoch; None for Alertmanager's zero time (``0001-01-01T00:00:00Z``) or garbage."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if dt.year < 1970:
        return None
    return int(dt.replace(tzinfo=dt.tzinfo or UTC).timestamp() * 1_000_000)


def alert_spans(notifications: Iterable[Mapping[str, Any]], expected_keys: set[str]) -> list[AlertSpan]:
    """Each alert's span from the receiver's notifications (webhook bodies, in the order received): the first
    ``startsAt`` seen, and the ``endsAt`` of the last notification when that one says resolved."""
    seen: dict[str, dict[str, Any]] = {}
    for note in notifications:
        for alert in note.get("payload", note).get("alerts", []):
            labels = dict(alert.get("labels", {}))
            span = AlertSpan(labels.get("alertname", "?"), labels, 0, None, False)
            state = seen.setdefault(span.key, {"labels": labels, "starts": None, "ends": None, "summary": ""})
            starts = parse_rfc3339_us(alert.get("startsAt", ""))
            if starts is not None and (state["starts"] is None or starts < state["starts"]):
                state["starts"] = starts
            state["ends"] = parse_rfc3339_us(alert.get("endsAt", "")) if alert.get("status") == "resolved" else None
            state["summary"] = alert.get("annotations", {}).get("summary", "") or state["summary"]
    out = []
    for key, st in seen.items():
        if st["starts"] is None:
            continue
        out.append(AlertSpan(st["labels"].get("alertname", "?"), st["labels"], st["starts"], st["ends"],
                             key in expected_keys, st["summary"]))
    return sorted(out, key=lambda a: (a.starts_us, a.key))


def build_report_data(*, records: Iterable[Mapping[str, Any]], truth: Mapping[str, Any],
                      notifications: Iterable[Mapping[str, Any]], replays: Sequence[ReplayLink] = (),
                      checks: Sequence[Check] = (), title: str = "agentwatch demo", generated_at: str = "",
                      notes: Sequence[str] = ()) -> ReportData:
    """Join the pipeline's windows with the truth's, window by window, for every tenant either one knows."""
    window_s = int(truth.get("window_s", 60))
    newest = newest_windows(records, window_s)
    true_windows = {(w["tenant"], w["window_start_us"]): w for w in truth.get("windows", [])}
    tenants: dict[str, list[WindowPoint]] = {}
    for tenant, start in sorted(set(newest) | set(true_windows)):
        rec, true = newest.get((tenant, start)), true_windows.get((tenant, start))
        tokens = None
        if rec is not None:
            tokens = float((rec.get("prompt_tokens") or 0) + (rec.get("completion_tokens") or 0))
        tenants.setdefault(tenant, []).append(WindowPoint(
            start_us=start, tokens=tokens,
            true_tokens=float(true["tokens"]["total"]) if true is not None else None,
            cost_usd=record_cost(rec) if rec is not None else None,
            true_cost_usd=record_cost(true) if true is not None else None,
            tool_calls=int(rec.get("tool_calls") or 0) if rec else 0,
            tool_failures=int(rec.get("tool_failures") or 0) if rec else 0,
            llm_attempts=int(rec.get("llm_attempts") or 0) if rec else 0,
            llm_5xx=int(rec.get("llm_5xx") or 0) if rec else 0))
    thresholds = {}
    for rule in truth.get("rules", []):
        for value, name in RATE_RULES.items():
            if rule.get("name") == name and "threshold" in rule:
                thresholds[value] = float(rule["threshold"])
    expected = {AlertSpan(a["alertname"], a["labels"], 0, None, True).key
                for a in truth.get("alerts", {}).get("expected", [])}
    return ReportData(title=title, generated_at=generated_at, window_s=window_s, tenants=tenants,
                      thresholds=thresholds, alerts=alert_spans(notifications, expected), replays=replays,
                      checks=checks, notes=notes)


# -- rendering --------------------------------------------------------------------------------------------------------

_W, _H = 760, 210
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 14, 34


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def compact(value: float) -> str:
    """1234567 -> 1.2M: axis labels that fit."""
    a = abs(value)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def _hhmm(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%H:%M")


@dataclass(frozen=True)
class _Axes:
    x0: int
    x1: int  # microseconds, the span drawn
    ymax: float

    def x(self, us: float) -> float:
        return _LEFT + (us - self.x0) / max(1, self.x1 - self.x0) * (_W - _LEFT - _RIGHT)

    def y(self, v: float) -> float:
        return _H - _BOTTOM - v / self.ymax * (_H - _TOP - _BOTTOM)


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if step * mag >= v:
            return step * mag
    return 10 * mag


def _frame(ax: _Axes, window_us: int, y_fmt: Any) -> list[str]:
    parts = []
    for i in range(5):
        v = ax.ymax * i / 4
        y = ax.y(v)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_esc(y_fmt(v))}</text>')
    n = max(1, (ax.x1 - ax.x0) // window_us)
    every = max(1, math.ceil(n / 8))
    for i in range(0, n + 1, every):
        us = ax.x0 + i * window_us
        x = ax.x(us)
        parts.append(f'<text class="tick" x="{x:.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{_hhmm(us)}</text>')
    parts.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" y2="{_H - _BOTTOM}"/>')
    return parts


def _alert_bands(ax: _Axes, alerts: Sequence[AlertSpan]) -> list[str]:
    parts = []
    for a in alerts:
        x0 = ax.x(max(a.starts_us, ax.x0))
        x1 = ax.x(min(a.ends_us if a.ends_us is not None else ax.x1, ax.x1))
        if x1 <= x0:
            continue
        cls = "band" if a.expected else "band unexpected"
        parts.append(f'<rect class="{cls}" x="{x0:.1f}" y="{_TOP}" width="{x1 - x0:.1f}" '
                     f'height="{_H - _TOP - _BOTTOM}"><title>{_esc(a.key)}: {_esc(a.summary)}</title></rect>')
        parts.append(f'<text class="bandlabel" x="{x0 + 3:.1f}" y="{_TOP + 11}">{_esc(a.alertname)}</text>')
    return parts


def _svg(kind: str, tenant: str, title: str, body: list[str]) -> str:
    return (f'<figure><figcaption>{_esc(title)}</figcaption><svg class="chart" data-chart="{_esc(kind)}" '
            f'data-tenant="{_esc(tenant)}" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg></figure>')


def _span(points: Sequence[WindowPoint], window_s: int, alerts: Sequence[AlertSpan]) -> tuple[int, int]:
    starts = [p.start_us for p in points] or [a.starts_us for a in alerts] or [0]
    return min(starts), max(starts) + window_s * 1_000_000


def value_chart(tenant: str, points: Sequence[WindowPoint], window_s: int, alerts: Sequence[AlertSpan], *,
                kind: str, title: str, value: Any, truth: Any = None, y_fmt: Any = compact) -> str:
    """Bars: the pipeline's value per window; a line with dots: the truth; shaded: the tenant's alerts."""
    w_us = window_s * 1_000_000
    x0, x1 = _span(points, window_s, alerts)
    vals = [v for p in points for v in (value(p), truth(p) if truth else None) if v is not None]
    ax = _Axes(x0, x1, _nice_max(max(vals, default=0.0)))
    body = _frame(ax, w_us, y_fmt) + _alert_bands(ax, alerts)
    bar_w = max(1.0, ax.x(x0 + w_us) - ax.x(x0) - 2)
    for p in points:
        v = value(p)
        if v is None:
            continue
        y = ax.y(v)
        body.append(f'<rect class="bar" x="{ax.x(p.start_us) + 1:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                    f'height="{_H - _BOTTOM - y:.1f}"><title>{_hhmm(p.start_us)}: {_esc(y_fmt(v))}</title></rect>')
    if truth is not None:
        pts = [(ax.x(p.start_us + w_us / 2), ax.y(t)) for p in points if (t := truth(p)) is not None]
        if pts:
            body.append('<polyline class="truth" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
            body.extend(f'<circle class="truth" cx="{x:.1f}" cy="{y:.1f}" r="3"/>' for x, y in pts)
    return _svg(kind, tenant, title, body)


def rate_chart(tenant: str, points: Sequence[WindowPoint], window_s: int, alerts: Sequence[AlertSpan], *,
               kind: str, title: str, rate: Any, threshold: float | None) -> str:
    """The rate per window as a line with dots, the rule's threshold dashed, the tenant's alerts shaded."""
    w_us = window_s * 1_000_000
    x0, x1 = _span(points, window_s, alerts)
    rates = [r for p in points if (r := rate(p)) is not None]
    ax = _Axes(x0, x1, _nice_max(max([*rates, (threshold or 0) * 1.5], default=0.0)))
    body = _frame(ax, w_us, lambda v: f"{v * 100:.3g}%") + _alert_bands(ax, alerts)
    if threshold is not None:
        y = ax.y(threshold)
        body.append(f'<line class="threshold" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}">'
                    f'<title>threshold {threshold:.1%}</title></line>')
        body.append(f'<text class="thresholdlabel" x="{_W - _RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end">'
                    f'threshold {threshold:.1%}</text>')
    pts = [(ax.x(p.start_us + w_us / 2), ax.y(r), r, p.start_us) for p in points if (r := rate(p)) is not None]
    if pts:
        body.append('<polyline class="rate" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in pts) + '"/>')
        for x, y, r, us in pts:
            over = threshold is not None and r > threshold
            body.append(f'<circle class="rate{" over" if over else ""}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                        f'<title>{_hhmm(us)}: {r:.1%}</title></circle>')
    return _svg(kind, tenant, title, body)


def timeline_chart(alerts: Sequence[AlertSpan], x0: int, x1: int, window_s: int) -> str:
    """One row per alert, from its start to its resolution (to the right edge while it still fires)."""
    row_h = 22
    h = _TOP + _BOTTOM + row_h * max(1, len(alerts))
    left = 300
    scale = (_W + 200 - left - _RIGHT) / max(1, x1 - x0)
    body = []
    for i, a in enumerate(alerts):
        y = _TOP + i * row_h
        s = left + (max(a.starts_us, x0) - x0) * scale
        e = left + ((a.ends_us if a.ends_us is not None else x1) - x0) * scale
        cls = "span" + ("" if a.expected else " unexpected") + ("" if a.ends_us is not None else " open")
        state = f"resolved {_hhmm(a.ends_us)}" if a.ends_us is not None else "still firing"
        body.append(f'<text class="rowlabel" x="{left - 8}" y="{y + 15}" text-anchor="end">{_esc(a.key)}</text>')
        body.append(f'<rect class="{cls}" x="{s:.1f}" y="{y + 3}" width="{max(2.0, e - s):.1f}" height="{row_h - 6}">'
                    f'<title>{_esc(a.key)} fired {_hhmm(a.starts_us)}, {state}'
                    f'{" (no incident explains it)" if not a.expected else ""}: {_esc(a.summary)}</title></rect>')
    w_us = window_s * 1_000_000
    n = max(1, (x1 - x0) // w_us)
    every = max(1, math.ceil(n / 10))
    for i in range(0, n + 1, every):
        x = left + i * w_us * scale
        body.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{h - _BOTTOM}"/>')
        body.append(f'<text class="tick" x="{x:.1f}" y="{h - _BOTTOM + 16}" text-anchor="middle">'
                    f'{_hhmm(x0 + i * w_us)}</text>')
    width = _W + 200
    return (f'<figure><figcaption>alert timeline (event time, UTC)</figcaption><svg class="chart" '
            f'data-chart="timeline" viewBox="0 0 {width} {h}" width="{width}" height="{h}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg></figure>')


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1000px;color:#1a202c}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #e2e8f0}h3{font-size:15px}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #edf2f7}
.ok{color:#2f855a;font-weight:600}.bad{color:#c53030;font-weight:600}
figure{margin:8px 0 18px}figcaption{font-size:13px;color:#4a5568}
svg.chart{background:#fff;border:1px solid #e2e8f0;max-width:100%;height:auto}
.grid{stroke:#edf2f7}.axis{stroke:#a0aec0}.tick{font-size:10px;fill:#718096}
.bar{fill:#90cdf4}.truth{stroke:#1a202c;fill:none;stroke-width:1.5}circle.truth{fill:#1a202c}
.band{fill:#fc8181;fill-opacity:.22}.band.unexpected{fill:#a0aec0}.bandlabel{font-size:10px;fill:#9b2c2c}
.threshold{stroke:#c53030;stroke-dasharray:5 4}.thresholdlabel{font-size:10px;fill:#c53030}
.rate{stroke:#2b6cb0;fill:none;stroke-width:1.5}circle.rate{fill:#2b6cb0}circle.rate.over{fill:#c53030}
.span{fill:#f56565}.span.unexpected{fill:#718096}.span.open{fill-opacity:.5}.rowlabel{font-size:11px;fill:#2d3748}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;
vertical-align:-1px;margin-right:4px}
details{margin:4px 0}code{font-size:12px}
"""


def render_report(data: ReportData) -> str:
    """The whole page: verdict, per-tenant charts, alert timeline, replay links."""
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           f"<title>{_esc(data.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_esc(data.title)}</h1>"]
    if data.generated_at:
        out.append(f"<p>generated {_esc(data.generated_at)}; {data.window_s}-second windows, event time in UTC</p>")
    if data.checks:
        out.append('<h2>Verdict</h2><table id="checks"><tr><th></th><th>part</th><th>against the truth</th></tr>')
        for c in data.checks:
            out.append(f'<tr class="check"><td class="{"ok" if c.ok else "bad"}">{"✓" if c.ok else "✗"}</td>'
                       f"<td>{_esc(c.name)}</td><td>{_esc(c.detail)}</td></tr>")
        out.append("</table>")
    out.extend(f"<p>{_esc(n)}</p>" for n in data.notes)
    out.append('<p class="legend"><span><i class="sw" style="background:#90cdf4"></i>pipeline (metrics topic, newest '
               'revision)</span><span><i class="sw" style="background:#1a202c"></i>simulator ground truth</span>'
               '<span><i class="sw" style="background:#fc8181;opacity:.5"></i>alert firing</span>'
               '<span><i class="sw" style="background:#c53030"></i>rule threshold (dashed)</span></p>')
    if not data.has_cost:
        out.append("<p>cost: not in these windowed metrics (no cost field in the records), so not drawn.</p>")
    for tenant, points in sorted(data.tenants.items()):
        alerts = [a for a in data.alerts if a.tenant == tenant]
        out.append(f'<h2 id="tenant-{_esc(tenant)}">tenant {_esc(tenant)}</h2>')
        out.append(value_chart(tenant, points, data.window_s, alerts, kind="tokens",
                               title="tokens (prompt + completion) per window",
                               value=lambda p: p.tokens, truth=lambda p: p.true_tokens))
        if data.has_cost:
            out.append(value_chart(tenant, points, data.window_s, alerts, kind="cost", title="cost (USD) per window",
                                   value=lambda p: p.cost_usd, truth=lambda p: p.true_cost_usd,
                                   y_fmt=lambda v: f"${v:,.2f}"))
        out.append(rate_chart(tenant, points, data.window_s, alerts, kind="tool-failure-rate",
                              title="tool failure rate per window (failures / tool calls)",
                              rate=lambda p: p.tool_failure_rate, threshold=data.thresholds.get("tool_failure_rate")))
        out.append(rate_chart(tenant, points, data.window_s, alerts, kind="llm-5xx-rate",
                              title="LLM 5xx rate per window (5xx answers / provider attempts)",
                              rate=lambda p: p.llm_5xx_rate, threshold=data.thresholds.get("llm_5xx_rate")))
    out.append("<h2>Alerts</h2>")
    if data.alerts:
        starts = [p.start_us for pts in data.tenants.values() for p in pts] + [a.starts_us for a in data.alerts]
        ends = [p.start_us + data.window_s * 1_000_000 for pts in data.tenants.values() for p in pts]
        ends += [a.ends_us for a in data.alerts if a.ends_us is not None]
        out.append(timeline_chart(data.alerts, min(starts), max(ends + starts), data.window_s))
        out.append('<table id="alerts"><tr><th>alert</th><th>fired</th><th>resolved</th><th>incident</th>'
                   "<th>summary</th></tr>")
        for a in data.alerts:
            out.append(f"<tr><td><code>{_esc(a.key)}</code></td><td>{_hhmm(a.starts_us)}</td>"
                       f"<td>{_hhmm(a.ends_us) if a.ends_us is not None else 'still firing'}</td>"
                       f'<td class="{"ok" if a.expected else "bad"}">{"scripted" if a.expected else "unexpected"}</td>'
                       f"<td>{_esc(a.summary)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>no alert was delivered.</p>")
    out.append(f"<h2>Session replays</h2><p>{len(data.replays):,} archived session instance(s); each opens with "
               "<code>agentwatch replay show ID</code>, or as the raw JSONL file linked here.</p>")
    by_tenant: dict[str, list[ReplayLink]] = {}
    for r in data.replays:
        by_tenant.setdefault(r.tenant, []).append(r)
    for tenant, links in sorted(by_tenant.items()):
        out.append(f'<details class="replays"><summary>{_esc(tenant)}: {len(links):,} replay(s)</summary><ul>')
        for r in links:
            events = f" ({r.events:,} events)" if r.events is not None else ""
            out.append(f'<li><a href="{_esc(r.href)}"><code>{_esc(r.session_id)}</code></a>{events}</li>')
        out.append("</ul></details>")
    out.append("</body></html>")
    return "\n".join(out)
