"""The sinks' shared consumer settings (sinks/consumer_config.py): each sink builds exactly the configuration it
built before the settings were shared, and a caller's own settings win (no Kafka needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sinks.consumer_config import sink_consumer_config

BASE = {"bootstrap.servers": "b:1", "group.id": "g", "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed"}


def test_the_shared_settings_and_their_options() -> None:
    assert sink_consumer_config("b:1", "g") == BASE
    assert sink_consumer_config("b:1", "g", eager=True) == {**BASE, "partition.assignment.strategy": "range"}
    assert sink_consumer_config("b:1", "g", max_poll_interval_ms=5) == {**BASE, "max.poll.interval.ms": 5}
    extra = {"auto.offset.reset": "latest", "partition.assignment.strategy": "cooperative-sticky", "x": 1}
    assert sink_consumer_config("b:1", "g", eager=True, extra=extra) == {**BASE, **extra}
    assert sink_consumer_config("b:1", "g", cooperative=True) == {
        **BASE, "partition.assignment.strategy": "cooperative-sticky"}
    with pytest.raises(ValueError, match="not both"):
        sink_consumer_config("b:1", "g", eager=True, cooperative=True)


def _sinks(tmp_path: Path, extra: dict[str, Any] | None) -> dict[str, Any]:
    from sinks.alert_sink import AlertDispatcher, AlertSink
    from sinks.archive_sink import ArchiveSink
    from sinks.archive_store import ArchiveWriter
    from sinks.audit_classify import AuditPolicy
    from sinks.audit_log import AuditLog
    from sinks.audit_sink import AuditSink
    from sinks.exporter import Exporter
    from sinks.logs_sink import LogsSink
    from sinks.logs_store import LogWriter
    from sinks.receivers import ConsoleReceiver
    from sinks.traces_sink import TracesSink

    return {
        "logs": LogsSink("b:1", "t", LogWriter(tmp_path / "logs"), group_id="g", consumer_config=extra),
        "audit": AuditSink("b:1", "t", AuditLog(tmp_path / "audit", b"k" * 32), AuditPolicy(), group_id="g",
                           consumer_config=extra),
        "alerts": AlertSink("b:1", "t", AlertDispatcher([ConsoleReceiver()]), group_id="g", consumer_config=extra),
        "traces": TracesSink("b:1", "t", lambda spans: None, group_id="g", consumer_config=extra),
        "archive": ArchiveSink("b:1", "t", ArchiveWriter(tmp_path / "replay"), group_id="g", consumer_config=extra),
        "exporter": Exporter("b:1", "t", group_id="g", consumer_config=extra),
    }


@pytest.mark.parametrize("extra", [None, {"session.timeout.ms": 6000, "auto.offset.reset": "latest"}])
def test_each_sink_builds_the_configuration_it_built_before(tmp_path: Path, extra: dict[str, Any] | None) -> None:
    # the literal dictionaries the sinks spelled out before they shared sink_consumer_config
    sinks = _sinks(tmp_path, extra)
    before = {
        "logs": BASE,
        "audit": BASE,
        "alerts": {**BASE, "max.poll.interval.ms": 600_000},
        "traces": {**BASE, "partition.assignment.strategy": "range"},
        "archive": {**BASE, "partition.assignment.strategy": "range"},
        "exporter": {**BASE, "partition.assignment.strategy": "cooperative-sticky",
                     "on_commit": sinks["exporter"]._on_commit},
    }
    for name, sink in sinks.items():
        assert sink._config == {**before[name], **(extra or {})}, name
