"""Sealed audit evidence: the unscrubbed values of an audited event, readable only by the audit key's holder.

Why: producers scrub events before they leave the process (the bus is shared and retained), but the audit log is
evidence and must keep what really happened, e.g. the AWS key a business tool printed. So for the event types the
audit log keeps (:data:`EVIDENCE_EVENT_TYPES`), when scrubbing changed a field, the producer puts the field's raw
value in a sealed envelope (the AgentEvent's ``evidence`` field, schema v2) and the scrubbed value stays in clear
beside it. It is the idea of Confluent's client-side field-level encryption without a registry: the producer holds
only the audit *public* key; brokers, the archive, the exporter, logs and the audit sink itself see ciphertext;
``agentwatch audit show`` with the private key opens it.

Envelope (compact JSON, sorted keys; the ``evidence`` field's text)::

    {"alg": "X25519-HKDF-SHA256-A256GCM", "ct": b64, "epk": b64, "kid": "<16 hex>", "nonce": b64, "v": 1}

* ``kid``: the first 16 hex digits of SHA-256 of the recipient's raw X25519 public key; it names which private
  key opens the envelope, so keys can rotate (publish a new public key to producers; readers keep the old private
  keys and pick by ``kid``).
* The data key is fresh per envelope: an ephemeral X25519 key pair (``epk`` is its public half) agrees a secret
  with the recipient's public key, and HKDF-SHA256 (salt ``epk || recipient public key``, info
  ``agentwatch-evidence/v1``) derives the AES-256-GCM key from it (ECIES). Only the recipient's private key can
  re-derive it; the producer forgets the ephemeral private key at once.
* ``nonce``: 96 random bits; ``ct``: AES-256-GCM of ``canonical({"fields": {name: raw value}})`` (``payload``'s raw
  value is the payload's JSON text before scrubbing), with the *record identity* as associated data:
  ``canonical({"event_id", "seq", "session_id", "tenant", "type"})``. An envelope copied onto another event does
  not open.

Pure apart from the ``cryptography`` calls: no I/O. Key files are PEM (``openssl genpkey -algorithm X25519``);
see docs/evidence-keys.md for key handling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
ALG = "X25519-HKDF-SHA256-A256GCM"
FIELD = "evidence"
#: The AgentEvent types the audit log keeps (sinks.audit_classify's triggers): only these carry evidence.
EVIDENCE_EVENT_TYPES: frozenset[str] = frozenset(
    {"session_start", "confirm_resolved", "permission_decision", "tool_complete", "memory_cleared"})
IDENTITY_FIELDS: tuple[str, ...] = ("event_id", "seq", "session_id", "tenant", "type")
_INFO = b"agentwatch-evidence/v1"
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class EvidenceError(ValueError):
    """An envelope that cannot be opened; the message says why (no key for its ``kid``, tampered, malformed)."""


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: X25519PublicKey) -> str:
    """The public name of a key pair: 16 hex digits of SHA-256 of the raw public key."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def identity(event: Mapping[str, Any]) -> bytes:
    """The associated data that binds an envelope to its record."""
    return _ENCODER.encode({k: event.get(k) for k in IDENTITY_FIELDS}).encode("ascii")


def _derive(shared: bytes, epk: bytes, recipient: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_INFO).derive(shared)
    return AESGCM(key)


def load_public_key(pem: bytes) -> X25519PublicKey:
    """A PEM X25519 public key (``openssl pkey -in evidence.key -pubout``); ValueError saying what is wrong."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, X25519PublicKey):
        raise ValueError(f"expected an X25519 public key, got {type(key).__name__}")
    return key


def load_private_key(pem: bytes) -> X25519PrivateKey:
    """A PEM X25519 private key (``openssl genpkey -algorithm X25519``), unencrypted."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(f"expected an X25519 private key, got {type(key).__name__}")
    return key


def generate_keypair() -> tuple[bytes, bytes]:
    """``(private PEM, public PEM)`` of a new X25519 key pair (same as the openssl commands in the docs)."""
    private = X25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


class EvidenceSealer:
    """The producer's side: seals raw values to the audit public key. Holds no secret; thread-safe."""

    def __init__(self, public_key: X25519PublicKey) -> None:
        self._public = public_key
        self._public_raw = _raw(public_key)
        self.kid = key_id(public_key)

    def seal(self, fields: Mapping[str, Any], event: Mapping[str, Any]) -> str:
        """The envelope text holding ``fields`` (raw values by field name), bound to ``event``'s identity."""
        ephemeral = X25519PrivateKey.generate()
        epk = _raw(ephemeral.public_key())
        aead = _derive(ephemeral.exchange(self._public), epk, self._public_raw)
        nonce = os.urandom(12)
        ct = aead.encrypt(nonce, _ENCODER.encode({"fields": dict(fields)}).encode("ascii"), identity(event))
        return _ENCODER.encode({"alg": ALG, "ct": base64.b64encode(ct).decode(), "epk": base64.b64encode(epk).decode(),
                                "kid": self.kid, "nonce": base64.b64encode(nonce).decode(), "v": VERSION})


def envelope_kid(text: str) -> str | None:
    """The ``kid`` an envelope names, or None when it is not an envelope."""
    try:
        env = json.loads(text)
    except (ValueError, TypeError):
        return None
    kid = env.get("kid") if isinstance(env, dict) else None
    return kid if isinstance(kid, str) else None


class EvidenceOpener:
    """The reader's side: opens envelopes with any of several private keys (rotation), chosen by ``kid``."""

    def __init__(self, private_keys: Iterable[X25519PrivateKey]) -> None:
        self._keys = {key_id(k.public_key()): k for k in private_keys}

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def open(self, text: str, event: Mapping[str, Any]) -> dict[str, Any]:
        """The raw fields sealed in ``text`` for ``event``; EvidenceError saying why not."""
        try:
            env = json.loads(text)
        except (ValueError, TypeError):
            raise EvidenceError("not an evidence envelope (not JSON)") from None
        if not isinstance(env, dict) or env.get("v") != VERSION or env.get("alg") != ALG:
            raise EvidenceError(f"unsupported evidence envelope (v={env.get('v') if isinstance(env, dict) else None})")
        kid = env.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            have = ", ".join(self._keys) or "none"
            raise EvidenceError(f"sealed to key {kid}; the keys given are: {have}")
        try:
            epk = base64.b64decode(env["epk"], validate=True)
            nonce = base64.b64decode(env["nonce"], validate=True)
            ct = base64.b64decode(env["ct"], validate=True)
            aead = _derive(key.exchange(X25519PublicKey.from_public_bytes(epk)), epk, _raw(key.public_key()))
            plain = aead.decrypt(nonce, ct, identity(event))
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
            raise EvidenceError("the envelope does not authenticate (modified, or moved to another event)") from None
        fields = json.loads(plain).get("fields")
        if not isinstance(fields, dict):
            raise EvidenceError("the envelope holds no fields")
        return fields
