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
After Agentao's table, the scanner runs agentwatch's own additions (issue 12: Agentao's table misses them), each
replacing only the secret part so the text stays readable:

* ``url_credentials``: the password of ``scheme://user:password@host`` (the user name stays);
* ``aws_secret_key``: a 40-character AWS secret access key, recognised by *context and entropy* together: a
  base64-alphabet run of exactly 40 with mixed case and digits, at least 4.2 bits of entropy per character, and one
  of ``aws`` / ``secret`` / an access key id within the 100 characters before it (alone, any 40-character base64 run
  would qualify: a SHA-1 in base64, a random token);
* ``kv_secret``: the *value* of a key/password field in JSON (``"api_key": "..."``), YAML (``password: ...``) or
  env syntax (``export DB_PASSWORD='...'``), where the key name ends in password/passwd/pwd/passphrase/secret/
  api key/access key/private key/secret key/token/credential(s) (``aws_secret_access_key``, ``client_secret``,
  ``apiKey``); the JSON form keeps the key and redacts the value, the others are replaced whole as Agentao does;
  values that are numbers, booleans, null or an existing redaction are left alone (``"max_tokens": "4096"``);
* PII classes, configurable (:data:`PII_CLASSES`, all on by default): ``email``, and ``card_number``: 13-19 digits
  (optionally grouped by spaces or dashes) with a card network's prefix (Visa, Mastercard, Amex, Discover, JCB,
  Diners, UnionPay) that pass the Luhn check, and, written without groups, near a word such as "card" or "visa"
  (a random 16-digit id passes Luhn 1 time in 10); a microsecond timestamp or an order id does not qualify.

:func:`redact_agentao` is Agentao's table alone (what ``tests/test_redaction.py`` compares with the installed
Agentao); :func:`redact` is Agentao's pass followed by :func:`redact_more`, so on every text it gives exactly what
Agentao gives, plus the additions. It is best-effort pattern matching, not DLP. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any

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


#: The PII classes the scanner knows; :func:`redact` takes the ones to apply (all by default).
PII_CLASSES: tuple[str, ...] = ("email", "card_number")

#: agentwatch's additions to Agentao's table, in the order they run (see the module docstring).
EXTRA_KINDS: tuple[str, ...] = ("url_credentials", "kv_secret", "aws_secret_key")

_URL_CREDENTIALS = re.compile(r"(?i:\b([a-z][a-z0-9+.\-]{1,20}://)([^\s/:@'\"<>]{0,128}):([^\s/@'\"<>]{1,256})@)")

_KEY_WORDS = (r"(?:password|passwd|passphrase|pwd|secret|secret[_-]?key|api[_-]?key|access[_-]?key"
              r"|private[_-]?key|token|credentials?)")
#: ``"key": "value"`` (JSON, either quote) or ``key: value`` / ``key=value`` (YAML, env, query strings); the key may
#: carry a prefix (``DB_``, ``aws_secret_access_``) but must end with the key word.
_KV_FIELD = re.compile(
    r"(?i:(?<![A-Za-z0-9])([A-Za-z0-9_.\-]{0,40}?" + _KEY_WORDS + r")"
    r"(?:(\\?[\"'])\s*:\s*(\\?[\"'])((?:(?!\3).){1,2048}?)\3"   # JSON: quoted key, quoted value
    r"|[\"']?(\s*[:=]\s*)(?:\"([^\"\n]{1,2048})\"|'([^'\n]{1,2048})'|([^\s,;'\"}&\]]{1,2048}))))"
)
_NOT_SECRET_VALUE = re.compile(r"(?i:-?\d+(?:\.\d+)?|true|false|null|none|\*+|.*\[REDACTED:.*)")

_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_CONTEXT = re.compile(r"(?i:aws|secret|akia|asia|redacted:aws_access_key)")
_AWS_MIN_ENTROPY = 4.2

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*"
                    r"\.[A-Za-z]{2,24}\b")
# a card network's prefix, then digits in one of the usual groupings: plain, or groups split by one space or dash
_CARD = re.compile(r"(?<![\w\-])(?:4|5[1-5]|2[2-7]|3[47]|3[0689]|35|6[0245])(?:\d|[ \-](?=\d)){11,22}\d(?![\w\-])")
# what every card match contains, found ~4x faster than by _CARD itself (whose look-behind runs at every position)
_CARD_HINT = re.compile(r"[2-6]\d{3}[ \-]?\d{4}[ \-]?\d{4}")
# a JSON string escape (``\\n``, ``\\"``, ``\\u001f``, ...): see may_hold_secret_json
_JSON_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|.)")
# an ungrouped run of digits is a card number only near one of these words (a 16-digit order id passes Luhn 1 in 10)
_CARD_CONTEXT = re.compile(r"(?i:card|credit|debit|visa|master|amex|american express|discover|jcb|diners|unionpay"
                           r"|\bpan\b|\bcc\b|payment|billing)")

