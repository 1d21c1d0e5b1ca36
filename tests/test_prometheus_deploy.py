"""deploy/: the alert rules, the scrape config and the Grafana dashboard match what the exporter exposes.

With ``promtool`` on the PATH (Debian: ``apt-get install prometheus``) the rules and config are also checked by
Prometheus itself and the rule unit tests in ``deploy/prometheus/alerts_test.yml`` run; without it those tests skip
and the structural checks below still run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from producers.metrics import PublisherCollector
from sinks.exporter import SpoolDirCollector
from sinks.prometheus import FAMILY_BY_NAME, ExporterState

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "agentwatch-dashboard.json"
NAME_RE = re.compile(r"\b((?:agent|gen_ai|agentwatch)_[a-z0-9_]+|tenant:[a-z0-9_:]+)\b")
SELECTOR_RE = re.compile(r"\b((?:agent|gen_ai|agentwatch)_[a-z0-9_]+)\{([^}]*)\}")
# The seed's thresholds: alertname -> (comparison, threshold, min-volume metric)
SEED_RULES = {
    "ToolFailureRateHigh": (">", 0.10, "agent_tool_calls_total"),
    "LLM5xxRateHigh": (">", 0.02, "agent_llm_attempts_total"),
    "MaxIterationsRateHigh": (">", 0.05, "agent_turns_total"),
    "CacheHitRateLow": ("<", 0.30, 'agent_llm_tokens_total{type="prompt"}'),
    "ConfirmTimeoutRateHigh": (">", 0.10, "agent_confirm_requests_total"),
}


def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, for everything an exporter (and a producer host) can expose."""
    registry = CollectorRegistry()
    ExporterState("events").register(registry)
    registry.register(SpoolDirCollector("/nonexistent"))
    registry.register(PublisherCollector("p", lambda: {}, lambda: {}))
    out: dict[str, set[str]] = {}
    for fam in registry.collect():
        spec = FAMILY_BY_NAME.get(fam.name)
        labels = set(spec.labels) if spec else {lab for s in fam.samples for lab in s.labels}
        if fam.type == "counter":
            out[fam.name + "_total"] = labels
        elif fam.type == "histogram":
            out.update({fam.name + "_bucket": labels | {"le"}, fam.name + "_sum": labels,
                        fam.name + "_count": labels})
        else:
            out[fam.name] = labels
    # labels of the gauges the exporter fills in only when it owns partitions or watches a dead-letter topic
    for name in ("agentwatch_exporter_consumer_lag", "agentwatch_exporter_stream_time_seconds"):
        out[name] = {"topic", "partition"}
    out["agentwatch_dead_letter_records"] = out["agentwatch_dead_letter_offset"] = {"topic"}
    out["agentwatch_producer_spool_observed_bytes"] = {"path"}
    out["agentwatch_producer_spool_bytes"] = {"producer_id"}
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def check_expr(expr: str, known: dict[str, set[str]], recorded: set[str]) -> None:
    """Every metric an expression names is exposed; every label it matches or groups by is one of theirs."""
    bare = re.sub(r"\{[^}]*\}", "", GROUPING_RE.sub("", expr))
    names = set(NAME_RE.findall(bare))
    assert names or bare.startswith("up "), expr  # Prometheus' own `up` is the only other series used
    for name in names:
        assert name in known or name in recorded, f"{name} is not exposed (in {expr!r})"
    labels = set().union(*(known.get(n, {"tenant"}) for n in names)) | {"instance", "job"}
    for name, body in SELECTOR_RE.findall(expr):
        for matcher in filter(None, (m.strip() for m in body.split(","))):
            label = re.split(r"[=!~]", matcher, maxsplit=1)[0].strip()
            assert label in known[name] | {"instance", "job"}, f"{name} has no label {label!r} (in {expr!r})"
    for group in GROUPING_RE.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            assert label in labels, f"grouping by {label!r}, which {sorted(names)} lack (in {expr!r})"


