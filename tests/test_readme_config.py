"""Every environment variable agentwatch/config.py reads is in a README table (issue 11: AGENTWATCH_APP_ID was
missing), and every agentwatch variable a README table names is one config.py reads (no stale rows)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_NAME = re.compile(r'"((?:AGENTWATCH|KAFKA|SCHEMA|OTEL)_[A-Z0-9_]+)"')
# variables read by tests and benchmarks only, documented in their own sections
NOT_CONFIG = {"AGENTWATCH_KILL_SEED", "AGENTWATCH_KILL_CYCLES"}


def config_names() -> set[str]:
    return set(ENV_NAME.findall((ROOT / "agentwatch" / "config.py").read_text()))


def readme_table_names() -> set[str]:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    return {n for row in rows for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_config_reads_what_the_test_looks_for():
    names = config_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "AGENTWATCH_APP_ID", "AGENTWATCH_KAFKA_STARTUP_TIMEOUT"} <= names
    assert len(names) > 30


def test_every_variable_config_reads_is_in_a_readme_table():
    assert sorted(config_names() - readme_table_names()) == []


def test_every_variable_in_a_readme_table_is_read_by_config():
    documented = {n for n in readme_table_names() if n.startswith(("AGENTWATCH_", "KAFKA_", "SCHEMA_", "OTEL_"))}
    assert sorted(documented - config_names() - NOT_CONFIG) == []
