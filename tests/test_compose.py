"""docker-compose.yml runs as written, checked without a Docker engine.

- It is valid against the Compose Specification's JSON schema (vendored: tests/fixtures/compose-spec.schema.md).
- Every agentwatch ``command:`` parses with the CLI's own parser, after Compose's ``${VAR:-default}`` interpolation.
- No required-variable interpolation (``${VAR:?}``): it refuses every compose command on a fresh checkout, even
  ``docker compose up prometheus``.
- Scalable parts publish no fixed host port; every part that serves /metrics listens beyond loopback and is a static
  target of deploy/prometheus/prometheus.yml under its contract job name, on the port its command serves.
- ``docker compose run cli replay list`` / ``audit verify`` resolve to the very volume paths the replay and audit
  services write, and the cli has the audit keys.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from agentwatch.cli import build_parser
from agentwatch.commands.audit import AuditOptions
from agentwatch.commands.replay import ReplayOptions
from agentwatch.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "compose-spec.schema.json").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
AGENTWATCH = {name: svc for name, svc in SERVICES.items() if svc.get("image") == "agentwatch:latest"}
WITH_COMMAND = {name: svc for name, svc in AGENTWATCH.items() if "command" in svc}
# The long-running parts and their Prometheus jobs (docs/self-monitoring.md).
JOBS = {"worker": "agentwatch-worker", "exporter": "agentwatch-exporter", "alerts": "agentwatch-alerts",
        "replay": "agentwatch-replay", "audit": "agentwatch-audit", "traces": "agentwatch-traces",
        "logs": "agentwatch-logs"}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` with ``env`` (default
    empty: a fresh checkout without an .env file)."""
    env = env or {}

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}{op}...}} refuses every compose command while {name} is unset")
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        return env.get(name, "")

    return INTERPOLATION.sub(one, value)


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def command(svc: dict) -> list[str]:
    return [interpolate(str(arg)) for arg in svc["command"]]


def subparser(argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that handles ``argv``'s options, found by walking the subcommands."""
    parser = build_parser()
    for word in argv:
        if word.startswith("-"):
            break
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
    return parser


def test_compose_file_is_valid_against_the_compose_specification_schema() -> None:
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_misspelt_key() -> None:
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["worker"]["comand"] = broken["services"]["worker"].pop("command")
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(broken))


def test_no_variable_is_required_so_a_fresh_checkout_can_run_any_service() -> None:
    for m in INTERPOLATION.finditer(COMPOSE_TEXT):
        assert m.group(2) not in (":?", "?"), f"{m.group(0)} blocks every compose command while unset"
    for svc in SERVICES.values():  # and every value interpolates with no environment at all
        environment(svc)
        if "command" in svc and isinstance(svc["command"], list):
            command(svc)


def test_every_part_of_the_pipeline_is_deployed() -> None:
    commands = {svc["command"][0] for svc in WITH_COMMAND.values()}
    assert {"topics", "worker", "exporter", "alerts", "replay", "audit", "traces"} <= commands
    assert "phoenix" in SERVICES and SERVICES["phoenix"]["image"].startswith("arizephoenix/phoenix:")
    assert "cli" in AGENTWATCH


@pytest.mark.parametrize("name", sorted(WITH_COMMAND))
def test_service_command_is_a_valid_cli_invocation(name: str) -> None:
    argv = command(WITH_COMMAND[name])
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_a_wrong_command_fails_the_check() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--metrics-prot", "9466"])


def test_mounted_files_exist() -> None:
    for svc in SERVICES.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"


def test_agentwatch_parts_publish_no_host_port_so_they_scale() -> None:
    for name, svc in AGENTWATCH.items():
        assert "ports" not in svc, f"{name} publishes {svc['ports']}: replicas (--scale) would collide on it"


def _metrics_port(argv: list[str]) -> int | None:
    for flag in ("--metrics-port", "--port"):
        if flag in argv:
            return int(argv[argv.index(flag) + 1])
    return None