def test_alert_rules_reference_exposed_series_and_have_the_right_shape():
    rules = alert_rules()
    known = exposed()
    recorded = {r["record"] for r in rules if "record" in r}
    assert recorded and all(":" in name for name in recorded)  # recording-rule naming level:metric:operations
    for rule in rules:
        check_expr(rule["expr"], known, recorded)
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"TokenSpike", "AgentwatchConsumerLagHigh", "AgentwatchDeadLetters", "AgentwatchExporterDown",
            "AgentwatchProducerSpooling", "AgentwatchLateEvents"} <= alerts


@pytest.mark.parametrize("alertname", sorted(SEED_RULES))
def test_seed_thresholds_are_per_tenant_ratios_with_volume_guard_and_persistence(alertname):
    op, threshold, volume = SEED_RULES[alertname]
    rules = [r for r in alert_rules() if r.get("alert") == alertname]
    assert rules, alertname
    for rule in rules:
        expr = " ".join(rule["expr"].split())
        assert re.search(rf"\)\s*{re.escape(op)}\s*{threshold:.2f}\b", expr), expr  # (bad / all) op threshold
        assert "sum by (tenant" in expr and " / " in expr and "[10m]" in expr
        guard = re.search(r"\band sum by \(tenant[^)]*\) \(increase\((\S+?)\[10m\]\)\) >= (\d+)", expr)
        assert guard, f"{alertname}: no min-volume clause"
        assert guard.group(1).startswith(volume.split("{")[0]) and int(guard.group(2)) >= 20
        assert rule["for"] == "5m" and rule["keep_firing_for"]


def test_token_spike_rule_compares_with_a_trailing_baseline_and_has_hysteresis():
    (rule,) = [r for r in alert_rules() if r.get("alert") == "TokenSpike"]
    expr = " ".join(rule["expr"].split())
    assert ">= 2" in expr and ">= 1.5" in expr and 'ALERTS{alertname="TokenSpike", alertstate="firing"}' in expr
    recorded = {r["record"]: " ".join(r["expr"].split()) for r in alert_rules() if "record" in r}
    assert "offset 10m" in recorded["tenant:agent_llm_tokens:rate1d_offset10m"]
    assert "[1d]" in recorded["tenant:agent_llm_tokens:rate1d_offset10m"]


def test_grafana_dashboard_is_valid_json_with_panels_for_the_seed_metrics_and_health():
    dash = json.loads(DASHBOARD.read_text())
    known = exposed()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for expr in exprs:
        check_expr(expr, known, set())
    text = "\n".join(exprs)
    for metric in ("agent_turns_total", "agent_turn_duration_seconds_bucket", "agent_tool_calls_total",
                   "agent_tool_failures_total", "agent_tool_duration_seconds_bucket", "agent_llm_tokens_total",
                   "agent_llm_errors_total", "agent_llm_failed_attempts_total", "agent_confirm_requests_total",
                   "agent_max_iterations_hits_total", "gen_ai_client_token_usage_bucket",
                   "gen_ai_client_operation_duration_seconds_bucket", "agentwatch_exporter_events_total",
                   "agentwatch_exporter_consumer_lag", "agentwatch_dead_letter_records",
                   "agentwatch_exporter_late_events_total", "agentwatch_producer_spool_bytes"):
        assert metric in text, metric
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "tenant"} <= variables


def test_scrape_config_scrapes_the_exporters_and_loads_the_rules():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["agentwatch-exporter"]["metrics_path"] == "/metrics"
    exporter_down = [r for r in alert_rules() if r.get("alert") == "AgentwatchExporterDown"][0]
    assert 'job="agentwatch-exporter"' in exporter_down["expr"]


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                                  ["test", "rules", "alerts_test.yml"]], ids=lambda a: " ".join(a[:2]))
def test_promtool(args):
    result = subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
