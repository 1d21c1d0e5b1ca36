"""The disk spool: an append-only, checksummed queue of Kafka records that could not be sent yet.

File format. A spool directory holds segment files ``seg-<id>.spool`` replayed in ascending id order. A segment is
a sequence of frames, each ``magic "AWS1" | u32 body length | u32 event count | u32 CRC-32 | body`` (little
endian), with ``body = u16 key length | key | value`` and the CRC taken over length, count and body, so a flipped
length is caught as well as a flipped byte. ``value`` is a complete record value (an encoded AgentEventBatch, or
a single AgentEvent for the overflow path), so a frame is re-sent as is: same producer id and batch sequence,
which lets consumers drop a frame that reached Kafka twice. The magic lets a reader resynchronise after a damaged
frame: at start-up every segment is scanned, intact frames are kept, damaged byte ranges (a corrupted middle
frame, a torn tail from a crash mid-write) are copied to ``quarantine/`` and counted, and the segment is
rewritten without them (temp file, fsync, rename).

Acknowledgement. Frames are removed only once Kafka acknowledged them, in file order: ``checkpoint`` (JSON,
replaced atomically) holds each segment's first unacknowledged byte; fully acknowledged segments are deleted. A
frame that failed is handed out again before anything unread, and frames after it that were acknowledged are not
re-sent while the process lives. The checkpoint is written at most every ``checkpoint_interval_s`` and at close,
so a crash (or a failed frame still pending at close) can re-send already acknowledged frames: at-least-once
across restarts, and a re-sent frame carries its original producer id + batch sequence for deduplication.

Durability (fsync policy). Every append is written and flushed to the OS at once (a process crash loses nothing
that ``append`` accepted); segment files are fsync'ed at most every ``fsync_interval_s`` (default 1 s), on
``sync(force=True)`` (the publisher's ``flush()``) and at close, like Vector's disk buffer (500 ms). A machine
crash can lose up to that interval; the checksums turn such a loss into a counted torn tail, never garbage.

Ordering. Three writers keep the replay order equal to the order in which data was handed to the publisher:
the sender appends to the *tail*; data older than anything spooled (for a caller that sends directly and spools
only what failed; the publisher always appends to the tail) goes to a *front* segment (id below every other one);
events that arrive while the in-memory buffer is full are written by the calling threads to an *overflow* segment
placed after the sender's current tail, and the sender rolls to a new tail after it once the episode ends.
Unsealed front and overflow segments are not read.

Size cap and full disks. ``max_bytes`` bounds unacknowledged bytes; an append that would pass it is refused (the
publisher drops the newest data and counts it, reason ``spool_full``). An append the file system refuses (ENOSPC,
EIO) is refused the same way, counted in ``write_errors`` and logged at most every 10 s; the segment is cut back
to its last whole frame, so a full disk never leaves a torn frame between good ones. Start-up on a full disk
does not fail: a segment that cannot be rewritten is read in place (resynchronising past damage), and a
checkpoint that cannot be written leaves the old one (a restart may then re-send acknowledged frames, which
carry their identity).

Identity. ``producer`` (a small file rewritten in place, so it works on a full disk) keeps the publisher's
``producer_id`` and a reserved block of batch sequences: :meth:`Spool.identity` gives a restarted publisher the
same id and a first sequence above everything handed out before (and above the wall clock in microseconds).

Ownership and modes. A directory is owned by one process at a time (``flock`` on ``.lock``). Agent events may
hold prompts and tool output: the directory is made 0700 and every file in it 0600.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from zlib import crc32

FRAME_MAGIC = b"AWS1"
_HEADER = struct.Struct("<4sIII")
HEADER_SIZE = _HEADER.size
_KEYLEN = struct.Struct("<H")
MAX_BODY = 64 * 1024 * 1024
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".spool"
FIRST_SEGMENT_ID = 1_000_000_000

SEALED, TAIL, OVERFLOW, FRONT = "sealed", "tail", "overflow", "front"
DIR_MODE, FILE_MODE = 0o700, 0o600  # agent events may hold prompts and tool output: owner only
IDENTITY_FILE, IDENTITY_SIZE = "producer", 256
SEQ_BLOCK = 1 << 20  # batch sequences reserved on disk at a time

log = logging.getLogger(__name__)


class SpoolLockedError(RuntimeError):
    """Another process (or publisher) owns this spool directory."""


# -- frames (pure) -------------------------------------------------------------------------------------------------


def encode_frame(key: bytes, value: bytes, n_events: int) -> bytes:
    body = _KEYLEN.pack(len(key)) + key + value
    meta = struct.pack("<II", len(body), n_events)
    return FRAME_MAGIC + meta + struct.pack("<I", crc32(body, crc32(meta))) + body


@dataclass(slots=True)
class FrameRef:
    offset: int
    end: int
    key: bytes
    value: bytes
    n_events: int


@dataclass(slots=True)
class BadRegion:
    start: int
    end: int
    kind: str  # "corrupt" (intact frames follow) or "torn_tail" (nothing intact up to the end)


@dataclass
class ScanResult:
    frames: list[FrameRef] = field(default_factory=list)
    bad: list[BadRegion] = field(default_factory=list)


def read_frame(data: bytes | memoryview, pos: int) -> FrameRef | None:
    """The intact frame starting at ``pos``, or None (short, bad magic, absurd length, CRC mismatch)."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, length, n_events, crc = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if magic != FRAME_MAGIC or length < 2 or length > MAX_BODY or end > len(data):
        return None
    body = data[pos + HEADER_SIZE:end]
    if crc32(body, crc32(bytes(data[pos + 4:pos + 12]))) != crc:
        return None
    (klen,) = _KEYLEN.unpack_from(body, 0)
    if 2 + klen > length:
        return None
    return FrameRef(pos, end, bytes(body[2:2 + klen]), bytes(body[2 + klen:]), n_events)


