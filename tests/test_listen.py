"""HTTP endpoints listen on loopback unless configured (issue 12 item 5): /metrics and Faust's web views have no
authentication, so opening them to the network is a deployment's explicit choice (docker-compose.yml does)."""

from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry
from test_deploy import COMPOSE

from agentwatch.cli import build_parser
from agentwatch.commands.worker import build_options
from agentwatch.config import Settings
from sinks.exporter import MetricsServer


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTWATCH_"):
            monkeypatch.delenv(name)


def test_the_listen_address_defaults_to_loopback_and_comes_from_the_environment(monkeypatch) -> None:
    assert Settings.from_env().listen_addr == "127.0.0.1"
    monkeypatch.setenv("AGENTWATCH_LISTEN_ADDR", "0.0.0.0")
    assert Settings.from_env().listen_addr == "0.0.0.0"


def test_the_metrics_server_binds_loopback_by_default() -> None:
    server = MetricsServer(CollectorRegistry(), port=0)
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server.close()


def test_the_exporter_flag_is_unset_unless_given() -> None:
    assert build_parser().parse_args(["exporter"]).addr is None  # the command falls back to settings.listen_addr
    assert build_parser().parse_args(["exporter", "--addr", "0.0.0.0"]).addr == "0.0.0.0"


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([], None, "127.0.0.1"),
    ([], "10.0.0.5", "10.0.0.5"),
    (["--listen-addr", "0.0.0.0"], "10.0.0.5", "0.0.0.0"),
])
def test_the_worker_listens_where_configured(argv, env, expected, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AGENTWATCH_HOME", str(tmp_path))
    if env:
        monkeypatch.setenv("AGENTWATCH_LISTEN_ADDR", env)
    args = build_parser().parse_args(["worker", "--metrics-port", "9466", *argv])
    options = build_options(args, Settings.from_env(), 6, 6)
    assert options.listen_addr == expected


def test_the_worker_app_binds_its_web_views_to_the_listen_address(tmp_path) -> None:
    from streams.app import create_app
    from streams.options import WorkerOptions

    options = WorkerOptions(app_id="t-listen", bootstrap_servers="127.0.0.1:1", events_topic="e",
                            dead_letter_topic="d", partials_topic="p", metrics_topic="m", alerts_topic="a",
                            events_partitions=1, partials_partitions=1, datadir=tmp_path, web_port=6066)
    app, _shell = create_app(options)
    assert app.conf.web_bind == "127.0.0.1"


def test_compose_opens_only_the_ports_prometheus_scrapes() -> None:
    services = COMPOSE["services"]
    assert services["exporter"]["command"][-2:] == ["--addr", "0.0.0.0"]
    assert services["worker"]["command"][-2:] == ["--listen-addr", "0.0.0.0"]
