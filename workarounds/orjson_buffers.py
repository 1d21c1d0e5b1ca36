"""Right-sized JSON bytes for values held in memory for long (window state kept for late data, table values).

``orjson.dumps`` (3.13, seen 2026-12-08) returns a ``bytes`` object that keeps the encoder's whole output buffer:
a document of up to ~70 bytes allocates 4 KiB, one of 1.4-4 KiB allocates 32 KiB (``tests/test_workarounds.py``
shows it). Harmless for bytes sent and dropped at once; for bytes held an hour per tenant-window it was most of
stage 2's state (10,000 tenants: 418 -> 155 MiB held, bench/README.md "What a tenant-window costs in stage 2").
A copy through a ``memoryview`` allocates exactly the length; the bytes are the same.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps_held(value: Any, option: int | None = None) -> bytes:
    """``orjson.dumps(value, option=option)``, as a bytes object of its own length (to keep in memory)."""
    return bytes(memoryview(orjson.dumps(value, option=option)))
