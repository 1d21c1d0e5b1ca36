"""``audit show`` opens the sealed evidence with the private key, and says why it cannot without it (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentwatch.cli import main
from producers.normalize import EventNormalizer
from producers.scrub import Scrubber
from producers.stamp import Stamper
from schemas.evidence import EvidenceSealer, generate_keypair, load_public_key
from sinks.audit_classify import AuditPolicy
from sinks.audit_log import AuditLog

HMAC = "k" * 32
AWS = "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """An audit root holding one business tool call whose error carried a secret, as a default producer sends it."""
    for name in ("AGENTWATCH_AUDIT_ENC_KEY", "AGENTWATCH_EVIDENCE_PRIVATE_KEYS", "AGENTWATCH_AUDIT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", HMAC)
    private, public = generate_keypair()
    (tmp_path / "evidence.key").write_bytes(private)
    other_private, _ = generate_keypair()
    (tmp_path / "other.key").write_bytes(other_private)
    normalizer = EventNormalizer(scrubber=Scrubber(evidence=EvidenceSealer(load_public_key(public))))
    event, _ = normalizer.normalize(Stamper().stamp(
        "tool_complete", {"tool_name": "crm_update", "status": "ok", "error_message": f"warn: {AWS}"},
        tenant="acme"))
    policy = AuditPolicy().with_business_tools(["crm_*"])
    root = tmp_path / "audit"
    with AuditLog(root, HMAC.encode()) as log:
        log.append(event, policy.classify(event))
    return root, tmp_path / "evidence.key", tmp_path / "other.key"


def test_the_audit_log_stores_the_envelope_as_it_came(audited) -> None:
    root, _key, _other = audited
    stored = b"".join(p.read_bytes() for p in root.rglob("seg-*.jsonl"))
    assert b"wJalr" not in stored and b'"evidence"' in stored


def test_show_with_the_private_key_displays_the_unscrubbed_evidence(audited, capsys) -> None:
    root, key, _other = audited
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(root), "--evidence-key", str(key)]) == 0
    out = capsys.readouterr().out
    assert f"evidence error_message: warn: {AWS}" in out
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(root), "--json",
                 "--evidence-key", str(key)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["evidence_opened"] == {"error_message": f"warn: {AWS}"}


def test_show_reads_the_keys_from_the_environment_and_accepts_retired_ones(audited, capsys, monkeypatch) -> None:
    root, key, other = audited
    monkeypatch.setenv("AGENTWATCH_EVIDENCE_PRIVATE_KEYS", f"{other},{key}")
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(root)]) == 0
    assert f"evidence error_message: warn: {AWS}" in capsys.readouterr().out


def test_show_without_the_key_says_why_it_cannot(audited, capsys) -> None:
    root, _key, other = audited
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "wJalr" not in out and "sealed evidence (key " in out
    assert "pass --evidence-key FILE or set AGENTWATCH_EVIDENCE_PRIVATE_KEYS to open it" in out
    assert main(["audit", "show", "--tenant", "acme", "--dir", str(root), "--evidence-key", str(other)]) == 0
    out = capsys.readouterr().out
    assert "wJalr" not in out and "sealed evidence cannot be opened: sealed to key " in out


def test_a_bad_key_file_is_a_one_line_error(audited, tmp_path) -> None:
    root, _key, _other = audited
    (tmp_path / "bad.key").write_text("nope")
    with pytest.raises(SystemExit, match="evidence key .*bad.key: not an unencrypted PEM private key"):
        main(["audit", "show", "--tenant", "acme", "--dir", str(root), "--evidence-key", str(tmp_path / "bad.key")])
