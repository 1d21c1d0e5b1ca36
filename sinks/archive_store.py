"""The replay archive on disk: append rows crash-safely and idempotently, repair, cap, prune, read back.

:class:`ArchiveWriter` turns decoded AgentEvents into the files :mod:`sinks.archive` describes. How it stays
exactly-once on at-least-once delivery, with nothing but the files themselves as state:

* **Rows are content-addressed.** Every row's ``event_id`` is derived from one of our events, and a file is always
  a *prefix* of the row sequence its instance's events determine (rows are appended in that order; a torn last line
  is cut off when the file is opened). So a file opened again after a restart answers "was this row written?" by
  membership of its id: the writer re-derives the rows of re-delivered events and skips those present, until the
  first absent one, from which on everything is new (the id set is then dropped). No separate offset or sequence
  store can disagree with the data.
* **Duplicates while running**: an event whose ``seq`` is not above the session's last one is a re-send; a
  ``seq == 1`` event opens a new instance unless it is the current instance's own first event.
* **Routing after a restart**: a session first met again mid-instance is routed to the file that holds its first
  row; an event no file holds continues the newest instance of its session (or, after that one's footer, is
  counted as ``after_close`` and dropped, as Agentao writes nothing after closing).
* **Commit only what is on disk**: :meth:`ArchiveWriter.flush` writes every buffered row (one ``write`` per file),
  fsyncs, and stamps each file's mtime with its last row's ``ts`` (so Agentao's mtime-ordered listing and
  retention agree with ours, and the tree is deterministic). Buffered ``thinking`` pieces are never flushed
  early (that would change the rows); :meth:`safe_offsets` tells the sink not to commit past their records.
  A stretch of thinking is written anyway once its partition is ``thought_record_span`` records past it (a
  deterministic rule: a rebuild reads the same partition log).
* **Full disk**: ``max_tenant_bytes`` is checked before a row is buffered (:class:`ArchiveFull`, nothing written);
  an ``ENOSPC``/``EDQUOT``/``EFBIG`` mid-write cuts the file back to its last complete row and raises
  :class:`ArchiveFull` too. Either way the sink stops without committing, and a restart resumes cleanly.
* **Retention**: ``max_instances`` per tenant, newest by last row ``ts``; an instance beyond them is deleted once
  closed (an open one may still get rows); applied when an instance is created or closed and by :meth:`prune`.
  The choice depends on row timestamps only, so a rebuild converges on the same files.

One writer per archive root at a time (``.lock``, ``flock``). Directories are created 0700 and files 0600: the
archive holds conversations.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sinks.archive import (
    MalformedLine,
    Piece,
    Row,
    Thought,
    encode_line,
    encode_line_fast,
    footer_row,
    header_row,
    instance_id_for,
    json_string,
    line_head,
    map_event,
    parse_filename,
    read_header,
    replay_filename,
    row_id,
    safe_session,
    scan_bytes,
    select_prunable,
    tenant_dirname,
)
from sinks.fsync import fsync_dir
from sinks.redact import CAPPED_KINDS, RowStats, capture_flags, sanitize_encoded

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_FILE = ".lock"
DEFAULT_MAX_INSTANCES = 1000
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TAIL_READ = 64 * 1024


class ArchiveError(Exception):
    """The archive cannot take more rows; the sink must stop without committing."""


class ArchiveFull(ArchiveError):
    """A tenant's size cap, or the filesystem, is full. Nothing partial was left behind."""


class ArchiveWriteError(ArchiveError):
    """Writing failed for another reason (permissions, I/O error); the file was cut back to its last good row."""


class ArchiveCorruption(ArchiveError):
    """A file holds a complete line that is not a row of this archive: it was edited by something else."""


class ArchiveLocked(ArchiveError):
    """Another writer (a running sink) holds the archive root."""


@dataclass(frozen=True)
class Repair:
    """A torn last line (a crash mid-write) cut off when a file was opened."""

    path: Path
    kept_bytes: int
    removed_bytes: int


