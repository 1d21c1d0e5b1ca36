"""Verify an audit log: OK, or exactly which record or segment was modified, deleted, reordered or truncated.

The checks, per stream (tenant, retention class), and the ``check`` name each failure carries:

* every line is a canonical JSON record of this tenant and stream (``not_json``, ``not_canonical``, ``wrong_stream``);
* every record hashes to its stored hash (``hash_mismatch``: that record was modified);
* inside a segment, seqs are unique, in order and gap-free, and each ``prev_hash`` is the previous record's hash
  (``duplicate_seq``, ``reordered``, ``records_deleted``, ``chain_break``: modified and re-hashed, or inserted);
* across segments, seq ranges follow each other from seq 1 and the genesis hash, each segment's first ``prev_hash``
  being the previous segment's last hash; a hole is legitimate only where a *signed* prune entry declares the deleted
  segment with the hashes that bridge it (``missing_segment``, ``seq_gap``, ``chain_break``, ``unsigned_prune``);
* the checkpoint file is a chain of HMAC signatures (``checkpoint_sig``, ``checkpoint_chain``) that starts with the
  stream and closes every segment but the last, and every signed head
  still matches the log (``checkpoint_mismatch``: the records up to it were rewritten and re-hashed without the key;
  ``segment_truncated`` / ``tail_truncated``: records it covers are gone; ``appended_after_close``);
* with the encryption key, every ciphertext authenticates (``decrypt_failed``); without it, a stream whose
  checkpoints declare encryption holds no plaintext record after that point (``plaintext_record``);
* a stream whose newest checkpoint is a *seal* (the writer stopped cleanly) has nothing after it
  (``appended_after_seal``);
* the root is a non-empty audit root (``missing_root``, ``empty_root``), and no file or directory is open to group or
  others (``permissions``);
* without the HMAC key nothing is signature-checked: an error (``no_key``) unless the caller says so explicitly
  (``no_signatures``, then a warning);
* with anchors (:mod:`sinks.audit_anchor`), the log still holds every checkpoint the external witness saw, with the
  same signature (``anchor_rollback``, ``anchor_mismatch``, ``anchor_sig``): :func:`check_anchors`;
* with the source topic, every record after the last checkpoint holds the event at the offset it names
  (``unconfirmed_record``): :func:`confirm_tails`.

Records after the last checkpoint of an *unsealed* stream are the tail of a writer that is running (it holds the
root's ``.writer.lock`` flock) or crashed (nobody holds it): a warning (``unanchored``) naming which, since the
next writer signs them only after the source topic confirms each one (:mod:`sinks.audit_source`). Other warnings:
a torn last line (crash or writer active; repaired on the next open), an interrupted prune, unexpected files.
Verifying while ``audit run`` writes is safe, except that a segment it prunes during the verify shows as missing:
re-run.

What a hash chain plus signed checkpoints cannot show on its own: someone holding write access who removes the newest
checkpoints *and* the records after the remaining ones, or a whole stream directory, leaves a consistent older log
(a removed seal then looks like a crash). The anchors close that, down to the last anchor the witness received.

:func:`check_stream` is pure (lines in, findings out); :func:`verify_root` walks the files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sinks.audit_format import (
    CHECKPOINTS_FILE,
    CP_CHECKPOINT,
    CP_PRUNE,
    KIND_PRUNED,
    DecryptError,
    FormatError,
    RecordCipher,
    canonical,
    checkpoint_sig_ok,
    genesis_hash,
    key_id,
    parse_line,
    record_hash_ok,
    segment_first_seq,
    tenant_dirname,
)
from sinks.audit_source import TailSource, source_ref, unconfirmed
from sinks.audit_store import (
    iter_file_lines,
    list_segments,
    list_streams,
    list_tenant_dirs,
    read_tenant_dir,
    writer_state,
)

ERROR = "error"
WARNING = "warning"
_MAX_PER_SEGMENT = 20  # findings of one kind per segment before summarising
_MAX_TAIL = 100_000  # unanchored records kept per stream for confirm_tails (a writer leaves at most 999)

Lines = Iterable[tuple[bytes, bool]]  # (line without newline, terminated by a newline)


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    check: str
    message: str
    tenant: str | None = None
    stream: str | None = None
    segment: str | None = None
    seq: int | None = None

    def where(self) -> str:
        parts = [f"tenant {self.tenant!r}" if self.tenant is not None else None, self.stream, self.segment,
                 f"seq {self.seq}" if self.seq is not None else None]
        return " / ".join(p for p in parts if p)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: [{self.check}] {self.message}" if where else f"[{self.check}] {self.message}"


@dataclass
class StreamSummary:
    tenant: str
    stream: str
    segments: int = 0
    records: int = 0
    checkpoints: int = 0
    pruned_segments: int = 0
    head_seq: int = 0
    anchored_seq: int = 0
    head_sig: str = ""
    sealed: bool = False
    sigs: dict[int, str] = field(default_factory=dict, repr=False)  # checkpoint n -> its signature
    tail: list[dict[str, Any]] = field(default_factory=list, repr=False)  # event records after the last checkpoint


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    streams: list[StreamSummary] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self, *, heads: bool = True) -> str:
        tenants = {s.tenant for s in self.streams}
        totals = (f"{len(tenants)} tenant(s), {len(self.streams)} stream(s), "
                  f"{sum(s.segments for s in self.streams)} segment(s), {sum(s.records for s in self.streams):,} "
                  f"record(s), {sum(s.checkpoints for s in self.streams):,} checkpoint(s), "
                  f"{sum(s.pruned_segments for s in self.streams)} pruned segment(s)")
        lines = [f"OK: {totals}" if self.ok else f"FAILED: {len(self.errors)} problem(s) in {totals}"]
        lines += [f"  ERROR   {f}" for f in self.errors]
        lines += [f"  warning {f}" for f in self.warnings]
        if heads and self.streams:
            lines.append("signed heads (the writer publishes them to the anchors witness; --anchors compares):")
            for s in self.streams:
                unanchored = s.head_seq - s.anchored_seq
                note = f", {unanchored} record(s) after it not yet anchored" if unanchored > 0 else ""
                lines.append(f"  {s.tenant!r} / {s.stream}: seq {s.head_seq}, checkpoint "
                             f"{s.checkpoints}{' (sealed)' if s.sealed else ''} sig {s.head_sig[:16] or '-'}{note}")
        return "\n".join(lines)


@dataclass
class _Seg:
    """What pass 1 learned about one segment file."""

    name: str
    first_seq: int
    count: int = 0
    min_seq: int | None = None
    max_seq: int | None = None
    first_prev: str | None = None
    last_hash: str | None = None
    hashes_wanted: dict[int, str | None] = field(default_factory=dict)


def _ranges(nums: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in sorted(nums):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _fmt_range(a: int, b: int) -> str:
    return f"seq {a}" if a == b else f"seq {a}..{b}"


def check_stream(tenant: str, stream: str, segments: Iterable[tuple[str, Lines]], checkpoint_lines: Lines,
                 hmac_key: bytes | None, cipher: RecordCipher | None = None,
                 writer: str = "is running or crashed") -> tuple[StreamSummary, list[Finding]]:
    """All checks of one stream. ``segments`` are ``(name, lines)`` in seq order of their names; ``writer`` says
    what the root's writer lock showed (for the unanchored-tail warning)."""
    check = _StreamCheck(tenant, stream, hmac_key, cipher)
    check.checkpoints(checkpoint_lines)
    for name, lines in segments:
        check.segment(name, lines)
    check.timeline()
    check.heads()
    findings = [replace(f, message=f.message.replace("{writer}", writer)) for f in check.findings]
    return check.summary, findings


