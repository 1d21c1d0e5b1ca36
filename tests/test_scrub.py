"""The producer's scrubbing policy (which AgentEvent fields are capped or dropped), against Agentao's sanitizer.

The scanner itself is the redaction contract's, tested in tests/test_redaction.py."""

from __future__ import annotations

import json

import pytest
from agentao.replay.sanitize import sanitize_event
from test_redaction import OTHER_SHAPES, PER_KIND, agentao_then_more

from producers.normalize import EventNormalizer
from producers.scrub import Scrubber
from producers.stamp import Stamper
from schemas.redaction import TRUNCATION_MARKER, redact


@pytest.mark.parametrize("text", [*PER_KIND.values(), *OTHER_SHAPES])
def test_the_scrubber_redacts_with_the_contracts_scanner_like_agentao(text: str) -> None:
    hits: dict[str, int] = {}
    assert (Scrubber().redact(text, hits), hits) == agentao_then_more(text)
    nested: dict[str, int] = {}
    assert Scrubber().scrub_value({"a": [text, (text,)]}, nested) == {"a": [redact(text), [redact(text)]]}
    assert nested == {k: 2 * n for k, n in hits.items()}


def _tool_result(content: str) -> dict:
    return {"tool": "run_shell_command", "call_id": "c1", "content": content,
            "content_hash": "ab" * 32, "original_chars": len(content), "status": "ok"}


def test_tool_result_content_is_capped_like_agentao_and_secrets_are_counted() -> None:
    content = "A" * 3000 + " password=hunter2hunter2 " + "B" * 9000
    payload = _tool_result(content)
    ours, hits = Scrubber().scrub_payload("tool_result", payload)
    theirs, stats = sanitize_event("tool_result", payload, capture_flags={})
    assert ours == theirs
    assert hits == stats.redaction_hits == {"kv_secret": 1}
    assert ours["content"].count(TRUNCATION_MARKER) == 1 and len(ours["content"]) < 8100
    assert ours["content_truncation"]["original_chars"] == len(content)
    assert payload["content"] == content  # the caller's dict is not touched


def test_capture_tool_result_full_lifts_the_cap_but_still_scans() -> None:
    content = "x" * 20_000 + " Bearer abcdefghijklmnopqrstuvwxyz"
    ours, hits = Scrubber({"capture_tool_result_full": True}).scrub_payload("tool_result", _tool_result(content))
    assert ours["content"].endswith("[REDACTED:bearer]") and len(ours["content"]) > 20_000
    assert "content_truncation" not in ours and hits == {"bearer": 1}


def test_tool_output_chunk_uses_flat_metadata() -> None:
    chunk = "line\n" * 2000
    payload = {"tool": "run_shell_command", "call_id": "c", "chunk": chunk}
    ours, _ = Scrubber().scrub_payload("tool_output", payload)
    theirs, _ = sanitize_event("tool_output_chunk", payload, capture_flags={})
    assert ours == theirs
    assert ours["truncated"] is True and ours["original_chars"] == len(chunk)


@pytest.mark.parametrize(("etype", "key", "cap"), [("ask_user_answered", "answer", 500),
                                                   ("memory_write", "value", 2000),
                                                   ("plugin_hook_fired", "output_preview", 500)])
def test_other_capped_fields(etype: str, key: str, cap: int) -> None:
    ours, _ = Scrubber().scrub_payload(etype, {key: "z" * (cap * 3)})
    assert len(ours[key]) == cap + len(TRUNCATION_MARKER)
    assert ours[f"{key}_truncation"]["omitted_chars"] == cap * 2