#: Lower-case substrings at least one of which every match of :func:`redact_more` contains (cards aside: they are
#: found by one regex search, :data:`_CARD_HINT`).
EXTRA_ANCHORS: tuple[str, ...] = ("://", "@", "passw", "pwd", "secret", "api", "key", "token", "credential", "aws",
                                  "akia", "asia")


_ALL_ANCHORS = tuple(dict.fromkeys((*SECRET_ANCHORS, *EXTRA_ANCHORS)))  # each substring tested once


def redaction(kind: str) -> str:
    """How a redacted secret of ``kind`` is written in its place."""
    return f"[REDACTED:{kind}]"


def _any_anchor(anchors: tuple[str, ...]) -> Callable[[str], bool]:
    """``lambda low: any(a in low for a in anchors)`` unrolled into one ``or`` chain of ``in`` tests.

    Why: on the short payload texts most events carry, the Python loop around ~30 substring tests costs more than
    the tests (a clean 64-character text: 1.8 µs looped, 1.25 µs unrolled). One alternation regex is no faster:
    ``re`` has no multi-literal search and stops at every candidate first letter. Built from the tuple, so it tests
    exactly the same anchors (``tests/test_redaction.py`` checks it against the loop)."""
    for a in anchors:
        if not (a.isascii() and a == a.lower() and a.isprintable()):
            raise ValueError(f"anchor {a!r} must be printable lower-case ASCII")
    namespace: dict[str, Any] = {}
    exec("def any_anchor(low):\n    return " + " or ".join(f"{a!r} in low" for a in anchors), namespace)  # noqa: S102
    return namespace["any_anchor"]


_any_of_all = _any_anchor(_ALL_ANCHORS)


def may_hold_secret(text: str) -> bool:
    """False only when no secret pattern can match ``text`` (see :data:`SECRET_ANCHORS`, :data:`EXTRA_ANCHORS`)."""
    if len(text) < MIN_SCAN_LEN:
        return False
    if _any_of_all(text.lower()):
        return True
    return _CARD_HINT.search(text) is not None and _CARD.search(text) is not None


_ANCHORS_BUT_TOKEN = tuple(a for a in _ALL_ANCHORS if a != "token")
_any_but_token = _any_anchor(_ANCHORS_BUT_TOKEN)


def may_hold_secret_json(text: str) -> bool:
    """:func:`may_hold_secret` for a payload's JSON text, not fooled by key names such as ``prompt_tokens`` or
    ``first_token_ms`` (a ``token`` followed by ``s`` or ``_`` cannot start a ``kv_secret`` or OAuth match)."""
    if len(text) < MIN_SCAN_LEN:
        return False
    low = text.lower()
    if _any_but_token(low):
        return True
    i = low.find("token")
    while i != -1:
        if low[i + 5:i + 6] not in ("s", "_"):
            return True
        i = low.find("token", i + 5)
    # A card right after a JSON escape ("\\n4111 1111 ...", "\\u001f4111 ...") has a letter or digit before it in
    # the JSON text, which _CARD's look-behind refuses, but a control character before it in the decoded value,
    # which the full scan matches: test the text with every escape made a space (rare: only after the hint).
    return _CARD_HINT.search(text) is not None and _CARD.search(_JSON_ESCAPE.sub(" ", text)) is not None


def redact_agentao(text: str, hits: dict[str, int] | None = None) -> str:
    """Agentao 0.5.17's scanner exactly: its table, its order, its replacements."""
    if len(text) < MIN_SCAN_LEN:
        return text
    low = text.lower()
    if not any(anchor in low for anchor in SECRET_ANCHORS):
        return text
    for kind, pattern in _COMPILED:
        if pattern.search(text) is None:
            continue
        text, n = pattern.subn(redaction(kind), text)
        if hits is not None and n:
            hits[kind] = hits.get(kind, 0) + n
    return text


def _count(hits: dict[str, int] | None, kind: str) -> None:
    if hits is not None:
        hits[kind] = hits.get(kind, 0) + 1


def _url_credentials(hits: dict[str, int] | None) -> Callable[[re.Match[str]], str]:
    def sub(m: re.Match[str]) -> str:
        if m.group(3).startswith("[REDACTED:"):
            return m.group(0)
        _count(hits, "url_credentials")
        return f"{m.group(1)}{m.group(2)}:{redaction('url_credentials')}@"
    return sub


