"""The per-tenant log files on disk: append lines crash-safely and exactly once, rotate, gzip, prune.

What the files are: :mod:`sinks.logs`. How :class:`LogWriter` stays exactly-once on at-least-once delivery, with
nothing but the files as state:

* **The offset is stored with the data**: every line ends with its ``kafka_position`` (partition, offset, index
  in the record). Rotation is by event time, so a record always goes to the same day of the same tenant. Within
  one day's files the lines of a partition are in position order (records are consumed in order, and a
  re-delivered one is skipped, never rewritten), so the highest position per partition in a day's files is a
  watermark: a record at or below it is already on disk (counted ``present``), one above it is new. The
  watermarks of a day are read from its files (live and compressed) the first time the day is met after a start.
* **Commit only what is on disk**: :meth:`LogWriter.flush` writes each file's buffered lines with one ``write``,
  fsyncs the files and, after a file or a rename appeared, their directory (:func:`sinks.fsync.fsync_dir`); the
  sink commits offsets after that (:mod:`sinks.durable_loop`). A crash before the commit re-delivers the batch
  and the watermarks skip what was written; a torn last line (a crash mid-write) is cut off when the file is
  opened again.
* **Rotation and gzip**: a day's live file is compressed once the clock (injected: ``clock()`` returns epoch
  seconds) is ``grace_s`` past the day's end and the file has had no line for ``grace_s`` (late events for a closed
  day make one new segment per burst, not one per pass): renamed to ``<day>.<n>.jsonl`` (so a crash cannot confuse
  it with a new live file), gzipped to a temporary file, fsynced, renamed to ``<day>.<n>.jsonl.gz``, then the plain
  copy is removed. A crash at any step is finished on the next start (:meth:`LogWriter.recover`).
* **Retention**: days before :func:`sinks.logs.oldest_kept_day` are deleted (every file of the day, every
  tenant), at start and then at most every ``maintain_every_s``; events for such a day are counted ``expired``.
* **Full disk**: an ``ENOSPC``/``EDQUOT``/``EFBIG`` mid-write cuts the file back to its last complete line and
  raises :class:`LogsFull`; the sink stops without committing, and a restart resumes cleanly.

The positions are those of one topic: an existing directory pointed at another topic, or at the same topic
deleted and created again (offsets restart at 0), would take its events for lines already written; give it a
fresh directory. One writer per root at a time (``.lock``, ``flock``). Directories are created 0700 and files
0600: the lines hold conversations, scrubbed of secrets but not of everything private.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import logging
import os
import shutil
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.scrub import Scrubber
from sinks.archive import tenant_dirname
from sinks.fsync import fsync_dir
from sinks.logs import (
    DEFAULT_RETENTION_DAYS,
    Position,
    day_index,
    day_text,
    encode_line,
    is_closed,
    is_expired,
    live_name,
    log_record,
    oldest_kept_index,
    parse_log_name,
    position_of_line,
    segment_name,
)

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = ".lock"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class LogsError(Exception):
    """The log store cannot take more lines; the sink must stop without committing."""


class LogsFull(LogsError):
    """The filesystem is full; the file was cut back to its last complete line."""


class LogsLocked(LogsError):
    """Another writer (a running ``logs run``) holds the directory."""


@dataclass
class LogStats:
    """What the writer did with the events it was given."""

    events: int = 0
    lines: int = 0  # lines written (flushed)
    bytes: int = 0
    present: int = 0  # already on disk (re-delivered after a restart or a rebalance)
    expired: int = 0  # for a day retention has already deleted: not written
    redactions: int = 0
    compressed: int = 0  # day files gzipped
    pruned: int = 0  # files deleted by retention
    repaired: int = 0  # torn last lines cut off
    maintain_errors: int = 0  # gzip or prune steps that failed (retried later)
    by_type: Counter[str] = field(default_factory=Counter)  # lines written per event type

    def line(self) -> str:
        return (f"{self.events:,} events -> {self.lines:,} lines ({self.bytes:,} bytes); {self.present:,} already "
                f"on disk, {self.expired:,} past retention, {self.redactions:,} secrets scrubbed, "
                f"{self.compressed:,} day files gzipped, {self.pruned:,} pruned")


@dataclass
class _Day:
    """One tenant's day: the highest position written per partition, the live file and its unflushed lines."""

    dir: Path
    day: str
    marks: dict[int, tuple[int, int]] = field(default_factory=dict)
    size: int = 0  # bytes of the live file on disk
    buf: list[bytes] = field(default_factory=list)
    pending: int = 0  # lines in buf
    last_write: float | None = None  # clock() at the last flush that wrote to the live file

    @property
    def path(self) -> Path:
        return self.dir / live_name(self.day)