def test_every_long_running_part_is_scraped_by_service_name_under_its_contract_job() -> None:
    jobs = {j["job_name"]: j for j in PROMETHEUS["scrape_configs"]}
    targets = {job: [t for sc in j.get("static_configs", []) for t in sc["targets"]] for job, j in jobs.items()}
    for job, j in jobs.items():
        assert set(j) <= {"job_name", "static_configs", "metrics_path", "scrape_interval"}, (
            f"{job}: static targets only, so a dead container gives up == 0")
        for target in targets[job]:
            host = target.rsplit(":", 1)[0]
            assert host in SERVICES, f"{job} scrapes {target}, which is no compose service"
    for service, job in JOBS.items():
        argv = command(SERVICES[service])
        port = _metrics_port(argv)
        assert port is not None, f"{service} serves no /metrics ({argv})"
        assert targets.get(job) == [f"{service}:{port}"], f"{job} should scrape {service}:{port}"
        env = {**environment(SERVICES[service])}
        listen = env.get("AGENTWATCH_LISTEN_ADDR")
        for flag in ("--listen-addr", "--addr"):
            if flag in argv:
                listen = argv[argv.index(flag) + 1]
        assert listen == "0.0.0.0", f"{service}'s /metrics listens on loopback only; Prometheus cannot reach it"


def _volume_path(svc: dict, path: Path) -> tuple[str, Path]:
    """(volume name, path inside the volume) of a container path, through the service's named-volume mounts."""
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith(("./", "/")) and (path == Path(target) or Path(target) in path.parents):
            return source, path.relative_to(target)
    raise AssertionError(f"{path} is on no named volume of the service: it would be lost with the container")


def _settings(svc: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's Settings: its environment (interpolated on a fresh checkout) and nothing of ours."""
    for name in [k for k in os.environ if k.startswith(("AGENTWATCH_", "KAFKA_"))]:
        monkeypatch.delenv(name)
    for name, value in environment(svc).items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


@pytest.mark.parametrize(("writer", "reader_argv", "resolve"), [
    ("replay", ["replay", "list"], ReplayOptions.resolve),
    ("audit", ["audit", "verify"], AuditOptions.resolve),
], ids=["replay", "audit"])
def test_the_cli_service_reads_the_archive_where_the_service_writes_it(writer, reader_argv, resolve, monkeypatch):
    parser = build_parser()
    argv = command(SERVICES[writer])
    if "--metrics-port" in argv:  # see test_service_command_is_a_valid_cli_invocation
        argv = argv[:argv.index("--metrics-port")] + argv[argv.index("--metrics-port") + 2:]
    written = resolve(parser.parse_args(argv), _settings(SERVICES[writer], monkeypatch)).root
    read = resolve(parser.parse_args(reader_argv), _settings(SERVICES["cli"], monkeypatch)).root
    assert _volume_path(SERVICES["cli"], read) == _volume_path(SERVICES[writer], written)


def test_the_cli_service_has_the_audit_keys() -> None:
    env = SERVICES["cli"].get("environment", {})
    assert {"AGENTWATCH_AUDIT_HMAC_KEY", "AGENTWATCH_AUDIT_ENC_KEY"} <= set(env)
    assert env["AGENTWATCH_AUDIT_HMAC_KEY"] == SERVICES["audit"]["environment"]["AGENTWATCH_AUDIT_HMAC_KEY"]


def test_the_worker_links_its_alerts_to_the_shipped_dashboard() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "agentwatch-dashboard.json").read_text())
    url = environment(SERVICES["worker"])["AGENTWATCH_GENERATOR_URL"]
    assert url == f"http://localhost:3000/d/{dashboard['uid']}/agentwatch?var-tenant={{tenant}}"
    assert "tenant" in {v["name"] for v in dashboard["templating"]["list"]}
