"""Which events the audit log keeps, under which retention class (the seed's must-keep table)."""

from __future__ import annotations

import uuid

import pytest
import yaml

from sinks.audit_classify import (
    BUSINESS_DATA_MODIFIED,
    DEFAULT_RETENTION_DAYS,
    MEMORY_CLEARED,
    PERMISSION_DENIED,
    SESSION_START,
    TOOL_APPROVED,
    AuditPolicy,
    PolicyError,
)


def ev(etype: str, **fields: object) -> dict[str, object]:
    return {"event_id": uuid.uuid4().hex, "event_time": 1, "producer_time": 1, "tenant": "t", "session_id": "s",
            "seq": 1, "type": etype, **fields}


POLICY = AuditPolicy(business_tools=("crm_update", "db_*"))


@pytest.mark.parametrize(("event", "audit_class", "retention", "days"), [
    (ev("session_start"), SESSION_START, "session", 365),
    (ev("confirm_resolved", confirm_outcome="allow", tool_name="run_shell_command"), TOOL_APPROVED, "approval", 365),
    (ev("permission_decision", permission_decision="deny", tool_name="write_file"), PERMISSION_DENIED, "denial", 90),
    (ev("tool_complete", tool_name="crm_update", status="ok"), BUSINESS_DATA_MODIFIED, "business", 2557),
    (ev("tool_complete", tool_name="db_delete_row", status="ok"), BUSINESS_DATA_MODIFIED, "business", 2557),
    (ev("tool_complete", tool_name="[generalist 1/100] crm_update", status="ok"), BUSINESS_DATA_MODIFIED,
     "business", 2557),
    (ev("memory_cleared", payload='{"memories_cleared": 3}'), MEMORY_CLEARED, "indefinite", None),
])
def test_must_keep_events_get_their_class_and_retention(event, audit_class, retention, days):
    c = POLICY.classify(event)
    assert c is not None
    assert (c.audit_class, c.retention_class, c.retention_days) == (audit_class, retention, days)


@pytest.mark.parametrize("event", [
    ev("confirm_resolved", confirm_outcome="reject"),
    ev("confirm_resolved", confirm_outcome="timeout"),
    ev("tool_confirmation", tool_name="run_shell_command"),  # the request, not the approval
    ev("permission_decision", permission_decision="allow"),
    ev("permission_decision", permission_decision="prompt"),
    ev("tool_complete", tool_name="crm_update", status="error"),
    ev("tool_complete", tool_name="crm_update", status="cancelled"),
    ev("tool_complete", tool_name="read_file", status="ok"),
    ev("tool_complete", tool_name=None, status="ok"),
    ev("tool_result", tool_name="crm_update", status="ok"),  # repeats tool_complete: counted once
    ev("memory_delete"),
    ev("session_end"),
    ev("llm_call_completed"),
])
def test_other_events_are_not_audited(event):
    assert POLICY.classify(event) is None


def test_no_business_tools_by_default():
    assert AuditPolicy().classify(ev("tool_complete", tool_name="crm_update", status="ok")) is None


def test_policy_from_yaml_overrides_only_what_it_names():
    text = """
retention_classes: {session: 180, legal_hold: null}
audit_classes: {permission_denied: legal_hold}
business_tools: [crm_update]
"""
    policy = AuditPolicy.from_mapping(yaml.safe_load(text))
    assert policy.classify(ev("session_start")).retention_days == 180
    denied = policy.classify(ev("permission_decision", permission_decision="deny"))
    assert (denied.retention_class, denied.retention_days) == ("legal_hold", None)
    assert policy.classify(ev("confirm_resolved", confirm_outcome="allow")).retention_days == \
        DEFAULT_RETENTION_DAYS["approval"]
    assert policy.classify(ev("tool_complete", tool_name="crm_update", status="ok")) is not None


@pytest.mark.parametrize("data", [
    {"retention_classes": {"session": 0}},
    {"retention_classes": {"session": -5}},
    {"retention_classes": {"session": True}},
    {"retention_classes": {"../evil": 10}},
    {"retention_classes": {"Session": 10}},
    {"audit_classes": {"session_start": "nope"}},
    {"audit_classes": {"made_up": "session"}},
    {"business_tools": [""]},
    {"retention": {}},
])
def test_bad_policies_are_refused(data):
    with pytest.raises(PolicyError):
        AuditPolicy.from_mapping(data)