class _StreamCheck:
    """The four passes over one stream; pass 1 streams the records, the others work on summaries."""

    def __init__(self, tenant: str, stream: str, hmac_key: bytes | None, cipher: RecordCipher | None) -> None:
        self.tenant, self.stream, self.key, self.cipher = tenant, stream, hmac_key, cipher
        self.genesis = genesis_hash(tenant, stream)
        self.findings: list[Finding] = []
        self.summary = StreamSummary(tenant, stream)
        self.no_checkpoints = True
        self.regular: list[dict[str, Any]] = []  # checkpoints of kind "checkpoint" past the genesis one
        self.signed_prunes: dict[str, dict[str, Any]] = {}
        self.wanted: dict[str, set[int]] = {}  # segment -> seqs whose hash a checkpoint signed
        self.segs: dict[str, _Seg] = {}
        self.order: list[str] = []
        self.chain_prunes: dict[str, tuple[dict[str, Any], int]] = {}  # from segment_pruned records
        self.torn_in: str | None = None
        self.encrypted_after: int | None = None  # plaintext records past this seq are an error
        self.cp_seq = 0  # the highest seq a regular checkpoint signed
        self.plaintext_seen = 0

    def add(self, severity: str, check: str, message: str, segment: str | None = None, seq: int | None = None) -> None:
        self.findings.append(Finding(severity, check, message, self.tenant, self.stream, segment, seq))

    # -- pass 0: the checkpoint chain -----------------------------------------------------------------------------

    def checkpoints(self, lines: Lines) -> None:
        add, f = self.add, CHECKPOINTS_FILE
        cps: list[dict[str, Any]] = []
        prev_sig: str | None = ""
        expect_n = 1
        kid = key_id(self.key) if self.key is not None else None
        for lineno, (line, terminated) in enumerate(lines, 1):
            if not terminated:
                add(WARNING, "torn_tail", f"{f} line {lineno} is unterminated (crash or writer active); ignored, "
                    "repaired on the next open", f)
                continue
            try:
                cp = parse_line(line)
                n, sig = int(cp["n"]), str(cp["sig"])
            except (FormatError, KeyError, TypeError, ValueError) as exc:
                add(ERROR, "checkpoint_chain", f"{f} line {lineno} is not a checkpoint ({exc}): modified", f)
                prev_sig = None
                continue
            if canonical(cp) != line:
                add(ERROR, "not_canonical", f"checkpoint {n} is not byte-for-byte as written: modified", f)
            if self.key is not None:
                if cp.get("kid") != kid:
                    add(ERROR, "checkpoint_sig", f"checkpoint {n} was signed with key {cp.get('kid')}, not the given "
                        f"key {kid}", f)
                elif not checkpoint_sig_ok(self.key, cp):
                    add(ERROR, "checkpoint_sig", f"checkpoint {n} signature is bad: the checkpoint was forged or "
                        "modified", f)
            if n != expect_n:
                add(ERROR, "checkpoint_chain", f"checkpoint numbered {n} where {expect_n} was expected: checkpoints "
                    "were deleted or reordered", f)
            if prev_sig is not None and cp.get("prev_sig") != prev_sig:
                add(ERROR, "checkpoint_chain", f"checkpoint {n} does not carry the signature of the checkpoint "
                    "before it: the checkpoint chain was cut or spliced", f)
            if cp.get("tenant") != self.tenant or cp.get("stream") != self.stream:
                add(ERROR, "wrong_stream", f"checkpoint {n} belongs to tenant {cp.get('tenant')!r} stream "
                    f"{cp.get('stream')!r}: the file was moved", f)
            if cp.get("seq") == 0 and cp.get("head_hash") != self.genesis:
                add(ERROR, "checkpoint_mismatch", f"checkpoint {n} does not sign this stream's genesis hash", f)
            prev_sig, expect_n = sig, n + 1
            cps.append(cp)
            self.summary.sigs[n] = sig
            if cp.get("enc") and self.encrypted_after is None and isinstance(cp.get("seq"), int):
                self.encrypted_after = cp["seq"]
        self.no_checkpoints = not cps
        self.summary.checkpoints = len(cps)
        self.summary.head_sig = cps[-1]["sig"] if cps else ""
        self.summary.sealed = bool(cps) and cps[-1].get("kind") == CP_CHECKPOINT and cps[-1].get("sealed") is True
        for cp in cps:
            if cp.get("seq") == 0:
                continue
            if cp.get("kind") == CP_PRUNE:
                self.signed_prunes[str(cp.get("segment"))] = cp
            elif cp.get("kind") == CP_CHECKPOINT:
                self.regular.append(cp)
                if isinstance(cp.get("seq"), int):
                    self.wanted.setdefault(str(cp.get("segment")), set()).add(cp["seq"])
                    self.cp_seq = max(self.cp_seq, cp["seq"])

    # -- pass 1: each segment on its own --------------------------------------------------------------------------

    def segment(self, name: str, lines: Lines) -> None:
        if self.torn_in is not None:
            self.add(ERROR, "torn_tail", "a segment that is not the last one ends in an unterminated record: "
                     "truncated", self.torn_in)
            self.torn_in = None
        first = segment_first_seq(name) or 0
        seg = self.segs[name] = _Seg(name, first)
        self.order.append(name)
        want = self.wanted.get(name, set())
        entries: list[tuple[int, int, str, str, bool]] = []  # (line, seq, prev_hash, hash, hash_ok)
        counts: dict[str, int] = {}

        def err(check: str, message: str, seq: int | None = None) -> None:
            counts[check] = counts.get(check, 0) + 1
            if counts[check] <= _MAX_PER_SEGMENT:
                self.add(ERROR, check, message, name, seq)

        for lineno, (line, terminated) in enumerate(lines, 1):
            if not terminated:
                self.torn_in = name
                self.add(WARNING, "torn_tail", f"line {lineno} is an unterminated record ({len(line)} bytes): a "
                         "crash mid-write or a writer still active; repaired on the next open", name)
                continue
            entry = self._record(line, lineno, err)
            if entry is None:
                continue
            entries.append(entry)
            if entry[1] in want:
                seg.hashes_wanted[entry[1]] = entry[3]
        self._segment_order(seg, entries, err)
        for check, count in counts.items():
            if count > _MAX_PER_SEGMENT:
                self.add(ERROR, check, f"... and {count - _MAX_PER_SEGMENT} more", name)

    def _record(self, line: bytes, lineno: int,
                err: Callable[..., None]) -> tuple[int, int, str, str, bool] | None:
        try:
            rec = parse_line(line)
            seq, prev_hash, rhash = rec["seq"], rec["prev_hash"], rec["hash"]
            if not isinstance(seq, int) or not isinstance(prev_hash, str) or not isinstance(rhash, str):
                raise TypeError("seq, prev_hash or hash has the wrong type")
        except (FormatError, KeyError, TypeError) as exc:
            err("not_json", f"line {lineno} is not an audit record ({exc}): modified")
            return None
        if canonical(rec) != line:
            err("not_canonical", f"line {lineno} (seq {seq}) is not byte-for-byte as written: modified", seq)
        if rec.get("tenant") != self.tenant or rec.get("stream") != self.stream:
            err("wrong_stream", f"line {lineno} (seq {seq}) belongs to tenant {rec.get('tenant')!r} stream "
                f"{rec.get('stream')!r}: moved here", seq)
        ok = record_hash_ok(rec)
        if not ok:
            err("hash_mismatch", f"hash mismatch at seq {seq} (line {lineno}): the record was modified", seq)
        if self.cipher is not None and "enc" in rec:
            try:
                self.cipher.decrypt(rec)
            except DecryptError as exc:
                err("decrypt_failed", f"seq {seq} (line {lineno}): {exc}", seq)
        if "enc" in rec and (self.encrypted_after is None or seq <= self.encrypted_after):
            self.encrypted_after = seq - 1
        elif "event" in rec and self.encrypted_after is not None and seq > self.encrypted_after:
            err("plaintext_record", f"seq {seq} (line {lineno}) is plaintext in a stream written encrypted since seq "
                f"{self.encrypted_after + 1}: not written by the writer", seq)
        if rec.get("kind") == KIND_PRUNED and isinstance(rec.get("pruned"), dict):
            self.chain_prunes[str(rec["pruned"].get("segment"))] = (rec["pruned"], seq)
        elif seq > self.cp_seq and len(self.summary.tail) < _MAX_TAIL:
            self.summary.tail.append(rec)
        return lineno, seq, prev_hash, rhash, ok

    @staticmethod
    def _segment_order(seg: _Seg, entries: list[tuple[int, int, str, str, bool]], err: Callable[..., None]) -> None:
        """Seq order, gaps, duplicates and hash links inside one segment."""
        seg.count = len(entries)
        if not entries:
            return
        by_seq: dict[int, tuple[int, int, str, str, bool]] = {}
        for e in entries:
            if e[1] in by_seq:
                err("duplicate_seq", f"seq {e[1]} appears twice (lines {by_seq[e[1]][0]} and {e[0]}): a record was "
                    "duplicated or inserted", e[1])
            else:
                by_seq[e[1]] = e
        for prev, cur in zip(entries, entries[1:], strict=False):
            if cur[1] < prev[1]:
                err("reordered", f"records out of order: seq {cur[1]} (line {cur[0]}) comes after seq {prev[1]} "
                    f"(line {prev[0]}): records were swapped or moved", cur[1])
        seg.min_seq, seg.max_seq = min(by_seq), max(by_seq)
        seg.first_prev, seg.last_hash = by_seq[seg.min_seq][2], by_seq[seg.max_seq][3]
        if seg.min_seq < seg.first_seq:
            err("segment_renamed", f"the segment is named for seq {seg.first_seq} but holds seq {seg.min_seq}: "
                "renamed")
        missing = [n for n in range(seg.first_seq, seg.max_seq + 1) if n not in by_seq]
        for a, b in _ranges(missing):
            err("records_deleted", f"{_fmt_range(a, b)} missing from this segment: deleted", a)
        for n in sorted(by_seq):
            cur, prev = by_seq[n], by_seq.get(n - 1)
            if prev is not None and cur[4] and prev[4] and cur[2] != prev[3]:
                err("chain_break", f"chain broken between seq {n - 1} and seq {n}: prev_hash of seq {n} is not the "
                    f"hash of seq {n - 1} (a record was modified and re-hashed, or inserted)", n)

    # -- pass 2: segments and signed prunes form one contiguous chain from seq 1 ----------------------------------

    def timeline(self) -> None:
        add, segs, signed = self.add, self.segs, self.signed_prunes
        for name, (decl, at_seq) in self.chain_prunes.items():
            cp = signed.get(name)
            if cp is None:
                if name in segs:
                    add(WARNING, "incomplete_prune", f"prune recorded at seq {at_seq} but not finished (no signed "
                        "prune entry yet); the next prune completes it", name)
                else:
                    add(ERROR, "unsigned_prune", f"segment deleted under a prune record (seq {at_seq}) that has no "
                        "signed prune checkpoint: not a legitimate prune", name)
            elif cp.get("head_hash") != decl.get("last_hash") or cp.get("seq") != decl.get("last_seq"):
                add(ERROR, "unsigned_prune", f"prune record (seq {at_seq}) and signed prune entry disagree about the "
                    "deleted segment", name)
        for name in signed:
            if name in segs:
                add(WARNING, "incomplete_prune", "pruned (signed) but the file is still there; the next prune "
                    "deletes it", name)
        # (first seq, last seq, first prev_hash, last hash, name, pruned)
        items: list[tuple[int, int, str | None, str | None, str, bool]] = []
        for name, s in segs.items():
            if s.count and s.min_seq is not None and s.max_seq is not None:
                items.append((s.min_seq, s.max_seq, s.first_prev, s.last_hash, name, False))
        for name, cp in signed.items():
            if not (name in segs and segs[name].count) and isinstance(cp.get("first_seq"), int) \
                    and isinstance(cp.get("seq"), int):
                items.append((cp["first_seq"], cp["seq"], cp.get("first_prev_hash"), cp.get("head_hash"), name, True))
        items.sort(key=lambda it: (it[0], it[1]))
        missing = {str(cp.get("segment")): cp for cp in self.regular
                   if cp.get("segment") not in segs and cp.get("segment") not in signed}
        for name, cp in missing.items():
            first = segment_first_seq(name) or 0
            add(ERROR, "missing_segment", f"segment deleted: checkpoint {cp.get('n')} lists it with "
                f"{cp.get('count')} record(s) (seq {first}..{cp.get('seq')}) and no signed prune entry declares it",
                name, first)
        expect_seq, expect_prev, prev_name = 1, self.genesis, None
        for first, last, first_prev, last_hash, name, pruned in items:
            if first > expect_seq:
                gap = (expect_seq, first - 1)
                if not any(segment_first_seq(m) in range(gap[0], gap[1] + 1) for m in missing):
                    after = f" between {prev_name} and {name}" if prev_name else f" before {name}"
                    add(ERROR, "seq_gap", f"{_fmt_range(*gap)} missing{after}: a segment or records were deleted "
                        "without a signed prune entry", name, gap[0])
            elif first < expect_seq:
                add(ERROR, "overlap", f"starts at seq {first} but seq {expect_seq - 1} was already reached in "
                    f"{prev_name}: a duplicated or renamed segment", name, first)
            elif first_prev != expect_prev:
                add(ERROR, "chain_break", f"first record (seq {first}) does not follow the last hash of "
                    f"{prev_name or 'the genesis'}: the boundary was rewritten", name, first)
            if last + 1 > expect_seq:
                expect_seq, expect_prev, prev_name = last + 1, last_hash, name
            self.summary.pruned_segments += int(pruned)
        self.summary.segments = len(segs)
        self.summary.records = sum(s.count for s in segs.values())
        self.summary.head_seq = expect_seq - 1
        for name, s in segs.items():
            if not s.count and s.first_seq != self.summary.head_seq + 1:
                add(ERROR, "missing_segment", f"empty segment named for seq {s.first_seq}, but the log ends at seq "
                    f"{self.summary.head_seq}: its records were removed", name)
        if self.no_checkpoints:
            if segs:
                add(ERROR, "checkpoint_chain", f"{CHECKPOINTS_FILE} is missing or empty: the stream's checkpoints "
                    "(written from its creation on) were deleted", CHECKPOINTS_FILE)
            else:
                add(WARNING, "checkpoint_chain", f"{CHECKPOINTS_FILE} is missing or empty in a stream without "
                    "segments (a crash while creating it); the writer re-creates it", CHECKPOINTS_FILE)

    # -- pass 3: every signed head still matches the log ----------------------------------------------------------

    def heads(self) -> None:
        add, segs, summary = self.add, self.segs, self.summary
        last_good: dict[str, Any] | None = None
        truncated: dict[str, dict[str, Any]] = {}  # segment -> the highest checkpoint past its end
        for cp in self.regular:
            name, seq = str(cp.get("segment")), cp.get("seq")
            if name in self.signed_prunes or name not in segs or not isinstance(seq, int):
                continue
            s = segs[name]
            found = s.hashes_wanted.get(seq)
            if found is None:
                if s.max_seq is None or seq > s.max_seq:
                    truncated[name] = cp
                continue
            if found != cp.get("head_hash"):
                since = f"seq {last_good['seq'] + 1}" if last_good else "the start"
                add(ERROR, "checkpoint_mismatch", f"checkpoint {cp['n']} signed a different hash for seq {seq}: "
                    f"records between {since} and seq {seq} were rewritten and re-hashed", name, seq)
            else:
                last_good = cp
            if cp.get("closed") and s.max_seq is not None and s.max_seq > seq:
                add(ERROR, "appended_after_close", f"seq {seq + 1}..{s.max_seq} were added after checkpoint "
                    f"{cp['n']} closed the segment", name, seq + 1)
        closed_signed = {cp.get("segment") for cp in self.regular if cp.get("closed")}
        for name in self.order[:-1] if not self.no_checkpoints else ():
            if name not in closed_signed and name not in self.signed_prunes and segs[name].count:
                add(ERROR, "checkpoint_chain", "a later segment exists but this one has no signed close "
                    "checkpoint: checkpoints were removed", name)
        for name, cp in truncated.items():
            s = segs[name]
            ends = f"ends at seq {s.max_seq}" if s.max_seq is not None else "is empty"
            add(ERROR, "tail_truncated" if name == self.order[-1] else "segment_truncated",
                f"truncated: checkpoint {cp['n']} covers up to seq {cp['seq']}, the segment {ends}", name,
                (s.max_seq or s.first_seq - 1) + 1)
        if self.regular:
            summary.anchored_seq = max(int(cp.get("seq") or 0) for cp in self.regular)
            if summary.head_seq < summary.anchored_seq and not truncated:
                add(ERROR, "tail_truncated", f"the log ends at seq {summary.head_seq} but a signed checkpoint covers "
                    f"seq {summary.anchored_seq}: the tail was removed", seq=summary.head_seq + 1)
        if summary.head_seq > summary.anchored_seq:
            records = f"seq {summary.anchored_seq + 1}..{summary.head_seq}"
            if summary.sealed:
                add(ERROR, "appended_after_seal", f"{records} come after the seal a cleanly stopped writer signed: "
                    "appended by someone else", self.order[-1] if self.order else None, summary.anchored_seq + 1)
            else:
                add(WARNING, "unanchored", f"{records} come after the last checkpoint: the tail of a writer that "
                    f"{{writer}}; the next writer signs them only once the source topic confirms each one")


