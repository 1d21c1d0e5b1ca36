"""Audit events of an isolated tenant, kept in order on disk until its log takes them again.

Why: offsets are committed per partition, and a partition carries many tenants. When one tenant's log refuses
records (over its size cap, or refused as corrupt), stopping the sink uncommitted would stall every tenant on the
same partitions. Instead that tenant's audit events go here, in arrival order, fsynced before the batch's offsets are
committed (so nothing is lost in a crash), counted, and logged; every later event of the tenant follows them here
until the queue is drained, so the tenant's order is kept. :meth:`HeldQueue.drain` re-appends them oldest first once
the log takes them (space freed by a prune or a higher cap, corruption repaired); the log's event-id index makes a
drain interrupted by a crash harmless (a re-drained event is a duplicate, skipped).

Layout: ``<held dir>/<tenant dir>.jsonl`` (0600 in a 0700 directory), one canonical JSON line per event: ``src``,
``class``, ``retention``, ``days``, and ``event`` or, when the log is encrypted, ``enc`` (AES-256-GCM under the
same key: held evidence is as protected as the log). The held bytes count against no cap: the filesystem bounds them,
and a full filesystem stops the sink (that stalls everyone anyway).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sinks.audit_classify import Classification
from sinks.audit_format import FormatError, RecordCipher, canonical, parse_line, tenant_dirname
from sinks.audit_log import AuditLogFull, AuditWriteError
from sinks.audit_source import SourceRef
from sinks.audit_store import create_file, ensure_dir, open_append
from sinks.fsync import fsync_dir


@dataclass(frozen=True, slots=True)
class Held:
    event: dict[str, Any]
    classification: Classification
    source: SourceRef | None


class HeldQueue:
    """Per-tenant FIFO files of audit events the log did not take; single-threaded (the sink's thread)."""

    def __init__(self, directory: Path | str, cipher: RecordCipher | None = None) -> None:
        self.dir = Path(directory)
        self._cipher = cipher
        self._counts: dict[str, int] = {}
        self._fds: dict[str, int] = {}
        self._dirty: set[str] = set()
        if self.dir.is_dir():
            for path in sorted(self.dir.glob("t-*.jsonl")):
                _cut_torn_tail(path)
                tenant = self._tenant_of(path)
                if tenant is not None:
                    self._counts[tenant] = sum(1 for _ in self._lines(path))

    # -- state --------------------------------------------------------------------------------------------------

    def count(self, tenant: str) -> int:
        return self._counts.get(tenant, 0)

    def counts(self) -> dict[str, int]:
        """Held events per tenant (only tenants that have some)."""
        return {t: n for t, n in self._counts.items() if n}

    def path(self, tenant: str) -> Path:
        return self.dir / f"{tenant_dirname(tenant)}.jsonl"

    # -- writing ------------------------------------------------------------------------------------------------

    def hold(self, event: Mapping[str, Any], classification: Classification, source: SourceRef | None) -> None:
        tenant = str(event["tenant"])
        body: dict[str, Any] = {"tenant": tenant, "class": classification.audit_class,
                                "retention": classification.retention_class, "days": classification.retention_days,
                                "src": list(source) if source is not None else None, "event_id": event.get("event_id")}
        if self._cipher is not None:
            body["enc"] = self._cipher.encrypt(event, tenant, "held", 0, event.get("event_id"))
        else:
            body["event"] = dict(event)
        fd = self._fds.get(tenant)
        if fd is None:
            ensure_dir(self.dir)
            path = self.path(tenant)
            fd = self._fds[tenant] = open_append(path) if path.exists() else create_file(path)
        line = canonical(body) + b"\n"
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = os.write(fd, line)
            while written < len(line):
                written += os.write(fd, line[written:])
        except OSError as exc:
            try:
                os.ftruncate(fd, size)  # never leave half a line behind
            except OSError:
                pass  # cut on the next open (an unterminated last line)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            raise (AuditLogFull if full else AuditWriteError)(
                f"{self.path(tenant)}: could not hold an event of isolated tenant {tenant!r} ({exc.strerror or exc}); "
                "the batch is not committed and comes back after a restart") from exc
        self._dirty.add(tenant)
        self._counts[tenant] = self._counts.get(tenant, 0) + 1

    def flush(self) -> None:
        """fsync every file written since the last flush (before the sink commits offsets)."""
        for tenant in list(self._dirty):
            os.fsync(self._fds[tenant])
        self._dirty.clear()

    def close(self) -> None:
        self.flush()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- draining -----------------------------------------------------------------------------------------------

    def drain(self, tenant: str, take: Callable[[Held], None], durable: Callable[[], None],
              refused: tuple[type[BaseException], ...]) -> tuple[int, BaseException | None]:
        """Hand held events to ``take`` oldest first until it raises one of ``refused``; ``durable`` (the log's
        flush) runs before the taken lines are removed. Returns how many were taken and the refusal, if any; any
        other exception propagates (after the taken lines are removed)."""
        path = self.path(tenant)
        if not self.count(tenant) or not path.exists():
            return 0, None
        self.flush()
        lines = list(self._lines(path))
        taken = 0
        stopped: BaseException | None = None
        try:
            for line in lines:
                try:
                    take(self._decode(line))
                except refused as exc:
                    stopped = exc
                    break
                taken += 1
        finally:
            if taken:
                durable()
                self._rewrite(tenant, path, lines[taken:])
        return taken, stopped

    def _rewrite(self, tenant: str, path: Path, rest: list[bytes]) -> None:
        fd = self._fds.pop(tenant, None)
        if fd is not None:
            os.close(fd)
        self._dirty.discard(tenant)
        if rest:
            tmp = path.with_name(path.name + ".tmp")
            tmp.unlink(missing_ok=True)
            os.close(create_file(tmp, b"".join(line + b"\n" for line in rest)))
            os.replace(tmp, path)
        else:
            path.unlink()
        fsync_dir(self.dir)
        self._counts[tenant] = len(rest)

    def _decode(self, line: bytes) -> Held:
        body = parse_line(line)
        if "enc" in body:
            if self._cipher is None:
                raise FormatError("held events are encrypted: set AGENTWATCH_AUDIT_ENC_KEY")
            event = self._cipher.decrypt({"enc": body["enc"], "tenant": body["tenant"], "stream": "held", "seq": 0,
                                          "event_id": body.get("event_id")})
        else:
            event = body["event"]
        src = body.get("src")
        return Held(event, Classification(body["class"], body["retention"], body["days"]),
                    tuple(src) if isinstance(src, list) else None)  # type: ignore[arg-type]

    @staticmethod
    def _lines(path: Path) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.endswith(b"\n"):  # an unterminated last line is a write cut by a crash: not committed
                    yield raw[:-1]

    @staticmethod
    def _tenant_of(path: Path) -> str | None:
        for line in HeldQueue._lines(path):
            try:
                tenant = parse_line(line).get("tenant")
            except FormatError:
                return None
            return tenant if isinstance(tenant, str) else None
        return None



def _cut_torn_tail(path: Path) -> None:
    """A crash mid-append leaves an unterminated line: cut it (its batch was not committed, Kafka re-delivers it)."""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
