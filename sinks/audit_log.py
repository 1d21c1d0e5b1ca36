"""The audit log writer: append-only, hash-chained, checkpoint-signed, per-tenant segments (format: audit_format).

Guarantees and policies, stated once:

* **Append-only.** Records are only ever appended (``O_APPEND``, one ``write`` per line); a segment is closed when it
  reaches ``segment_max_bytes`` or ``segment_max_age_s`` (then made read-only, 0400) and never reopened. The only
  deletions are :meth:`AuditLog.prune` of whole expired segments, recorded in the chain first.
* **Idempotent.** A record whose ``event_id`` is already in the tenant's log is not appended again. The tenant's
  event-id index is rebuilt from its segments the first time the tenant is touched after start (one read of its live
  log; an audit log is small next to the event stream) and kept in memory, so redelivery after any crash, and a full
  re-consume of the topic, add nothing.
* **Durability (fsync policy).** ``fsync="batch"`` (default): records reach the OS on every append and the disk on
  :meth:`flush` (the Kafka sink calls it before committing offsets, so an acknowledged offset is always on disk),
  at every checkpoint, segment close and :meth:`close`. ``"always"`` fsyncs every record; ``"never"`` leaves it to the
  OS (benchmarks). Creating or deleting a file also fsyncs its directory.
* **Checkpoints.** Every ``checkpoint_every`` records, at segment close, at :meth:`close`, and on :meth:`flush` when
  the stream has unanchored records and the last checkpoint is older than ``checkpoint_max_age_s``. Always after the
  records they cover are fsynced, so a crash can never leave a checkpoint pointing past the durable data.
* **Seal.** :meth:`close` ends every stream this writer loaded with a *sealed* checkpoint covering its last record.
  Nothing may follow a seal: the next writer first signs an unsealed checkpoint at the same head, so a record found
  after a seal (someone appended and recomputed the chain) is refused here and an error in ``verify``.
* **Unanchored tail (after a crash).** Records after the last checkpoint of an unsealed stream are a crashed writer's
  tail. They are signed only after the source topic confirms them (:mod:`sinks.audit_source`: every record carries
  its ``src`` offset); a record the topic does not confirm (forged, altered, or no ``src``) makes the writer refuse
  the tenant (:class:`AuditTailUnconfirmed`). :meth:`recover` does this for every unsealed stream at start, so a
  clean close afterwards seals them too.
* **Rollback.** Given the heads an external witness holds (``witness_heads``, :mod:`sinks.audit_anchor`), a stream
  whose checkpoint file ends before the witnessed checkpoint, differs from it, or is gone is refused
  (:class:`AuditRolledBack`): continuing it would overwrite the witness with the rolled-back history. Every
  checkpoint is handed to ``on_checkpoint`` for publishing, and :meth:`close` hands over the newest one of every
  loaded stream again, so a witness that missed some catches up.
* **Encryption is sticky.** Checkpoints declare the record key id (``enc``); a writer without a key refuses to add
  plaintext to a stream that was ever written encrypted.
* **Crash repair.** When a tenant is first touched (lazily, on its first append or on prune), an unterminated
  last line (a torn write) of a stream's last segment or checkpoint file is cut off, logged and listed in
  :attr:`AuditLog.repairs`; writing continues from the last intact record, chain intact. Anything else that does
  not parse, or a log that ends before its last signed checkpoint, is *not* repaired: the writer refuses that
  tenant (:class:`AuditCorruption`) so that new records are never chained onto tampered ones.
* **Full disk / quota.** ``max_tenant_bytes`` caps a tenant's live segment bytes: an append over the cap raises
  :class:`AuditLogFull` before writing anything. A real ``ENOSPC``/``EDQUOT``/``EFBIG`` mid-write is cut back to the
  last whole record and raised the same way. Either way the log stays valid and the event is not marked as seen, so a
  redelivery after space is freed appends it.

Not thread-safe: one writer per root (the Kafka sink is single-threaded). Retention is fixed per record at write
time (``expires_at``), so shortening a retention class later never deletes evidence written under the longer one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sinks.audit_classify import Classification
from sinks.audit_format import (
    CHECKPOINTS_FILE,
    CP_CHECKPOINT,
    CP_PRUNE,
    FORMAT_VERSION,
    KIND_EVENT,
    KIND_PRUNED,
    TENANT_FILE,
    FormatError,
    RecordCipher,
    genesis_hash,
    parse_line,
    record_hash_ok,
    seal_record,
    segment_first_seq,
    segment_name,
    sign_checkpoint,
    tenant_dirname,
)
from sinks.audit_source import SourceRef, TailSource, event_key, source_ref, unconfirmed
from sinks.audit_store import (
    DIR_MODE,
    FILE_MODE,
    LOCK_FILE,
    SEALED_MODE,
    create_file,
    ensure_dir,
    list_segments,
    list_streams,
    list_tenant_dirs,
    open_append,
    read_tenant_dir,
    split_lines,
    write_tenant_file,
)
from sinks.fsync import fsync_dir

logger = logging.getLogger(__name__)
DAY_US = 86_400_000_000
FSYNC_POLICIES = ("batch", "always", "never")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class AuditError(Exception):
    """Base of the audit log's errors."""


