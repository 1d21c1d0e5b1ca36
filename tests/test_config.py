"""The one typed configuration place (``Settings.from_env``) and the flags every command spells the same way."""

from __future__ import annotations

import argparse
import base64
import os

import pytest

from agentwatch.cli import build_parser, main
from agentwatch.commands.audit import AuditOptions
from agentwatch.commands.replay import ReplayOptions
from agentwatch.config import AuditSettings, ConfigError, ReplaySettings, Settings

HMAC = "k" * 24
ENC = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTWATCH_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


def test_audit_and_replay_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTWATCH_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTWATCH_AUDIT_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", HMAC)
    monkeypatch.setenv("AGENTWATCH_AUDIT_ENC_KEY", ENC)
    monkeypatch.setenv("AGENTWATCH_AUDIT_POLICY", str(tmp_path / "policy.yaml"))
    monkeypatch.setenv("AGENTWATCH_AUDIT_BUSINESS_TOOLS", "crm_*, erp_write,")
    monkeypatch.setenv("AGENTWATCH_AUDIT_MAX_TENANT_BYTES", "4096")
    monkeypatch.setenv("AGENTWATCH_REPLAY_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("AGENTWATCH_REPLAY_MAX_INSTANCES", "0")
    monkeypatch.setenv("AGENTWATCH_REPLAY_CAPTURE_FLAGS", "capture_full_llm_io, capture_llm_delta=false")
    monkeypatch.setenv("AGENTWATCH_REPLAY_MAX_TENANT_BYTES", "8192")
    s = Settings.from_env()
    assert s.audit == AuditSettings(dir=tmp_path / "a", hmac_key=HMAC.encode(), enc_key=bytes(range(32)),
                                    policy_file=tmp_path / "policy.yaml", business_tools=("crm_*", "erp_write"),
                                    max_tenant_bytes=4096)
    assert s.replay == ReplaySettings(dir=tmp_path / "r", max_instances=0, max_tenant_bytes=8192,
                                      capture_flags={"capture_full_llm_io": True, "capture_llm_delta": False})


def test_defaults_without_any_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTWATCH_HOME", str(tmp_path))
    s = Settings.from_env()
    assert s.audit == AuditSettings() and s.audit.hmac_key is None and s.audit.business_tools is None
    assert s.replay == ReplaySettings() and s.replay.max_instances == 1000 and s.replay.capture_flags == {}
    args = argparse.Namespace()
    assert AuditOptions.resolve(args, s).root == tmp_path / "audit"
    replay = ReplayOptions.resolve(args, s)
    assert (replay.root, replay.max_instances, replay.flags["capture_llm_delta"]) == (tmp_path / "replays", 1000,
                                                                                     True)


def test_secrets_never_show_in_a_repr(monkeypatch):
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", HMAC)
    monkeypatch.setenv("AGENTWATCH_AUDIT_ENC_KEY", ENC)
    s = Settings.from_env()
    for text in (repr(s), str(s), repr(AuditOptions.resolve(argparse.Namespace(), s))):
        assert HMAC not in text and ENC not in text and repr(bytes(range(32))) not in text
        assert "hmac_key" not in text and "enc_key" not in text


@pytest.mark.parametrize(("name", "value", "message"), [
    ("AGENTWATCH_AUDIT_HMAC_KEY", "too-short", "AGENTWATCH_AUDIT_HMAC_KEY must be at least 16 bytes"),
    ("AGENTWATCH_AUDIT_ENC_KEY", "not base64!", "AGENTWATCH_AUDIT_ENC_KEY is not valid base64"),
    ("AGENTWATCH_AUDIT_ENC_KEY", base64.b64encode(b"x" * 16).decode(),
     "AGENTWATCH_AUDIT_ENC_KEY must decode to 32 bytes, got 16"),
    ("AGENTWATCH_AUDIT_MAX_TENANT_BYTES", "lots", "AGENTWATCH_AUDIT_MAX_TENANT_BYTES must be a whole number >= 1"),
    ("AGENTWATCH_REPLAY_MAX_INSTANCES", "-1", "AGENTWATCH_REPLAY_MAX_INSTANCES must be a whole number >= 0"),
    ("AGENTWATCH_REPLAY_CAPTURE_FLAGS", "capture_everything", "AGENTWATCH_REPLAY_CAPTURE_FLAGS: unknown capture flag"),
    ("AGENTWATCH_REPLAY_CAPTURE_FLAGS", "capture_llm_delta=maybe", "AGENTWATCH_REPLAY_CAPTURE_FLAGS: capture_llm_"),
    ("AGENTWATCH_REPLAY_MAX_TENANT_BYTES", "0", "AGENTWATCH_REPLAY_MAX_TENANT_BYTES must be a whole number >= 1"),
    ("AGENTWATCH_EVENTS_PARTITIONS", "six", "AGENTWATCH_EVENTS_PARTITIONS must be a whole number >= 1"),
])
def test_a_malformed_variable_is_a_clear_error_naming_it(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value).startswith(message)
    assert value not in str(caught.value) or name != "AGENTWATCH_AUDIT_HMAC_KEY"  # never echo a secret
    assert main(["replay", "list"]) == 2  # the CLI says so instead of a traceback
    assert capsys.readouterr().err.startswith(f"agentwatch: configuration: {message}")


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        AuditSettings(hmac_key=b"short")
    with pytest.raises(ConfigError, match="unknown capture flag"):
        ReplaySettings(capture_flags={"nope": True})


def test_flags_override_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTWATCH_AUDIT_DIR", str(tmp_path / "env-audit"))
    monkeypatch.setenv("AGENTWATCH_AUDIT_BUSINESS_TOOLS", "from_env")
    monkeypatch.setenv("AGENTWATCH_REPLAY_DIR", str(tmp_path / "env-replay"))
    monkeypatch.setenv("AGENTWATCH_REPLAY_MAX_INSTANCES", "7")
    monkeypatch.setenv("AGENTWATCH_REPLAY_CAPTURE_FLAGS", "capture_full_llm_io")
    s = Settings.from_env()
    parser = build_parser()
    env_only = ReplayOptions.resolve(parser.parse_args(["replay", "list"]), s)
    assert (env_only.root, env_only.max_instances, env_only.flags["capture_full_llm_io"]) == (
        tmp_path / "env-replay", 7, True)
    args = parser.parse_args(["replay", "rebuild", "--out", "x", "--dir", str(tmp_path / "flag"), "--max-instances",
                              "0", "--capture", "capture_llm_delta=false", "--max-tenant-bytes", "99"])
    replay = ReplayOptions.resolve(args, s)
    assert (replay.root, replay.max_instances, replay.max_tenant_bytes) == (tmp_path / "flag", None, 99)
    # --capture replaces the variable's flags: what it does not name keeps Agentao's default
    assert replay.flags["capture_llm_delta"] is False and replay.flags["capture_full_llm_io"] is False
    audit = AuditOptions.resolve(parser.parse_args(["audit", "verify"]), s)
    assert (audit.root, audit.policy.business_tools) == (tmp_path / "env-audit", ("from_env",))
    audit = AuditOptions.resolve(parser.parse_args(["audit", "verify", "--dir", str(tmp_path / "f"),
                                                    "--business-tools", "from_flag"]), s)
    assert (audit.root, audit.policy.business_tools) == (tmp_path / "f", ("from_flag",))


@pytest.mark.parametrize("argv", [
    ["consume"], ["simulate"], ["exporter"], ["topics", "list"], ["topics", "create"], ["worker"],
    ["audit", "run"], ["replay", "run"], ["replay", "rebuild", "--out", "x"], ["alerts", "deliver"],
    ["alerts", "tail"],
])
def test_every_kafka_command_takes_bootstrap_servers(argv):
    parser = build_parser()
    assert parser.parse_args([*argv, "--bootstrap-servers", "h:1"]).bootstrap_servers == "h:1"
    assert parser.parse_args(argv).bootstrap_servers is None  # unset: the environment's value is used


@pytest.mark.parametrize("argv", [
    ["consume"], ["audit", "run"], ["replay", "run"], ["replay", "rebuild", "--out", "x"], ["alerts", "deliver"],
    ["alerts", "tail"],
])
def test_the_old_bootstrap_flag_still_works_but_is_not_advertised(argv, capsys):
    parser = build_parser()
    assert parser.parse_args([*argv, "--bootstrap", "h:2"]).bootstrap_servers == "h:2"
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    out = capsys.readouterr().out
    assert "--bootstrap-servers" in out and "--bootstrap " not in out


def test_bad_numbers_in_flags_are_usage_errors(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["replay", "list", "--max-instances", "-1"])
    assert caught.value.code == 2
    assert "--max-instances: value must be a whole number >= 0, not '-1'" in capsys.readouterr().err