def _kv_field(hits: dict[str, int] | None) -> Callable[[re.Match[str]], str]:
    def sub(m: re.Match[str]) -> str:
        if m.group(2) is not None:  # JSON: the key and the quotes stay
            value = m.group(4)
            if len(value) < 3 or _NOT_SECRET_VALUE.fullmatch(value):
                return m.group(0)
            _count(hits, "kv_secret")
            base, whole = m.start(0), m.group(0)
            return whole[: m.start(4) - base] + redaction("kv_secret") + whole[m.end(4) - base:]
        value = next(v for v in (m.group(6), m.group(7), m.group(8)) if v is not None)
        if len(value) < 3 or _NOT_SECRET_VALUE.fullmatch(value):
            return m.group(0)
        _count(hits, "kv_secret")
        return redaction("kv_secret")  # key, separator and value, as Agentao writes its kv_secret
    return sub


def _entropy(text: str) -> float:
    n = len(text)
    counts: dict[str, int] = {}
    for c in text:
        counts[c] = counts.get(c, 0) + 1
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def _aws_secret(text: str, hits: dict[str, int] | None) -> Callable[[re.Match[str]], str]:
    def sub(m: re.Match[str]) -> str:
        key = m.group(0)
        if not (any(c.isdigit() for c in key) and any(c.islower() for c in key) and any(c.isupper() for c in key)):
            return key
        if _AWS_CONTEXT.search(text, max(0, m.start() - 100), m.start()) is None or _entropy(key) < _AWS_MIN_ENTROPY:
            return key
        _count(hits, "aws_secret_key")
        return redaction("aws_secret_key")
    return sub


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(text: str, hits: dict[str, int] | None) -> Callable[[re.Match[str]], str]:
    def sub(m: re.Match[str]) -> str:
        raw = m.group(0)
        digits = raw.replace(" ", "").replace("-", "")
        seps = {c for c in raw if not c.isdigit()}
        if not 13 <= len(digits) <= 19 or len(seps) > 1 or not _luhn_ok(digits):
            return raw
        if not seps and _CARD_CONTEXT.search(text, max(0, m.start() - 40), m.start()) is None:
            return raw
        _count(hits, "card_number")
        return redaction("card_number")
    return sub


def redact_more(text: str, hits: dict[str, int] | None = None,
                pii: Collection[str] = PII_CLASSES) -> str:
    """agentwatch's additions to Agentao's scanner (see the module docstring), on a text Agentao's pass has seen."""
    if len(text) < MIN_SCAN_LEN:
        return text
    low = text.lower()
    if "://" in low:
        text = _URL_CREDENTIALS.sub(_url_credentials(hits), text)
    if any(w in low for w in ("passw", "pwd", "secret", "api", "key", "token", "credential")):
        text = _KV_FIELD.sub(_kv_field(hits), text)
    if any(w in low for w in ("aws", "secret", "akia", "asia")):
        if _AWS_SECRET.search(text) is not None:
            text = _AWS_SECRET.sub(_aws_secret(text, hits), text)
    if "email" in pii and "@" in text:
        text = _EMAIL.sub(lambda m: (_count(hits, "email"), redaction("email"))[1], text)
    if "card_number" in pii and _CARD_HINT.search(text) is not None and _CARD.search(text) is not None:
        text = _CARD.sub(_card(text, hits), text)
    return text


def redact(text: str, hits: dict[str, int] | None = None, pii: Collection[str] = PII_CLASSES) -> str:
    """``text`` with every secret replaced by ``[REDACTED:<kind>]``; counts per kind are added to ``hits``.

    Agentao's table first (:func:`redact_agentao`), then :func:`redact_more` with the PII classes ``pii``. A clean
    text is returned as the same object, without a regex pass when the anchors rule every kind out.
    """
    if not may_hold_secret(text):
        return text
    return redact_more(redact_agentao(text, hits), hits, pii)


def truncate_head_tail(text: str, max_chars: int, head_ratio: float) -> tuple[str, int]:
    """Agentao's head/tail cut: ``(text, omitted_chars)``, the marker between head and tail."""
    total = len(text)
    if total <= max_chars:
        return text, 0
    head_len = max(1, int(max_chars * head_ratio))
    tail_len = max(1, max_chars - head_len)
    return text[:head_len] + TRUNCATION_MARKER + text[-tail_len:], max(0, total - head_len - tail_len)
