"""The scanner against a corpus: catch rate per secret kind, false-positive rate on ordinary strings (issue 12).

The secrets are fake credentials in their documented shapes, planted in the contexts where they show up in agent
data (a shell command, a JSON tool result, a YAML or .env file, a log line); the ordinary strings are what agent
events carry all the time: ids, hashes, UUIDs, base64 blobs, timestamps, paths, URLs without credentials, prose.
The corpus is this file's own, so a 100 % catch rate here says the patterns do what they claim on these shapes,
not that they catch every secret in the wild (it is pattern matching, not DLP). Run with ``-s`` to see the table.
"""

from __future__ import annotations

import base64
import hashlib
import random
import string
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.redaction import PII_CLASSES, redact

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CANARIES: dict[str, list[str]] = {
    "openai": ["export OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "key sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv"],
    "aws_access_key_id": ["aws_access_key_id = AKIAIOSFODNN7EXAMPLE", '{"AccessKeyId": "ASIAY34FZKBOKMUTVV7A"}'],
    "aws_secret_key": [
        f"aws_secret_access_key = {AWS_SECRET}",                                  # ~/.aws/credentials
        f'{{"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": "{AWS_SECRET}"}}',  # aws sts JSON
        f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",                                    # env
        f"creds AKIAIOSFODNN7EXAMPLE {AWS_SECRET}",                               # bare, after its key id
        f"the aws secret is {AWS_SECRET} keep it safe",                           # prose context
    ],
    "github": ["git clone https://ghp_abcdefghijklmnopqrstuvwxyz0123456789AB@github.com/o/r",
               "GH_TOKEN github_pat_11ABCDEFG0abcdefghijklmnopqrstuvwxyz"],
    "jwt": ["cookie: session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0TH"],
    "pem": ["-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7abc\nabcDEF==\n-----END RSA PRIVATE KEY-----"],
    "bearer": ["curl -H 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345' https://api.example.com"],
    "url_password": ["DATABASE_URL=postgres://app:Tr0ub4dor%263@db.internal:5432/app",
                     "fetching https://deploy:s3cretPa55@registry.example.com/v2/",
                     "redis://:hunter2hunter2@cache:6379/0", "amqp://guest:guest123@rabbit/"],
    "json_password": ['{"user": "bob", "password": "correct horse battery"}', "{'passwd': 'hunter2'}",
                      '{"db": {"password": "p@55w0rd!"}}', r'{\"password\": \"escaped-in-json\"}'],
    "json_api_key": ['{"api_key": "abcd-1234-efgh-5678"}', '{"apiKey":"AbCdEf123456"}',
                     '{"client_secret": "GOCSPX-like-but-not-quite"}', '{"x-api-key": "k-9f8e7d6c5b4a"}'],
    "yaml_secret": ["db:\n  password: hunter2hunter2\n  host: db", "api_key: 'abcd1234efgh'",
                    "stripe:\n  secret: rk_live_short\n", "auth_token: Zm9vYmFyYmF6"],
    "env_secret": ["export DB_PASSWORD='p@ss word'", 'SMTP_PASSWORD="mailpass1"', "SECRET_KEY=django-insecure-xyz",
                   "SLACK_WEBHOOK_SECRET=abc123def456"],
    "email": ["contact alice.smith@example.com for access", "From: Bob <bob+test@mail.co.uk>"],
    "card_number": ["card 4111 1111 1111 1111 exp 12/29", "amex 378282246310005", "mc 5555-5555-5555-4444",
                    "visa 4012888888881881 cvv 123", "discover 6011111111111117"],
}


def _ordinary(n: int) -> list[str]:
    """``n`` ordinary strings of the kinds agent events carry, in their usual contexts (fixed seed)."""
    rng = random.Random(12)
    makers = [
        lambda: uuid.UUID(int=rng.getrandbits(128)).hex,
        lambda: f"session {uuid.UUID(int=rng.getrandbits(128))} resumed",
        lambda: hashlib.sha256(rng.randbytes(16)).hexdigest(),
        lambda: f"commit {hashlib.sha1(rng.randbytes(8)).hexdigest()} merged",
        lambda: f"md5 {hashlib.md5(rng.randbytes(8)).hexdigest()}",
        lambda: base64.b64encode(rng.randbytes(rng.choice((24, 30, 32, 48)))).decode(),
        lambda: f"blob {base64.b64encode(rng.randbytes(30)).decode()} uploaded",
        lambda: base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("="),
        lambda: f"event_time={1767225600000000 + rng.randrange(10**12)} seq={rng.randrange(10**6)}",
        lambda: f"order {rng.randrange(10**15, 10**16)} shipped",
        lambda: f"/home/user/project/src/{''.join(rng.choices(string.ascii_lowercase, k=8))}.py:{rng.randrange(999)}",
        lambda: f"GET https://api.example.com/v1/items/{rng.randrange(10**9)}?page=2 200",
        lambda: "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24)),
        lambda: f"toolu_{''.join(rng.choices(string.ascii_letters + string.digits, k=24))}",
        lambda: f"prompt_tokens={rng.randrange(10**5)} completion_tokens={rng.randrange(10**4)} max_tokens=4096",
        lambda: f"tokens used: {rng.randrange(10**6)}, cache_read_tokens: {rng.randrange(10**5)}",
        lambda: "the quick brown fox reads the api docs and the key points of the design",
        lambda: f"phone +1 415 555 {rng.randrange(1000, 9999)}, room {rng.randrange(100, 999)}",
        lambda: f"{{\"secret_name\": \"prod/db\", \"key_id\": \"{uuid.UUID(int=rng.getrandbits(128))}\"}}",
        lambda: f"password_reset_count: {rng.randrange(9)} and token_count {rng.randrange(999)}",
    ]
    return [makers[i % len(makers)]() for i in range(n)]


def test_catch_rate_per_kind() -> None:
    rates = {}
    missed = []
    for kind, samples in CANARIES.items():
        caught = 0
        for sample in samples:
            out = redact(sample)
            if "[REDACTED:" in out and out != sample:
                caught += 1
            else:
                missed.append((kind, sample))
        rates[kind] = caught / len(samples)
    print("\ncatch rate per kind: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    assert missed == []


def test_the_secret_itself_is_gone_not_just_some_of_the_text() -> None:
    """A redaction that leaves the secret's characters in place is no redaction: check the values themselves."""
    secrets = [AWS_SECRET, "Tr0ub4dor%263", "s3cretPa55", "hunter2hunter2", "correct horse battery", "p@55w0rd!",
               "abcd-1234-efgh-5678", "AbCdEf123456", "p@ss word", "mailpass1", "alice.smith@example.com",
               "4111 1111 1111 1111", "378282246310005", "5555-5555-5555-4444"]
    text = "\n".join(s for samples in CANARIES.values() for s in samples)
    out = redact(text)
    assert [s for s in secrets if s in out] == []


def test_false_positive_rate_on_ordinary_strings_is_at_most_1_in_240() -> None:
    corpus = _ordinary(2400)
    changed = [s for s in corpus if redact(s) != s]
    rate = len(changed) / len(corpus)
    print(f"\nfalse positives: {len(changed)} of {len(corpus)} ordinary strings ({rate:.4f}); e.g. {changed[:3]}")
    assert rate <= 1 / 240


def test_pii_classes_can_be_turned_off() -> None:
    text = "mail alice@example.com, card 4111111111111111"
    assert redact(text) == "mail [REDACTED:email], card [REDACTED:card_number]"
    assert redact(text, pii=()) == text
    assert redact(text, pii=("email",)) == "mail [REDACTED:email], card 4111111111111111"
    assert set(PII_CLASSES) == {"email", "card_number"}


def test_a_card_number_needs_the_luhn_check_and_a_network_prefix() -> None:
    assert redact("visa 4111111111111111") == "visa [REDACTED:card_number]"
    assert redact("visa 4111111111111112") == "visa 4111111111111112"  # Luhn fails
    assert redact("id 1767225600000000 ok") == "id 1767225600000000 ok"  # no card network starts with 1
    assert redact("mixed 4111 1111-1111 1111") == "mixed 4111 1111-1111 1111"  # one grouping style per number


def test_an_aws_secret_needs_context_and_entropy() -> None:
    assert redact(f"aws says {AWS_SECRET}") == "aws says [REDACTED:aws_secret_key]"
    assert redact(f"blob {AWS_SECRET} uploaded") == f"blob {AWS_SECRET} uploaded"  # no context
    low_entropy = "Aa1" * 13 + "A"
    assert redact(f"aws secret {low_entropy}") == f"aws secret {low_entropy}"


PIECES = st.sampled_from(list(string.printable) + ["sk-", "AKIA", "@", "://", "password", "=", ": ", '"', "4111",
                                                   "secret", "aws", "é", "[REDACTED:", "]", "1111 "])
TEXT = st.lists(PIECES, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=6).map("".join))
def test_redaction_is_idempotent(text: str) -> None:
    """The archive re-scans what a producer already scrubbed and adds the counts: a second pass must find nothing."""
    once = redact(text, {})
    again: dict[str, int] = {}
    assert redact(once, again) == once and again == {}


@settings(max_examples=300, deadline=None)
@given(TEXT, st.sampled_from([v for samples in CANARIES.values() for v in samples]), TEXT)
def test_a_canary_is_caught_whatever_surrounds_it(before: str, canary: str, after: str) -> None:
    """Text around a secret never makes the scanner miss it (it may widen what is redacted)."""
    hits: dict[str, int] = {}
    redact(" " + before + " \n" + canary + "\n " + after + " ", hits)
    assert sum(hits.values()) >= 1
