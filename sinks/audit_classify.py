"""Which AgentEvents the audit log must keep, and for how long: the seed's "must-keep audit events" table.

| audit class              | trigger (our AgentEvent)                                  | retention class (default)  |
|--------------------------|-----------------------------------------------------------|----------------------------|
| session_start            | session_start (the agent was constructed)                 | session     365 d          |
| tool_approved            | confirm_resolved, confirm_outcome == "allow"              | approval    365 d          |
| permission_denied        | permission_decision, permission_decision == "deny"        | denial       90 d          |
| business_data_modified   | tool_complete, status == "ok", tool in business_tools     | business   2557 d (7 y)    |
| memory_cleared           | memory_cleared ("forget me", memory.clear_all)            | indefinite (never expires) |

The seed gives ranges (90-365 d, 180-365 d, 1-7 y); the defaults take the top of each range because deleting
evidence early is the irreversible mistake. Everything is configurable: the retention classes (name -> days or
``None`` for indefinite), which retention class each audit class uses, and the business tools (exact names or
``fnmatch`` patterns; none by default, since "business data" is defined by the business). Only ``tool_complete`` counts
for business tools: it pairs 1:1 with each call (``tool_result`` repeats it, parent-only), and ``ok`` means the tool ran
(Agentao reports a tool that *returned* an error string as ``ok`` too: it still touched the system).
Pure: no I/O; ``AuditPolicy.from_mapping`` takes what a YAML file parsed to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

SESSION_START = "session_start"
TOOL_APPROVED = "tool_approved"
PERMISSION_DENIED = "permission_denied"
BUSINESS_DATA_MODIFIED = "business_data_modified"
MEMORY_CLEARED = "memory_cleared"
AUDIT_CLASSES: tuple[str, ...] = (SESSION_START, TOOL_APPROVED, PERMISSION_DENIED, BUSINESS_DATA_MODIFIED,
                                  MEMORY_CLEARED)

DEFAULT_RETENTION_DAYS: dict[str, int | None] = {
    "session": 365,
    "approval": 365,
    "denial": 90,
    "business": 7 * 365 + 2,  # 7 years, leap days included
    "indefinite": None,
}
DEFAULT_CLASS_RETENTION: dict[str, str] = {
    SESSION_START: "session",
    TOOL_APPROVED: "approval",
    PERMISSION_DENIED: "denial",
    BUSINESS_DATA_MODIFIED: "business",
    MEMORY_CLEARED: "indefinite",
}

# Retention class names become directory names: keep them boring.
RETENTION_CLASS_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Sub-agent forwarded tool events may carry a "[generalist 1/100] " label before the tool name.
_TOOL_LABEL_RE = re.compile(r"^\[[^\]]*\]\s*")


class PolicyError(ValueError):
    """An audit policy that cannot be applied (unknown class, bad retention, bad name)."""


@dataclass(frozen=True, slots=True)
class Classification:
    """Why an event is kept (``audit_class``) and for how long (``retention_class``, ``retention_days``)."""

    audit_class: str
    retention_class: str
    retention_days: int | None  # None: indefinite


@dataclass(frozen=True)
class AuditPolicy:
    """Retention classes, the audit-class -> retention-class map and the business tools."""

    retention_days: Mapping[str, int | None] = field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))
    class_retention: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASS_RETENTION))
    business_tools: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, days in self.retention_days.items():
            if not isinstance(name, str) or not RETENTION_CLASS_RE.match(name):
                raise PolicyError(f"retention class name {name!r} must match {RETENTION_CLASS_RE.pattern}")
            if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days <= 0):
                raise PolicyError(f"retention class {name!r}: days must be a positive integer or null, got {days!r}")
        for cls in AUDIT_CLASSES:
            if cls not in self.class_retention:
                raise PolicyError(f"audit class {cls!r} has no retention class")
        for cls, rc in self.class_retention.items():
            if cls not in AUDIT_CLASSES:
                raise PolicyError(f"unknown audit class {cls!r} (known: {', '.join(AUDIT_CLASSES)})")
            if rc not in self.retention_days:
                raise PolicyError(f"audit class {cls!r} uses undefined retention class {rc!r}")
        if isinstance(self.business_tools, str) or not all(isinstance(t, str) and t for t in self.business_tools):
            raise PolicyError("business_tools must be a list of non-empty tool names or patterns")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> AuditPolicy:
        """Build from a YAML-shaped mapping; missing keys keep the defaults, given classes override them.

        ``{"retention_classes": {"session": 180, ...}, "audit_classes": {"session_start": "session", ...},
        "business_tools": ["crm_update", "db_*"]}``
        """
        data = data or {}
        unknown = set(data) - {"retention_classes", "audit_classes", "business_tools"}
        if unknown:
            raise PolicyError(f"unknown audit policy keys: {', '.join(sorted(unknown))}")
        days = {**DEFAULT_RETENTION_DAYS, **(data.get("retention_classes") or {})}
        classes = {**DEFAULT_CLASS_RETENTION, **(data.get("audit_classes") or {})}
        tools = data.get("business_tools") or ()
        if isinstance(tools, str):
            tools = [t.strip() for t in tools.split(",") if t.strip()]
        return cls(days, classes, tuple(tools))

    def with_business_tools(self, tools: Iterable[str]) -> AuditPolicy:
        return AuditPolicy(self.retention_days, self.class_retention, tuple(tools))

    def is_business_tool(self, tool_name: str | None) -> bool:
        if not tool_name:
            return False
        name = _TOOL_LABEL_RE.sub("", tool_name)
        return any(fnmatchcase(name, pattern) for pattern in self.business_tools)

    def audit_class_of(self, event: Mapping[str, Any]) -> str | None:
        """The must-keep audit class of ``event``, or None when the audit log does not keep it."""
        etype = event.get("type")
        if etype == "session_start":
            return SESSION_START
        if etype == "confirm_resolved" and event.get("confirm_outcome") == "allow":
            return TOOL_APPROVED
        if etype == "permission_decision" and event.get("permission_decision") == "deny":
            return PERMISSION_DENIED
        if etype == "tool_complete" and event.get("status") == "ok" and self.is_business_tool(event.get("tool_name")):
            return BUSINESS_DATA_MODIFIED
        if etype == "memory_cleared":
            return MEMORY_CLEARED
        return None

    def classify(self, event: Mapping[str, Any]) -> Classification | None:
        cls = self.audit_class_of(event)
        if cls is None:
            return None
        rc = self.class_retention[cls]
        return Classification(cls, rc, self.retention_days[rc])
