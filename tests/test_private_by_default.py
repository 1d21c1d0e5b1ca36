"""Private by default at the source (issue 12 items 1 and 2): the publisher scrubs and applies the capture flags
unless told ``publish_raw=True`` (logged once), and an audited event's raw values travel only sealed."""

from __future__ import annotations

import json
import logging

import pytest

from producers import publisher as publisher_module
from producers.normalize import EventNormalizer
from producers.publisher import EventPublisher
from producers.scrub import SCANNED_FIELDS, Scrubber
from producers.stamp import Stamper
from schemas.codec import AvroCodec
from schemas.evidence import EvidenceOpener, EvidenceSealer, generate_keypair, load_private_key, load_public_key

UNREACHABLE = "127.0.0.1:9"
AWS = "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"


@pytest.fixture(scope="module")
def keys() -> tuple[EvidenceSealer, EvidenceOpener]:
    private, public = generate_keypair()
    return EvidenceSealer(load_public_key(public)), EvidenceOpener([load_private_key(private)])


def test_a_publisher_scrubs_unless_told_to_publish_raw(caplog, monkeypatch) -> None:
    monkeypatch.setattr(publisher_module, "_raw_warned", False)
    scrubbing = EventPublisher(UNREACHABLE, "t")
    try:
        assert isinstance(scrubbing._normalizer.scrubber, Scrubber)
    finally:
        scrubbing.close(0.1)
    with caplog.at_level(logging.WARNING, logger="producers.publisher"):
        raw = [EventPublisher(UNREACHABLE, "t", publish_raw=True) for _ in range(2)]
    try:
        assert all(p._normalizer.scrubber is None for p in raw)
        warnings = [r for r in caplog.records if "publishing RAW events" in r.getMessage()]
        assert len(warnings) == 1  # once per process, however many publishers
    finally:
        for p in raw:
            p.close(0.1)
    with pytest.raises(ValueError, match="contradict"):
        EventPublisher(UNREACHABLE, "t", publish_raw=True, scrubber=Scrubber())


def _default() -> EventNormalizer:
    return EventNormalizer(scrubber=Scrubber())


def test_the_default_policy_applies_agentaos_capture_flags_at_the_source() -> None:
    io = Stamper().stamp("llm_call_io", {"payload": {"messages": [{"role": "user", "content": "hi " + OPENAI}],
                                                     "tools": [{"name": "t"}]}})
    result = Stamper().stamp("tool_result", {"payload": {"content": "x" * 20_000 + " " + OPENAI}})
    clean_io, _ = _default().normalize(io)
    clean_result, _ = _default().normalize(result)
    assert json.loads(clean_io["payload"]) == {"messages_count": 1, "tools_count": 1,
                                               "dropped_fields": ["messages", "tools"]}
    content = json.loads(clean_result["payload"])["content"]
    assert len(content) < 8_100 and OPENAI not in content and "[REDACTED:openai_api_key]" in content
    flagged, _ = EventNormalizer(scrubber=Scrubber({"capture_full_llm_io": True})).normalize(io)
    assert json.loads(flagged["payload"])["messages"][0]["content"] == "hi [REDACTED:openai_api_key]"  # still scanned


def test_typed_free_text_fields_are_scanned_and_identities_are_not() -> None:
    fields = {name: f"{name} {OPENAI}" for name in SCANNED_FIELDS}
    ev = Stamper().stamp("tool_complete", {**fields, "call_id": "call-1"}, user_id="alice@example.com")
    counters: dict[str, int] = {}
    clean, _ = _default().normalize(ev, counters)
    for name in SCANNED_FIELDS:
        assert clean[name] == f"{name} [REDACTED:openai_api_key]", name
    assert clean["user_id"] == "alice@example.com"  # an identity: kept as the host chose it (documented)
    assert counters["redactions"] == len(SCANNED_FIELDS)


def test_a_clean_payload_text_is_kept_byte_for_byte() -> None:
    text = '{"tool":"read_file","args":{"path":"/tmp/a.txt"},"prompt_tokens":12}'
    ev = Stamper().stamp("tool_start", {"payload": text})
    clean, _ = _default().normalize(ev)
    assert clean["payload"] == text


