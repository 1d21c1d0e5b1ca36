"""The archive's sanitiser against Agentao's own (``agentao.security.secret_scan``, ``agentao.replay.sanitize``)."""

from __future__ import annotations

import json
import random
import string

import pytest
from agentao.replay.sanitize import sanitize_event
from agentao.security.secret_scan import SECRET_PATTERNS as AGENTAO_PATTERNS
from agentao.security.secret_scan import scan_and_redact

from producers import scrub as producer_scrub
from producers.scrub import Scrubber
from sinks.archive import map_event
from sinks.archive_store import ArchiveWriter
from sinks.redact import (
    DEFAULT_CAPTURE_FLAGS,
    SECRET_KINDS,
    SECRET_PATTERNS,
    capture_flags,
    may_hold_secret,
    sanitize,
    sanitize_encoded,
    scan,
)

SAMPLES = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc==\n-----END RSA PRIVATE KEY-----",
    '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\nabcd\\n"}',
    "key sk-ant-api03-" + "a" * 30, "OPENAI=sk-proj-" + "B" * 24, "sk-" + "c" * 25,
    "google AIza" + "d" * 35 + " end", "GOCSPX-" + "e" * 24, "AKIAABCDEFGHIJKLMNOP and ASIA1234567890ABCDEF",
    "ghp_" + "f" * 36, "github_pat_" + "g" * 40, "xoxb-1234567890-abcdef", "xapp-1-" + "h" * 12,
    "sk_live_" + "i" * 24, "rk_test_" + "j" * 24, "whsec_" + "k" * 24,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Authorization: Bearer " + "l" * 30, "curl -H 'authorization=" + "m" * 25 + "'", "bearer " + "n" * 20,
    '{"access_token": "' + "o" * 20 + '"}', "https://x/cb?state=1&code=" + "p" * 12, '"code": "' + "q" * 10 + '"',
    "api_key=supersecret123", "PASSWORD: 'correct horse'", "token=abcdefgh", "xapi_key=not-a-match-here",
    "nothing to see here at all", "short", "first_token_ms and code review, no secret", "ghp_short",
]


def test_pattern_table_is_agentaos():
    theirs = [(kind, p.pattern.replace("(?i)", "")) for kind, p in AGENTAO_PATTERNS]
    ours = [(kind, p.replace("(?i:", "(", 1) if p.startswith("(?i:") else p) for kind, p in SECRET_PATTERNS]
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    assert set(SECRET_KINDS) == {k for k, _ in AGENTAO_PATTERNS}
    assert SECRET_PATTERNS == producer_scrub.SECRET_PATTERNS  # the duplicate the lead should share


@pytest.mark.parametrize("text", SAMPLES)
def test_scan_redacts_like_agentao(text):
    hits: dict[str, int] = {}
    assert (scan(text, hits), hits) == scan_and_redact(text)


def test_the_anchor_precheck_never_hides_a_secret():
    """Random texts stitched from pattern fragments: wherever Agentao's scanner fires, the pre-check says yes."""
    rng = random.Random(5)
    pieces = ["sk-", "ant-", "proj-", "AIza", "GOCSPX-", "AKIA", "ASIA", "ghp_", "gho_", "github_pat_", "xoxb-",
              "xapp-1-", "sk_live_", "rk_test_", "whsec_", "eyJ", ".", "Bearer ", "AUTHORIZATION", ": ", "=",
              "access_token", "refresh_token", "?code=", "&code=", '"code": "', "api-key", "ApiKey", "TOKEN",
              "secret", "Passwd", "-----BEGIN RSA PRIVATE KEY-----\n", "-----END RSA PRIVATE KEY-----", "\n", "\\n",
              '"', "'", " ", "\t"]
    fired = 0
    for _ in range(3000):
        parts = []
        for _ in range(rng.randrange(1, 6)):
            parts.append(rng.choice(pieces) if rng.random() < 0.6 else
                         "".join(rng.choices(string.ascii_letters + string.digits + "_-+/=", k=rng.randrange(1, 40))))
        text = "".join(parts)
        _, hits = scan_and_redact(text)
        if hits:
            fired += 1
            assert may_hold_secret(text), text
            assert may_hold_secret(json.dumps({"k": [text]})), text  # also on a payload's JSON text
    assert fired > 300


CAPPED = [
    ("tool_result", {"tool": "t", "call_id": "c", "content": "a" * 3000 + " sk-" + "b" * 30 + " " + "c" * 9000,
                     "content_hash": "sk-" + "d" * 30, "original_chars": 12036, "status": "ok"}),
    ("tool_output_chunk", {"tool": "t", "call_id": "c", "chunk": "e" * 6000 + " api_key=verysecret"}),
    ("ask_user_answered", {"question": "pw?", "answer": "f" * 700}),
    ("memory_write", {"version_before": 1, "value": "g" * 2100, "nested": {"k": ["token: abcdefghij"]}}),
    ("plugin_hook_fired", {"hook_name": "Stop", "output_preview": "h" * 600}),
    ("llm_call_delta", {"added_messages": [{"role": "user", "content": "Authorization: Bearer " + "i" * 30}],
                        "weird": float("nan")}),
]