def test_nested_values_are_scanned_and_hashes_kept_verbatim() -> None:
    payload = {"added_messages": [{"role": "tool", "content": "export OPENAI_API_KEY=sk-abcdefghijklmnopqrstuv123"}],
               "meta": {"deep": ("AKIAIOSFODNN7EXAMPLE and more text",)}, "n": 3, "ok": True}
    ours, hits = Scrubber().scrub_payload("llm_call_delta", payload)
    assert ours["added_messages"][0]["content"] == "export OPENAI_API_KEY=[REDACTED:openai_api_key]"
    assert ours["meta"]["deep"] == ["[REDACTED:aws_access_key] and more text"]
    assert ours["redaction_hits"] == hits == {"openai_api_key": 1, "aws_access_key": 1}
    verbatim, _ = Scrubber().scrub_payload("tool_result", {"content_hash": "password=" + "a" * 20})
    assert verbatim["content_hash"] == "password=" + "a" * 20


def test_capture_flags_drop_llm_deltas_and_full_io() -> None:
    delta = {"attempt": 1, "added_messages": [{"role": "user", "content": "hi"}] * 3}
    assert Scrubber().scrub_payload("llm_call_delta", delta)[0]["added_messages"] == delta["added_messages"]
    dropped, _ = Scrubber({"capture_llm_delta": False}).scrub_payload("llm_call_delta", delta)
    assert dropped == {"attempt": 1, "added_messages_count": 3, "dropped_fields": ["added_messages"]}
    io = {"attempt": 1, "messages": [1, 2], "tools": [{"name": "t"}]}
    assert Scrubber().scrub_payload("llm_call_io", io)[0] == {
        "attempt": 1, "messages_count": 2, "tools_count": 1, "dropped_fields": ["messages", "tools"]}
    assert Scrubber({"capture_full_llm_io": True}).scrub_payload("llm_call_io", io)[0] == io


def test_normalizer_scrubs_payload_and_error_message_and_counts() -> None:
    stamper = Stamper()
    ev = stamper.stamp("llm_call_completed", {
        "status": "error", "error_message": "401 for key sk-abcdefghijklmnopqrstuvwxyz",
        "payload": {"raw": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123"}}, session_id="s")
    counters: dict[str, int] = {}
    clean, _ = EventNormalizer(scrubber=Scrubber()).normalize(ev, counters)
    assert clean is not None
    assert clean["error_message"] == "401 for key [REDACTED:openai_api_key]"
    payload = json.loads(clean["payload"])
    assert payload["raw"] == "Authorization: [REDACTED:bearer]" and payload["redaction_hits"] == {"bearer": 1}
    assert counters["redactions"] == 2
    unscrubbed, _ = EventNormalizer().normalize(ev, {})
    assert unscrubbed is not None and "sk-abcdefghijklmnopqrstuvwxyz" in unscrubbed["error_message"]


@pytest.mark.parametrize("before", ["\n", "\t", "\x1f", '"', "\\", "\x00"])
def test_a_card_right_after_a_json_escape_is_not_called_clean(before: str) -> None:
    """Found by the pre-check's property test: in a payload's JSON text a card after an escape (``\\n4111 ...``)
    has a letter or digit before it, so the card pattern's look-behind refused it and the payload was published
    unscrubbed, though the decoded value holds the card."""
    import json

    payload = {"output": f"line one{before}4111 1111 1111 1111"}
    text = json.dumps(payload)
    scrubber = Scrubber()
    assert not scrubber.payload_text_is_clean("tool_complete", text)
    hits: dict[str, int] = {}
    assert "4111" not in json.dumps(scrubber.scrub_value(payload, hits)) and hits == {"card_number": 1}


# -- the fast paths (clean-text cache, scalar-only payload texts, flat payload dicts) never let through what the
# -- full scrub would change ------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_redaction import _SECRET_PIECES, _texts  # noqa: E402

_ETYPES = st.sampled_from(["tool_complete", "tool_output", "tool_result", "llm_call_completed", "llm_call_delta",
                           "llm_call_io", "ask_user_answered", "memory_write", "plugin_hook_fired"])
_KEYS = st.one_of(st.sampled_from([*_SECRET_PIECES, "chunk", "content", "answer", "value", "output_preview",
                                   "added_messages", "messages", "tools", "redaction_hits", "a:", "[x]"]),
                  st.text(max_size=10))
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _texts,
                     st.text(min_size=400, max_size=9000, alphabet="ab c\n"))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_KEYS, inner, max_size=3)), max_leaves=6)