def test_an_audited_event_carries_its_raw_values_sealed(keys) -> None:
    sealer, opener = keys
    normalizer = EventNormalizer(scrubber=Scrubber(evidence=sealer))
    payload = {"tool": "crm_update", "result": f"failed: {AWS}"}
    ev = Stamper().stamp("tool_complete", {"tool_name": "crm_update", "status": "ok",
                                           "error_message": f"boto3: {AWS}", "payload": payload})
    clean, _ = normalizer.normalize(ev)
    assert "wJalr" not in clean["error_message"] and "wJalr" not in clean["payload"]
    assert "wJalr" not in clean["evidence"]
    raw = opener.open(clean["evidence"], clean)
    assert raw["error_message"] == f"boto3: {AWS}"
    assert json.loads(raw["payload"]) == payload
    assert set(raw) == {"error_message", "payload"}  # only what scrubbing changed
    # through the Avro codec (schema v2) and back, the envelope is intact and still opens
    codec = AvroCodec()
    (decoded,) = codec.decode(codec.encode_event(clean)).events
    assert opener.open(decoded["evidence"], decoded) == raw


def test_no_evidence_when_nothing_was_scrubbed_or_the_type_is_not_audited(keys) -> None:
    sealer, _opener = keys
    normalizer = EventNormalizer(scrubber=Scrubber(evidence=sealer))
    clean, _ = normalizer.normalize(Stamper().stamp("tool_complete", {"tool_name": "crm_update",
                                                                      "payload": {"ok": True}}))
    assert clean.get("evidence") is None
    clean, _ = normalizer.normalize(Stamper().stamp("tool_result", {"error_message": f"x {AWS}"}))
    assert clean.get("evidence") is None and "wJalr" not in clean["error_message"]
    forged, _ = normalizer.normalize(Stamper().stamp("tool_complete", {"evidence": "forged"}))
    assert forged.get("evidence") is None  # only the scrubber's own seal is kept


def test_without_an_evidence_key_the_raw_values_are_simply_gone() -> None:
    clean, _ = _default().normalize(Stamper().stamp("tool_complete", {"error_message": f"boto3: {AWS}"}))
    assert clean.get("evidence") is None and "wJalr" not in clean["error_message"]


# -- configuration --------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("AGENTWATCH_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_default_configuration_scrubs_with_every_pii_class(clean_env) -> None:
    from agentwatch.config import Settings

    settings = Settings.from_env()
    assert not settings.producer.publish_raw
    options = settings.producer.publisher_options()
    scrubber = options["scrubber"]
    assert isinstance(scrubber, Scrubber) and scrubber.pii_classes == {"email", "card_number"}
    assert scrubber.evidence is None and not scrubber.capture_flags["capture_full_llm_io"]


def test_the_environment_configures_the_producer(clean_env, tmp_path) -> None:
    from agentwatch.config import Settings

    private, public = generate_keypair()
    (tmp_path / "evidence.pub").write_bytes(public)
    clean_env.setenv("AGENTWATCH_CAPTURE_FLAGS", "capture_full_llm_io")
    clean_env.setenv("AGENTWATCH_PII_CLASSES", "none")
    clean_env.setenv("AGENTWATCH_EVIDENCE_PUBLIC_KEY", str(tmp_path / "evidence.pub"))
    clean_env.setenv("AGENTWATCH_EVIDENCE_PRIVATE_KEYS", f"{tmp_path / 'a.key'}, {tmp_path / 'b.key'}")
    settings = Settings.from_env()
    scrubber = settings.producer.publisher_options()["scrubber"]
    assert scrubber.capture_flags["capture_full_llm_io"] and scrubber.pii_classes == frozenset()
    assert scrubber.evidence.kid == EvidenceSealer(load_public_key(public)).kid
    assert settings.evidence.private_keys == (tmp_path / "a.key", tmp_path / "b.key")
    clean_env.setenv("AGENTWATCH_PUBLISH_RAW", "true")
    assert Settings.from_env().producer.publisher_options() == {"publish_raw": True}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("AGENTWATCH_PUBLISH_RAW", "maybe", "AGENTWATCH_PUBLISH_RAW must be true or false"),
    ("AGENTWATCH_CAPTURE_FLAGS", "capture_everything", "unknown capture flag"),
    ("AGENTWATCH_PII_CLASSES", "email,ssn", "unknown ssn"),
])
def test_a_bad_producer_setting_is_a_clear_error(clean_env, name, value, message) -> None:
    from agentwatch.config import ConfigError, Settings

    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env()


