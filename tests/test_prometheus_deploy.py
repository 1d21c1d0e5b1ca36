"""deploy/: the alert rules, the scrape config, Alertmanager's config and the Grafana dashboard match what the
pipeline exposes, and the worker is the one source of tenant pages.

With ``promtool`` on the PATH (Debian: ``apt-get install prometheus``) the rules and config are also checked by
Prometheus itself and the rule unit tests in ``deploy/prometheus/alerts_test.yml`` run; with Alertmanager's binary
(Debian: ``prometheus-alertmanager``) its config is loaded and the inhibit rule is shown to mute what it should.
Without them those tests skip and the structural checks below still run.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from producers.metrics import PublisherCollector
from sinks.exporter import SpoolDirCollector
from sinks.prometheus import FAMILY_BY_NAME, ExporterState
from streams.telemetry import WorkerTelemetry

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "agentwatch-dashboard.json"
NAME_RE = re.compile(r"\b((?:agent|gen_ai|agentwatch)_[a-z0-9_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b((?:agent|gen_ai|agentwatch)_[a-z0-9_]+)\{([^}]*)\}")
# The self-monitoring contract (every long-running part; helpers/selfmon-contract.md): sample name -> labels.
CONTRACT = {
    "agentwatch_component_info": {"component", "version"},
    "agentwatch_kafka_connected": {"component"},
    "agentwatch_kafka_disconnects_total": {"component"},
    "agentwatch_consumer_lag_records": {"component", "topic", "partition"},
    "agentwatch_consumer_committed_offset": {"component", "topic", "partition"},
    "agentwatch_last_progress_timestamp_seconds": {"component"},
    "agentwatch_alert_deliveries_total": {"receiver", "outcome"},
}
CONTRACT_JOBS = {"agentwatch-worker", "agentwatch-exporter", "agentwatch-alerts", "agentwatch-replay",
                 "agentwatch-audit", "agentwatch-traces", "agentwatch-logs"}


def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, for everything the pipeline can expose: an exporter, a producer host, a worker
    (streams/telemetry.py) and the self-monitoring contract of every part."""
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
    for metric in vars(WorkerTelemetry()).values():  # labelled metrics have no samples until used: ask the objects
        if isinstance(metric, (Counter, Gauge)):
            suffix = "_total" if isinstance(metric, Counter) else ""
            out[metric._name + suffix] = set(metric._labelnames)
    out.update(CONTRACT)
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def recorded_labels(rules: list[dict]) -> dict[str, set[str]]:
    """Recording rule -> the labels it keeps (its outermost ``sum by (...)``)."""
    out = {}
    for rule in rules:
        if "record" in rule:
            m = re.match(r"\s*\w+ by \(([^)]*)\)", rule["expr"])
            assert m, f"{rule['record']}: expected an aggregation `... by (labels)`"
            out[rule["record"]] = {label.strip() for label in m.group(1).split(",")}
    return out


def check_expr(expr: str, known: dict[str, set[str]], recorded: dict[str, set[str]]) -> None:
    """Every metric an expression names is exposed; every label it matches or groups by is one of theirs."""
    bare = re.sub(r"\{[^}]*\}", "", GROUPING_RE.sub("", expr))
    names = set(NAME_RE.findall(bare))
    assert names or re.match(r"up\b", bare), expr  # Prometheus' own `up` is the only other series used
    for name in names:
        assert name in known or name in recorded, f"{name} is not exposed (in {expr!r})"
    labels = set().union(*(known.get(n) or recorded.get(n) or {"tenant"} for n in names)) | {"instance", "job"}
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
    recorded = recorded_labels(rules)
    assert recorded and all(name.count(":") == 2 for name in recorded)  # recording-rule naming level:metric:ops
    for rule in rules:
        check_expr(rule["expr"], known, recorded)
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "warning", "info"}, rule["alert"]
            assert rule["labels"]["source"] == "prometheus", rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
    alerts = {r["alert"] for r in rules if "alert" in r}
    # the pipeline-health pages of issue 11: down, disconnected, stalled, dead-lettering, dropping late events,
    # failing or giving up deliveries
    assert {"AgentwatchPartDown", "AgentwatchKafkaDisconnected", "AgentwatchStalled", "AgentwatchDeadLetters",
            "AgentwatchLateEventsDropped", "AgentwatchAlertDeliveryGivingUp",
            "AgentwatchAlertDeliveryFailing"} <= alerts
    text = "\n".join(r["expr"] for r in rules)
    for name in ("agentwatch_kafka_connected", "agentwatch_kafka_disconnects_total", "agentwatch_consumer_lag_records",
                 "agentwatch_last_progress_timestamp_seconds", "agentwatch_alert_deliveries_total",
                 "agentwatch_worker_dead_letters_total", "agentwatch_worker_late_events_total"):
        assert name in text, f"no rule watches {name}"