def _permission_findings(paths: Iterable[Path], base: Path, tenant: str | None) -> list[Finding]:
    """Audit files must not be accessible to group or others (0700 directories, 0600/0400 files): an error."""
    out = []
    for path in paths:
        mode = path.lstat().st_mode & 0o777
        if mode & 0o077:
            rel = path.relative_to(base).as_posix() if path != base else str(path)
            out.append(Finding(ERROR, "permissions", f"{rel} is mode {mode:o}: group/other can access it (want "
                               f"{'0700' if path.is_dir() else '0600'})", tenant))
    return out


def verify_root(root: Path | str, hmac_key: bytes | None, *, tenant: str | None = None,
                enc_key: bytes | None = None, no_signatures: bool = False) -> VerifyReport:
    """Verify every tenant under ``root`` (or one). Without ``hmac_key`` signatures are not checked: an error,
    unless ``no_signatures`` says that is intended (then a warning)."""
    root = Path(root)
    report = VerifyReport()
    cipher = RecordCipher(enc_key) if enc_key else None
    if hmac_key is None:
        report.findings.append(Finding(
            WARNING if no_signatures else ERROR, "no_key",
            "no HMAC key given: checkpoint signatures not checked, so a rewritten and re-hashed log cannot be told "
            "from a genuine one" + ("" if no_signatures else " (set AGENTWATCH_AUDIT_HMAC_KEY, or pass "
                                    "--no-signatures to check the hash chains only)")))
    if tenant is not None:
        path = root / tenant_dirname(tenant)
        if not path.is_dir():
            report.findings.append(Finding(ERROR, "missing_tenant", f"no audit log for this tenant under {root}",
                                           tenant))
            return report
        tdirs = [read_tenant_dir(path)]
    else:
        if not root.is_dir():
            report.findings.append(Finding(ERROR, "missing_root", f"{root} does not exist"))
            return report
        tdirs = list_tenant_dirs(root)
        if not tdirs:
            report.findings.append(Finding(ERROR, "empty_root", f"{root} holds no tenant's audit log: wrong "
                                           "directory, or the log was deleted"))
    if root.is_dir():
        others = (p for p in root.rglob("*") if not p.relative_to(root).parts[0].startswith("t-"))
        report.findings.extend(_permission_findings([root, *others], root, None))
    state = writer_state(root)
    for td in tdirs:
        if td.problem is not None or td.tenant is None:
            report.findings.append(Finding(ERROR, "tenant_dir", f"{td.path.name}: {td.problem}", td.tenant))
            if td.tenant is None:
                continue
        assert td.tenant is not None
        report.findings.extend(_permission_findings([td.path, *td.path.rglob("*")], root, td.tenant))
        for stream in list_streams(td.path):
            sdir = td.path / stream
            # Checkpoints before the listing: a checkpoint only ever names a segment that already exists, so a
            # writer appending meanwhile cannot make a listed-too-early segment look deleted.
            cp_path = sdir / CHECKPOINTS_FILE
            cp_lines = list(iter_file_lines(cp_path)) if cp_path.exists() else []
            names, others = list_segments(sdir)
            for other in others:
                report.findings.append(Finding(WARNING, "unexpected_file", "not part of the audit log", td.tenant,
                                               stream, other))
            summary, findings = check_stream(td.tenant, stream, ((n, iter_file_lines(sdir / n)) for n in names),
                                             cp_lines, hmac_key, cipher, writer=state)
            report.streams.append(summary)
            report.findings.extend(findings)
    return report