class AuditWriteError(AuditError):
    """A write failed; the record was not appended and the log is unchanged."""


class AuditLogFull(AuditWriteError):
    """The tenant's size cap or the filesystem is full; the record was not appended and the log is unchanged."""


class AuditTenantOverCap(AuditLogFull):
    """The tenant's own size cap (not the filesystem) is reached: only this tenant is blocked."""


class AuditCorruption(AuditError):
    """The files on disk are not what this writer wrote; run ``agentwatch audit verify`` to see what changed."""


class AuditRolledBack(AuditCorruption):
    """The external witness saw a newer (or a different) checkpoint than the stream holds: it was rolled back."""


class AuditTailUnconfirmed(AuditCorruption):
    """A crashed writer's unanchored tail holds a record the source topic does not confirm: it is not signed."""


@dataclass(frozen=True, slots=True)
class Repair:
    """A torn tail cut off on open (what a crash mid-write leaves behind)."""

    path: str
    kept_bytes: int
    removed_bytes: int


@dataclass(frozen=True, slots=True)
class Appended:
    tenant: str
    stream: str | None
    seq: int | None
    hash: str | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Pruned:
    tenant: str
    stream: str
    segment: str
    first_seq: int
    last_seq: int
    count: int


@dataclass
class _Segment:
    name: str
    first_seq: int
    count: int = 0
    first_prev_hash: str | None = None
    last_hash: str | None = None
    size: int = 0
    never_expires: bool = False
    max_expires: int = 0
    opened_us: int = 0
    closed: bool = False

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def expired(self, now_us: int) -> bool:
        return self.count > 0 and not self.never_expires and self.max_expires <= now_us

    def note(self, record: Mapping[str, Any], nbytes: int) -> None:
        if self.count == 0:
            self.first_prev_hash = record.get("prev_hash")
            self.opened_us = int(record.get("recorded_at") or self.opened_us)
        self.count += 1
        self.last_hash = record.get("hash")
        self.size += nbytes
        exp = record.get("expires_at")
        if exp is None:
            self.never_expires = True
        else:
            self.max_expires = max(self.max_expires, int(exp))


@dataclass(eq=False)
class _Stream:
    tenant: str
    name: str
    path: Path
    next_seq: int
    head_hash: str
    segments: list[_Segment] = field(default_factory=list)
    pruned: set[str] = field(default_factory=set)
    cp_n: int = 0
    cp_sig: str = ""
    cp_time: int = 0
    cp_size: int = 0
    since_cp: int = 0
    sealed: bool = False
    encrypted: bool = False  # a checkpoint ever declared an encryption key
    last_cp: dict[str, Any] | None = None
    published: bool = False  # last_cp was handed to on_checkpoint by this writer
    fd: int | None = None
    dirty: bool = False

    @property
    def open_segment(self) -> _Segment | None:
        if self.segments and not self.segments[-1].closed:
            return self.segments[-1]
        return None


@dataclass(eq=False)
class _Tenant:
    name: str
    path: Path
    ids: set[str] = field(default_factory=set)
    streams: dict[str, _Stream] = field(default_factory=dict)
    nbytes: int = 0


def _now_us() -> int:
    return time.time_ns() // 1000