class LogWriter:
    """Writes AgentEvents as lines under ``root`` (see the module docstring). Single-threaded."""

    def __init__(self, root: Path | str, *, scrubber: Scrubber | None = None,
                 retention_days: int = DEFAULT_RETENTION_DAYS, grace_s: float = 900.0,
                 clock: Callable[[], float] = time.time, fsync: bool = True, maintain_every_s: float = 60.0,
                 max_days_held: int = 10_000) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be >= 1")
        self.root = Path(root)
        self.scrubber = scrubber or Scrubber()
        self.retention_days = retention_days
        self.grace_s = grace_s
        self.clock = clock
        self.fsync = fsync
        self.maintain_every_s = maintain_every_s
        self.max_days_held = max_days_held
        self.stats = LogStats()
        self._days: OrderedDict[tuple[str, str], _Day] = OrderedDict()  # (tenant dir, day)
        self._dirnames: dict[str, str] = {}
        self._dirty: dict[tuple[str, str], _Day] = {}
        self._types: Counter[str] = Counter()  # buffered lines by event type
        self._new_dirs: set[Path] = set()
        self._last_maintain: float | None = None
        self._broken = False
        _ensure_dir(self.root)
        self._lock_fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise LogsLocked(f"{self.root} is held by another log writer (a running `logs run`?)") from None
        self.recover()
        self.maintain(force=True)

    # -- events in --------------------------------------------------------------------------------------------------

    def add(self, event: Mapping[str, Any], position: Position | None = None) -> bool:
        """Buffer one decoded event's line (written by :meth:`flush`). False when it was not buffered: already on
        disk (``position`` at or below the day's watermark) or for a day past retention."""
        if self._broken:
            raise LogsError("the log store failed earlier; restart the sink")
        self.stats.events += 1
        tenant = event.get("tenant")
        tenant = tenant if isinstance(tenant, str) else str(tenant)
        index = day_index(event.get("event_time", 0))
        if index < oldest_kept_index(self.clock(), self.retention_days):
            self.stats.expired += 1
            return False
        day = day_text(index)
        d = self._day(tenant, day)
        if position is not None:
            p, o, i = position
            mark = d.marks.get(p)
            if mark is not None and (o, i) <= mark:
                self.stats.present += 1
                return False
        rec, redactions = log_record(event, self.scrubber, position)
        line = encode_line(rec)
        if position is not None:
            d.marks[position[0]] = (position[1], position[2])
        self.stats.redactions += redactions
        d.buf.append(line)
        d.pending += 1
        self._types[rec["event_type"]] += 1
        self._dirty[(d.dir.name, day)] = d
        return True

    # -- durability -------------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered line, fsync files (and directories with new entries), then maintain if due."""
        if self._broken:
            raise LogsError("the log store failed earlier; restart the sink")
        now = self.clock()
        new_dirs: set[Path] = set(self._new_dirs)
        try:
            for d in self._dirty.values():
                if not d.buf:
                    continue
                data = b"".join(d.buf)
                created = not d.path.exists()
                fd = os.open(d.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                             FILE_MODE)
                try:
                    try:
                        _write_all(fd, data)
                    except OSError as exc:
                        self._broken = True
                        try:
                            os.ftruncate(fd, d.size)
                        except OSError:
                            pass
                        cls = LogsFull if exc.errno in _FULL_ERRNOS else LogsError
                        raise cls(f"writing {d.path} failed ({exc.strerror or exc}); it was cut back to its last "
                                  f"complete line ({d.size:,} bytes)") from exc
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                d.size += len(data)
                d.last_write = now
                self.stats.lines += d.pending
                self.stats.bytes += len(data)
                d.buf.clear()
                d.pending = 0
                if created:
                    new_dirs.add(d.dir)
            if self.fsync:
                for path in sorted(new_dirs):
                    fsync_dir(path)
        except OSError as exc:
            self._broken = True
            cls = LogsFull if exc.errno in _FULL_ERRNOS else LogsError
            raise cls(f"flushing the logs failed ({exc.strerror or exc}); the batch was not committed") from exc
        self._new_dirs.clear()
        self._dirty.clear()
        self.stats.by_type.update(self._types)
        self._types.clear()
        self.maintain()
        while len(self._days) > self.max_days_held:
            self._days.popitem(last=False)  # flushed: its watermarks are on disk, re-read if it comes back

    def maintain(self, *, force: bool = False) -> None:
        """Gzip the days that are over and delete the days past retention (at most every ``maintain_every_s``)."""
        now = self.clock()
        if not force and self._last_maintain is not None and now - self._last_maintain < self.maintain_every_s:
            return
        self._last_maintain = now
        for tdir in self._tenant_dirs():
            for name in sorted(os.listdir(tdir)):
                parsed = parse_log_name(name)
                if parsed is None:
                    continue
                day, n, gz = parsed
                try:
                    if is_expired(day, now, self.retention_days):
                        self._delete(tdir / name)
                        self._days.pop((tdir.name, day), None)
                    elif n is None and is_closed(day, now, self.grace_s) and self._idle(tdir.name, day, now):
                        self._compress(tdir, day)
                    elif n is not None and not gz and (tdir / name).exists():
                        self._finish_segments(tdir)  # a gzip an earlier pass could not finish
                except OSError as exc:  # the lines are durable already; a full disk must not stop the pruning
                    self.stats.maintain_errors += 1
                    log.warning("logs: maintaining %s failed (%s); retried at the next pass or start",
                                tdir / name, exc)

    def recover(self) -> None:
        """Finish what a crash interrupted: remove gzip temporaries, complete half-done compressions."""
        for tdir in self._tenant_dirs():
            for name in os.listdir(tdir):
                if name.endswith(".gz.tmp"):
                    os.unlink(tdir / name)
            self._finish_segments(tdir)
            if self.fsync:
                fsync_dir(tdir)

    def _idle(self, dirname: str, day: str, now: float) -> bool:
        """No line for the day waits in memory, and none was written in the last ``grace_s``: a stream of late
        events for a closed day makes one segment when it stops, not one per pass."""
        if (dirname, day) in self._dirty:
            return False
        d = self._days.get((dirname, day))
        return d is None or d.last_write is None or now - d.last_write >= self.grace_s

    def _finish_segments(self, tdir: Path) -> None:
        """Gzip the plain segments a crash or a failed pass left (``<day>.<n>.jsonl``)."""
        names = set(os.listdir(tdir))
        for name in sorted(names):
            parsed = parse_log_name(name)
            if parsed is None or parsed[1] is None or parsed[2]:
                continue
            day, n, _gz = parsed
            if segment_name(day, n, True) in names:
                os.unlink(tdir / name)  # the .gz was complete (renamed after its fsync)
            else:
                self._gzip(tdir, day, n)

    def close(self) -> None:
        """Flush and release the directory."""
        try:
            if not self._broken:
                self.flush()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    # -- internals ------------------------------------------------------------------------------------------

    def _tenant_dirs(self) -> list[Path]:
        return [self.root / n for n in sorted(os.listdir(self.root))
                if n.startswith("t-") and (self.root / n).is_dir()]

    def _day(self, tenant: str, day: str) -> _Day:
        dirname = self._dirnames.get(tenant)
        if dirname is None:
            dirname = self._dirnames[tenant] = tenant_dirname(tenant)
        key = (dirname, day)
        d = self._days.get(key)
        if d is not None:
            self._days.move_to_end(key)
            return d
        tdir = self.root / dirname
        if _ensure_dir(tdir):
            self._new_dirs.add(self.root)
        d = _Day(tdir, day)
        self._load(d)
        self._days[key] = d
        return d

    def _load(self, d: _Day) -> None:
        """Read the day's watermarks from its files; cut a torn last line off the live file."""
        for name in sorted(os.listdir(d.dir)):
            parsed = parse_log_name(name)
            if parsed is None or parsed[0] != d.day:
                continue
            path = d.dir / name
            if parsed[1] is None:
                d.size = self._repair(path)
                with open(path, "rb") as fh:
                    _scan(fh, d.marks)
            elif parsed[2]:
                try:
                    with gzip.open(path, "rb") as fh:
                        _scan(fh, d.marks)
                except (OSError, EOFError) as exc:
                    raise LogsError(f"{path} is not a complete gzip file ({exc}); it was not written by this "
                                    "store (which renames a .gz into place only once complete): move it away") \
                        from exc
            else:
                with open(path, "rb") as fh:
                    _scan(fh, d.marks)

    def _repair(self, path: Path) -> int:
        """Cut the live file back to its last complete line; its size."""
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            pos = size
            chunk = 64 * 1024
            while pos > 0:
                start = max(0, pos - chunk)
                fh.seek(start)
                block = fh.read(pos - start)
                i = block.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            else:
                keep = 0
            if keep != size:
                fh.truncate(keep)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                self.stats.repaired += 1
            return keep

    def _compress(self, tdir: Path, day: str) -> None:
        """Close a day: rename its live file to the next segment, gzip it (crash-safe, see the module docstring)."""
        live = tdir / live_name(day)
        taken = [p[1] for p in map(parse_log_name, os.listdir(tdir)) if p is not None and p[0] == day and p[1]]
        n = max(taken, default=0) + 1
        os.rename(live, tdir / segment_name(day, n, False))
        if self.fsync:
            fsync_dir(tdir)
        d = self._days.get((tdir.name, day))
        if d is not None:
            d.size = 0
        self._gzip(tdir, day, n)

    def _gzip(self, tdir: Path, day: str, n: int) -> None:
        plain = tdir / segment_name(day, n, False)
        final = tdir / segment_name(day, n, True)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            with open(plain, "rb") as src, os.fdopen(os.dup(fd), "wb") as raw, \
                    gzip.GzipFile(filename=plain.name, mode="wb", fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            fd = -1
            tmp.unlink(missing_ok=True)  # the plain segment stays, gzipped at a later pass
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        os.rename(tmp, final)
        if self.fsync:
            fsync_dir(tdir)
        os.unlink(plain)
        if self.fsync:
            fsync_dir(tdir)
        self.stats.compressed += 1

    def _delete(self, path: Path) -> None:
        os.unlink(path)
        if self.fsync:
            fsync_dir(path.parent)
        self.stats.pruned += 1


def _scan(fh: Any, marks: dict[int, tuple[int, int]]) -> None:
    for line in fh:
        pos = position_of_line(line)
        if pos is not None:
            p, o, i = pos
            mark = marks.get(p)
            if mark is None or (o, i) > mark:
                marks[p] = (o, i)


def _ensure_dir(path: Path) -> bool:
    """Create ``path`` 0700 (True), or check it is a real directory (False); a symlink is refused."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
        return False
    except FileNotFoundError:
        path.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
