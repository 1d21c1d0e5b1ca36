"""The worker's alerts link to the tenant's dashboard: ``generatorURL`` from ``--generator-url`` /
``AGENTWATCH_GENERATOR_URL`` (agentwatch/config.py), defaulting to the shipped Grafana dashboard, down to the
rule engine and the spike detector that stamp it on every alert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_compose import COMPOSE  # noqa: F401  (tests/test_listen.py reads the compose file from here)

from agentwatch.cli import build_parser
from agentwatch.commands.worker import build_options
from agentwatch.config import DEFAULT_GENERATOR_URL, ConfigError, Settings, parse_generator_url

ROOT = Path(__file__).resolve().parents[1]


def _settings(monkeypatch: pytest.MonkeyPatch, value: str | None) -> Settings:
    if value is None:
        monkeypatch.delenv("AGENTWATCH_GENERATOR_URL", raising=False)
    else:
        monkeypatch.setenv("AGENTWATCH_GENERATOR_URL", value)
    return Settings.from_env()


def test_the_default_is_the_tenants_view_of_the_shipped_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "agentwatch-dashboard.json").read_text())
    assert _settings(monkeypatch, None).generator_url == DEFAULT_GENERATOR_URL
    assert f"/d/{dashboard['uid']}/" in DEFAULT_GENERATOR_URL and "var-tenant={tenant}" in DEFAULT_GENERATOR_URL
    assert "tenant" in {v["name"] for v in dashboard["templating"]["list"]}


def test_the_environment_sets_or_turns_off_the_link(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://grafana.example/d/x?var-tenant={tenant}&alert={alertname}"
    assert _settings(monkeypatch, url).generator_url == url
    assert _settings(monkeypatch, "none").generator_url is None


@pytest.mark.parametrize("bad", ["http://g/d/x?t={tenat}", "http://g/d/x?t={0}", "http://g/d/x?t={", "grafana/d/x"])
def test_a_bad_template_is_refused_when_the_settings_are_read(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    with pytest.raises(ConfigError, match="AGENTWATCH_GENERATOR_URL"):
        _settings(monkeypatch, bad)
    with pytest.raises(ConfigError, match="--generator-url"):
        parse_generator_url(bad, what="--generator-url")


def _options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], env: str | None):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["worker", "--workdir", str(tmp_path), *argv])
    return build_options(args, _settings(monkeypatch, env), 2, 2)


def test_the_worker_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = "http://env/d/x?var-tenant={tenant}"
    assert _options(monkeypatch, tmp_path, [], env).generator_url == env
    assert _options(monkeypatch, tmp_path, [], None).generator_url == DEFAULT_GENERATOR_URL
    flag = "http://flag/d/x?var-tenant={tenant}&var-tool={tool}"
    assert _options(monkeypatch, tmp_path, ["--generator-url", flag], env).generator_url == flag
    assert _options(monkeypatch, tmp_path, ["--generator-url", "none"], env).generator_url is None


def test_a_bad_worker_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["worker", "--generator-url", "http://g/?t={tenantt}"])
    assert exc.value.code == 2 and "{tenant}, {alertname} and {tool}" in capsys.readouterr().err


def test_the_worker_stamps_the_link_on_its_threshold_and_spike_alerts(tmp_path: Path) -> None:
    """The worker's shell hands the template to both detectors (no broker needed to build it)."""
    from streams.app import create_app
    from streams.options import WorkerOptions
    from streams.rules import WindowMetrics

    url = "http://grafana/d/agentwatch-fleet/agentwatch?var-tenant={tenant}"
    options = WorkerOptions(app_id="genurl-test", bootstrap_servers="127.0.0.1:1", events_topic="ev",
                            dead_letter_topic="dlq", partials_topic="pa", metrics_topic="me", alerts_topic="al",
                            events_partitions=1, partials_partitions=1, datadir=tmp_path, generator_url=url)
    _app, shell = create_app(options)
    assert shell.merge.spike.generator_url == url
    window = WindowMetrics(tenant="acme", window_start_us=0, window_end_us=60_000_000, tool_calls=100,
                           tool_failures=50)
    (alert,) = shell.merge.rules.evaluate(window)
    assert alert.alertname == "ToolFailureRateHigh" and alert.generator_url == url.format(tenant="acme")
    assert alert.as_postable()["generatorURL"] == "http://grafana/d/agentwatch-fleet/agentwatch?var-tenant=acme"

    # tenant names are free text: the link keeps them one percent-encoded query value
    (odd,) = shell.merge.rules.evaluate(WindowMetrics(tenant="acme corp&x=1/é", window_start_us=0,
                                                      window_end_us=60_000_000, tool_calls=100, tool_failures=50))
    assert odd.generator_url == "http://grafana/d/agentwatch-fleet/agentwatch?var-tenant=acme%20corp%26x%3D1%2F%C3%A9"


