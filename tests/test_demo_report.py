"""The demo's HTML report (pure: data in, HTML out), the simulator's progress off a terminal, the worker's line."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from agentwatch.commands import simulate
from agentwatch.commands.simulate import Progress
from agentwatch.demo_report import (
    AlertSpan,
    Check,
    ReplayLink,
    alert_spans,
    build_report_data,
    newest_windows,
    parse_rfc3339_us,
    record_cost,
    render_report,
)
from streams.app import progress_line

MIN = 60_000_000
T0 = 1_796_676_540_000_000  # 2026-12-07T20:49:00Z


def rec(tenant: str, i: int, revision: int = 0, **kw: object) -> dict:
    base = {"tenant": tenant, "window_start_us": T0 + i * MIN, "window_end_us": T0 + (i + 1) * MIN,
            "revision": revision, "prompt_tokens": 1000 * (i + 1), "completion_tokens": 10, "tool_calls": 20,
            "tool_failures": 1, "llm_attempts": 100, "llm_5xx": 1}
    return {**base, **kw}


def truth(tenants: list[str], n: int) -> dict:
    return {"window_s": 60,
            "windows": [{"tenant": t, "window_start_us": T0 + i * MIN, "tokens": {"total": 1000 * (i + 1) + 10}}
                        for t in tenants for i in range(n)],
            "rules": [{"name": "ToolFailureRateHigh", "threshold": 0.1}, {"name": "LLM5xxRateHigh", "threshold": 0.02}],
            "alerts": {"expected": [{"alertname": "ToolFailureRateHigh", "labels": {"tenant": "acme"}}]}}


def note(status: str, starts: str, ends: str, **labels: str) -> dict:
    return {"alerts": [{"status": status, "labels": {"alertname": "ToolFailureRateHigh", "severity": "warning",
                                                     **labels},
                        "annotations": {"summary": "Tool failure rate 24% > 10%"}, "startsAt": starts,
                        "endsAt": ends}]}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Tags()
    p.feed(page)
    return p.tags


def charts(page: str) -> list[tuple[str | None, str | None]]:
    return [(a.get("data-chart"), a.get("data-tenant")) for t, a in tags(page) if t == "svg"]


def test_newest_revision_wins_and_hopping_windows_are_ignored() -> None:
    hopping = {**rec("acme", 0, prompt_tokens=999_999), "window_end_us": T0 + 5 * MIN}
    got = newest_windows([rec("acme", 0, 2, prompt_tokens=7), rec("acme", 0, 0), hopping, rec("acme", 0, 1)], 60)
    assert list(got) == [("acme", T0)]
    assert got[("acme", T0)]["prompt_tokens"] == 7


@given(st.permutations(list(range(6))))
def test_newest_revision_whatever_the_order(order: list[int]) -> None:
    got = newest_windows([rec("acme", 0, r, prompt_tokens=r) for r in order], 60)
    assert got[("acme", T0)]["prompt_tokens"] == 5


def test_alert_span_from_first_start_to_resolution() -> None:
    notes = [note("firing", "2026-12-07T20:51:00Z", "0001-01-01T00:00:00Z", tenant="acme"),
             note("firing", "2026-12-07T20:51:00Z", "0001-01-01T00:00:00Z", tenant="acme"),
             note("resolved", "2026-12-07T20:51:00Z", "2026-12-07T20:54:00Z", tenant="acme"),
             note("firing", "2026-12-07T20:55:00Z", "0001-01-01T00:00:00Z", tenant="globex")]
    spans = {a.key: a for a in alert_spans(notes, {"ToolFailureRateHigh{tenant=acme}"})}
    acme, globex = spans["ToolFailureRateHigh{tenant=acme}"], spans["ToolFailureRateHigh{tenant=globex}"]
    assert (acme.starts_us, acme.ends_us, acme.expected) == (T0 + 2 * MIN, T0 + 5 * MIN, True)
    assert (globex.ends_us, globex.expected) == (None, False)  # still firing, and no incident explains it


def test_rfc3339_zero_time_and_garbage_are_none() -> None:
    assert parse_rfc3339_us("0001-01-01T00:00:00Z") is None
    assert parse_rfc3339_us("yesterday") is None
    assert parse_rfc3339_us("2026-12-07T20:49:00Z") == T0


def test_pipeline_and_truth_joined_per_window_with_thresholds_from_the_rules() -> None:
    data = build_report_data(records=[rec("acme", i) for i in range(3)], truth=truth(["acme", "globex"], 3),
                             notifications=[])
    assert sorted(data.tenants) == ["acme", "globex"]
    acme = data.tenants["acme"]
    assert [p.tokens for p in acme] == [p.true_tokens for p in acme] == [1010.0, 2010.0, 3010.0]
    assert acme[0].tool_failure_rate == 0.05 and acme[0].llm_5xx_rate == 0.01
    assert [p.tokens for p in data.tenants["globex"]] == [None, None, None]  # the pipeline missed them: drawn so
    assert data.thresholds == {"tool_failure_rate": 0.1, "llm_5xx_rate": 0.02}


def test_page_has_every_chart_and_marks_the_alerts() -> None:
    notes = [note("resolved", "2026-12-07T20:50:00Z", "2026-12-07T20:52:00Z", tenant="acme")]
    data = build_report_data(records=[rec(t, i) for t in ("acme", "globex") for i in range(4)],
                             truth=truth(["acme", "globex"], 4), notifications=notes,
                             replays=[ReplayLink("acme", "s1.i1", "replay/t-acme/s1.i1.jsonl", 12)],
                             checks=[Check("windows acme", True, "equal"), Check("audit log", False, "1 warning")])
    page = render_report(data)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    got = charts(page)
    for tenant in ("acme", "globex"):
        assert {(k, tenant) for k in ("tokens", "tool-failure-rate", "llm-5xx-rate")} <= set(got)
    assert ("timeline", None) in got
    assert ("cost", "acme") not in got and "cost: not in these windowed metrics" in page
    assert page.count('class="band"') == 3  # the acme alert shaded on acme's three charts, not on globex's
    assert page.count('class="threshold"') == 4  # two rate charts per tenant, each with its threshold
    assert 'href="replay/t-acme/s1.i1.jsonl"' in page
    assert "✓" in page and "✗" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained: no fetch


def test_cost_drawn_only_when_the_records_carry_it() -> None:
    assert record_cost({"cost_nusd": 1_500_000_000}) == 1.5 and record_cost({"cost_nusd": None}) is None
    assert record_cost({"turns": 3}) is None  # a WindowedMetrics v2 record
    t = truth(["acme"], 3)
    for i, w in enumerate(t["windows"]):
        w["cost_nusd"] = 250_000_000 * i
    data = build_report_data(records=[rec("acme", i, cost_nusd=250_000_000 * i) for i in range(3)],
                             truth=t, notifications=[])
    assert data.has_cost
    assert [p.cost_usd for p in data.tenants["acme"]] == [p.true_cost_usd for p in data.tenants["acme"]]
    assert ("cost", "acme") in charts(render_report(data))


@given(st.text(min_size=1, max_size=30))
def test_hostile_names_are_escaped(name: str) -> None:
    span = AlertSpan("ToolFailureRateHigh", {"tenant": name, "tool": name}, T0, None, False, summary=name)
    data = build_report_data(records=[rec(name, 0)], truth=truth([name], 1), notifications=[],
                             replays=[ReplayLink(name, name, name)], checks=[Check(name, True, name)])
    data = type(data)(**{**data.__dict__, "alerts": [span]})
    page = render_report(data)
    # Whatever the name, the page's structure is ours: exactly the charts we drew, no element from the name.
    assert sorted(charts(page), key=str) == sorted(
        [("tokens", name), ("tool-failure-rate", name), ("llm-5xx-rate", name), ("timeline", None)], key=str)
    assert {t for t, _ in tags(page)} <= {"html", "meta", "title", "style", "head", "body", "h1", "h2", "p", "table",
                                          "tr", "th", "td", "span", "i", "figure", "figcaption", "svg", "line",
                                          "text", "rect", "polyline", "circle", "code", "details", "summary", "ul",
                                          "li", "a"}


def test_progress_off_a_terminal_is_plain_lines_without_carriage_returns(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = iter(range(4, 1000, 4))  # 4 s of wall clock per tick
    monkeypatch.setattr(simulate, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    p = Progress(0, 100, overwrite=False, every_s=10.0, began=0.0, _last_print=0.0)
    for i in range(20):
        p.add({"tenant": "acme", "type": "turn_start"})
        p.tick(i * 5)
    p.done()
    out = err.getvalue()
    assert "\r" not in out
    lines = out.splitlines()
    assert 5 <= len(lines) <= 9 and all(re.match(r"  \d+ events \(\d+% of event time\)", ln) for ln in lines)


def test_progress_on_a_terminal_redraws_in_place(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    p = Progress(0, 100, overwrite=True)
    p.add({"tenant": "acme", "type": "turn_start"})
    p.tick(50, force=True)
    assert err.getvalue().startswith("\r  1 events (50% of event time)")


def test_worker_progress_line_only_when_there_was_work() -> None:
    before = {"records": 100.0, "events": 4000.0, "windows": 3.0, "alerts": 0.0, "dead letters": 0.0}
    assert progress_line(before, before, 30.0) is None
    line = progress_line({**before, "records": 400.0, "events": 16_000.0, "windows": 7.0}, before, 30.0)
    assert line is not None and "300 records" in line and "12,000 events" in line and "10 records/s" in line


def test_worker_progress_counts_read_its_own_registry() -> None:
    from streams.app import progress_counts
    from streams.telemetry import WorkerTelemetry

    t = WorkerTelemetry()
    t.records.inc(7)
    t.events.inc(70)
    t.windows.labels("tumbling").inc(2)
    t.windows.labels("hopping").inc(3)
    t.dead_letters.labels("undecodable").inc()
    assert progress_counts(t.registry) == {"records": 7, "events": 70, "windows": 5, "alerts": 0, "dead letters": 1}


def test_demo_probes_the_otlp_endpoint_before_starting_the_traces_part() -> None:
    import socket

    from agentwatch.commands.demo import _unreachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert _unreachable(f"http://127.0.0.1:{port}/v1/traces") is None
    why = _unreachable(f"http://127.0.0.1:{port}/v1/traces")
    assert why is not None and f"127.0.0.1:{port}" in why