def scan_frames(data: bytes, start: int = 0) -> ScanResult:
    """Every intact frame from ``start`` on, resynchronising on the magic after damage."""
    result = ScanResult()
    pos, size = start, len(data)
    while pos < size:
        frame = read_frame(data, pos)
        if frame is not None:
            result.frames.append(frame)
            pos = frame.end
            continue
        nxt = data.find(FRAME_MAGIC, pos + 1)
        while nxt != -1 and read_frame(data, nxt) is None:
            nxt = data.find(FRAME_MAGIC, nxt + 1)
        if nxt == -1:
            result.bad.append(BadRegion(pos, size, "torn_tail"))
            break
        result.bad.append(BadRegion(pos, nxt, "corrupt"))
        pos = nxt
    return result


# -- the spool (I/O) -------------------------------------------------------------------------------------------------


@dataclass
class RecoveryReport:
    """What start-up found in an existing spool directory."""

    segments: int = 0
    frames: int = 0
    events: int = 0
    bytes: int = 0
    corrupt_regions: int = 0
    torn_tails: int = 0
    lost_bytes: int = 0
    quarantined: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SpoolEntry:
    """A frame handed out for sending; give it back with :meth:`Spool.ack` or :meth:`Spool.fail`."""

    seg_id: int
    start: int
    end: int
    key: bytes
    value: bytes
    n_events: int
    state: int = 0  # 0 in flight, 1 acknowledged (or given up), 2 failed (waiting to be handed out again)


@dataclass
class _Segment:
    id: int
    path: Path
    size: int
    state: str
    start: int = 0  # first byte not yet acknowledged
    fd: int | None = None
    dirty: bool = False