@dataclass
class ArchiveStats:
    """What the writer did with the events it was given."""

    events: int = 0
    rows: int = 0
    present: int = 0  # rows found already written (re-delivery after a restart)
    duplicates: int = 0  # events re-sent while running (seq not above the session's last)
    after_close: int = 0  # events of an instance after its session_end
    skipped: Counter[str] = field(default_factory=Counter)  # event types with no replay row
    instances: int = 0
    pruned: int = 0
    bytes: int = 0

    def line(self) -> str:
        return (f"{self.events:,} events -> {self.rows:,} rows in {self.instances:,} new instance(s); "
                f"{self.present:,} rows already on disk, {self.duplicates:,} duplicate events, "
                f"{self.after_close:,} after close, {sum(self.skipped.values()):,} without a replay kind")


@dataclass
class _Instance:
    tenant: _Tenant
    session_id: str
    instance_id: str
    name: str
    created_us: int
    next_seq: int = 1
    last_ts_us: int = 0
    closed: bool = False
    stats: RowStats = field(default_factory=RowStats)
    ids: set[str] | None = None  # rows known on disk while catching up after a restart
    size: int = 0  # bytes on disk
    buf: list[bytes] = field(default_factory=list)
    created: bool = False  # the file does not exist yet
    head: str | None = None  # encode_line's per-file part (line_head)

    @property
    def path(self) -> Path:
        return self.tenant.path / self.name


@dataclass
class _FileInfo:
    size: int
    last_ts_us: int
    closed: bool | None = None  # None: not read yet


@dataclass
class _Tenant:
    """A tenant directory: its files (listed once), and the instances sessions hold in memory."""

    path: Path
    files: dict[str, _FileInfo] = field(default_factory=dict)
    by_session: dict[str, set[str]] = field(default_factory=dict)
    loaded: dict[str, _Instance] = field(default_factory=dict)
    bytes: int = 0
    retention_due: bool = False

    def add_file(self, name: str, info: _FileInfo) -> None:
        self.files[name] = info
        parsed = parse_filename(name)
        if parsed is not None:
            self.by_session.setdefault(parsed[0], set()).add(name)

    def remove_file(self, name: str) -> None:
        info = self.files.pop(name, None)
        if info is not None:
            self.bytes -= info.size
        parsed = parse_filename(name)
        if parsed is not None:
            names = self.by_session.get(parsed[0])
            if names is not None:
                names.discard(name)
                if not names:
                    del self.by_session[parsed[0]]
        self.loaded.pop(name, None)


@dataclass
class _Session:
    tenant: _Tenant
    tenant_id: str
    session_id: str
    inst: _Instance | None = None
    last_seq: int | None = None
    thought: Thought | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant.path.name, self.session_id)


