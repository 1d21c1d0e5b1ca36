"""Errors of the local broker launcher, carrying the tail of the log that explains them."""

from __future__ import annotations

from pathlib import Path


class BrokerError(RuntimeError):
    """The local Kafka could not be resolved, formatted, started or stopped."""


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist): what a failure message shows."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def excerpt(text: str, lines: int = 15) -> list[str]:
    """The lines of a JVM log that explain a failure: ERROR/FATAL lines and ``Caused by:`` chains, else the tail.

    Stack frames are dropped: a 40-line trace ending in ``... 6 more`` says less than its ``Caused by`` line.
    """
    rows = [r for r in text.splitlines() if r.strip() and not r.startswith(("\tat ", "\t... ", "  at "))]
    key: list[str] = []
    for row in rows:
        if (" ERROR " in row or " FATAL " in row or row.startswith("Caused by:")
                or ("Exception" in row and not row.startswith("\t"))) and row not in key:
            key.append(row)
    return (key or rows)[-lines:]


def with_tail(message: str, path: Path, lines: int = 15) -> str:
    """``message`` followed by what the log says went wrong, indented, so an error explains itself."""
    rows = excerpt(log_tail(path, 400), lines)
    if not rows:
        return f"{message} (log {path} is empty)"
    return f"{message}\n--- from {path} ---\n" + "\n".join("  " + row for row in rows)
