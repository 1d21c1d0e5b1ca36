"""The redaction contract (``schemas.redaction``) against Agentao's own scanner, limits and head/tail cut.

``redact_agentao`` must equal Agentao's scanner on every text; ``redact`` must equal Agentao's scanner followed by
agentwatch's additions (``redact_more``), so it never redacts less than Agentao (the additions' catch and false
positive rates are in tests/test_secret_corpus.py).

Producers (``producers.scrub``) and the archive (``sinks.redact``) both use this one scanner; what each adds on top
is tested in tests/test_scrub.py and tests/test_archive_redact.py.
"""

from __future__ import annotations

import json
import random
import re
import string

import pytest
from agentao.replay import sanitize as agentao_sanitize
from agentao.replay.config import CAPTURE_FLAG_DEFAULTS
from agentao.security.secret_scan import SECRET_PATTERNS as AGENTAO_PATTERNS
from agentao.security.secret_scan import scan_and_redact

from schemas import redaction
from schemas.redaction import (
    DEFAULT_CAPTURE_FLAGS,
    MIN_SCAN_LEN,
    SECRET_KINDS,
    SECRET_PATTERNS,
    TRUNCATION_MARKER,
    may_hold_secret,
    redact,
    redact_agentao,
    redact_more,
    truncate_head_tail,
)


def agentao_then_more(text: str) -> tuple[str, dict[str, int]]:
    """What ``redact`` must give: Agentao's own scanner, then agentwatch's additions on its output."""
    out, hits = scan_and_redact(text)
    hits = dict(hits)
    return redact_more(out, hits), hits

# One sample per kind (fake credentials in the documented shapes).
PER_KIND: dict[str, str] = {
    "private_key_block": "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabcDEF==\n"
                         "-----END RSA PRIVATE KEY-----\nafter",
    "anthropic_api_key": "ANTHROPIC_KEY sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123",
    "openai_api_key": "using sk-proj-abcdefghijklmnopqrstuvwxyz012345 now",
    "google_api_key": "maps AIzaSyA1234567890abcdefghijklmnopqrstuv ok",
    "google_oauth_secret": "client GOCSPX-abcdefghijklmnopqrstuvwx done",
    "aws_access_key": "aws AKIAIOSFODNN7EXAMPLE here",
    "github_token": "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789AB end",
    "slack_token": "slack xoxb-1234567890-abcdefghij end",
    "stripe_key": "stripe sk_live_abcdefghijklmnopqrstuvwx end",
    "jwt": "tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop end",
    "bearer": "curl -H 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345'",
    "oauth_token": '{"refresh_token": "r1234567890abcdef", "x": 1}',
    "kv_secret": "db password=hunter2hunter2 port=5432",
}

OTHER_SHAPES = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc==\n-----END RSA PRIVATE KEY-----",
    '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\nabcd\\n"}',
    "-----BEGIN PRIVATE KEY-----\\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASC\\nAT8wggE7AgEAAkEA\\n",
    "key sk-ant-api03-" + "a" * 30, "OPENAI=sk-proj-" + "B" * 24, "sk-" + "c" * 25,
    "sk-ant-short-but-long-enough-xxxxxxxxxxxxxxxxx then sk-abcdefghijklmnopqrstuvwxyz",
    "google AIza" + "d" * 35 + " end", "GOCSPX-" + "e" * 24, "AKIAABCDEFGHIJKLMNOP and ASIA1234567890ABCDEF",
    "ghp_" + "f" * 36, "github_pat_" + "g" * 40, "xoxb-1234567890-abcdef", "xapp-1-" + "h" * 12,
    "github_pat_11ABCDEFG0abcdefghijklmnopqrstuvwxyz and xapp-1-A0123456789-abcdefghijk",
    "sk_live_" + "i" * 24, "rk_test_" + "j" * 24, "whsec_" + "k" * 24,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Authorization: Bearer " + "l" * 30, "curl -H 'authorization=" + "m" * 25 + "'", "bearer " + "n" * 20,
    '{"access_token": "' + "o" * 20 + '"}', "https://x/cb?state=1&code=" + "p" * 12, '"code": "' + "q" * 10 + '"',
    "https://example.test/cb?state=1&code=abcdefgh12345 and whsec_abcdefghijklmnopqrstuvwx",
    "api_key=supersecret123", "PASSWORD: 'correct horse'", "token=abcdefgh", "xapi_key=not-a-match-here",
    "api_key: 'abcd1234efgh' token=zzzzzzzzzz secret : qqqqqqqqqq",
    "nothing to see here at all", "nothing secret in this fairly long sentence", "short",
    "first_token_ms and code review, no secret", "ghp_short",
]


def test_pattern_table_is_agentaos():
    """Same kinds in the same order, case-insensitive where Agentao's are (the texts may differ in capture groups
    and in the flag being scoped, ``(?i:...)``, so that the table can be OR-ed into one expression)."""
    theirs = [(kind, bool(p.flags & re.IGNORECASE)) for kind, p in AGENTAO_PATTERNS]
    ours = [(kind, p.startswith("(?i:")) for kind, p in SECRET_PATTERNS]
    assert ours == theirs
    assert SECRET_KINDS == tuple(dict.fromkeys(k for k, _ in AGENTAO_PATTERNS)) and set(PER_KIND) == set(SECRET_KINDS)