def test_the_check_catches_a_misspelt_metric_or_label():
    known = exposed()
    with pytest.raises(AssertionError):
        check_expr("agentwatch_kafka_conected == 0", known, {})
    with pytest.raises(AssertionError):
        check_expr("sum by (tenant) (agentwatch_kafka_connected) == 0", known, {})


def _worker_alertnames() -> set[str]:
    rules = yaml.safe_load((ROOT / "streams" / "default_rules.yaml").read_text())
    return {r.get("alertname", r["name"]) for r in rules["rules"]} | {rules["token_spike"]["alertname"]}


def test_the_worker_is_the_one_source_of_tenant_pages():
    """No Prometheus rule pages under a worker alert's name, and none is per tenant on the agents' series: those
    rates disagreed with the worker (alerts.yml's header says why they are gone)."""
    worker = _worker_alertnames()
    assert {"ToolFailureRateHigh", "TokenSpike"} <= worker
    for rule in alert_rules():
        if "alert" in rule:
            assert rule["alert"] not in worker, f"{rule['alert']} is the worker's alert"
            assert not re.search(r"\bagent_[a-z_]+", rule["expr"]), f"{rule['alert']} judges the agents' series"
    header = (PROM / "alerts.yml").read_text().split("groups:")[0]
    assert "One source of truth for paging" in header and "reduced to pipeline health" in header


def _rule_tests() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    return [case for test in doc["tests"] for case in test.get("alert_rule_test", [])]


@pytest.mark.parametrize("alertname", sorted({r["alert"] for r in alert_rules() if "alert" in r}))
def test_every_shipped_alert_has_a_firing_and_a_not_firing_case(alertname):
    cases = [c for c in _rule_tests() if c["alertname"] == alertname]
    assert any(c.get("exp_alerts") for c in cases), f"{alertname}: no promtool case where it fires"
    assert any(not c.get("exp_alerts") for c in cases), f"{alertname}: no promtool case where it stays quiet"


def test_grafana_dashboard_is_valid_json_with_panels_for_the_seed_metrics_and_health():
    dash = json.loads(DASHBOARD.read_text())
    known = exposed()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for expr in exprs:
        check_expr(expr, known, {})
    text = "\n".join(exprs)
    for metric in ("agent_turns_total", "agent_turn_duration_seconds_bucket", "agent_tool_calls_total",
                   "agent_tool_failures_total", "agent_tool_duration_seconds_bucket", "agent_llm_tokens_total",
                   "agent_llm_errors_total", "agent_llm_failed_attempts_total", "agent_confirm_requests_total",
                   "agent_max_iterations_hits_total", "gen_ai_client_token_usage_bucket",
                   "gen_ai_client_operation_duration_seconds_bucket", "agentwatch_exporter_events_total",
                   "agentwatch_exporter_consumer_lag", "agentwatch_dead_letter_records",
                   "agentwatch_exporter_late_events_total", "agentwatch_producer_spool_bytes",
                   # self-monitoring: every part up, connected, progressing; the worker; alert delivery
                   "agentwatch_component_info", "agentwatch_kafka_connected", "agentwatch_consumer_lag_records",
                   "agentwatch_last_progress_timestamp_seconds", "agentwatch_worker_records_total",
                   "agentwatch_worker_dead_letters_total", "agentwatch_worker_late_events_total",
                   "agentwatch_worker_alerts_emitted_total", "agentwatch_alert_deliveries_total"):
        assert metric in text, metric
    assert re.search(r'\bup\{job=~"agentwatch-', text), "no panel shows which parts are up"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "tenant"} <= variables


