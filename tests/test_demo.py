"""``agentwatch demo`` end to end on a real Kafka broker, the way ``make demo`` runs it, with its traces sent to an
OTLP/HTTP receiver: every check is ✓ (windows, alerts, replay, audit sealed, traces), no ✗, no ``[unanchored]``,
no carriage return off a terminal, the report renders in headless Chromium, and the spans arrived as trees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from browser_check import check_report, find_chromium
from conftest import delete_topics
from otlp_receiver import OtlpReceiver, ReceivedSpan

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.kafka

TREE_ATTRS = ("gen_ai.request.model", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.tool.name",
              "error.type")


def span_tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[str]:
    """The span tree under ``root`` as indented text: name, duration, the GenAI attributes that matter, status."""
    children: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)
    lines: list[str] = []

    def walk(s: ReceivedSpan, depth: int) -> None:
        attrs = " ".join(f"{k.removeprefix('gen_ai.')}={s.attributes[k]}" for k in TREE_ATTRS if k in s.attributes)
        status = {0: "", 1: " OK", 2: f" ERROR {s.status_message}".rstrip()}[s.status_code]
        events = f" events: {', '.join(name for name, _ in s.events)}" if s.events else ""
        lines.append(f"{'  ' * depth}{s.name} ({(s.end_ns - s.start_ns) / 1e6:,.0f} ms) {attrs}{status}{events}"
                     .rstrip())
        for c in sorted(children.get(s.span_id, []), key=lambda c: (c.start_ns, c.name)):
            walk(c, depth + 1)

    walk(root, 0)
    return lines


def test_demo_proves_itself_and_sends_its_traces(kafka_bootstrap: str, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "AGENTWATCH_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env.pop(name, None)
    with OtlpReceiver() as receiver:
        proc = subprocess.run([sys.executable, "-m", "agentwatch", "demo", "--workdir", str(workdir),
                               "--otlp-endpoint", receiver.endpoint, "--timeout", "300"],
                              env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        spans = list(receiver.spans)
    topics = re.findall(r"^   (agentwatch\.demo-\S+): created$", proc.stderr, re.M)
    try:
        out = proc.stdout + proc.stderr
        (tmp_path / "demo.out").write_text(out)
        assert proc.returncode == 0, out[-6000:]
        assert "✗" not in out and "[unanchored]" not in out and "\r" not in out, out[-6000:]
        for line in ("windows", "alerts delivered", "session replay archive", "audit log", "traces"):
            assert line in proc.stdout
        marks = re.findall(r"^  (✓|✗)", proc.stdout, re.M) + re.findall(r"✓ equal|✗ differs", proc.stdout)
        assert len(marks) >= 4 + 7 + 4 + 1 + 1 and set(marks) <= {"✓", "✓ equal"}
        assert re.search(r"✓\s+OK: 4 tenant\(s\)", proc.stdout)

        report = workdir / "report.html"
        page = report.read_text(encoding="utf-8")
        assert page.count('class="check"') == len(marks) and "✗" not in page
        browser = find_chromium()
        if browser is not None:
            check_report(browser, report, tmp_path, tenants=4, cost='data-chart="cost"' in page)

        by_id = {s.span_id for s in spans}
        # A turn's span is a root, or the child of the host's span when its events carry the host's traceparent.
        turns = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "invoke_agent"
                 and s.parent_span_id not in by_id]
        assert turns, f"no turn spans among {len(spans)} received"
        orphans = [s for s in spans if s.parent_span_id and s.parent_span_id not in by_id and s not in turns]
        assert not orphans, f"{len(orphans)} spans whose parent never arrived, e.g. {orphans[0]}"
        assert all(s.attributes.get("gen_ai.conversation.id") for s in turns)
        # One turn with LLM calls and tools, as the README shows it.
        rich = max(turns, key=lambda t: len({s.name for s in spans if s.trace_id == t.trace_id}))
        tree = span_tree([s for s in spans if s.trace_id == rich.trace_id], rich)
        (tmp_path / "span_tree.txt").write_text("\n".join(tree) + "\n")
        print("\n".join(tree[:30]))
        assert any(ln.lstrip().startswith("chat ") for ln in tree)
        assert any(ln.lstrip().startswith("execute_tool ") for ln in tree)
    finally:
        delete_topics(kafka_bootstrap, topics)
