"""ISO 8601 times as the command line reads and prints them: UTC, written with ``Z``.

Event times travel as int microseconds since the epoch; operators type and read ISO 8601. A typed time without an
offset means UTC (never the machine's local zone, which would make the same command mean different instants).
"""

from __future__ import annotations

from datetime import UTC, datetime


def parse_utc(text: str) -> datetime:
    """``2026-01-01T00:00:00Z``, ``...+02:00`` or ``...T00:00:00`` (UTC) as an aware datetime; ValueError if not
    ISO 8601."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def utc_iso(t_us: int) -> str:
    """Microseconds since the epoch as ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds)."""
    return datetime.fromtimestamp(t_us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