def test_scrape_config_scrapes_every_part_by_static_target_and_loads_the_rules():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) <= CONTRACT_JOBS, set(jobs) - CONTRACT_JOBS
    assert CONTRACT_JOBS <= set(jobs)
    for job in jobs.values():
        assert "dns_sd_configs" not in job, "a target found by DNS vanishes with its container: up == 0 never fires"
    (down,) = [r for r in alert_rules() if r.get("alert") == "AgentwatchPartDown"]
    covered = re.search(r'job=~"agentwatch-\(([^)]*)\)"', down["expr"])
    assert covered and {f"agentwatch-{j}" for j in covered.group(1).split("|")} == CONTRACT_JOBS


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                                  ["test", "rules", "alerts_test.yml"]], ids=lambda a: " ".join(a[:2]))
def test_promtool(args):
    result = subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _am(url: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


@pytest.mark.skipif(ALERTMANAGER is None, reason="alertmanager not installed (apt-get install prometheus-alertmanager)")
def test_alertmanager_loads_the_config_and_its_inhibit_rule_mutes_what_it_should(tmp_path):
    """The real Alertmanager: a part that lost Kafka inhibits its own Stalled/LagHigh, not another part's, and
    not a worker tenant alert."""
    port = _free_port()
    cluster = _free_port()
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={ALERTMANAGER_CONFIG}", f"--storage.path={tmp_path}",
                             f"--web.listen-address=127.0.0.1:{port}", f"--cluster.listen-address=127.0.0.1:{cluster}",
                             "--log.level=warn"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api/v2"
    try:
        for _ in range(100):
            try:
                _am(f"{base}/status")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                time.sleep(0.1)
        else:
            pytest.fail("alertmanager did not start")
        common = {"severity": "page", "source": "prometheus"}
        replay = {"job": "agentwatch-replay", "component": "replay"}
        audit = {"job": "agentwatch-audit", "component": "audit"}
        _am(f"{base}/alerts", [
            {"labels": {"alertname": "AgentwatchKafkaDisconnected", "instance": "replay:9469", **replay, **common}},
            {"labels": {"alertname": "AgentwatchStalled", **replay, **common}},
            {"labels": {"alertname": "AgentwatchConsumerLagHigh", **replay, **common, "severity": "warning"}},
            {"labels": {"alertname": "AgentwatchStalled", **audit, **common}},
            {"labels": {"alertname": "ToolFailureRateHigh", "tenant": "acme", "severity": "warning"}},
        ])
        state: dict[str, list] = {}
        for _ in range(50):
            alerts = _am(f"{base}/alerts")
            state = {f"{a['labels']['alertname']}/{a['labels'].get('component', a['labels'].get('tenant'))}":
                     a["status"]["inhibitedBy"] for a in alerts}  # type: ignore[union-attr]
            if len(state) == 5 and state["AgentwatchStalled/replay"]:
                break
            time.sleep(0.1)
        assert state["AgentwatchStalled/replay"] and state["AgentwatchConsumerLagHigh/replay"], state
        assert not state["AgentwatchStalled/audit"], state
        assert not state["AgentwatchKafkaDisconnected/replay"] and not state["ToolFailureRateHigh/acme"], state
    finally:
        proc.terminate()
        proc.wait(timeout=10)


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")
def test_real_prometheus_turns_a_dead_static_target_and_a_lost_kafka_into_alerts(tmp_path):
    """The real Prometheus, the shipped rules, scraping like deploy/prometheus/prometheus.yml: a static target that
    does not answer gives up == 0 and AgentwatchPartDown (pending: its `for:` is minutes); a live part that exposes
    agentwatch_kafka_connected 0 gives AgentwatchKafkaDisconnected; the live part is not down."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    Gauge("agentwatch_kafka_connected", "0 while no broker is reachable", ["component"],
          registry=registry).labels("exporter").set(0)
    live = _free_port()
    server, thread = start_http_server(live, "127.0.0.1", registry=registry)
    dead = _free_port()  # nothing listens here
    web = _free_port()
    shipped = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROM / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "agentwatch-worker", "static_configs": [{"targets": [f"127.0.0.1:{dead}"]}]},
            {"job_name": "agentwatch-exporter", "static_configs": [{"targets": [f"127.0.0.1:{live}"]}]},
        ],
    }
    assert {j["job_name"] for j in config["scrape_configs"]} <= {j["job_name"] for j in shipped["scrape_configs"]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    alerts: set[tuple[str, str, str]] = set()
    try:
        deadline = time.monotonic() + 60
        want = {("AgentwatchPartDown", "agentwatch-worker", "pending"),
                ("AgentwatchKafkaDisconnected", "agentwatch-exporter", "pending")}
        while time.monotonic() < deadline and not want <= alerts:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            try:
                body = _am(f"http://127.0.0.1:{web}/api/v1/query?query=ALERTS")
                alerts = {(r["metric"]["alertname"], r["metric"]["job"], r["metric"]["alertstate"])
                          for r in body["data"]["result"]}  # type: ignore[index]
            except OSError:
                pass
            time.sleep(0.5)
        assert want <= alerts, alerts
        assert not any(name == "AgentwatchPartDown" and job == "agentwatch-exporter" for name, job, _ in alerts)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        server.shutdown()
