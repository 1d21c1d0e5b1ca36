"""Record keys that other systems read: the metrics topic's ``tenant|window_start_us|window_end_us``.

The key is what compaction keeps one record per, and what a consumer groups revisions by, so it must name exactly
one (tenant, window) for *any* tenant string. A tenant is escaped the way URLs escape reserved characters, but only
the two that matter here: ``%`` becomes ``%25`` and ``|`` becomes ``%7C``. A tenant without either (all tenants
seen so far) keeps the plain key it always had, so existing compacted topics stay valid.
"""

from __future__ import annotations


def escape_tenant(tenant: str) -> str:
    """``tenant`` with ``%`` and ``|`` escaped, so it never contains the key separator."""
    if "%" not in tenant and "|" not in tenant:
        return tenant
    return tenant.replace("%", "%25").replace("|", "%7C")


def unescape_tenant(text: str) -> str:
    if "%" not in text:
        return text
    return text.replace("%7C", "|").replace("%7c", "|").replace("%25", "%")


def metrics_key(tenant: str, window_start_us: int, window_end_us: int) -> bytes:
    """The metrics-topic key of one tenant's window (one per window size, since the end is part of it)."""
    return f"{escape_tenant(tenant)}|{int(window_start_us)}|{int(window_end_us)}".encode()


def parse_metrics_key(key: bytes) -> tuple[str, int, int]:
    """``(tenant, window_start_us, window_end_us)`` of a metrics key; raises ``ValueError`` for anything else."""
    tenant, start, end = key.decode("utf-8").split("|")
    return unescape_tenant(tenant), int(start), int(end)