def test_a_link_template_encodes_every_placeholder_and_keeps_the_rest() -> None:
    from streams.alerts import link_template

    template = link_template("https://g/d/x?var-tenant={tenant}&var-tool={tool}#{alertname}")
    assert template is not None and link_template(None) is None
    assert template.format(tenant="a b", tool="", alertname="X?") == "https://g/d/x?var-tenant=a%20b&var-tool=#X%3F"


@pytest.mark.kafka
def test_a_worker_run_on_a_real_broker_links_every_alert_to_its_tenant(kafka_bootstrap: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated incidents through `agentwatch worker` (a subprocess, AGENTWATCH_GENERATOR_URL from its
    environment) to the alerts topic: every alert, firing and resolved, carries its own tenant's link."""
    import uuid

    from conftest import delete_topics
    from worker_support import US, publish_end_of_input, publish_events, read_alerts, start_worker, wait_until

    from agentwatch.config import TopicNames
    from agentwatch.topics import default_topics, ensure_topics
    from producers.incidents import default_incidents
    from producers.simulator import DEFAULT_START_US, FleetSimulator

    prefix = f"test.genurl.{uuid.uuid4().hex[:10]}"
    topics = TopicNames(events=f"{prefix}.events", dead_letter=f"{prefix}.dlq", metrics=f"{prefix}.metrics",
                        alerts=f"{prefix}.alerts", partials=f"{prefix}.partials", late=f"{prefix}.late")
    settings = Settings(bootstrap_servers=kafka_bootstrap, topics=topics, events_partitions=2,
                        app_id=f"{prefix}.streams")
    specs = default_topics(settings)
    ensure_topics(kafka_bootstrap, specs)
    names = FleetSimulator(seed=1).tenant_names
    sim = FleetSimulator(seed=1, duration_s=720, incidents=default_incidents(names, DEFAULT_START_US, 600, 60))
    events = list(sim.events())
    truth = sim.ground_truth(60, events=events)
    expected = {(e["alertname"], e["labels"]["tenant"]) for e in truth["alerts"]["expected"]}
    publish_events(settings, events)
    publish_end_of_input(settings, sim.end_us + 600 * US, 2)
    template = "https://grafana.example/d/agentwatch-fleet/agentwatch?var-tenant={tenant}&alert={alertname}"
    monkeypatch.setenv("AGENTWATCH_GENERATOR_URL", template)
    worker = start_worker(settings, tmp_path, "--hop", "0")
    try:
        def resolved() -> list | None:
            alerts = read_alerts(settings)
            done = {(a.alertname, a.labels["tenant"]) for a in alerts if a.status == "resolved"}
            return alerts if expected <= done else None

        alerts = wait_until(resolved, 180, alive=[worker])
    finally:
        worker.stop()
        delete_topics(kafka_bootstrap, [s.name for s in specs])
    assert expected and {(a.alertname, a.labels["tenant"]) for a in alerts} == expected
    for alert in alerts:
        link = template.format(tenant=alert.labels["tenant"], alertname=alert.alertname)
        assert alert.generator_url == link and alert.as_webhook()["generatorURL"] == link, alert
