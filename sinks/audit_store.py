"""File-level helpers of the audit log: the directory layout on disk, modes, fsync, reading lines back.

Directories are created 0700 and files 0600 (explicit ``chmod`` after creation, so a permissive umask cannot widen
them); a closed segment is made read-only (0400). Creating or removing a file fsyncs its directory, so the entry
itself survives a crash, not only the data.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sinks.audit_classify import RETENTION_CLASS_RE
from sinks.audit_format import (
    CHECKPOINTS_FILE,
    SEGMENT_RE,
    TENANT_FILE,
    FormatError,
    parse_line,
    segment_first_seq,
    tenant_dirname,
)
from sinks.fsync import fsync_dir

DIR_MODE = 0o700
FILE_MODE = 0o600
SEALED_MODE = 0o400
LOCK_FILE = ".writer.lock"  # flock-held by the one live writer; holds its pid


def ensure_dir(path: Path) -> bool:
    """Create ``path`` (one level) 0700 if missing; True when it was created."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
        return False
    os.chmod(path, DIR_MODE)
    fsync_dir(path.parent)
    return True


def create_file(path: Path, data: bytes = b"") -> int:
    """Create ``path`` exclusively (0600, append mode) and return its fd, after writing ``data`` if any."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    if data:
        os.write(fd, data)
        os.fsync(fd)
    fsync_dir(path.parent)
    return fd


def open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without newline) and the unterminated tail (b"" when the data ends with a newline)."""
    end = data.rfind(b"\n") + 1
    body, tail = data[:end], data[end:]
    return (body.split(b"\n")[:-1] if body else []), tail


def iter_file_lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """``(line without newline, terminated)`` for every line; only the last one can be unterminated."""
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                yield raw[:-1], True
            else:
                yield raw, False


# -- layout -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TenantDir:
    path: Path
    tenant: str | None  # None when tenant.json is missing or unreadable
    problem: str | None = None


def write_tenant_file(tenant_dir: Path, tenant: str) -> None:
    """Atomically (temp file + rename): a crash never leaves a half-written tenant.json."""
    tmp = tenant_dir / f".{TENANT_FILE}.tmp"
    tmp.unlink(missing_ok=True)
    os.close(create_file(tmp, json.dumps({"tenant": tenant}, ensure_ascii=True).encode() + b"\n"))
    os.replace(tmp, tenant_dir / TENANT_FILE)
    fsync_dir(tenant_dir)


def read_tenant_dir(path: Path) -> TenantDir:
    try:
        obj = parse_line((path / TENANT_FILE).read_bytes().rstrip(b"\n"))
    except (OSError, FormatError) as exc:
        return TenantDir(path, None, f"{TENANT_FILE} unreadable: {exc}")
    tenant = obj.get("tenant")
    if not isinstance(tenant, str):
        return TenantDir(path, None, f"{TENANT_FILE} has no tenant string")
    if tenant_dirname(tenant) != path.name:
        return TenantDir(path, tenant, f"{TENANT_FILE} names tenant {tenant!r}, which does not map to this directory")
    return TenantDir(path, tenant)


def list_tenant_dirs(root: Path) -> list[TenantDir]:
    if not root.is_dir():
        return []
    return [read_tenant_dir(p) for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith("t-")]


def list_streams(tenant_dir: Path) -> list[str]:
    return sorted(p.name for p in tenant_dir.iterdir() if p.is_dir() and RETENTION_CLASS_RE.match(p.name))


def list_segments(stream_dir: Path) -> tuple[list[str], list[str]]:
    """Segment names in seq order, and any other file names (which do not belong in a stream directory)."""
    segments, others = [], []
    for p in stream_dir.iterdir():
        if SEGMENT_RE.match(p.name):
            segments.append(p.name)
        elif p.name != CHECKPOINTS_FILE:
            others.append(p.name)
    segments.sort(key=lambda n: segment_first_seq(n) or 0)
    return segments, sorted(others)


def iter_records(root: Path, tenant: str, stream: str | None = None) -> Iterator[dict[str, Any]]:
    """Every parseable record of a tenant (one stream or all), stream by stream in seq order; for display."""
    tdir = root / tenant_dirname(tenant)
    if not tdir.is_dir():
        return
    for name in list_streams(tdir):
        if stream is not None and name != stream:
            continue
        segments, _ = list_segments(tdir / name)
        for seg in segments:
            for line, terminated in iter_file_lines(tdir / name / seg):
                if not terminated:
                    continue
                try:
                    yield parse_line(line)
                except FormatError:
                    continue


def writer_state(root: Path) -> str:
    """Whether a writer holds ``root`` now, in words for a report: "is running (pid N)" or "crashed or was killed".

    Probes the writer's flock with a non-blocking shared lock, released at once (a writer starting in that instant
    fails fast and can be restarted; nothing else is affected).
    """
    path = root / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return "crashed or was killed (no writer lock file)"
    try:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"is running (pid {pid} holds {LOCK_FILE})"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return f"crashed or was killed (pid {pid} last held {LOCK_FILE}, nobody holds it now)"
    finally:
        os.close(fd)