def check_anchors(report: VerifyReport, anchors: Iterable[Mapping[str, Any]], hmac_key: bytes | None, *,
                  tenant: str | None = None) -> list[Finding]:
    """Compare the verified log with what an external witness saw (the newest signed checkpoint per stream). Pure.

    The log may be ahead of the witness (publishing lags); it may never be behind it or differ from it.
    """
    out: list[Finding] = []
    streams = {(s.tenant, s.stream): s for s in report.streams}
    newest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for cp in anchors:
        n, key = cp.get("n"), (str(cp.get("tenant")), str(cp.get("stream")))
        if (tenant is not None and key[0] != tenant) or not isinstance(n, int):
            continue
        if hmac_key is not None and not checkpoint_sig_ok(hmac_key, cp):
            out.append(Finding(ERROR, "anchor_sig", f"the witness holds checkpoint {n} with a bad signature: not "
                               "written by the audit writer (or signed with another key)", key[0], key[1],
                               CHECKPOINTS_FILE))
            continue
        if key not in newest or n > newest[key]["n"]:
            newest[key] = cp
    for (t, stream), cp in sorted(newest.items()):
        n, seq, s = cp["n"], cp.get("seq"), streams.get((t, stream))
        if s is None:
            out.append(Finding(ERROR, "anchor_rollback", f"stream missing: the witness saw its checkpoint {n} "
                               f"(seq {seq}); the stream directory was removed", t, stream))
        elif s.checkpoints < n:
            out.append(Finding(ERROR, "anchor_rollback", f"the log's newest checkpoint is {s.checkpoints} (seq "
                               f"{s.anchored_seq}) but the witness saw checkpoint {n} covering seq {seq}: the newest "
                               "checkpoints and the records after the remaining ones were removed (rollback)", t,
                               stream, CHECKPOINTS_FILE))
        elif s.sigs.get(n) != cp.get("sig"):
            out.append(Finding(ERROR, "anchor_mismatch", f"checkpoint {n} is not the one the witness saw (seq {seq}): "
                               "the checkpoint history was replaced", t, stream, CHECKPOINTS_FILE))
    for t, stream in sorted(streams):
        if (t, stream) not in newest:
            out.append(Finding(WARNING, "not_anchored", "the witness holds no checkpoint of this stream yet "
                               "(publishing failed or lags); rollback of it is not detectable", t, stream))
    return out


def confirm_tails(report: VerifyReport, source: TailSource, cipher: RecordCipher | None) -> list[Finding]:
    """Check every unanchored event record against the topic it names (one fetch for all streams): a record the
    topic does not hold, or holds differently, is ``unconfirmed_record``; this is what the next writer would refuse.
    Records that cannot be compared (encrypted, no key given) are named too."""
    refs = [r for s in report.streams for rec in s.tail if (r := source_ref(rec)) is not None]
    fetched = source.fetch(refs) if refs else {}
    out: list[Finding] = []
    for s in report.streams:
        for rec in s.tail:
            why = unconfirmed(rec, fetched, cipher)
            if why is not None:
                seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
                out.append(Finding(ERROR, "unconfirmed_record", f"after the last checkpoint and not confirmed by the "
                                   f"source topic: {why}", s.tenant, s.stream, None, seq))
    return out