class Spool:
    """Segment files plus read/ack cursors; thread-safe (one lock; the sender and overflow writers share it)."""

    def __init__(self, directory: Path, *, max_bytes: int = 256 * 1024 * 1024, segment_bytes: int = 16 * 1024 * 1024,
                 fsync_interval_s: float = 1.0, checkpoint_interval_s: float = 0.2) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _restrict(self.directory, DIR_MODE)
        self._lock = threading.RLock()
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise SpoolLockedError(f"spool directory {self.directory} is in use by another publisher") from exc
        self._segments: dict[int, _Segment] = {}
        self._order: list[int] = []   # segment ids, ascending = replay order
        self._total = 0               # bytes in all segments
        self._read: tuple[int, int] | None = None  # next frame to hand out; None = from the first unacked byte
        self._inflight: deque[SpoolEntry] = deque()
        self._retry: list[SpoolEntry] = []  # failed entries, re-sent (in file order) before anything new
        self._tail: _Segment | None = None
        self._overflow: _Segment | None = None
        self._front: _Segment | None = None
        self._roll_tail = False
        self._next_id = FIRST_SEGMENT_ID
        self._reader: tuple[int, int] | None = None  # (segment id, fd) of the cached read handle
        self._last_fsync = time.monotonic()
        self._last_ckpt = 0.0
        self._ckpt_written: dict[str, int] | None = None
        self._closed = False
        self._events = 0              # events in frames not yet acknowledged
        self.write_errors = 0         # appends refused by the file system (ENOSPC, EIO, ...)
        self.last_error: OSError | None = None
        self._error_logged = -1e9
        self._identity = ""
        self._reserved = 0
        self.recovery = self._recover()
        self.recovered_until = self._order[-1] if self._order else 0  # segment ids <= this were found at start
        self._events = self.recovery.events

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet acknowledged (what the size cap bounds)."""
        with self._lock:
            return self._pending_locked()

    def _pending_locked(self) -> int:
        return self._total - sum(seg.start for seg in self._segments.values())

    @property
    def pending_events(self) -> int:
        """Events in frames not yet acknowledged (recovered ones included)."""
        return self._events

    @property
    def holds_recovered(self) -> bool:
        """Frames found at start-up are still unacknowledged."""
        with self._lock:
            return any(seg.start < seg.size for seg in self._segments.values() if seg.id <= self.recovered_until)

    @property
    def is_empty(self) -> bool:
        return self.pending_bytes == 0

    @property
    def inflight(self) -> int:
        """Frames handed out and not yet acknowledged (failed ones waiting for a retry included)."""
        return len(self._inflight)

    # -- the producer's identity --------------------------------------------------------------------------

    def identity(self, producer_id: str | None, new_id: str) -> tuple[str, int]:
        """``(producer_id, first batch_seq)`` for a publisher on this directory.

        The id is the one stored here (``new_id`` on a fresh directory) unless ``producer_id`` is given; the first
        sequence is above every sequence this directory ever handed out for that id (a reserved block is kept on
        disk, see :meth:`reserve`) and above the wall clock in microseconds, so a restarted publisher never reuses a
        ``batch_seq`` for other content and re-sent frames are recognised by consumers as what they are.
        """
        stored_id, floor = None, 0
        try:
            data = json.loads((self.directory / IDENTITY_FILE).read_bytes().rstrip(b"\0 \n") or b"{}")
            stored_id, floor = str(data["producer_id"]), int(data["next_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        pid = producer_id or stored_id or new_id
        first = max(floor if pid == stored_id else 0, time.time_ns() // 1000 + 1)
        self._identity = pid
        self._reserved = 0
        self.reserve(first)
        return pid, first

    def reserve(self, seq: int) -> int:
        """Record on disk that sequences up to ``seq`` may be used (in blocks); returns the reserved bound.

        Written in place into a preallocated file, so a full disk does not stop it; if it fails all the same the
        wall clock (the other floor of :meth:`identity`) still keeps sequences increasing across restarts.
        """
        with self._lock:
            return self._reserve_locked(seq)

    def _reserve_locked(self, seq: int) -> int:
        if seq <= self._reserved:
            return self._reserved
        bound = seq + SEQ_BLOCK
        text = json.dumps({"producer_id": self._identity, "next_seq": bound + 1}).encode()
        try:
            fd = os.open(self.directory / IDENTITY_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                os.pwrite(fd, text.ljust(IDENTITY_SIZE, b" "), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._refused(exc)
            bound = seq  # try again with the next frame
        self._reserved = bound
        return bound

    # -- recovery ------------------------------------------------------------------------------------------

    def _recover(self) -> RecoveryReport:
        report = RecoveryReport()
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        starts = self._load_checkpoint()
        for seg_id in sorted(self._segment_ids()):
            path = self._path(seg_id)
            data = path.read_bytes()
            start = starts.get(seg_id, 0)
            if start > len(data):
                start = 0  # inconsistent checkpoint: re-send rather than lose
            scan = scan_frames(data, start)
            seg_start = 0
            if scan.bad or start:
                if scan.bad:
                    self._quarantine(seg_id, data, scan.bad, report)
                kept = b"".join(data[f.offset:f.end] for f in scan.frames)
                try:
                    self._rewrite(path, kept)
                    data = kept
                except OSError as exc:  # a full disk: keep the file as is, skip what is acknowledged, resync on read
                    log.warning("spool %s: could not rewrite %s (%s); reading it in place", self.directory,
                                path.name, exc)
                    seg_start = scan.frames[0].offset if scan.frames else len(data)
            if not data or seg_start >= len(data):
                path.unlink(missing_ok=True)
                continue
            _restrict(path, FILE_MODE)
            self._segments[seg_id] = _Segment(seg_id, path, len(data), SEALED, start=seg_start)
            self._order.append(seg_id)
            self._total += len(data)
            report.segments += 1
            report.frames += len(scan.frames)
            report.events += sum(f.n_events for f in scan.frames)
            report.bytes += len(data) - seg_start
        if self._order:
            self._next_id = self._order[-1] + 1
        self._write_checkpoint(force=True)
        if report.corrupt_regions or report.torn_tails:
            log.warning("spool %s: kept %d intact frames (%d events); %d corrupt region(s) and %d torn tail(s), "
                        "%d bytes lost, quarantined in %s", self.directory, report.frames, report.events,
                        report.corrupt_regions, report.torn_tails, report.lost_bytes, report.quarantined)
        elif report.frames:
            log.info("spool %s: %d frames (%d events, %d bytes) to re-send", self.directory, report.frames,
                     report.events, report.bytes)
        return report

    def _quarantine(self, seg_id: int, data: bytes, bad: list[BadRegion], report: RecoveryReport) -> None:
        qdir = self.directory / "quarantine"
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for region in bad:
            target = qdir / f"seg-{seg_id:012d}.{region.start}-{region.end}.{region.kind}.{stamp}.bad"
            try:
                qdir.mkdir(mode=DIR_MODE, exist_ok=True)
                _write_private(target, data[region.start:region.end])
                report.quarantined.append(str(target))
            except OSError as exc:
                log.warning("spool %s: could not quarantine %d damaged bytes (%s)", self.directory,
                            region.end - region.start, exc)
            report.lost_bytes += region.end - region.start
            if region.kind == "torn_tail":
                report.torn_tails += 1
            else:
                report.corrupt_regions += 1

    def _rewrite(self, path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        try:
            _write_private(tmp, data, fsync=True)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        self._fsync_dir()

    # -- writing ---------------------------------------------------------------------------------------------

    def append(self, key: bytes, value: bytes, n_events: int) -> bool:
        """Append to the tail (the sender's path); False when the size cap would be passed."""
        frame = encode_frame(key, value, n_events)
        with self._lock:
            if self._closed or self._pending_locked() + len(frame) > self.max_bytes:
                return False
            try:
                tail = self._tail
                if tail is None or self._roll_tail or (tail.size >= self.segment_bytes and self._overflow is None):
                    self._new_tail()
                    tail = self._tail
                assert tail is not None
                self._write(tail, frame, n_events)
            except OSError as exc:
                self._refused(exc)
                return False
            return True

    def _new_tail(self) -> None:
        if self._tail is not None:
            self._seal(self._tail)
        self._tail = self._create(self._take_next_id(), TAIL)
        self._roll_tail = False

    def begin_overflow(self) -> None:
        """Open an overflow segment after the sender's tail (creating an empty tail if there is none)."""
        with self._lock:
            if self._overflow is not None or self._closed:
                return
            try:
                if self._tail is None or self._roll_tail:
                    self._new_tail()
                self._overflow = self._create(self._take_next_id(), OVERFLOW)
            except OSError as exc:  # appends to the overflow then return False: counted by the caller
                self._refused(exc)

    def append_overflow(self, key: bytes, value: bytes, n_events: int) -> bool:
        """Append to the open overflow segment (any thread); False when there is none or the cap would be passed."""
        frame = encode_frame(key, value, n_events)
        with self._lock:
            seg = self._overflow
            if seg is None or self._closed or self._pending_locked() + len(frame) > self.max_bytes:
                return False
            try:
                self._write(seg, frame, n_events)
            except OSError as exc:
                self._refused(exc)
                return False
            return True

    def seal_overflow(self) -> None:
        """End the episode: the overflow segment becomes readable and the sender's next append starts a new tail."""
        with self._lock:
            seg = self._overflow
            if seg is None:
                return
            self._overflow = None
            self._seal(seg)
            if self._tail is not None and self._tail.id < seg.id:
                self._seal(self._tail)  # readable to its end now; the sender's next append starts a new tail
            self._roll_tail = True
            if seg.size == 0:
                self._drop_segment(seg)
            self._advance()

    def append_front(self, key: bytes, value: bytes, n_events: int) -> bool:
        """Append to the front segment: data older than everything spooled (failed or purged direct batches).

        The publisher opens it only while no spool frame has been read (it reads the spool only when no direct
        batch is outstanding), so putting it first keeps the replay order.
        """
        frame = encode_frame(key, value, n_events)
        with self._lock:
            if self._closed or self._pending_locked() + len(frame) > self.max_bytes:
                return False
            if self._front is None:
                seg_id = (self._order[0] - 1) if self._order else self._take_next_id()
                if self._inflight:
                    log.warning("spool %s: front segment opened while frames are in flight", self.directory)
                try:
                    self._front = self._create(seg_id, FRONT)
                except OSError as exc:
                    self._refused(exc)
                    return False
                self._read = None
            try:
                self._write(self._front, frame, n_events)
            except OSError as exc:
                self._refused(exc)
                return False
            return True

    def seal_front(self) -> None:
        with self._lock:
            if self._front is not None:
                seg, self._front = self._front, None
                self._seal(seg)
                if seg.size == 0:
                    self._drop_segment(seg)

    @property
    def front_open(self) -> bool:
        return self._front is not None

    def _take_next_id(self) -> int:
        seg_id = max(self._next_id, (self._order[-1] + 1) if self._order else self._next_id)
        self._next_id = seg_id + 1
        return seg_id

    def _create(self, seg_id: int, state: str) -> _Segment:
        path = self._path(seg_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        seg = _Segment(seg_id, path, os.fstat(fd).st_size, state, fd=fd)
        self._total += seg.size
        self._segments[seg_id] = seg
        self._order.append(seg_id)
        self._order.sort()
        try:
            self._fsync_dir()
        except OSError as exc:
            self._refused(exc)
        return seg

    def _write(self, seg: _Segment, frame: bytes, n_events: int) -> None:
        """Write ``frame`` to the OS (a process crash loses nothing written); on failure cut the file back, so a
        frame is either whole or absent (a full disk never leaves a torn frame in the middle of a segment)."""
        assert seg.fd is not None
        view, done = memoryview(frame), 0
        try:
            while done < len(frame):
                done += os.write(seg.fd, view[done:])
        except OSError:
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError as exc:  # the resync on read and at start-up skips what is left
                log.error("spool %s: could not cut %s back after a failed write: %s", self.directory,
                          seg.path.name, exc)
            raise
        seg.size += len(frame)
        seg.dirty = True
        self._total += len(frame)
        self._events += n_events

    def _refused(self, exc: OSError) -> None:
        """Count a file-system refusal; log it at most every 10 s (a full disk refuses every append)."""
        self.write_errors += 1
        self.last_error = exc
        now = time.monotonic()
        if now - self._error_logged >= 10.0:
            self._error_logged = now
            log.error("spool %s: cannot write (%s); %d write(s) refused so far%s", self.directory,
                      exc.strerror or exc, self.write_errors,
                      " (disk full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")

    @property
    def disk_full(self) -> bool:
        """The last refusal was a full disk or quota (the publisher counts those as ``spool_full``)."""
        return self.last_error is not None and self.last_error.errno in (errno.ENOSPC, errno.EDQUOT)

    def _seal(self, seg: _Segment) -> None:
        if seg.fd is not None:
            if seg.dirty:
                try:
                    os.fsync(seg.fd)
                except OSError as exc:
                    self._refused(exc)
                seg.dirty = False
            os.close(seg.fd)
            seg.fd = None
        seg.state = SEALED
        if seg is self._tail:
            self._tail = None

    # -- reading and acknowledging ---------------------------------------------------------------------------

    def next_frame(self) -> SpoolEntry | None:
        """The next frame to send: a failed one first (oldest first), else the next unread one, else None."""
        with self._lock:
            if self._retry:
                entry = min(self._retry, key=lambda e: (e.seg_id, e.start))
                self._retry.remove(entry)
                entry.state = 0
                return entry
            if self._read is None:
                if not self._order:
                    return None
                head = self._segments[self._order[0]]
                self._read = (head.id, head.start)
            while True:
                seg_id, offset = self._read
                seg = self._segments.get(seg_id)
                if seg is None or offset >= seg.size:
                    if seg is not None and seg.state != SEALED:
                        return None  # the open tail: wait for more
                    later = [i for i in self._order if i > seg_id]
                    if not later:
                        return None
                    nxt = self._segments[later[0]]
                    self._read = (nxt.id, nxt.start)
                    continue
                if seg.state in (OVERFLOW, FRONT):
                    return None
                frame = self._read_at(seg, offset)
                if frame is None:
                    self._resync(seg, offset)
                    continue
                entry = SpoolEntry(seg_id, offset, frame.end, frame.key, frame.value, frame.n_events)
                self._inflight.append(entry)
                self._read = (seg_id, frame.end)
                return entry

    def _read_at(self, seg: _Segment, offset: int) -> FrameRef | None:
        if self._reader is None or self._reader[0] != seg.id:
            self._close_reader()
            self._reader = (seg.id, os.open(seg.path, os.O_RDONLY))
        fd = self._reader[1]
        header = os.pread(fd, HEADER_SIZE, offset)
        if len(header) < HEADER_SIZE:
            return None
        length = _HEADER.unpack(header)[1]
        if length > MAX_BODY:
            return None
        frame = read_frame(header + os.pread(fd, length, offset + HEADER_SIZE), 0)
        if frame is None:
            return None
        frame.offset, frame.end = offset, offset + frame.end
        return frame

    def _resync(self, seg: _Segment, offset: int) -> None:
        """An unreadable frame at ``offset``: continue at the next intact frame of the segment (or its end)."""
        with open(seg.path, "rb") as f:
            f.seek(offset)
            data = f.read(max(0, seg.size - offset))
        scan = scan_frames(data)
        nxt = offset + scan.frames[0].offset if scan.frames else seg.size
        log.error("spool %s: unreadable bytes in %s at %d-%d; skipped", self.directory, seg.path.name, offset, nxt)
        if seg.start == offset:
            seg.start = nxt
        self._read = (seg.id, nxt)

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader[1])
            self._reader = None

    def unread(self, entry: SpoolEntry) -> None:
        """Give back the entry just read (the producer's queue was full)."""
        with self._lock:
            if self._inflight and self._inflight[-1] is entry:
                self._inflight.pop()
                self._read = (entry.seg_id, entry.start)

    def ack(self, entry: SpoolEntry) -> None:
        """Kafka acknowledged the frame (or it is given up for good): it may be removed."""
        with self._lock:
            entry.state = 1
            self._advance()

    def fail(self, entry: SpoolEntry) -> None:
        """The frame was not delivered: :meth:`next_frame` hands it out again before anything unread.

        Frames after it that were acknowledged are not re-sent (no duplicates); it stays unacknowledged, so it also
        survives a restart.
        """
        with self._lock:
            if entry.state == 0 and entry not in self._retry:
                entry.state = 2
                self._retry.append(entry)

    def _advance(self) -> None:
        while self._inflight and self._inflight[0].state == 1:
            e = self._inflight.popleft()
            self._events -= e.n_events
            seg = self._segments.get(e.seg_id)
            if seg is not None:
                seg.start = max(seg.start, e.end)
        # delete fully acknowledged sealed segments at the head; the open tail is kept and appended to until it
        # reaches segment_bytes (a new file per record would cost a create, a directory fsync and an unlink each)
        while self._order:
            head = self._segments[self._order[0]]
            if head.start < head.size or head.state != SEALED or any(e.seg_id == head.id for e in self._inflight):
                break
            self._drop_segment(head)

    def _drop_segment(self, seg: _Segment) -> None:
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        if self._reader is not None and self._reader[0] == seg.id:
            self._close_reader()
        if seg is self._tail:
            self._tail = None
        self._segments.pop(seg.id, None)
        if seg.id in self._order:
            self._order.remove(seg.id)
        self._total -= seg.size
        seg.path.unlink(missing_ok=True)
        if self._read is not None and self._read[0] == seg.id:
            self._read = None

    # -- durability --------------------------------------------------------------------------------------------

    def sync(self, force: bool = False) -> None:
        """fsync written segments if the interval passed (or ``force``); write the checkpoint if it is due."""
        with self._lock:
            now = time.monotonic()
            if force or now - self._last_fsync >= self.fsync_interval_s:
                for seg in self._segments.values():
                    if seg.fd is not None and seg.dirty:
                        try:
                            os.fsync(seg.fd)
                        except OSError as exc:
                            self._refused(exc)
                        seg.dirty = False
                self._last_fsync = now
            self._write_checkpoint(force=force)

    def _write_checkpoint(self, force: bool = False) -> None:
        starts = {str(seg.id): seg.start for seg in self._segments.values() if seg.start}
        if starts == self._ckpt_written:
            return
        now = time.monotonic()
        if not force and now - self._last_ckpt < self.checkpoint_interval_s:
            return
        self._last_ckpt = now
        tmp = self.directory / "checkpoint.tmp"
        try:
            _write_private(tmp, json.dumps({"starts": starts}).encode())
            os.replace(tmp, self.directory / "checkpoint")
        except OSError as exc:
            # a full disk: the old checkpoint stays, so a restart may re-send acknowledged frames; they carry
            # their (producer_id, batch_seq), which consumers skip
            tmp.unlink(missing_ok=True)
            self._refused(exc)
            return
        self._ckpt_written = starts

    def _load_checkpoint(self) -> dict[int, int]:
        try:
            data = json.loads((self.directory / "checkpoint").read_text())
            return {int(k): int(v) for k, v in data["starts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Seal everything, fsync, write the checkpoint and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_reader()
            for seg in list(self._segments.values()):
                self._seal(seg)
            self._overflow = self._front = self._tail = None
            self._advance()  # the tail, sealed now, goes too when everything in it is acknowledged
            self._ckpt_written = None
            self._write_checkpoint(force=True)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _path(self, seg_id: int) -> Path:
        return self.directory / f"{SEGMENT_PREFIX}{seg_id:012d}{SEGMENT_SUFFIX}"

    def _segment_ids(self) -> list[int]:
        ids = []
        for p in self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
            try:
                ids.append(int(p.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]))
            except ValueError:
                continue
        return ids


def _restrict(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` (the umask may have made it wider; an existing directory may be)."""
    try:
        if os.stat(path).st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except OSError as exc:
        log.warning("spool: cannot set mode %o on %s: %s", mode, path, exc)


def _write_private(path: Path, data: bytes, fsync: bool = False) -> None:
    """Create or replace ``path`` (mode 0600) with ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.write(fd, view[done:])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