class ArchiveWriter:
    """Writes AgentEvents into the archive under ``root`` (see the module docstring). Single-threaded."""

    def __init__(self, root: Path | str, *, flags: Mapping[str, bool] | None = None,
                 max_instances: int | None = DEFAULT_MAX_INSTANCES, max_tenant_bytes: int | None = None,
                 fsync: bool = True, max_sessions: int = 20_000, max_open_files: int | None = None,
                 thought_record_span: int = 10_000, io_threads: int = 8) -> None:
        """``max_open_files`` defaults to a quarter of the process's file limit (at most 2,048): creating and
        re-opening files is the archive's most expensive system call."""
        if max_instances is not None and max_instances < 1:
            raise ValueError("max_instances must be >= 1 (or None for no retention)")
        self.root = Path(root)
        self.flags = capture_flags(flags)
        self.max_instances = max_instances
        self.max_tenant_bytes = max_tenant_bytes
        self.fsync = fsync
        self.max_sessions = max_sessions
        if max_open_files is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_open_files = max(16, min(2048, (soft if soft > 0 else 1024) // 4))
        self.max_open_files = max_open_files
        self.thought_record_span = thought_record_span
        self.stats = ArchiveStats()
        self.repairs: list[Repair] = []
        self.pruned: list[Path] = []
        self._tenants: dict[str, _Tenant] = {}  # by directory name
        self._dirnames: dict[str, str] = {}  # tenant id -> directory name
        self._sessions: OrderedDict[tuple[str, str], _Session] = OrderedDict()
        # The session of the previous event (a batch record usually holds a run of one session's events: 57 % of
        # the bench's events follow one of their own session). Forgotten wherever a session is dropped.
        self._last: tuple[str, str, _Session] | None = None
        self._dirty: dict[int, _Instance] = {}
        self._detached: list[tuple[tuple[str, str], _Instance]] = []  # replaced instances, unloaded after a flush
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._new_dirs: set[Path] = set()
        self._pending: dict[int, dict[tuple[str, str], int]] = {}  # partition -> session -> first thought offset
        self._broken = False
        self._closed = False
        self.io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        _ensure_dir(self.root)
        self._lock_fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise ArchiveLocked(f"{self.root} is held by another archive writer (a running `replay run`?)") \
                from None

    # -- events in --------------------------------------------------------------------------------------------------

    def add(self, event: Mapping[str, Any], position: tuple[int, int] | None = None) -> None:
        """Turn one decoded event into rows (buffered until :meth:`flush`). ``position`` = (partition, offset)."""
        if self._closed or self._broken:
            self._check_open()
        self.stats.events += 1
        sess = self._session(event["tenant"], event["session_id"])
        seq = event["seq"]
        mapped = map_event(event, self.flags)
        if seq == 1:
            iid = instance_id_for(sess.tenant_id, sess.session_id, event["event_id"])
            if sess.inst is not None and sess.inst.instance_id == iid:
                self.stats.duplicates += 1
                return
            self._start_instance(sess, iid, event)
        elif sess.inst is not None:
            if sess.last_seq is not None and seq <= sess.last_seq:
                self.stats.duplicates += 1
                return
        else:
            first = row_id(event["event_id"], 0) if isinstance(mapped, Piece) else (
                mapped[0].event_id if mapped else None)
            if first is None:  # nothing to write, and no instance known to attach it to yet
                self.stats.skipped[event["type"]] += 1
                return
            self._route(sess, first, event)
        inst = sess.inst
        assert inst is not None
        sess.last_seq = seq
        if inst.closed:
            if inst.ids is not None:
                self.stats.present += 1 if isinstance(mapped, Piece) else len(mapped)
            else:
                self.stats.after_close += 1
            return
        if isinstance(mapped, Piece):
            th = sess.thought
            if th is not None and (th.turn_id, th.parent_turn_id) != (mapped.turn_id, mapped.parent_turn_id):
                self._flush_thought(sess)
                th = None
            if th is None:
                th = sess.thought = Thought(mapped.turn_id, mapped.parent_turn_id, event["event_id"],
                                            position=position)
                if position is not None:
                    self._pending.setdefault(position[0], {})[sess.key] = position[1]
            th.add(mapped, int(event["event_time"]))
            if th.full:
                self._flush_thought(sess)
            return
        if sess.thought is not None:
            self._flush_thought(sess)
        if not mapped:
            self.stats.skipped[event["type"]] += 1
        for row in mapped:
            self._emit(inst, row)
        if event["type"] == "session_end":
            self._close_instance(inst, event["event_id"], "footer", int(event["event_time"]))

    def advance(self, partition: int, offset: int) -> None:
        """Call before the events of the record at ``offset``: writes thinking left far behind in that partition."""
        pending = self._pending.get(partition)
        if not pending:
            return
        limit = offset - self.thought_record_span
        for key, first in list(pending.items()):
            if first <= limit:
                sess = self._sessions.get(key)
                if sess is not None:
                    self._flush_thought(sess)
                else:
                    pending.pop(key, None)

    def safe_offsets(self) -> dict[int, int]:
        """Per partition, the offset a commit must not pass: the record of the oldest unwritten thinking piece."""
        return {p: min(m.values()) for p, m in self._pending.items() if m}

    # -- durability -------------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered row, fsync, stamp mtimes, then apply retention where it is due.

        Creating a file and fsyncing one wait on the filesystem (about 1 ms and 0.2 ms here, against 6 µs for a
        write): those run on a few I/O threads, so a batch touching hundreds of files does not wait for each in turn.
        """
        self._check_open()
        dirty = [inst for inst in self._dirty.values() if inst.buf]
        created_dirs = set()
        step = max(1, self.max_open_files // 2)
        for i in range(0, len(dirty), step):
            part = dirty[i:i + step]
            fds = self._fds_for(part)
            for inst, fd in zip(part, fds, strict=True):
                data = b"".join(inst.buf)
                try:
                    _write_all(fd, data)
                except OSError as exc:
                    self._broken = True
                    try:
                        os.ftruncate(fd, inst.size)
                        if inst.size == 0:
                            inst.path.unlink()  # created by this flush: leave no empty file behind
                    except OSError:
                        pass
                    cls = ArchiveFull if exc.errno in _FULL_ERRNOS else ArchiveWriteError
                    raise cls(f"writing {inst.path} failed ({exc.strerror or exc}); it was cut back to its last "
                              f"complete row ({inst.size:,} bytes)") from exc
                inst.size += len(data)
                inst.buf.clear()
                info = inst.tenant.files.get(inst.name)
                if info is not None:
                    info.size, info.last_ts_us, info.closed = inst.size, inst.last_ts_us, inst.closed
                ns = inst.last_ts_us * 1000
                os.utime(fd, ns=(ns, ns))
                if inst.created:
                    inst.created = False
                    created_dirs.add(inst.tenant.path)
            if self.fsync:
                self._synced(os.fsync, fds)
        self._dirty.clear()
        if self.fsync:
            self._synced(fsync_dir, sorted(created_dirs | self._new_dirs))
            self._new_dirs.clear()
        for key, inst in self._detached:
            sess = self._sessions.get(key)
            if inst.tenant.loaded.get(inst.name) is inst and (sess is None or sess.inst is not inst):
                del inst.tenant.loaded[inst.name]
        self._detached.clear()
        for tenant in self._tenants.values():
            if tenant.retention_due:
                tenant.retention_due = False
                self._apply_retention(tenant)
        self._evict()

    def _synced(self, fn: Any, items: list[Any]) -> None:
        try:
            self._io(fn, items)
        except OSError as exc:
            self._broken = True
            cls = ArchiveFull if exc.errno in _FULL_ERRNOS else ArchiveWriteError
            raise cls(f"fsync failed ({exc.strerror or exc}): the last batch may not be durable; it was not "
                      "committed") from exc

    def _io(self, fn: Any, items: list[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` on the I/O threads; the first error is raised once all have finished."""
        if len(items) <= 1 or self.io_threads <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="archive-io")
        outcomes = list(self._pool.map(_attempt(fn), items))
        for ok, value in outcomes:
            if not ok:
                raise value
        return [value for _ok, value in outcomes]

    def prune(self) -> list[Path]:
        """Apply ``max_instances`` to every tenant under the root now (``replay prune``); the deleted paths."""
        self._check_open()
        self.flush()
        before = len(self.pruned)
        if self.max_instances is not None:
            for entry in sorted(self.root.iterdir()):
                if entry.is_dir() and entry.name.startswith("t-"):
                    self._apply_retention(self._tenant_dir(entry.name))
        return self.pruned[before:]

    def reset_sessions(self) -> None:
        """Forget in-memory session state (after a rebalance): buffered rows are flushed, thinking is dropped
        (its records were not committed, so they come back)."""
        self.flush()
        self._sessions.clear()
        self._last = None
        self._pending.clear()
        for tenant in self._tenants.values():
            tenant.loaded.clear()
        self._close_fds()

    def close(self, *, flush: bool = True) -> None:
        """Flush (unless ``flush=False`` or a write failed) and release the root. Unwritten thinking is dropped:
        its records were not committed."""
        if self._closed:
            return
        try:
            if flush and not self._broken:
                self.flush()
        finally:
            self._closed = True
            self._close_fds()
            if self._pool is not None:
                self._pool.shutdown()
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(flush=exc_type is None)

    # -- instances --------------------------------------------------------------------------------------------------

    def _start_instance(self, sess: _Session, iid: str, event: Mapping[str, Any]) -> None:
        """A ``seq == 1`` event: close the instance before it, then open ``iid`` (it exists) or create it."""
        self._flush_thought(sess)
        tenant = sess.tenant
        name = replay_filename(sess.session_id, iid)
        existing = self._load(tenant, name) if name in tenant.files else None
        previous = sess.inst
        if previous is None:  # after a restart: the session's instance that precedes this one
            older = [c for c in self._candidates(sess) if c.name != name and
                     (existing is None or (c.created_us, c.name) < (existing.created_us, name))]
            previous = max(older, key=lambda c: (c.created_us, c.name)) if older else None
        if previous is not None and previous is not existing and not previous.closed:
            self._close_instance(previous, event["event_id"], "close-previous", previous.last_ts_us)
        if previous is not None and previous is not existing:
            self._detached.append((sess.key, previous))
        inst = existing
        if inst is None:
            t0 = int(event["event_time"])
            inst = _Instance(tenant, sess.session_id, iid, name, t0, created=True)
            tenant.add_file(name, _FileInfo(0, t0, False))
            tenant.retention_due = True
            self.stats.instances += 1
            self._emit(inst, header_row(sess.tenant_id, sess.session_id, iid, event, self.flags))
        tenant.loaded[name] = inst
        sess.inst = inst
        sess.last_seq = None

    def _close_instance(self, inst: _Instance, source_id: str, index: str, ts_us: int) -> None:
        self._emit(inst, footer_row(source_id, index, ts_us, inst.next_seq - 1, inst.stats, self.flags))
        inst.closed = True
        inst.tenant.retention_due = True

    def _route(self, sess: _Session, first_row: str, event: Mapping[str, Any]) -> None:
        """A session met again mid-instance: the file holding this row, else the newest one, else a new one."""
        candidates = self._candidates(sess)
        chosen = next((c for c in candidates if c.ids is not None and first_row in c.ids), None)
        if chosen is None and candidates:
            chosen = max(candidates, key=lambda c: (c.created_us, c.name))
            chosen.ids = None  # nothing of this event is there: everything from here on is new
        if chosen is None:
            self._start_instance(sess, instance_id_for(sess.tenant_id, sess.session_id, event["event_id"]), event)
            return
        sess.tenant.loaded[chosen.name] = chosen
        sess.inst = chosen

    def _candidates(self, sess: _Session) -> list[_Instance]:
        """The session's instance files (the sanitised name can be shared: the header's session id decides)."""
        tenant = sess.tenant
        out = []
        for name in sorted(tenant.by_session.get(safe_session(sess.session_id), ())):
            inst = self._load(tenant, name)
            if inst is not None and inst.session_id == sess.session_id:
                out.append(inst)
        return out

    def _load(self, tenant: _Tenant, name: str) -> _Instance | None:
        """The instance in memory, or read from its file: a torn tail is cut, rows give ids, totals, next seq."""
        inst = tenant.loaded.get(name)
        if inst is not None:
            return inst
        path = tenant.path / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            tenant.remove_file(name)
            return None
        try:
            scan = scan_bytes(data)
        except MalformedLine as exc:
            raise ArchiveCorruption(f"{path}: {exc}; move the file away to let the archive continue") from None
        if scan.torn_bytes:
            with open(path, "r+b") as fh:
                fh.truncate(scan.good_bytes)
                os.fsync(fh.fileno())
            if scan.last_ts_us is not None:
                ns = scan.last_ts_us * 1000
                os.utime(path, ns=(ns, ns))
            self.repairs.append(Repair(path, scan.good_bytes, scan.torn_bytes))
        if scan.good_bytes == 0 or scan.session_id is None or scan.instance_id is None:
            path.unlink(missing_ok=True)  # not even a header survived: its events come back (never committed)
            tenant.remove_file(name)
            return None
        info = tenant.files.get(name)
        if info is not None:
            tenant.bytes += scan.good_bytes - info.size
            info.size, info.closed = scan.good_bytes, scan.closed
        return _Instance(tenant, scan.session_id, scan.instance_id, name, scan.created_us,
                         next_seq=scan.last_seq + 1, last_ts_us=scan.last_ts_us or 0, closed=scan.closed,
                         stats=scan.stats, ids=scan.ids, size=scan.good_bytes)

    # -- rows -------------------------------------------------------------------------------------------------------

    def _emit(self, inst: _Instance, row: Row) -> None:
        if inst.ids is not None:
            if row.event_id in inst.ids:
                self.stats.present += 1
                return
            inst.ids = None  # the first row not on disk: all later ones are new (files are prefixes)
        payload, text = sanitize_encoded(row.kind, row.payload, self.flags)
        head = inst.head
        if head is None:
            head = inst.head = line_head(json_string(inst.session_id), inst.instance_id)
        line = encode_line_fast(row, text, head, inst.next_seq)
        if line is None:  # not UTF-8-encodable: the escaped form
            line = encode_line(row, payload, inst.session_id, inst.instance_id, inst.next_seq, payload_text=text)
        tenant = inst.tenant
        if self.max_tenant_bytes is not None and tenant.bytes + len(line) > self.max_tenant_bytes:
            raise ArchiveFull(f"tenant directory {tenant.path.name!r} would exceed its archive cap of "
                              f"{self.max_tenant_bytes:,} bytes ({tenant.bytes:,} used, a {len(line):,}-byte row "
                              "to add)")
        inst.buf.append(line)
        inst.next_seq += 1
        inst.last_ts_us = row.ts_us
        if "redaction_hits" in payload or "redacted_fields" in payload or row.kind in CAPPED_KINDS:
            inst.stats.add_payload(row.kind, payload)
        n = len(line)
        tenant.bytes += n
        self._dirty[id(inst)] = inst
        stats = self.stats
        stats.rows += 1
        stats.bytes += n

    def _flush_thought(self, sess: _Session) -> None:
        th = sess.thought
        if th is None:
            return
        sess.thought = None
        if th.position is not None:
            pending = self._pending.get(th.position[0])
            if pending is not None:
                pending.pop(sess.key, None)
        if sess.inst is not None and not sess.inst.closed:
            self._emit(sess.inst, th.row())

    # -- tenants, sessions, files -----------------------------------------------------------------------------------

    def _session(self, tenant_id: str, session_id: str) -> _Session:
        last = self._last
        if last is not None and last[1] == session_id and last[0] == tenant_id:
            return last[2]  # already the most recently used: nothing to move
        dirname = self._dirnames.get(tenant_id)
        if dirname is None:
            dirname = self._dirnames[tenant_id] = tenant_dirname(tenant_id)
        key = (dirname, session_id)
        sess = self._sessions.get(key)
        if sess is None:
            sess = self._sessions[key] = _Session(self._tenant_dir(dirname), tenant_id, session_id)
        else:
            self._sessions.move_to_end(key)
        self._last = (tenant_id, session_id, sess)
        return sess

    def _tenant_dir(self, dirname: str) -> _Tenant:
        """The tenant directory ``dirname`` (created, then listed once: file sizes and mtimes)."""
        t = self._tenants.get(dirname)
        if t is not None:
            return t
        if not dirname.startswith("t-") or "/" in dirname or "\0" in dirname:
            raise ValueError(f"unsafe tenant directory name {dirname!r}")
        path = self.root / dirname
        if _ensure_dir(path):
            self._new_dirs.add(self.root)
        t = _Tenant(path)
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.endswith(".jsonl") and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    t.add_file(entry.name, _FileInfo(st.st_size, st.st_mtime_ns // 1000))
                    t.bytes += st.st_size
        self._tenants[dirname] = t
        return t

    def _evict(self) -> None:
        """Drop the least recently used sessions beyond ``max_sessions`` (their state is on disk)."""
        excess = len(self._sessions) - self.max_sessions
        if excess <= 0:
            return
        for key in list(self._sessions)[:excess * 2]:
            if excess <= 0:
                break
            sess = self._sessions[key]
            if sess.thought is not None:
                continue
            del self._sessions[key]
            self._last = None
            if sess.inst is not None:
                sess.tenant.loaded.pop(sess.inst.name, None)
                fd = self._fds.pop(sess.inst.path, None)
                if fd is not None:
                    os.close(fd)
            excess -= 1

    def _apply_retention(self, tenant: _Tenant) -> None:
        if self.max_instances is None or len(tenant.files) <= self.max_instances:
            return
        entries = []
        for name, info in tenant.files.items():
            inst = tenant.loaded.get(name)
            if inst is not None:
                entries.append((name, inst.last_ts_us, inst.closed and not inst.buf))
                continue
            if info.closed is None:
                info.closed = _ends_with_footer(tenant.path / name)
            entries.append((name, info.last_ts_us, info.closed))
        for name in select_prunable(entries, self.max_instances):
            path = tenant.path / name
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            tenant.remove_file(name)
            for key, sess in list(self._sessions.items()):
                if sess.tenant is tenant and sess.inst is not None and sess.inst.name == name:
                    del self._sessions[key]
                    self._last = None
            self.pruned.append(path)
            self.stats.pruned += 1

    def _fds_for(self, part: list[_Instance]) -> list[int]:
        """Open (creating as needed) the files of ``part``, the missing ones in parallel; LRU-cached fds."""
        wanted = {inst.path for inst in part}
        missing = [inst.path for inst in part if inst.path not in self._fds]
        for path in list(self._fds):
            if len(self._fds) + len(missing) <= self.max_open_files:
                break
            if path not in wanted:
                os.close(self._fds.pop(path))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        outcomes = self._io(_attempt(lambda path: os.open(path, flags, FILE_MODE)), missing)
        failed = None
        for path, (ok, value) in zip(missing, outcomes, strict=True):
            if ok:
                self._fds[path] = value
            elif failed is None:
                failed = (path, value)
        if failed is not None:
            self._broken = True
            path, exc = failed
            cls = ArchiveFull if exc.errno in _FULL_ERRNOS else ArchiveWriteError
            raise cls(f"cannot open {path}: {exc.strerror or exc}") from exc
        out = []
        for inst in part:
            self._fds.move_to_end(inst.path)
            out.append(self._fds[inst.path])
        return out

    def _close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def _check_open(self) -> None:
        if self._closed:
            raise ArchiveError("the archive writer is closed")
        if self._broken:
            raise ArchiveError("the archive writer failed earlier; open a new one (files are consistent on disk)")


# -- file helpers -------------------------------------------------------------------------------------------------


def _ensure_dir(path: Path) -> bool:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
        return False
    except FileNotFoundError:
        path.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
    return True


def _attempt(fn: Any) -> Any:
    """``fn`` returning ``(True, result)`` or ``(False, the OSError)``, so a batch of I/O calls all finish."""

    def call(x: Any) -> tuple[bool, Any]:
        try:
            return True, fn(x)
        except OSError as exc:
            return False, exc

    return call


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _ends_with_footer(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_READ))
            tail = fh.read()
    except OSError:
        return False
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    return b'"kind": "replay_footer"' in lines[-1]


# -- reading ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveFile:
    """One instance file found under the root."""

    tenant_dir: str
    path: Path
    session_id: str
    instance_id: str
    mtime_us: int


def iter_files(root: Path | str, tenant_dir: str | None = None) -> Iterator[ArchiveFile]:
    """Every instance file (oldest first by mtime, i.e. last row ``ts``), optionally of one tenant directory."""
    root = Path(root)
    if not root.is_dir():
        return
    found = []
    for tdir in sorted(root.iterdir()):
        if not tdir.is_dir() or not tdir.name.startswith("t-") or (tenant_dir and tdir.name != tenant_dir):
            continue
        for path in tdir.glob("*.jsonl"):
            parsed = parse_filename(path.name)
            try:
                st = path.stat()
                with open(path, "rb") as fh:
                    header = read_header(fh.readline())
            except OSError:
                continue
            sid = header.get("session_id") if header else None
            iid = header.get("instance_id") if header else None
            if not isinstance(sid, str) or not isinstance(iid, str):
                if parsed is None:
                    continue
                sid, iid = parsed
            found.append(ArchiveFile(tdir.name, path, sid, iid, st.st_mtime_ns // 1000))
    found.sort(key=lambda f: (f.mtime_us, str(f.path)))
    yield from found


def read_rows(path: Path | str) -> tuple[list[dict[str, Any]], int]:
    """``(rows, malformed complete lines)``; a partial last line is tolerated silently, as Agentao's reader does."""
    import json

    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    rows, bad = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i != len(lines) - 1:
                bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, bad