def test_a_bad_public_key_file_is_a_clear_error(clean_env, tmp_path) -> None:
    from agentwatch.config import ConfigError, Settings

    (tmp_path / "bad.pub").write_text("not a key")
    clean_env.setenv("AGENTWATCH_EVIDENCE_PUBLIC_KEY", str(tmp_path / "bad.pub"))
    with pytest.raises(ConfigError, match="AGENTWATCH_EVIDENCE_PUBLIC_KEY .*not a PEM public key"):
        Settings.from_env().producer.publisher_options()


def test_a_cut_by_agentaos_caps_is_counted_as_truncated() -> None:
    counters: dict[str, int] = {}
    _default().normalize(Stamper().stamp("tool_result", {"payload": {"content": "z" * 20_000}}), counters)
    _default().normalize(Stamper().stamp("tool_output", {"payload": {"chunk": "z" * 5_000}}), counters)
    _default().normalize(Stamper().stamp("tool_output", {"payload": {"chunk": "short"}}), counters)
    assert counters.get("truncated") == 2


def test_evidence_covers_every_event_type_the_audit_log_keeps() -> None:
    """EVIDENCE_EVENT_TYPES must hold every type the audit classifier can keep, or evidence would be lost."""
    from schemas import contract
    from schemas.evidence import EVIDENCE_EVENT_TYPES
    from sinks.audit_classify import AuditPolicy

    policy = AuditPolicy().with_business_tools(["*"])
    kept = {t for t in contract.event_types()
            if policy.classify({"type": t, "confirm_outcome": "allow", "permission_decision": "deny", "status": "ok",
                                "tool_name": "crm_update", "tenant": "acme"}) is not None}
    assert kept and kept <= EVIDENCE_EVENT_TYPES


SECRET_VALUES = ["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                 "Tr0ub4dorPass", "alice.smith@example.com", "4111 1111 1111 1111"]
PLANTED = ["key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
           "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "the aws secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "postgres://u:Tr0ub4dorPass@db/x",
           "mail alice.smith@example.com now", "card 4111 1111 1111 1111 exp", '{"password": "Tr0ub4dorPass"}']


def _plant(depth: int):
    from hypothesis import strategies as st

    leaf = st.builds(lambda a, planted, b: f"{a} {planted} {b}", st.text(max_size=10), st.sampled_from(PLANTED),
                     st.text(max_size=10))
    return st.recursive(leaf | st.integers() | st.text(max_size=20),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=3),
                        max_leaves=depth)


def test_no_planted_secret_survives_normalization_wherever_it_sits() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    normalizer = _default()

    @settings(max_examples=150, deadline=None)
    @given(st.dictionaries(st.sampled_from(["a", "b", "content", "args", "_x"]), _plant(8), min_size=1, max_size=4),
           st.sampled_from(["tool_result", "tool_complete", "llm_call_io", "custom_thing", "error"]))
    def check(payload, etype) -> None:
        clean, _ = normalizer.normalize(Stamper().stamp(etype, {"payload": payload}))
        assert clean is not None
        text = clean["payload"] or ""
        for value in SECRET_VALUES:
            assert value not in text, (value, text[:300])

    check()


def test_a_sealing_failure_keeps_the_scrubbed_event_and_counts_the_loss() -> None:
    class Broken:
        def seal(self, fields, event):
            raise RuntimeError("no entropy")

    counters: dict[str, int] = {}
    clean, _ = EventNormalizer(scrubber=Scrubber(evidence=Broken())).normalize(
        Stamper().stamp("tool_complete", {"error_message": f"x {AWS}"}), counters)
    assert clean is not None and "wJalr" not in clean["error_message"] and clean.get("evidence") is None
    assert counters["evidence_failed"] == 1
