"""The redaction contract: which secret kinds data may not carry and how a redaction is written.

Part of the contract next to the Avro schemas because both sides of the topic apply it: producers may scrub raw
Agentao data before it leaves the process (:mod:`producers.scrub`) and the replay archive sanitises every row
before it reaches disk (:mod:`sinks.redact`), and the two must agree to the character (the archive recognises a
producer's truncation and adds to its counts instead of redoing them). Agentao 0.5.17 defines all of it:

* the secret scanner (``agentao.security.secret_scan``): one regex per kind, most specific first, so a JWT or a
  key block is not partly eaten by a looser pattern; a match becomes ``[REDACTED:<kind>]``; strings shorter than
  13 characters cannot hold any kind and are returned untouched;
* the capped fields' limits and Agentao's head/tail cut with its marker (``agentao.replay.sanitize``);
* the capture flags' defaults, which lift caps or drop whole fields.

Which fields are capped, and what a capture flag drops, depends on where the data is (an AgentEvent type for the
producer, a replay kind for the archive): each layer keeps its own table built from these limits.
It is best-effort pattern matching, not DLP. Pure: no I/O.
"""

from __future__ import annotations

import re

MIN_SCAN_LEN = 13
TRUNCATION_MARKER = "\n\n[… truncated …]\n\n"

TOOL_OUTPUT_CHUNK_MAX_CHARS = 4_000
TOOL_RESULT_MAX_CHARS = 8_000
ASK_USER_ANSWER_MAX_CHARS = 500
MEMORY_WRITE_MAX_CHARS = 2_000
PLUGIN_HOOK_OUTPUT_MAX_CHARS = 500

DEFAULT_CAPTURE_FLAGS: dict[str, bool] = {
    "capture_llm_delta": True,
    "capture_full_llm_io": False,
    "capture_tool_result_full": False,
    "capture_plugin_hook_output_full": False,
}

_PRIVATE_KEY = (
    r"-----BEGIN [A-Z ]+KEY(?: BLOCK)?-----(?:(?!-----BEGIN )[\s\S])+?-----END [A-Z ]+KEY(?: BLOCK)?-----"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[ \t]*(?:\r?\n|\\n)"
    r"(?:[A-Za-z][A-Za-z0-9-]*:[^\r\n\\]*(?:\r?\n|\\n))*"
    r"(?:\s|\\n)*[A-Za-z0-9+/=]+(?:(?:\r?\n|\\n)[A-Za-z0-9+/=]+)*"
)

#: (kind, pattern), most specific first, as Agentao orders them; flags are scoped ``(?i:...)`` so the patterns
#: can also be OR-ed into one expression.
SECRET_PATTERNS: tuple[tuple[str, str], ...] = (
    ("private_key_block", _PRIVATE_KEY),
    ("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_api_key", r"\bsk-(?!ant-)(?:proj-)?[A-Za-z0-9_\-]{20,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    ("google_oauth_secret", r"\bGOCSPX-[A-Za-z0-9_\-]{20,}"),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    ("github_token", r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    ("slack_token", r"\bxox[baprs]-[0-9A-Za-z\-]{10,}\b"),
    ("slack_token", r"\bxapp-\d-[A-Za-z0-9\-]{10,}"),
    ("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}"),
    ("stripe_key", r"\bwhsec_[A-Za-z0-9]{20,}"),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\b"),
    ("bearer", r"(?i:\bbearer\s+[A-Za-z0-9_\-\.=+/]{20,})"),
    ("bearer", r"(?i:\bauthorization\s*[:=]\s*(?:bearer\s+)?[A-Za-z0-9_\-\.=+/]{20,})"),
    ("oauth_token",
     r"(?i:(?:\b(?:access_token|refresh_token|id_token|code_verifier)[\"']?\s*[:=]\s*[\"']?"
     r"|(?<=[?&])code=|\"code\"\s*:\s*\")[^\s\"'&,}]{8,})"),
    ("kv_secret",
     r"(?i:(?<![A-Za-z0-9_])(?:api[_-]?key|token|secret|password|passwd)\s*[:=]\s*[\"']?[^\s\"']{8,}[\"']?)"),
)

SECRET_KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for kind, _ in SECRET_PATTERNS))

_COMPILED: tuple[tuple[str, re.Pattern[str]], ...] = tuple((k, re.compile(p)) for k, p in SECRET_PATTERNS)

#: Lower-case substrings at least one of which every match of every pattern contains (checked pattern by pattern:
#: ``sk-ant-``/``sk-`` keys, ``AIza``, ``gh?_``, ``eyJ``, ``(sk|rk)_live_``, the kv/OAuth/bearer words, ...). A text
#: holding none of them is clean; ``in`` on a lower-cased copy costs a few per cent of the patterns themselves
#: (Python's ``re`` has no fast path for a wide alternation). All are ASCII letters, digits, ``-`` and ``_``, which
#: JSON escaping leaves alone, so the check also holds on a payload's JSON text.
SECRET_ANCHORS: tuple[str, ...] = (
    "-----begin", "sk-", "aiza", "gocspx-", "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "xox", "xapp-", "_live_", "_test_", "whsec_", "eyj", "bearer", "authorization", "token", "code", "api",
    "secret", "passw",
)


def redaction(kind: str) -> str:
    """How a redacted secret of ``kind`` is written in its place."""
    return f"[REDACTED:{kind}]"


def may_hold_secret(text: str) -> bool:
    """False only when no secret pattern can match ``text`` (see :data:`SECRET_ANCHORS`)."""
    if len(text) < MIN_SCAN_LEN:
        return False
    low = text.lower()
    for anchor in SECRET_ANCHORS:
        if anchor in low:
            return True
    return False


def redact(text: str, hits: dict[str, int] | None = None) -> str:
    """``text`` with every secret replaced by ``[REDACTED:<kind>]``; counts per kind are added to ``hits``.

    A clean text is returned as the same object, without a regex pass when the anchors rule every kind out.
    """
    if not may_hold_secret(text):
        return text
    for kind, pattern in _COMPILED:
        if pattern.search(text) is None:
            continue
        text, n = pattern.subn(redaction(kind), text)
        if hits is not None and n:
            hits[kind] = hits.get(kind, 0) + n
    return text


def truncate_head_tail(text: str, max_chars: int, head_ratio: float) -> tuple[str, int]:
    """Agentao's head/tail cut: ``(text, omitted_chars)``, the marker between head and tail."""
    total = len(text)
    if total <= max_chars:
        return text, 0
    head_len = max(1, int(max_chars * head_ratio))
    tail_len = max(1, max_chars - head_len)
    return text[:head_len] + TRUNCATION_MARKER + text[-tail_len:], max(0, total - head_len - tail_len)