@pytest.mark.parametrize("flags", [DEFAULT_CAPTURE_FLAGS,
                                   {**DEFAULT_CAPTURE_FLAGS, "capture_tool_result_full": True,
                                    "capture_plugin_hook_output_full": True}])
@pytest.mark.parametrize(("kind", "payload"), CAPPED)
def test_sanitize_matches_agentaos_sanitize_event(kind, payload, flags):
    theirs, _stats = sanitize_event(kind, payload, capture_flags=dict(flags))
    ours = sanitize(kind, payload, flags)
    if kind == "llm_call_delta":  # NaN: Agentao keeps it (then writes invalid JSON); we write a string
        theirs["weird"] = "nan"
    assert ours == theirs
    clean, text = sanitize_encoded(kind, payload, flags)
    assert clean == ours and json.loads(text) == ours


def test_fast_path_gives_the_same_text_as_the_full_sanitiser():
    for payload in ({"chunk": "plain text"}, {"a": [1, 2.5, None, True], "b": {"c": "ünï"}}, {"x": "token here"}):
        clean, text = sanitize_encoded("assistant_text_chunk", payload, DEFAULT_CAPTURE_FLAGS)
        assert text == json.dumps(sanitize("assistant_text_chunk", payload, DEFAULT_CAPTURE_FLAGS),
                                  ensure_ascii=False)


def test_data_scrubbed_by_a_producer_is_not_cut_or_counted_twice():
    """A producer running producers.scrub already redacted and truncated: the archive keeps its result."""
    secret = "sk-" + "Z" * 30
    content = "a" * 3000 + f" {secret} " + "b" * 9000
    data = {"tool": "read_file", "call_id": "c1", "content": content, "content_hash": "f" * 64,
            "original_chars": len(content), "saved_to_disk": False, "disk_path": None, "status": "ok",
            "duration_ms": 3, "error": None}
    scrubbed, hits = Scrubber().scrub_payload("tool_result", dict(data))
    assert hits == {"openai_api_key": 1}
    event = {"event_id": "e" * 32, "event_time": 1, "producer_time": 1, "tenant": "t", "session_id": "s", "seq": 2,
             "type": "tool_result", "payload": json.dumps(scrubbed)}
    (row,) = map_event(event, DEFAULT_CAPTURE_FLAGS)
    ours = sanitize(row.kind, row.payload, DEFAULT_CAPTURE_FLAGS)
    theirs, _ = sanitize_event("tool_result", data)
    assert ours["content"] == theirs["content"]
    assert ours["content_truncation"] == theirs["content_truncation"]
    assert ours["redaction_hits"] == theirs["redaction_hits"] == {"openai_api_key": 1}


def test_footer_totals_are_the_sum_of_the_rows(tmp_path):
    secret_events = []
    for seq, (etype, payload) in enumerate([
            ("session_start", {}), ("turn_begin", {"user_message": "use api_key=abcdefghijk"}),
            ("tool_output", {"tool": "sh", "call_id": "c", "chunk": "x" * 4500}),
            ("llm_text", {"chunk": "AKIAABCDEFGHIJKLMNOP"}), ("turn_end", {"final_text": "password=hunter22"}),
            ("session_end", {})], 1):
        secret_events.append({"event_id": f"{seq:032x}", "event_time": seq, "producer_time": seq, "tenant": "t",
                              "session_id": "s", "seq": seq, "type": etype, "turn_id": "u" if 1 < seq < 6 else None,
                              "payload": json.dumps(payload)})
    with ArchiveWriter(tmp_path) as w:
        for e in secret_events:
            w.add(e)
    rows = [json.loads(line) for line in next(tmp_path.rglob("*.jsonl")).read_text().splitlines()]
    footer = rows[-1]["payload"]
    assert footer["redaction_hits"] == {"aws_access_key": 1, "kv_secret": 2}
    assert footer["truncated_field_hits"] == {"chunk": 1}
    summed: dict[str, int] = {}
    for r in rows[:-1]:
        for k, n in r["payload"].get("redaction_hits", {}).items():
            summed[k] = summed.get(k, 0) + n
    assert summed == footer["redaction_hits"]


def test_unknown_capture_flags_are_refused():
    with pytest.raises(ValueError, match="unknown capture flag"):
        capture_flags({"capture_everything": True})
    with pytest.raises(ValueError, match="true or false"):
        capture_flags({"capture_llm_delta": "yes"})