class AuditLog:
    """Per-tenant append-only audit segments under ``root``; see the module docstring for the guarantees."""

    def __init__(self, root: Path | str, hmac_key: bytes, *, enc_key: bytes | None = None,
                 segment_max_bytes: int = 64 * 1024 * 1024, segment_max_age_s: float = 86_400.0,
                 checkpoint_every: int = 1000, checkpoint_max_age_s: float = 60.0, fsync: str = "batch",
                 max_tenant_bytes: int | None = None, max_open_files: int = 64,
                 clock: Callable[[], int] = _now_us, source: TailSource | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 witness_heads: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> None:
        if not isinstance(hmac_key, bytes | bytearray) or len(hmac_key) < 16:
            raise ValueError("the audit HMAC key must be at least 16 bytes")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if segment_max_bytes <= 0 or checkpoint_every <= 0 or max_open_files <= 0:
            raise ValueError("segment_max_bytes, checkpoint_every and max_open_files must be positive")
        self.root = Path(root)
        self._key = bytes(hmac_key)
        self._cipher = RecordCipher(enc_key) if enc_key else None
        self._seg_max_bytes = segment_max_bytes
        self._seg_max_age_us = int(segment_max_age_s * 1_000_000)
        self._cp_every = checkpoint_every
        self._cp_max_age_us = int(checkpoint_max_age_s * 1_000_000)
        self._fsync = fsync
        self._cap = max_tenant_bytes
        self._max_open = max_open_files
        self._clock = clock
        self._source = source
        self._on_checkpoint = on_checkpoint
        self._witness = witness_heads
        self._deferred: list[tuple[str, Path, _Stream, list[tuple[Path, dict[str, Any]]]]] | None = None
        self._tenants: dict[str, _Tenant] = {}
        self._open: OrderedDict[int, _Stream] = OrderedDict()  # id(stream) -> stream with an open fd, LRU order
        self._pending_cp: dict[int, _Stream] = {}  # streams with records not covered by a checkpoint yet
        self.repairs: list[Repair] = []
        self._closed = False
        if not self.root.exists():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            ensure_dir(self.root)
        self._lock_fd = self._lock()

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    @property
    def cipher(self) -> RecordCipher | None:
        """The record cipher (the held queue encrypts under the same key)."""
        return self._cipher

    def append(self, event: Mapping[str, Any], classification: Classification,
               source: SourceRef | None = None) -> Appended:
        """Append ``event`` under ``classification`` unless its event_id is already in the tenant's log.

        ``source`` (topic, partition, offset) is stored with the record so a restart after a crash can confirm it.
        """
        self._check_open()
        tenant = event.get("tenant")
        if not isinstance(tenant, str):
            raise ValueError("an audited event needs a string tenant")
        # Evidence is never dropped for want of an id: a content hash still makes redelivery idempotent.
        event_id = event_key(event)
        t = self._tenant(tenant)
        if event_id in t.ids:
            return Appended(tenant, None, None, None, duplicate=True)
        now = self._clock()
        rc = classification.retention_class
        s = self._stream(t, rc)
        expires = None
        if classification.retention_days is not None:
            start = max(int(event.get("event_time") or now), now)  # a backdated event cannot shorten retention
            expires = start + classification.retention_days * DAY_US
        body: dict[str, Any] = {
            "v": FORMAT_VERSION, "kind": KIND_EVENT, "tenant": tenant, "stream": rc, "seq": s.next_seq,
            "event_id": event_id, "class": classification.audit_class, "retention": rc, "expires_at": expires,
            "recorded_at": now,
        }
        if source is not None:
            body["src"] = {"topic": source[0], "partition": source[1], "offset": source[2]}
        if s.encrypted and self._cipher is None:
            raise AuditError(f"tenant {tenant!r} stream {rc}: the log is encrypted and this writer has no key; "
                             "refusing to add plaintext (set AGENTWATCH_AUDIT_ENC_KEY)")
        if self._cipher is not None:
            body["enc"] = self._cipher.encrypt(event, tenant, rc, s.next_seq, event_id)
        else:
            body["event"] = dict(event)
        record = self._append(t, s, body, now, enforce_cap=True)
        t.ids.add(event_id)
        return Appended(tenant, rc, record["seq"], record["hash"])

    def flush(self) -> None:
        """Make every appended record durable (fsync), and checkpoint streams whose last checkpoint is old."""
        self._check_open()
        for s in list(self._open.values()):
            self._sync(s)
        now = self._clock()
        for s in list(self._pending_cp.values()):
            if now - s.cp_time >= self._cp_max_age_us:
                self._checkpoint(s, closed=False, now=now)

    def prune(self, now_us: int | None = None) -> list[Pruned]:
        """Delete every closed segment whose records have all expired, recording each deletion in the chain first.

        An open segment that is older than ``segment_max_age_s`` and fully expired is closed first, so a quiet
        stream still ages out. Safe to interrupt: a segment whose prune is recorded but whose file is still there
        is deleted by the next call.
        """
        self._check_open()
        now = self._clock() if now_us is None else now_us
        done: list[Pruned] = []
        for td in list_tenant_dirs(self.root):
            if td.tenant is None:
                raise AuditCorruption(f"{td.path}: {td.problem}")
            t = self._tenant(td.tenant)
            for s in list(t.streams.values()):
                for seg in [x for x in s.segments if x.name in s.pruned]:
                    self._unlink_segment(t, s, seg)
                op = s.open_segment
                if op is not None and op.expired(now) and now - op.opened_us >= self._seg_max_age_us:
                    self._close_segment(s, now)
                for seg in [x for x in s.segments if x.closed and x.expired(now)]:
                    self._prune_segment(t, s, seg, now)
                    done.append(Pruned(t.name, s.name, seg.name, seg.first_seq, seg.last_seq, seg.count))
        return done

    def recover(self) -> dict[str, AuditError]:
        """Load every tenant that has an unsealed stream (a writer crashed), confirming each unanchored tail against
        the source, and every tenant the witness disagrees with; the tenants refused, with why. Call it at start."""
        self._check_open()
        refused: dict[str, AuditError] = {}
        witnessed = {t for t, _ in self._witness or {}}
        self._deferred = []  # unanchored tails, confirmed below with one fetch for all of them
        try:
            self._load_suspects(refused, witnessed)
        finally:
            deferred, self._deferred = self._deferred, None
        refs = [r for _, _, _, tail in deferred for _, rec in tail
                if rec.get("kind") != KIND_PRUNED and (r := source_ref(rec)) is not None]
        fetched: dict[SourceRef, list[Mapping[str, Any]]] = {}
        fetch_error: Exception | None = None
        if refs and self._source is not None:
            try:
                fetched = self._source.fetch(refs)
            except Exception as exc:  # unreachable: nothing is decided, those tenants are retried on first touch
                fetch_error = exc
        for tenant, path, stream, tail in deferred:
            if tenant in refused:
                continue
            try:
                if fetch_error is not None:
                    raise AuditTailUnconfirmed(f"{path}: could not read the source topic to confirm {len(tail)} "
                                               f"unanchored record(s) ({fetch_error}); not signing them yet")
                self._confirm_tail(path, stream, tail, fetched=fetched)
            except AuditError as exc:
                refused[tenant] = exc
        for tenant in refused:
            self._forget(tenant)
        for tenant in sorted(witnessed):  # the witness knows tenants whose directory is gone
            refused[tenant] = AuditRolledBack(f"{self.root / tenant_dirname(tenant)}: missing, but the anchors "
                                              "witness holds its checkpoints: the tenant's log was removed")
        return refused

    def _forget(self, tenant: str) -> None:
        """Drop a refused tenant's loaded state: nothing of it is signed, it is loaded (and checked) again later."""
        t = self._tenants.pop(tenant, None)
        if t is None:
            return
        for s in t.streams.values():
            self._pending_cp.pop(id(s), None)
            self._release_fd(s)

    def _load_suspects(self, refused: dict[str, AuditError], witnessed: set[str]) -> None:
        for td in list_tenant_dirs(self.root):
            if td.tenant is None or td.tenant in self._tenants:
                continue
            witnessed.discard(td.tenant)
            streams = list_streams(td.path)
            lasts = {name: _last_checkpoint(td.path / name / CHECKPOINTS_FILE) for name in streams}
            suspect = any(cp is None or not (cp.get("kind") == CP_CHECKPOINT and cp.get("sealed") is True)
                          for cp in lasts.values())
            for (tenant, name), seen in (self._witness or {}).items():
                mine = lasts.get(name) if tenant == td.tenant else {}
                if mine is None or (mine and (mine.get("n"), mine.get("sig")) != (seen.get("n"), seen.get("sig"))):
                    suspect = True  # behind or different: _load_stream says which (a log ahead is fine)
            if not suspect:
                continue
            try:
                t = self._tenant(td.tenant)
                for (tenant, name) in self._witness or {}:
                    if tenant == td.tenant and name not in t.streams:
                        self._stream(t, name)  # raises AuditRolledBack: the stream was removed
            except AuditError as exc:
                refused[td.tenant] = exc

    def close(self) -> None:
        """Seal every loaded stream (a signed checkpoint covering its last record), fsync and close all files."""
        if self._closed:
            return
        try:
            now = self._clock()
            for t in self._tenants.values():
                for s in t.streams.values():
                    if not s.sealed:
                        self._seal(s, now)
                    elif not s.published and s.last_cp is not None and self._on_checkpoint is not None:
                        self._on_checkpoint(s.last_cp)
            for s in list(self._open.values()):
                self._release_fd(s)
        finally:
            self._closed = True
            os.close(self._lock_fd)  # releases the flock

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending ----------------------------------------------------------------------------------------------

    def _append(self, t: _Tenant, s: _Stream, body: dict[str, Any], now: int, *, enforce_cap: bool) -> dict[str, Any]:
        body["prev_hash"] = s.head_hash
        record, line = seal_record(body)
        if enforce_cap and self._cap is not None and t.nbytes + len(line) > self._cap:
            raise AuditTenantOverCap(f"tenant {t.name!r}: audit log size cap reached ({t.nbytes:,} of {self._cap:,} "
                                     f"bytes used, record needs {len(line):,}); nothing was written")
        if s.sealed:  # this run continues a sealed stream: say so, signed, before anything follows the seal
            self._write_checkpoint(s, self._cp_body(s, s.open_segment or (s.segments[-1] if s.segments else None),
                                                   closed=False, now=now))
            s.sealed = False
        seg = self._segment_for(s, len(line), now)
        self._write(s, seg, line)
        seg.note(record, len(line))
        s.next_seq += 1
        s.head_hash = record["hash"]
        t.nbytes += len(line)
        s.since_cp += 1
        self._pending_cp[id(s)] = s
        if self._fsync == "always":
            self._sync(s)
        if s.since_cp >= self._cp_every:
            self._checkpoint(s, closed=False, now=now)
        return record

    def _segment_for(self, s: _Stream, nbytes: int, now: int) -> _Segment:
        seg = s.open_segment
        if seg is not None and seg.count > 0 and (
                seg.size + nbytes > self._seg_max_bytes or now - seg.opened_us >= self._seg_max_age_us):
            self._close_segment(s, now)
            seg = None
        if seg is None:
            name = segment_name(s.next_seq)
            try:
                fd = create_file(s.path / name)
            except FileExistsError:
                raise AuditCorruption(f"{s.path / name} already exists but is not this stream's open segment") from None
            except OSError as exc:
                raise self._write_error(s.path / name, exc) from exc
            seg = _Segment(name, s.next_seq, opened_us=now)
            s.segments.append(seg)
            self._adopt_fd(s, fd)
        return seg

    def _write(self, s: _Stream, seg: _Segment, line: bytes) -> None:
        fd = self._fd(s)
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write is followed by the error that caused it, or by the rest
                written += os.write(fd, line[written:])
        except OSError as exc:
            try:
                os.ftruncate(fd, seg.size)  # never leave half a record behind
            except OSError as exc2:
                raise AuditCorruption(f"{s.path / seg.name}: write failed ({exc}) and the partial record could not "
                                      f"be cut back ({exc2}); the next open repairs the torn tail") from exc
            raise self._write_error(s.path / seg.name, exc) from exc
        s.dirty = True

    @staticmethod
    def _write_error(path: Path, exc: OSError) -> AuditWriteError:
        if exc.errno in _FULL_ERRNOS:
            return AuditLogFull(f"{path}: filesystem full ({exc.strerror}); the record was not appended")
        return AuditWriteError(f"{path}: write failed ({exc}); the record was not appended")

    def _close_segment(self, s: _Stream, now: int) -> None:
        seg = s.open_segment
        assert seg is not None
        self._checkpoint(s, closed=True, now=now)
        seg.closed = True
        self._release_fd(s)
        os.chmod(s.path / seg.name, SEALED_MODE)

    def _checkpoint(self, s: _Stream, *, closed: bool, now: int) -> None:
        seg = s.open_segment
        if seg is None:  # nothing open: the last close checkpoint already covers the head
            self._pending_cp.pop(id(s), None)
            return
        self._sync(s)
        self._write_checkpoint(s, self._cp_body(s, seg, closed=closed, now=now))
        s.since_cp = 0
        self._pending_cp.pop(id(s), None)

    def _cp_body(self, s: _Stream, seg: _Segment | None, *, closed: bool, now: int,
                 sealed: bool = False) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "kind": CP_CHECKPOINT, "n": s.cp_n + 1, "tenant": s.tenant, "stream": s.name,
                "segment": seg.name if seg is not None else None, "count": seg.count if seg is not None else 0,
                "seq": s.next_seq - 1, "head_hash": s.head_hash, "closed": closed, "time": now,
                "prev_sig": s.cp_sig, "sealed": sealed,
                "enc": self._cipher.kid if self._cipher is not None else None}

    def _seal(self, s: _Stream, now: int) -> None:
        """The clean-stop checkpoint: covers the head (fsynced first); nothing may follow it unannounced."""
        seg = s.open_segment
        last = seg or (s.segments[-1] if s.segments else None)
        if seg is not None:
            self._sync(s)
        self._write_checkpoint(s, self._cp_body(s, last, closed=seg is None and last is not None, now=now,
                                                sealed=True))
        s.since_cp = 0
        s.sealed = True
        self._pending_cp.pop(id(s), None)

    def _write_checkpoint(self, s: _Stream, body: dict[str, Any]) -> None:
        cp, line = sign_checkpoint(self._key, body)
        path = s.path / CHECKPOINTS_FILE
        try:
            fd = open_append(path) if path.exists() else create_file(path)
        except OSError as exc:
            raise self._write_error(path, exc) from exc
        try:
            written = os.write(fd, line)
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, s.cp_size)
            except OSError:
                pass  # the torn checkpoint line is cut on the next open
            raise self._write_error(path, exc) from exc
        finally:
            os.close(fd)
        s.cp_n, s.cp_sig, s.cp_time = cp["n"], cp["sig"], cp["time"]
        s.cp_size += len(line)
        s.encrypted = s.encrypted or bool(cp.get("enc"))
        s.last_cp, s.published = cp, True
        if self._on_checkpoint is not None:
            self._on_checkpoint(cp)

    # -- pruning ------------------------------------------------------------------------------------------------

    def _prune_segment(self, t: _Tenant, s: _Stream, seg: _Segment, now: int) -> None:
        declared = {"segment": seg.name, "first_seq": seg.first_seq, "last_seq": seg.last_seq, "count": seg.count,
                    "first_prev_hash": seg.first_prev_hash, "last_hash": seg.last_hash}
        body = {"v": FORMAT_VERSION, "kind": KIND_PRUNED, "tenant": t.name, "stream": s.name, "seq": s.next_seq,
                "event_id": None, "class": KIND_PRUNED, "retention": s.name, "expires_at": now, "recorded_at": now,
                "pruned": declared}
        # The prune record is exempt from the size cap: pruning is how a full tenant gets space back.
        self._append(t, s, body, now, enforce_cap=False)
        self._sync(s)
        self._write_checkpoint(s, {
            "v": FORMAT_VERSION, "kind": CP_PRUNE, "n": s.cp_n + 1, "tenant": t.name, "stream": s.name,
            "segment": seg.name, "count": seg.count, "first_seq": seg.first_seq, "seq": seg.last_seq,
            "first_prev_hash": seg.first_prev_hash, "head_hash": seg.last_hash, "closed": True, "time": now,
            "prev_sig": s.cp_sig, "enc": self._cipher.kid if self._cipher is not None else None,
        })
        s.pruned.add(seg.name)
        self._unlink_segment(t, s, seg)

    def _unlink_segment(self, t: _Tenant, s: _Stream, seg: _Segment) -> None:
        try:
            os.unlink(s.path / seg.name)
        except FileNotFoundError:
            pass
        fsync_dir(s.path)
        s.segments.remove(seg)
        t.nbytes -= seg.size

    # -- file descriptors ---------------------------------------------------------------------------------------

    def _fd(self, s: _Stream) -> int:
        if s.fd is None:
            seg = s.open_segment
            assert seg is not None
            self._adopt_fd(s, open_append(s.path / seg.name))
        else:
            self._open.move_to_end(id(s))
        assert s.fd is not None
        return s.fd

    def _adopt_fd(self, s: _Stream, fd: int) -> None:
        s.fd = fd
        self._open[id(s)] = s
        while len(self._open) > self._max_open:
            _, victim = next(iter(self._open.items()))
            self._release_fd(victim)

    def _sync(self, s: _Stream) -> None:
        if s.fd is not None and s.dirty and self._fsync != "never":
            os.fsync(s.fd)
        s.dirty = False

    def _release_fd(self, s: _Stream) -> None:
        if s.fd is None:
            return
        try:
            self._sync(s)
        finally:
            os.close(s.fd)
            s.fd = None
            self._open.pop(id(s), None)

    def _lock(self) -> int:
        """One writer per root: a second AuditLog (another `audit run`, or `audit prune` meanwhile) fails fast."""
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AuditError(f"{self.root} is in use by another audit writer (pid {holder or '?'}); "
                             "stop it first (or let it prune: `audit run --prune-interval`)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _check_open(self) -> None:
        if self._closed:
            raise AuditError("the audit log is closed")

    # -- loading (first touch of a tenant) ----------------------------------------------------------------------

    def _tenant(self, name: str) -> _Tenant:
        t = self._tenants.get(name)
        if t is not None:
            return t
        path = self.root / tenant_dirname(name)
        ensure_dir(path)
        if not (path / TENANT_FILE).exists():
            write_tenant_file(path, name)
        td = read_tenant_dir(path)
        if td.problem is not None or td.tenant != name:
            raise AuditCorruption(f"{path}: {td.problem or f'belongs to tenant {td.tenant!r}, not {name!r}'}")
        t = _Tenant(name, path)
        for stream in list_streams(path):
            t.streams[stream] = self._load_stream(t, stream)
        self._tenants[name] = t
        return t

    def _stream(self, t: _Tenant, name: str) -> _Stream:
        s = t.streams.get(name)
        if s is None:
            seen = (self._witness or {}).get((t.name, name))
            if seen is not None:
                raise AuditRolledBack(f"{t.path / name}: missing, but the anchors witness saw its checkpoint "
                                      f"{seen.get('n')} (seq {seen.get('seq')}): the stream was removed; refusing "
                                      "to start it again (run `agentwatch audit verify --anchors`)")
            path = t.path / name
            ensure_dir(path)
            s = t.streams[name] = _Stream(t.name, name, path, 1, genesis_hash(t.name, name))
            self._genesis_checkpoint(s)
        return s

    def _genesis_checkpoint(self, s: _Stream) -> None:
        """Checkpoint 1 (seq 0, the genesis hash) is written with the stream, so a stream whose checkpoint file
        is missing or emptied is evidence of deletion, never a normal state."""
        self._write_checkpoint(s, {
            "v": FORMAT_VERSION, "kind": CP_CHECKPOINT, "n": 1, "tenant": s.tenant, "stream": s.name,
            "segment": None, "count": 0, "seq": 0, "head_hash": s.head_hash, "closed": False,
            "time": self._clock(), "prev_sig": "", "sealed": False,
            "enc": self._cipher.kid if self._cipher is not None else None,
        })

    def _repair_tail(self, path: Path, data: bytes, tail: bytes) -> None:
        keep = len(data) - len(tail)
        mode = os.stat(path).st_mode & 0o777
        if mode == SEALED_MODE:
            raise AuditCorruption(f"{path}: a closed (sealed) segment ends in an unterminated record")
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.repairs.append(Repair(str(path), keep, len(tail)))
        logger.warning("audit log: cut a torn tail of %d bytes off %s (a crash mid-write); kept %d bytes",
                       len(tail), path, keep)

    def _load_stream(self, t: _Tenant, name: str) -> _Stream:
        path = t.path / name
        s = _Stream(t.name, name, path, 1, genesis_hash(t.name, name))
        closed_names: set[str] = set()
        last_cp_seq, last_cp_head = 0, s.head_hash
        cp_path = path / CHECKPOINTS_FILE
        witnessed = (self._witness or {}).get((t.name, name))
        if cp_path.exists():
            data = cp_path.read_bytes()
            lines, tail = split_lines(data)
            if tail:
                self._repair_tail(cp_path, data, tail)
            for line in lines:
                try:
                    cp = parse_line(line)
                    s.cp_n, s.cp_sig, s.cp_time = int(cp["n"]), str(cp["sig"]), int(cp["time"])
                    s.sealed = cp["kind"] == CP_CHECKPOINT and cp.get("sealed") is True
                    s.encrypted = s.encrypted or bool(cp.get("enc"))
                    s.last_cp = cp
                    if witnessed is not None and cp["n"] == witnessed.get("n") and cp["sig"] != witnessed.get("sig"):
                        raise AuditRolledBack(f"{cp_path}: checkpoint {cp['n']} is not the one the anchors witness "
                                              "saw: the history was replaced; refusing to continue it (run "
                                              "`agentwatch audit verify --anchors`)")
                    if cp["kind"] == CP_PRUNE:
                        s.pruned.add(cp["segment"])
                    elif cp.get("closed"):
                        closed_names.add(cp["segment"])
                    if cp["kind"] == CP_CHECKPOINT and int(cp["seq"]) >= last_cp_seq:
                        last_cp_seq, last_cp_head = int(cp["seq"]), str(cp["head_hash"])
                except (FormatError, KeyError, TypeError, ValueError) as exc:
                    raise AuditCorruption(f"{cp_path}: unreadable checkpoint ({exc}); run `agentwatch audit verify`") \
                        from None
            s.cp_size = len(data) - len(tail)
        if witnessed is not None and isinstance(witnessed.get("n"), int) and s.cp_n < witnessed["n"]:
            raise AuditRolledBack(f"{cp_path}: ends at checkpoint {s.cp_n} but the anchors witness saw checkpoint "
                                  f"{witnessed['n']} (seq {witnessed.get('seq')}): rolled back; refusing to continue "
                                  "it (run `agentwatch audit verify --anchors`)")
        names, _ = list_segments(path)
        if s.cp_n == 0:
            if names:
                raise AuditCorruption(f"{cp_path}: missing or empty while the stream has segments: the checkpoints "
                                      "were deleted (run `agentwatch audit verify`)")
            self._genesis_checkpoint(s)  # a crash between creating the directory and writing checkpoint 1
        # Records after the last signed checkpoint are re-checked (hash and link) before this writer signs them
        # with its next checkpoint: it must not anchor a tail that was altered while it was down.
        last_record: dict[str, Any] | None = None
        running: str | None = None
        unanchored: list[tuple[Path, dict[str, Any]]] = []  # records after the last signed checkpoint
        for i, seg_name in enumerate(names):
            seg_path = path / seg_name
            data = seg_path.read_bytes()
            lines, tail = split_lines(data)
            if tail:
                if i != len(names) - 1:
                    raise AuditCorruption(f"{seg_path}: unterminated record in a segment that is not the last; "
                                          "run `agentwatch audit verify`")
                self._repair_tail(seg_path, data, tail)
            seg = _Segment(seg_name, segment_first_seq(seg_name) or 0,
                           closed=seg_name in closed_names or i < len(names) - 1, opened_us=self._clock())
            for line in lines:
                try:
                    rec = parse_line(line)
                except FormatError as exc:
                    raise AuditCorruption(f"{seg_path}: unreadable record ({exc}); run `agentwatch audit verify`") \
                        from None
                seg.note(rec, len(line) + 1)
                seq = rec.get("seq")
                if isinstance(seq, int) and seq > last_cp_seq:
                    if isinstance(rec.get("event_id"), str) and rec["event_id"] in t.ids:
                        raise AuditTailUnconfirmed(f"{seg_path}: seq {seq}, after the last signed checkpoint, repeats "
                                                   f"event {rec['event_id']} already in the log; refusing to sign it "
                                                   "(run `agentwatch audit verify`)")
                    unanchored.append((seg_path, rec))
                if isinstance(rec.get("event_id"), str):
                    t.ids.add(rec["event_id"])
                if isinstance(seq, int) and seq >= last_cp_seq:
                    if seq == last_cp_seq:
                        if rec.get("hash") != last_cp_head:
                            raise AuditCorruption(f"{seg_path}: seq {seq} is not the record the last checkpoint "
                                                  "signed (run `agentwatch audit verify`)")
                        running = last_cp_head
                    elif running is None and last_cp_seq == 0:
                        running = last_cp_head  # nothing checkpointed yet: the tail starts at the genesis
                    if seq > last_cp_seq:
                        if running != rec.get("prev_hash") or not record_hash_ok(rec):
                            raise AuditCorruption(f"{seg_path}: seq {seq}, after the last signed checkpoint, does not "
                                                  "chain; refusing to sign it (run `agentwatch audit verify`)")
                        running = rec["hash"]
                last_record = rec
            s.segments.append(seg)
            t.nbytes += seg.size
        if unanchored:
            if self._deferred is not None and not s.sealed:
                self._deferred.append((t.name, path, s, unanchored))  # recover() confirms all tails at once
            else:
                self._confirm_tail(path, s, unanchored)
        if last_record is not None:
            if not record_hash_ok(last_record) or not isinstance(last_record.get("seq"), int):
                raise AuditCorruption(f"{path}: the last record does not hash to its stored hash; refusing to chain "
                                      "onto it (run `agentwatch audit verify`)")
            s.next_seq, s.head_hash = last_record["seq"] + 1, last_record["hash"]
            if s.next_seq - 1 > last_cp_seq:  # a crash left records unanchored: the next flush or close signs them
                s.since_cp = s.next_seq - 1 - last_cp_seq
                self._pending_cp[id(s)] = s
        if s.next_seq - 1 < last_cp_seq:
            raise AuditCorruption(f"{path}: the log ends at seq {s.next_seq - 1} but a signed checkpoint covers seq "
                                  f"{last_cp_seq}: records were removed (run `agentwatch audit verify`)")
        op = s.open_segment
        if op is not None and op.count == 0 and op.first_seq != s.next_seq:
            raise AuditCorruption(f"{path / op.name}: empty segment does not start at the next seq {s.next_seq}")
        return s

    def _confirm_tail(self, path: Path, s: _Stream, tail: list[tuple[Path, dict[str, Any]]], *,
                      fetched: Mapping[SourceRef, list[Mapping[str, Any]]] | None = None) -> None:
        """Refuse (raise) unless the source topic confirms every record after the last signed checkpoint
        (``fetched``: what the source returned already, for every ref of the tail)."""
        first = tail[0][1].get("seq")
        if s.sealed:
            raise AuditTailUnconfirmed(f"{tail[0][0]}: seq {first}..{tail[-1][1].get('seq')} were appended after the "
                                       "stream was sealed by a clean stop; refusing to sign them "
                                       "(run `agentwatch audit verify`)")
        events = [rec for _, rec in tail if rec.get("kind") != KIND_PRUNED]
        if events and self._source is None:
            raise AuditTailUnconfirmed(f"{path}: {len(tail)} record(s) from seq {first} on were left unanchored by a "
                                       "crashed writer and no source topic was given to confirm them; refusing to "
                                       "sign them")
        if fetched is None:
            fetched = {}
        elif events:
            events = []  # already fetched
        if events and self._source is not None:
            refs = [r for r in (source_ref(rec) for rec in events) if r is not None]
            try:
                fetched = self._source.fetch(refs)
            except Exception as exc:  # the source is unreachable: nothing is decided, the tenant is retried later
                raise AuditTailUnconfirmed(f"{path}: could not read the source topic to confirm {len(tail)} "
                                           f"unanchored record(s) ({exc}); not signing them yet") from exc
        for seg_path, rec in tail:
            if rec.get("kind") == KIND_PRUNED:
                why = _prune_unconfirmed(s, rec)
            else:
                why = unconfirmed(rec, fetched, self._cipher)
            if why is not None:
                raise AuditTailUnconfirmed(f"{seg_path}: seq {rec.get('seq')}, after the last signed checkpoint, is "
                                           f"not confirmed by the source topic: {why}; refusing to sign it "
                                           "(run `agentwatch audit verify`)")
        logger.info("audit log: %s: %d unanchored record(s) left by a crash confirmed against the source topic",
                    path, len(tail))


def _prune_unconfirmed(s: _Stream, rec: Mapping[str, Any]) -> str | None:
    """Why an unanchored ``segment_pruned`` record (a crash between recording a prune and signing it) is not this
    writer's own, or None: it must describe a closed segment that is still there, exactly, and fully expired."""
    decl = rec.get("pruned")
    if not isinstance(decl, dict):
        return "a prune record without a declared segment"
    seg = next((x for x in s.segments if x.name == decl.get("segment")), None)
    if seg is None or not seg.closed:
        return f"it declares the prune of {decl.get('segment')!r}, which is not a closed segment of this stream"
    want = {"segment": seg.name, "first_seq": seg.first_seq, "last_seq": seg.last_seq, "count": seg.count,
            "first_prev_hash": seg.first_prev_hash, "last_hash": seg.last_hash}
    if decl != want:
        return f"it does not describe {seg.name} as it is"
    if not isinstance(rec.get("recorded_at"), int) or not seg.expired(rec["recorded_at"]):
        return f"{seg.name} had not expired when the prune was recorded"
    return None


def _last_checkpoint(path: Path) -> dict[str, Any] | None:
    """A stream's newest checkpoint (reads only the end of the file); None when missing or unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = fh.read().splitlines()
        return parse_line(lines[-1]) if lines else None
    except (OSError, FormatError):
        return None


__all__ = ["AuditCorruption", "AuditError", "AuditLog", "AuditLogFull", "AuditRolledBack", "AuditTailUnconfirmed",
           "AuditTenantOverCap",
           "AuditWriteError", "Appended", "Pruned",
           "Repair", "DAY_US", "FSYNC_POLICIES", "DIR_MODE", "FILE_MODE", "SEALED_MODE"]
