"""docker-compose.yml has no engine to run it here, so check what can be checked: every agentwatch service runs a
command the CLI accepts, and the files it mounts exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentwatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
AGENTWATCH_SERVICES = {name: svc for name, svc in COMPOSE["services"].items()
                       if svc.get("image") == "agentwatch:latest" and "command" in svc}


def test_every_part_of_the_pipeline_is_deployed() -> None:
    commands = {svc["command"][0] for svc in AGENTWATCH_SERVICES.values()}
    assert {"topics", "worker", "exporter", "alerts", "replay", "audit"} <= commands


@pytest.mark.parametrize("name", sorted(AGENTWATCH_SERVICES))
def test_service_command_is_a_valid_cli_invocation(name: str) -> None:
    args = build_parser().parse_args(AGENTWATCH_SERVICES[name]["command"])
    assert callable(args.func)


def test_mounted_files_exist() -> None:
    for svc in COMPOSE["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
