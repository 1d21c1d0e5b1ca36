"""The demo's HTML report in a real browser: headless Chromium draws it (screenshot not blank) and parses it (the
charts are in its DOM). Skipped, with the reason, where Debian's ``chromium`` package is not installed (.ci/run
installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_check import check_report, find_chromium

from agentwatch.demo_report import Check, ReplayLink, build_report_data, render_report

BROWSER = find_chromium()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium; .ci/run "
                                "installs it): the report's browser check needs one")
MIN = 60_000_000
T0 = 1_796_676_540_000_000
TENANTS = ("acme", "globex", "initech", "umbrella")


def sample_report(cost: bool = False) -> str:
    """A report like the demo's: four tenants, twelve windows, an incident on acme."""
    records, windows = [], []
    for k, tenant in enumerate(TENANTS):
        for i in range(12):
            tokens = 5_000_000 + 400_000 * ((i * 7 + k) % 5) + (6_000_000 if tenant == "umbrella" and i > 6 else 0)
            failures = 60 if tenant == "acme" and 2 <= i < 5 else 2
            rec = {"tenant": tenant, "window_start_us": T0 + i * MIN, "window_end_us": T0 + (i + 1) * MIN,
                   "revision": 0, "prompt_tokens": tokens, "completion_tokens": 40_000, "tool_calls": 400,
                   "tool_failures": failures, "llm_attempts": 450, "llm_5xx": 30 if tenant == "acme" and i == 4 else 1}
            if cost:
                rec["cost_nusd"] = tokens * 2_500  # $2.50 per million tokens
            records.append(rec)
            windows.append({"tenant": tenant, "window_start_us": T0 + i * MIN, "tokens": {"total": tokens + 40_000}})
    truth = {"window_s": 60, "windows": windows,
             "rules": [{"name": "ToolFailureRateHigh", "threshold": 0.1},
                       {"name": "LLM5xxRateHigh", "threshold": 0.02}],
             "alerts": {"expected": [{"alertname": "ToolFailureRateHigh", "labels": {"tenant": "acme"}}]}}
    notes = [{"alerts": [{"status": "resolved", "labels": {"alertname": "ToolFailureRateHigh", "tenant": "acme"},
                          "annotations": {"summary": "Tool failure rate 15% > 10%"},
                          "startsAt": "2026-12-07T20:51:00Z", "endsAt": "2026-12-07T20:54:00Z"}]}]
    data = build_report_data(records=records, truth=truth, notifications=notes,
                             replays=[ReplayLink("acme", "s1.i1", "replay/t-acme/s1.i1.jsonl", 40)],
                             checks=[Check("windows acme", True, "equal")], title="agentwatch demo (browser test)")
    return render_report(data)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(sample_report(), encoding="utf-8")
    check_report(BROWSER, page, tmp_path, len(TENANTS), cost=False)
    print(f"screenshot: {tmp_path / 'report.png'}")


def test_report_with_cost_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report-cost.html"
    page.write_text(sample_report(cost=True), encoding="utf-8")
    check_report(BROWSER, page, tmp_path, len(TENANTS), cost=True)


def test_the_check_fails_on_a_blank_or_broken_page(tmp_path: Path) -> None:
    """The check can fail: a page with no charts, and one whose chart draws nothing, are both refused."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    with pytest.raises(AssertionError, match="blank-looking"):
        check_report(BROWSER, blank, tmp_path, len(TENANTS), cost=False)
    broken = tmp_path / "broken.html"
    broken.write_text(sample_report().replace('<svg class="chart"', '<svg class="chart" style="display:none"')
                      .replace("<h1>", "<h1 style='font-size:0'>"), encoding="utf-8")
    with pytest.raises(AssertionError, match="no charts drawn"):
        check_report(BROWSER, broken, tmp_path, len(TENANTS), cost=False)
