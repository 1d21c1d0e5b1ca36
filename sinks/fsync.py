"""Durable directory entries: after creating, renaming or deleting a file, fsync its directory, or a crash may
forget the entry even though the file's own data was fsynced (POSIX makes the two separate)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