@settings(max_examples=500, deadline=None)
@given(_ETYPES, st.dictionaries(_KEYS, _SCALARS, max_size=6))
def test_a_flat_payload_called_clean_is_what_the_full_scrub_returns(etype: str, payload: dict) -> None:
    scrubber = Scrubber()
    for _ in range(2):  # the second round answers from the clean-text cache
        if scrubber.flat_payload_is_clean(etype, payload):
            scrubbed, hits = Scrubber().scrub_payload(etype, payload)
            assert scrubbed == payload and list(scrubbed) == list(payload) and not hits


@settings(max_examples=500, deadline=None)
@given(_ETYPES, st.dictionaries(_KEYS, _VALUES, max_size=5), st.booleans())
def test_a_payload_text_called_clean_is_what_the_full_scrub_returns(etype: str, payload: dict, compact: bool) -> None:
    """Including texts with no string value (the ':"' / '[' rule), spaced or compact, foreign or our own."""
    text = json.dumps(payload, separators=(",", ":") if compact else None, ensure_ascii=compact)
    if Scrubber().payload_text_is_clean(etype, text):
        scrubbed, hits = Scrubber().scrub_payload(etype, json.loads(text))
        assert scrubbed == json.loads(text) and not hits


@settings(max_examples=300, deadline=None)
@given(_texts)
def test_the_clean_text_cache_answers_what_the_scan_answers(text: str) -> None:
    scrubber = Scrubber()
    first_hits: dict[str, int] = {}
    second_hits: dict[str, int] = {}
    first = scrubber.redact(text, first_hits)
    assert scrubber.redact(text, second_hits) == first == redact(text) and first_hits == second_hits


def test_scalar_payload_texts_skip_the_secret_check_but_not_a_string_value() -> None:
    scrubber = Scrubber()
    assert scrubber.payload_text_is_clean("llm_call_completed", '{"api_key":1,"first_token_ms":210,"ok":true}')
    for text in ('{"api_key":"sk-proj-abcdefghijklmnopqrstuvwxyz0123"}',
                 '{"api_key": "sk-proj-abcdefghijklmnopqrstuvwxyz0123"}',
                 '{"k":["sk-proj-abcdefghijklmnopqrstuvwxyz0123"]}', '{"k":{"password":"hunter2hunter2"}}'):
        assert not scrubber.payload_text_is_clean("llm_call_completed", text)
    assert not scrubber.payload_text_is_clean("llm_call_io", '{"messages":3}')  # a dropped key


@pytest.mark.parametrize("payload", [
    {"attempt": 1, "first_token_ms": 210, "model_latency_ms": 840, "flag": True, "none": None},
    {"chunk": "plain text, nothing secret here", "n": 3},
    {"chunk": "key sk-proj-abcdefghijklmnopqrstuvwxyz012345", "n": 3},
    {"content": "x" * 9000},
    {"added_messages": 2, "messages": 3},
    {"nested": {"password": "hunter2hunter2"}},
])
def test_the_normalizer_fast_path_for_payload_dicts_equals_the_full_path(payload: dict, monkeypatch) -> None:
    for etype in ("tool_output", "tool_result", "llm_call_io", "llm_call_completed"):
        event = Stamper(tenant="t").stamp(etype, {"payload": dict(payload)}, session_id="s")
        fast, _ = EventNormalizer(scrubber=Scrubber()).normalize(event, {})
        with monkeypatch.context() as m:
            m.setattr(Scrubber, "flat_payload_is_clean", lambda self, et, p: False)
            full, _ = EventNormalizer(scrubber=Scrubber()).normalize(event, {})
        assert fast == full