@pytest.mark.parametrize("kind", sorted(PER_KIND))
def test_each_kind_is_redacted_exactly_like_agentao(kind):
    hits: dict[str, int] = {}
    ours = redact_agentao(PER_KIND[kind], hits)
    assert (ours, hits) == scan_and_redact(PER_KIND[kind])
    assert (redact(PER_KIND[kind], more := {}), more) == agentao_then_more(PER_KIND[kind])
    assert f"[REDACTED:{kind}]" in ours and redaction.redaction(kind) == f"[REDACTED:{kind}]"


@pytest.mark.parametrize("text", OTHER_SHAPES)
def test_other_shapes_match_agentao(text):
    hits: dict[str, int] = {}
    assert (redact_agentao(text, hits), hits) == scan_and_redact(text)
    assert (redact(text, more := {}), more) == agentao_then_more(text)


def test_counts_add_up_and_are_optional():
    hits = {"kv_secret": 2}
    assert redact("password=aaaaaaaaaa and token=bbbbbbbbbb", hits) == "[REDACTED:kv_secret] and [REDACTED:kv_secret]"
    assert hits == {"kv_secret": 4}
    assert redact("sk-" + "c" * 25) == "[REDACTED:openai_api_key]"  # without a hits dict


def test_strings_shorter_than_13_are_returned_untouched():
    assert MIN_SCAN_LEN == 13
    assert redact("token=abcdefgh") == "[REDACTED:kv_secret]"  # 14 characters
    short = "token=abcdef"  # 12: no kind can match this short a text
    assert redact(short) is short and not may_hold_secret(short)
    assert redact_agentao(short) is short
    clean = "nothing to see here at all"
    assert redact(clean) is clean  # a clean text is the same object, no copy


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
        expected = scan_and_redact(text)
        assert (redact_agentao(text, hits := {}), hits) == expected, text
        assert (redact(text, more := {}), more) == agentao_then_more(text), text
        if more:
            fired += 1
            assert may_hold_secret(text), text
            assert may_hold_secret(json.dumps({"k": [text]})), text  # also on a payload's JSON text
    assert fired > 300


@pytest.mark.parametrize(("size", "max_chars", "ratio"), [(10, 10, 0.5), (11, 10, 0.5), (12_036, 8_000, 0.2),
                                                          (6_000, 4_000, 0.5), (700, 500, 0.0)])
def test_head_tail_cut_is_agentaos(size, max_chars, ratio):
    text = "".join(string.ascii_letters[i % 52] for i in range(size))
    ours, omitted = truncate_head_tail(text, max_chars, ratio)
    theirs = agentao_sanitize._truncate_head_tail(text, max_chars, ratio)
    if size <= max_chars:
        assert (ours, omitted) == (text, 0)
    else:
        assert (ours, omitted) == (theirs[0], theirs[2])
        assert ours.count(TRUNCATION_MARKER) == 1 and len(ours) == max_chars + len(TRUNCATION_MARKER)


def test_limits_and_capture_defaults_are_agentaos():
    for name in ("TOOL_OUTPUT_CHUNK_MAX_CHARS", "TOOL_RESULT_MAX_CHARS", "ASK_USER_ANSWER_MAX_CHARS",
                 "MEMORY_WRITE_MAX_CHARS", "PLUGIN_HOOK_OUTPUT_MAX_CHARS"):
        assert getattr(redaction, name) == getattr(agentao_sanitize, name), name
    assert DEFAULT_CAPTURE_FLAGS == CAPTURE_FLAG_DEFAULTS


# -- the pre-check (may_hold_secret*) never lets through what the full scan would redact ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from producers.scrub import Scrubber  # noqa: E402

# Pieces that come close to (or are) what a pattern matches, so generated texts hit the patterns' edges often.
_SECRET_PIECES = [
    "sk-", "sk-ant-", "sk-proj-", "AKIA", "ASIA", "AIza", "GOCSPX-", "ghp_", "github_pat_", "xoxb-", "xapp-1-",
    "sk_live_", "rk_test_", "whsec_", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.", "Bearer ", "Authorization: ",
    "-----BEGIN RSA PRIVATE KEY-----\n", "-----END RSA PRIVATE KEY-----", "https://user:", "@example.com", "@",
    "password", "Passwd=", "pwd: ", "api_key", "apiKey", "secret", "client_secret", "token", "tokens", "_token",
    "access_token=", "credentials", "aws", "\"api_key\": \"", "4111 1111 1111 1111", "4111111111111111",
    "5500-0000-0000-0004", "card ", "378282246310005", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "code=",
    "prompt_tokens", "first_token_ms",
]
_texts = st.lists(st.one_of(st.sampled_from(_SECRET_PIECES), st.text(min_size=0, max_size=12),
                            st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/+=",
                                    min_size=0, max_size=45)),
                  min_size=0, max_size=8).map("".join)


@settings(max_examples=600, deadline=None)
@given(_texts)
def test_unrolled_anchor_checks_equal_the_anchor_loops(text: str) -> None:
    low = text.lower()
    assert redaction._any_of_all(low) == any(a in low for a in redaction._ALL_ANCHORS)
    assert redaction._any_but_token(low) == any(a in low for a in redaction._ANCHORS_BUT_TOKEN)


@settings(max_examples=600, deadline=None)
@given(_texts)
def test_what_the_pre_check_calls_clean_the_full_scan_leaves_unchanged(text: str) -> None:
    if not may_hold_secret(text):
        hits: dict[str, int] = {}
        assert redaction.redact_agentao(text) == text
        assert redaction.redact_more(text, hits) == text and not hits
    payload = json.dumps({"k": text, "n": 1})
    if not redaction.may_hold_secret_json(payload):
        hits = {}
        assert Scrubber().scrub_value(json.loads(payload), hits) == json.loads(payload) and not hits
