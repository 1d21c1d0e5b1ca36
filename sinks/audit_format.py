"""The audit log's on-disk format: names, canonical JSON, the hash chain, signed checkpoints, record encryption.

Pure (no file I/O): the writer (:mod:`sinks.audit_log`), the verifier (:mod:`sinks.audit_verify`) and ``audit show``
all go through these functions, so there is one definition of every byte.

Layout under the audit root::

    <root>/<tenant dir>/tenant.json                 {"tenant": "<raw tenant id>"}
    <root>/<tenant dir>/<retention class>/seg-000000000001.jsonl   records, one canonical JSON line each
    <root>/<tenant dir>/<retention class>/checkpoints.jsonl        signed checkpoints and prune entries

A *stream* is one (tenant, retention class): it owns a hash chain, a gap-free ``seq`` (1-based) and its segments,
each segment holding a contiguous seq range and named after its first seq. One chain per retention class (rather than
one per tenant) is what lets retention delete whole segments and bridge the hole with a single hash, and lets
``verify`` stream a segment at a time.

Record (keys sorted, ``separators=(",", ":")``, ASCII): ``v``, ``kind`` (``event`` | ``segment_pruned``),
``tenant``, ``stream``, ``seq``, ``event_id``, ``class``, ``retention``, ``expires_at`` (µs, null = never),
``recorded_at`` (µs), then either ``event`` (the AgentEvent's fields, never scrubbed) or ``enc`` (AES-256-GCM of the
canonical event: ``alg``, ``kid``, ``nonce``, ``ct``) or, for ``segment_pruned``, ``pruned``; ``src`` (where the event
was read: ``topic``, ``partition``, ``offset``; absent when the writer was not given one); ``prev_hash``;
``hash = SHA-256(bytes(prev_hash) || canonical(record without "hash"))``. The first record's ``prev_hash`` is the
stream's genesis hash, which binds the chain to its tenant and retention class.

Encryption: the chain hash covers the *ciphertext* (the stored line), so anyone can verify integrity without the
decryption key, and a changed ciphertext fails both the hash and the GCM tag. The AAD binds each ciphertext to its
tenant, stream, seq and event id, so ciphertexts cannot be swapped between records. Nonces are 96 random bits per
record; NIST SP 800-38D bounds random nonces at 2^32 records per key. Records name their key (``kid``); reading a log
written under several keys (rotation) needs a reader holding them all, which is not built yet.

Checkpoint (CloudTrail digest model): ``v``, ``kind`` (``checkpoint`` | ``prune``), ``n`` (1-based), ``tenant``,
``stream``, ``segment``, ``count`` (records in that segment), ``seq`` (head seq), ``head_hash``, ``closed``,
``time``, ``kid``, ``prev_sig``, ``sealed`` (a writer that stopped cleanly: nothing may follow it until a later
writer signs an unsealed checkpoint at the same head), ``enc`` (the record key id when the writer encrypts, else
null); ``sig = HMAC-SHA256(key, canonical(checkpoint without "sig"))``. Checkpoint 1 is
written with the stream (seq 0, the genesis hash), and every segment is closed by a ``closed`` checkpoint before the
next one is created, so a missing checkpoint file or close checkpoint is itself evidence. Chaining the previous
signature means a writer without the key cannot drop, reorder or forge checkpoints, and a rewritten or truncated
tail no longer matches the signed head hash. A ``prune`` entry (also signed) names a deleted segment with its seq
range, ``first_prev_hash`` and ``head_hash`` (its last hash), so the chain is bridged across the legitimate hole.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from typing import Any

FORMAT_VERSION = 1
KIND_EVENT = "event"
KIND_PRUNED = "segment_pruned"
CP_CHECKPOINT = "checkpoint"
CP_PRUNE = "prune"
TENANT_FILE = "tenant.json"
CHECKPOINTS_FILE = "checkpoints.jsonl"
SEGMENT_RE = re.compile(r"^seg-(\d{12})\.jsonl$")
ENC_ALG = "AES-256-GCM"

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_READABLE = 120  # the directory name stays far below the usual 255-byte limit


class FormatError(ValueError):
    """Bytes that are not a well-formed audit record or checkpoint."""


class DecryptError(ValueError):
    """A ciphertext that does not authenticate under the given key (tampered, or another key)."""


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical(obj: Any) -> bytes:
    """The one serialisation that is hashed, signed and stored."""
    return _ENCODER.encode(obj).encode("ascii")


def parse_line(line: bytes) -> dict[str, Any]:
    """A stored line (without its newline) back to a dict; raises FormatError if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FormatError("not a JSON object")
    return obj


# -- names --------------------------------------------------------------------------------------------------------

def tenant_dirname(tenant: str) -> str:
    """A safe, collision-free directory name for any tenant id (``../``, ``/abs``, NUL, unicode, 10 kB...).

    ``t-`` + the UTF-8 bytes with everything but ``[a-z0-9_-]`` written ``%xx`` (upper case too, so names never
    collide on case-insensitive filesystems; never ``.`` or ``/``). Names longer than 120 characters keep a readable
    prefix plus ``~`` and 128 bits of SHA-256 (``~`` never occurs in the short form, so the two forms cannot collide).
    """
    raw = tenant.encode("utf-8", "surrogatepass")
    escaped = "".join(chr(b) if b in _SAFE else f"%{b:02x}" for b in raw)
    name = "t-" + escaped
    if len(name) <= _MAX_READABLE:
        return name
    prefix = escaped[:80]
    cut = prefix.rfind("%", len(prefix) - 2)  # never split a %xx escape
    if cut != -1:
        prefix = prefix[:cut]
    return f"t-{prefix}~{hashlib.sha256(raw).hexdigest()[:32]}"


def segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:012d}.jsonl"


def segment_first_seq(name: str) -> int | None:
    m = SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


# -- the hash chain -----------------------------------------------------------------------------------------------

def genesis_hash(tenant: str, stream: str) -> str:
    """``prev_hash`` of a stream's first record: binds the chain to its tenant and retention class."""
    data = b"agentwatch-audit/v1\x00" + tenant.encode("utf-8", "surrogatepass") + b"\x00" + stream.encode()
    return hashlib.sha256(data).hexdigest()


def chain_hash(body: Mapping[str, Any], _canonical_body: bytes | None = None) -> str:
    """SHA-256(prev_hash || canonical(body)); ``body`` is the record without ``hash`` (it holds ``prev_hash``)."""
    try:
        prev = bytes.fromhex(body["prev_hash"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("prev_hash missing or not hex") from None
    return hashlib.sha256(prev + (_canonical_body or canonical(body))).hexdigest()


def seal_record(body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The record with its hash, and the exact line to store (newline included): ``canonical(record)``.

    Serialising is most of an append's cost, so the body is encoded once and ``"hash"`` spliced in at its sorted
    place, just before the top-level ``"kind"`` key. That is the last ``,"kind":`` in the text because every key
    sorting after it (``prev_hash``, ``pruned``, ``recorded_at``, ...) is the writer's own, and JSON strings cannot
    hold an unescaped quote.
    """
    text = canonical(body)
    digest = chain_hash(body, text)
    record = {**body, "hash": digest}
    at = text.rfind(b',"kind":') if "kind" in body and not any("hash" < k < "kind" for k in body) else -1
    if at < 0:
        return record, canonical(record) + b"\n"
    return record, text[:at] + b',"hash":"' + digest.encode() + b'"' + text[at:] + b"\n"


def record_hash_ok(record: Mapping[str, Any]) -> bool:
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        return chain_hash(body) == record.get("hash")
    except FormatError:
        return False


# -- checkpoints --------------------------------------------------------------------------------------------------

def key_id(key: bytes) -> str:
    """A short public name for a key, so a checkpoint says which key signed it without revealing it."""
    return hashlib.sha256(b"agentwatch-audit-kid\x00" + key).hexdigest()[:16]


def checkpoint_sig(key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical({k: v for k, v in body.items() if k != "sig"}), hashlib.sha256).hexdigest()


def sign_checkpoint(key: bytes, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The signed checkpoint and its line."""
    body = {**body, "kid": key_id(key)}
    cp = {**body, "sig": checkpoint_sig(key, body)}
    return cp, canonical(cp) + b"\n"


def checkpoint_sig_ok(key: bytes, cp: Mapping[str, Any]) -> bool:
    sig = cp.get("sig")
    return isinstance(sig, str) and hmac.compare_digest(checkpoint_sig(key, cp), sig)


# -- encryption at rest -------------------------------------------------------------------------------------------

def decode_key(text: str, *, what: str = "key") -> bytes:
    """A base64 32-byte key (``openssl rand -base64 32``); raises ValueError with a message saying what is wrong."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(key) != 32:
        raise ValueError(f"{what} must decode to 32 bytes, got {len(key)}")
    return key


def _aad(tenant: str, stream: str, seq: int, event_id: Any) -> bytes:
    return canonical({"event_id": event_id, "seq": seq, "stream": stream, "tenant": tenant})


class RecordCipher:
    """AES-256-GCM per record; the key stays in this object and is never written anywhere."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only needed when encrypting

        if len(key) != 32:
            raise ValueError("the audit encryption key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self.kid = key_id(key)

    def encrypt(self, event: Mapping[str, Any], tenant: str, stream: str, seq: int, event_id: Any) -> dict[str, Any]:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, canonical(dict(event)), _aad(tenant, stream, seq, event_id))
        return {"alg": ENC_ALG, "kid": self.kid, "nonce": base64.b64encode(nonce).decode(),
                "ct": base64.b64encode(ct).decode()}

    def decrypt(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The event fields of an encrypted record; raises DecryptError if it does not authenticate."""
        from cryptography.exceptions import InvalidTag

        enc = record.get("enc")
        if not isinstance(enc, dict) or enc.get("alg") != ENC_ALG:
            raise DecryptError("record is not AES-256-GCM encrypted")
        if enc.get("kid") != self.kid:
            raise DecryptError(f"encrypted with key {enc.get('kid')}, not the given key {self.kid}")
        try:
            nonce = base64.b64decode(enc["nonce"], validate=True)
            ct = base64.b64decode(enc["ct"], validate=True)
            aad = _aad(record["tenant"], record["stream"], record["seq"], record.get("event_id"))
            plain = self._aead.decrypt(nonce, ct, aad)
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
            raise DecryptError("ciphertext does not authenticate (modified, or moved to another record)") from None
        return json.loads(plain)


def event_of(record: Mapping[str, Any], cipher: RecordCipher | None = None) -> dict[str, Any] | None:
    """The event fields of a record: plaintext, decrypted when a cipher is given, else None (encrypted)."""
    if isinstance(record.get("event"), dict):
        return record["event"]
    if "enc" in record and cipher is not None:
        return cipher.decrypt(record)
    return None
