"""Sealed audit evidence (schemas/evidence.py): only the private key's holder opens it, only on its own record."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import contract
from schemas.evidence import (
    FIELD,
    EvidenceError,
    EvidenceOpener,
    EvidenceSealer,
    envelope_kid,
    generate_keypair,
    load_private_key,
    load_public_key,
)

EVENT = {"event_id": "e" * 32, "tenant": "acme", "session_id": "s-1", "seq": 7, "type": "tool_complete"}
RAW = {"error_message": "boto: AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "payload": '{"a":1}'}


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return generate_keypair()


def _pair(keys: tuple[bytes, bytes]) -> tuple[EvidenceSealer, EvidenceOpener]:
    private, public = keys
    return EvidenceSealer(load_public_key(public)), EvidenceOpener([load_private_key(private)])


def test_the_holder_of_the_private_key_opens_what_the_public_key_sealed(keys) -> None:
    sealer, opener = _pair(keys)
    text = sealer.seal(RAW, EVENT)
    assert "wJalr" not in text and "AWS_SECRET" not in text  # nothing of the raw value shows
    env = json.loads(text)
    assert set(env) == {"alg", "ct", "epk", "kid", "nonce", "v"} and env["kid"] == sealer.kid == envelope_kid(text)
    assert opener.open(text, EVENT) == RAW


def test_an_envelope_moved_to_another_record_does_not_open(keys) -> None:
    sealer, opener = _pair(keys)
    text = sealer.seal(RAW, EVENT)
    for change in ({"seq": 8}, {"tenant": "other"}, {"event_id": "f" * 32}, {"type": "session_start"},
                   {"session_id": "s-2"}):
        with pytest.raises(EvidenceError, match="does not authenticate"):
            opener.open(text, {**EVENT, **change})


def test_a_modified_envelope_does_not_open(keys) -> None:
    sealer, opener = _pair(keys)
    env = json.loads(sealer.seal(RAW, EVENT))
    ct = bytearray(env["ct"].encode())
    ct[5] = ord("A") if ct[5] != ord("A") else ord("B")
    with pytest.raises(EvidenceError, match="does not authenticate"):
        opener.open(json.dumps({**env, "ct": ct.decode()}), EVENT)
    with pytest.raises(EvidenceError, match="not JSON"):
        opener.open("not json", EVENT)


def test_rotation_several_private_keys_each_opens_its_own(keys) -> None:
    old_private, old_public = keys
    new_private, new_public = generate_keypair()
    sealed_old = EvidenceSealer(load_public_key(old_public)).seal(RAW, EVENT)
    sealed_new = EvidenceSealer(load_public_key(new_public)).seal({"payload": "{}"}, EVENT)
    both = EvidenceOpener([load_private_key(old_private), load_private_key(new_private)])
    assert both.open(sealed_old, EVENT) == RAW and both.open(sealed_new, EVENT) == {"payload": "{}"}
    only_new = EvidenceOpener([load_private_key(new_private)])
    with pytest.raises(EvidenceError, match=f"sealed to key {envelope_kid(sealed_old)}; the keys given are: "):
        only_new.open(sealed_old, EVENT)


def test_openssl_keys_work(tmp_path: Path) -> None:
    """The key handling documented in docs/evidence-keys.md: keys made with openssl load as they are."""
    key, pub = tmp_path / "evidence.key", tmp_path / "evidence.pub"
    try:
        subprocess.run(["openssl", "genpkey", "-algorithm", "X25519", "-out", str(key)], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl with X25519 not available")
    text = EvidenceSealer(load_public_key(pub.read_bytes())).seal(RAW, EVENT)
    assert EvidenceOpener([load_private_key(key.read_bytes())]).open(text, EVENT) == RAW


def test_wrong_key_files_are_clear_errors(keys) -> None:
    private, public = keys
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(b"garbage")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_private_key(public)


def test_the_schema_carries_the_envelope_as_an_optional_string() -> None:
    field = next(f for f in contract.current().event_json["fields"] if f["name"] == FIELD)
    assert field["type"] == ["null", "string"] and field["default"] is None
    assert contract.current().version >= 2  # v2 introduced it


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["error_message", "payload", "model", "tool_name"]),
                       st.text(max_size=300), max_size=4))
def test_any_fields_round_trip(fields: dict[str, str]) -> None:
    private, public = generate_keypair()
    text = EvidenceSealer(load_public_key(public)).seal(fields, EVENT)
    assert EvidenceOpener([load_private_key(private)]).open(text, EVENT) == fields
